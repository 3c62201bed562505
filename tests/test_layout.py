r"""The house: the README's map of the rooms, the import graph's rules, and every documented
command and path resolving to something that exists.

    python tests/test_layout.py           # print the map of the rooms
    python tests/test_layout.py --write   # rewrite the map between the README's markers

The map is generated from the rooms' own words: the first sentence of each package's
`__init__` docstring and of each top-level module's docstring, so a room describes itself in one
place and the README follows. No test here imports JAX or lima_jax: everything is read with `ast`.
"""
import ast
import difflib
import pathlib
import re
import subprocess
import sys
import textwrap
import tomllib

import pytest

import import_graph  # tests/import_graph.py: pytest and `python tests/test_layout.py` both find it

REPO = pathlib.Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- layout:begin -->", "<!-- layout:end -->"
WRITE = "python tests/test_layout.py --write"
WIDTH = 100

# The order rooms are shown in (DESIGN.md's); a room not named here follows, alphabetically.
TOP = ["__main__", "main", "convert", "generate", "select", "errors", "files"]
ROOMS = ["data", "plan", "model", "tokenizer", "formats", "parallel", "decode", "train",
         "datasets", "curate", "eval", "serve", "experiment", "testbed"]
ALLOWED_TOP = {f"lima_jax.{name}" for name in TOP}

# Rooms without a Python docstring of their own say what they are here; what they hold is listed
# from the folder, so a new file shows up in the map.
OTHER_ROOMS = {
    "configs/": "ml_collections configs, one file per experiment family, get_config(arg):",
    "launch/": "",  # each script's header comment
    "tests/": "pytest (python -m pytest -q -m 'not slow' tests for a quick run); import_graph.py "
              "counts the import graph that test_layout.py keeps clean.",
    "benchmarks/": "speed and memory against PyTorch, transformers and earlier commits; results/ "
                   "holds what they measured, report.py renders its tables.",
    "docs/": "the long pages the README links:",
}


def first_sentence(doc: str | None) -> str:
  """The first sentence of a docstring's first paragraph, on one line, without backticks."""
  if not doc:
    return "(no docstring: say what this room is in one sentence)"
  para = " ".join(doc.strip().split("\n\n")[0].split()).replace("`", "")
  for m in re.finditer(r"\.(?=\s|$)", para):
    if not re.search(r"\b(e\.g|i\.e|etc|vs)$", para[:m.start()]):
      return para[:m.end()]
  return para


def docstring(path: pathlib.Path) -> str | None:
  return ast.get_docstring(ast.parse(path.read_text()))


def is_command(path: pathlib.Path) -> bool:
  """A module run as `python -m`: a package with __main__.py, or a module with a main guard."""
  if path.is_dir():
    return (path / "__main__.py").exists()
  for node in ast.parse(path.read_text()).body:
    if isinstance(node, ast.If) and "__name__" in ast.unparse(node.test) \
        and "__main__" in ast.unparse(node.test):
      return True
  return False


def _ordered(names: list[str], order: list[str]) -> list[str]:
  return [n for n in order if n in names] + sorted(n for n in names if n not in order)


def _line(name: str, text: str, column: int) -> str:
  return textwrap.fill(text, WIDTH, initial_indent=name.ljust(column),
                       subsequent_indent=" " * column, break_on_hyphens=False,
                       break_long_words=False)


def room_map(root: pathlib.Path = REPO) -> str:
  """The README's map of the rooms: one entry per room, from the rooms' own docstrings."""
  pkg = root / "lima_jax"
  modules = [p.stem for p in pkg.glob("*.py") if p.name != "__init__.py"]
  rooms = [p.name for p in pkg.iterdir() if (p / "__init__.py").exists()]
  entries = [("lima_jax/", first_sentence(docstring(pkg / "__init__.py")))]
  for name in _ordered(modules, TOP):
    path = pkg / f"{name}.py"
    mark = " *" if is_command(path) else ""
    entries.append((f"  {name}.py{mark}", first_sentence(docstring(path))))
  for name in _ordered(rooms, ROOMS):
    path = pkg / name
    mark = " *" if is_command(path) else ""
    entries.append((f"  {name}/{mark}", first_sentence(docstring(path / "__init__.py"))))
  for room, text in OTHER_ROOMS.items():
    folder = root / room
    if room == "configs/":
      text = " ".join([text] + sorted(p.name for p in folder.glob("*.py")))
    elif room == "launch/":
      text = "; ".join(f"{p.name}: {_header_comment(p)}" for p in sorted(folder.iterdir())
                       if p.is_file())
    elif room == "docs/":
      text = " ".join([text] + sorted((p.name for p in folder.glob("*.md")), key=str.lower))
    entries.append((room, text))
  column = max(len(name) for name, _ in entries) + 2
  lines = [_line(name, text, column) for name, text in entries]
  legend = "* runs as a command: python -m lima_jax.NAME"
  return "\n".join(["```text", *lines, "", legend, "```"])


