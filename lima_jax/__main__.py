"""`python -m lima_jax`: the commands, one line each; also what the console scripts run.

Each console script (pyproject's [project.scripts]: lima-train, lima-convert, ...) runs its
command exactly as `python -m lima_jax.X` does (runpy, as __main__), so `lima-train --help`
shows that command's own usage and flags: absl reads both from __main__.
"""
import runpy
import sys

# Console script -> the command it runs; `python -m lima_jax` lists them.
COMMANDS = {
    "lima-train": "lima_jax.main",
    "lima-convert": "lima_jax.convert",
    "lima-generate": "lima_jax.generate",
    "lima-select": "lima_jax.select",
    "lima-data": "lima_jax.data",
    "lima-plan": "lima_jax.plan",
    "lima-curate": "lima_jax.curate",
    "lima-eval": "lima_jax.eval",
    "lima-serve": "lima_jax.serve",
    "lima-experiment": "lima_jax.experiment",
    "lima-testbed": "lima_jax.testbed",
}


def _run(script: str) -> None:
  runpy.run_module(COMMANDS[script], run_name="__main__", alter_sys=True)


# The console scripts' entry points, one per command (a script passes no argument).
def train() -> None:
  _run("lima-train")


def convert() -> None:
  _run("lima-convert")


def generate() -> None:
  _run("lima-generate")


def select() -> None:
  _run("lima-select")


def data() -> None:
  _run("lima-data")


def plan() -> None:
  _run("lima-plan")


def curate() -> None:
  _run("lima-curate")


def eval_() -> None:
  _run("lima-eval")


def serve() -> None:
  _run("lima-serve")


def experiment() -> None:
  _run("lima-experiment")


def testbed() -> None:
  _run("lima-testbed")


def main() -> None:
  if len(sys.argv) > 1:
    sys.exit("usage: python -m lima_jax (lists the commands; run one with its own --help)")
  for script, module in COMMANDS.items():
    print(f"{script:16s} python -m {module:22s} {_first_line(module)}")


def _first_line(module: str) -> str:
  """The first line of a command's docstring, read without importing it (imports cost seconds)."""
  import ast
  import importlib.util
  spec = importlib.util.find_spec(module)
  package = spec.submodule_search_locations
  path = f"{package[0]}/__main__.py" if package else spec.origin
  with open(path, encoding="utf-8") as f:
    doc = ast.get_docstring(ast.parse(f.read())) or ""
  return doc.strip().splitlines()[0] if doc.strip() else ""


if __name__ == "__main__":
  main()
