"""The import graph of lima_jax, counted: modules directly in `lima_jax/`, import circles, and
library modules that import a command.

    python tests/import_graph.py [ROOT]      (ROOT: a checkout; default: this one)

Every import counts, inside functions too: an import that runs only on one path still ties the
modules together. `from lima_jax.pkg import name` is an edge to `lima_jax.pkg.name` when that is
a module, else to `lima_jax.pkg`. A command is `main`, `convert`, `generate`, `select` or any
`__main__`; every other module is library. tests/test_layout.py keeps circles and library ->
command imports at 0.
"""
import ast
import pathlib
import sys

COMMANDS = {"lima_jax.main", "lima_jax.convert", "lima_jax.generate", "lima_jax.select"}


def modules(root: pathlib.Path) -> dict[str, pathlib.Path]:
  """Dotted name -> file, for every module under ROOT/lima_jax."""
  out = {}
  for path in sorted((root / "lima_jax").rglob("*.py")):
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
      parts = parts[:-1]
    out[".".join(parts)] = path
  return out


def is_command(name: str) -> bool:
  return name in COMMANDS or name.endswith(".__main__")


def edges(root: pathlib.Path) -> dict[str, set[str]]:
  mods = modules(root)
  graph = {m: set() for m in mods}
  for name, path in mods.items():
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
      targets = []
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
          up = package.split(".")[:len(package.split(".")) - node.level + 1]
          base = ".".join(up + ([base] if base else []))
        targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base
                   for a in node.names]
      for t in targets:
        while t and t not in mods:  # `import lima_jax.a.b` counts as an edge to the module
          t = t.rpartition(".")[0]
        if t and t != name and t != "lima_jax":
          graph[name].add(t)
  return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """The strongly connected components of more than one module (Tarjan), each sorted."""
  index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

  def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on.add(v)
    for w in graph[v]:
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = []
      while True:
        w = stack.pop()
        on.discard(w)
        comp.append(w)
        if w == v:
          break
      if len(comp) > 1:
        out.append(sorted(comp))

  sys.setrecursionlimit(10_000)
  for v in sorted(graph):
    if v not in index:
      visit(v)
  return sorted(out)


def library_to_command(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
  return sorted((a, b) for a, bs in graph.items() for b in bs
                if not is_command(a) and is_command(b))


def summary(root: pathlib.Path) -> dict:
  graph = edges(root)
  top = sorted(m for m, p in modules(root).items()
               if p.parent == root / "lima_jax" and p.name != "__init__.py")
  return {"modules_in_lima_jax": top, "modules": len(graph),
          "circles": cycles(graph), "library_to_command": library_to_command(graph)}


if __name__ == "__main__":
  root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else pathlib.Path(__file__).parents[1])
  s = summary(root)
  print(f"{root}: {s['modules']} modules")
  print(f"  directly in lima_jax/ ({len(s['modules_in_lima_jax'])}): "
        + " ".join(m.rpartition(".")[2] for m in s["modules_in_lima_jax"]))
  print(f"  import circles: {len(s['circles'])}")
  for c in s["circles"]:
    print("    " + " <-> ".join(c))
  print(f"  library -> command imports: {len(s['library_to_command'])}")
  for a, b in s["library_to_command"]:
    print(f"    {a} -> {b}")