def _header_comment(path: pathlib.Path) -> str:
  """A script's first comment line after the shebang."""
  for line in path.read_text().splitlines():
    if line.startswith("#") and not line.startswith("#!"):
      return line.lstrip("#").strip()
  return "(no header comment: say what this file is on its first comment line)"


def readme_block(text: str) -> re.Match:
  found = re.search(re.escape(BEGIN) + "(.*?)" + re.escape(END), text, flags=re.S)
  assert found, f"README.md has no '{BEGIN}' ... '{END}' block; add one and run `{WRITE}`"
  return found


def write_readme(root: pathlib.Path = REPO) -> None:
  readme = root / "README.md"
  text = readme.read_text()
  found = readme_block(text)
  readme.write_text(text[:found.start(1)] + f"\n{room_map(root)}\n" + text[found.end(1):])


# --- The README's map and Quickstart -------------------------------------------------------------


def test_readme_map_of_the_rooms_is_current():
  have = readme_block((REPO / "README.md").read_text()).group(1).strip("\n")
  want = room_map()
  diff = "\n".join(difflib.unified_diff(have.splitlines(), want.splitlines(), "README.md",
                                        "the rooms' docstrings", lineterm=""))
  assert have == want, f"README.md's map of the rooms is stale; run `{WRITE}`:\n{diff}"


def test_every_room_says_what_it_is():
  pkg = REPO / "lima_jax"
  paths = [p for p in pkg.glob("*.py")] + [p / "__init__.py" for p in pkg.iterdir()
                                          if (p / "__init__.py").exists()]
  assert [str(p.relative_to(REPO)) for p in paths if not docstring(p)] == []


def test_readme_starts_with_the_quickstart_ci_runs():
  readme = (REPO / "README.md").read_text()
  sections = re.findall(r"^## (.*)$", readme, flags=re.M)
  assert sections[:2] == ["Quickstart", "The rooms"], sections
  quickstart = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
  commands = [l for l in re.search(r"```bash\n(.*?)```", quickstart, flags=re.S).group(1)
              .splitlines() if l and not l.startswith("#")]
  assert len(commands) == 2, commands
  ci = (REPO / ".ci/run").read_text().strip().splitlines()[-1]
  assert commands[1] == ci  # .ci/run runs the README's test command verbatim


# --- The import graph -----------------------------------------------------------------------------


def test_lima_jax_directly_holds_only_the_commands_errors_and_files():
  top = set(import_graph.summary(REPO)["modules_in_lima_jax"])
  stray = sorted(top - ALLOWED_TOP)
  assert stray == [], "these belong in a room: " + ", ".join(stray)


def test_no_import_circles():
  circles = import_graph.summary(REPO)["circles"]
  assert circles == [], "import circles (python tests/import_graph.py):\n" + "\n".join(
      " <-> ".join(c) for c in circles)


def test_the_library_never_imports_a_command():
  edges = import_graph.summary(REPO)["library_to_command"]
  assert edges == [], "library -> command imports (python tests/import_graph.py):\n" + "\n".join(
      f"{a} -> {b}" for a, b in edges)


# --- Commands and paths the project names ---------------------------------------------------------


def _module_file(dotted: str) -> pathlib.Path | None:
  base = REPO / dotted.replace(".", "/")
  for path in (base.with_suffix(".py"), base / "__init__.py"):
    if path.exists():
      return path
  return None


def _top_level_names(path: pathlib.Path) -> set[str]:
  names = set()
  for node in ast.parse(path.read_text()).body:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
      names.add(node.name)
    elif isinstance(node, ast.Assign):
      names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    elif isinstance(node, (ast.Import, ast.ImportFrom)):
      names |= {(a.asname or a.name).split(".")[0] for a in node.names}
  return names


def test_every_console_script_names_a_function_that_exists():
  scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
  assert scripts
  bad = []
  for name, target in scripts.items():
    module, _, func = target.partition(":")
    path = _module_file(module)
    if path is None:
      bad.append(f"{name} = {target}: no module {module}")
    elif func not in _top_level_names(path):
      bad.append(f"{name} = {target}: {path.relative_to(REPO)} defines no {func}")
  assert bad == [], "\n".join(bad)


def _docs() -> list[pathlib.Path]:
  return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def test_every_documented_python_m_command_resolves():
  named = {m for doc in _docs()
           for m in re.findall(r"-m\s+(lima_jax(?:\.[a-z_]\w*)*)(?!\w|\.\w)",
                                         doc.read_text())}
  assert "lima_jax.main" in named
  bad = []
  for dotted in sorted(named):
    base = REPO / dotted.replace(".", "/")
    path = base if base.is_dir() else base.with_suffix(".py")
    if not path.exists():
      bad.append(f"python -m {dotted}: no such module")
    elif not (dotted in import_graph.COMMANDS or is_command(path)):
      bad.append(f"python -m {dotted}: {path.relative_to(REPO)} has no __main__")
  assert bad == [], "\n".join(bad)


def test_every_path_the_docs_name_exists():
  """Paths into the repository's own folders named in the README and docs/ (globs: a match)."""
  bad = []
  folders = "lima_jax|configs|launch|tests|benchmarks|data"
  for doc in _docs():
    for path in re.findall(rf"(?<![\w./-])((?:{folders})/[\w./*-]*\w/?)", doc.read_text()):
      if not (any(REPO.glob(path)) if "*" in path else (REPO / path).exists()):
        bad.append(f"{doc.relative_to(REPO)}: {path}")
  assert bad == [], "\n".join(bad)


def _anchor(heading: str) -> str:
  """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
  return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_in_the_readme_and_docs_resolves_and_every_page_is_linked():
  bad, linked = [], set()
  for doc in _docs():
    for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
      if re.match(r"[a-z]+:", target):
        continue  # http(s), mailto: not checked here
      file, _, anchor = target.partition("#")
      path = (doc.parent / file).resolve() if file else doc
      if not path.exists():
        bad.append(f"{doc.relative_to(REPO)}: {target} (no such file)")
        continue
      if doc.name == "README.md":
        linked.add(path)
      if anchor and path.suffix == ".md":
        headings = re.findall(r"^#+ (.*)$", path.read_text(), flags=re.M)
        if anchor not in {_anchor(h) for h in headings}:
          bad.append(f"{doc.relative_to(REPO)}: {target} (no such heading)")
  unlinked = sorted(p.name for p in (REPO / "docs").glob("*.md") if p.resolve() not in linked)
  assert bad == [], "\n".join(bad)
  assert unlinked == [], f"docs/ pages the README does not link: {unlinked}"


if __name__ == "__main__":
  if sys.argv[1:] == ["--write"]:
    write_readme()
    print(f"updated {REPO / 'README.md'}")
  elif sys.argv[1:]:
    sys.exit(f"usage: {sys.argv[0]} [--write]")
  else:
    print(room_map())


@pytest.mark.parametrize("script,flag", [("lima-train", "--workdir"), ("lima-data", "--data"),
                                         ("lima-testbed", "--world")])
def test_a_console_script_shows_its_commands_usage_and_flags(script, flag):
  # What `pip install .` puts on PATH calls lima_jax/__main__.py's entry point for it; absl
  # reads the usage and the flags it lists from __main__, which the script must make the command.
  module, func = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"][
      script].split(":")
  code = (f"import sys; sys.argv = [{script!r}, '--help']; "
          f"from {module} import {func}; {func}()")
  r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                     timeout=300)
  out = r.stdout + r.stderr
  assert flag in out and "python -m lima_jax" in out, out[-2000:]
