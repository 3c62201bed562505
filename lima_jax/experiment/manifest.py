"""A study's steps and the manifest that records them.

A step's identity is the sha256 of its inputs: its command (the judge's URL left out: the
judge is its model), the content of the files it reads, and the hashes of the steps it
follows. Each step records two such hashes, which differ only in how a Python source among its
files is read: `inputs_sha256` hashes its bytes, `source_sha256` its syntax tree without
docstrings (so a comment, docstring or layout edit is no change). A step is done when either
matches, and both are then brought up to date: a docstring edit does not rerun a study, nor
does a new Python version whose syntax trees print differently, and manifests written before
`source_sha256` existed still match on their bytes. DIR/manifest.json maps step keys to
{status, inputs_sha256, source_sha256, output, ...}; it is rewritten atomically after every
change, so a killed run leaves it consistent.
"""
import ast
import dataclasses
import hashlib
import json
import pathlib

from lima_jax import files
from lima_jax.errors import UserError


@dataclasses.dataclass
class Step:
  key: str  # 'prepare/NAME', 'ARM/curate', 'ARM/seedS/train', 'ARM/seedS/eE/answer',
  #            'ARM/seedS/eE/PROTOCOL'
  arm: str  # '' for prepare steps
  kind: str  # prepare | curate | train | answer | judge
  command: list[str]
  output: pathlib.Path  # What the step writes (a directory, or the curated file).
  files: tuple[str, ...] = ()  # Inputs hashed by content.
  after: tuple[str, ...] = ()  # Keys of the steps whose outputs it reads.
  seed: int | None = None
  epoch: int | None = None
  protocol: str = ""


# The two identities a step records (module docstring): how each one reads a file.
IDENTITIES = ("inputs_sha256", "source_sha256")


def _file_digests(path: str) -> dict[str, str]:
  """Both identities of one file, read once: its bytes' sha256, and for source_sha256 a
  Python file's syntax tree without docstrings (comments and layout never reach the tree), or
  its bytes if it does not parse."""
  h = hashlib.sha256()
  try:
    with open(path, "rb") as f:
      if path.endswith(".py"):
        data = f.read()
        h.update(data)
        try:
          tree = "py:" + hashlib.sha256(_code_only(ast.parse(data)).encode()).hexdigest()
        except (SyntaxError, ValueError):
          tree = h.hexdigest()
        return {"inputs_sha256": h.hexdigest(), "source_sha256": tree}
      for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
  except OSError as e:
    raise UserError(f"{path}: cannot read ({e.strerror})") from None
  return dict.fromkeys(IDENTITIES, h.hexdigest())


def _code_only(tree: ast.Module) -> str:
  """ast.dump of the tree with every module, class and function docstring removed."""
  for node in ast.walk(tree):
    if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
      first = node.body[0] if node.body else None
      if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
          and isinstance(first.value.value, str)):
        node.body = node.body[1:] or [ast.Pass()]
  return ast.dump(tree)


def hashed_command(command: list[str]) -> list[str]:
  return [a for a in command if not a.startswith("--config.judge.base_url=")]


class Manifest:
  """DIR/manifest.json: {"steps": {key: record}}; every change is written at once."""

  def __init__(self, workdir: pathlib.Path, study: str = ""):
    self.study = study  # the study running now: recorded with each step it begins
    self.path = workdir / "manifest.json"
    self.steps: dict[str, dict] = {}
    if self.path.exists():
      try:
        self.steps = json.loads(self.path.read_text())["steps"]
      except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise UserError(f"{self.path}: not a study manifest ({e})") from None

  def digests(self, step: Step) -> dict[str, str]:
    """The step's identities (IDENTITIES), each file read once; the steps it follows count by
    the same identity."""
    files_ = {f: _file_digests(f) for f in step.files}
    out = {}
    for identity in IDENTITIES:
      parts = {"command": hashed_command(step.command),
               "files": {f: d[identity] for f, d in files_.items()},
               "after": {k: self.steps.get(k, {}).get(identity) for k in step.after}}
      out[identity] = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
    return out

  def digest(self, step: Step, identity: str = "inputs_sha256") -> str:
    return self.digests(step)[identity]

  def set(self, key: str, **record) -> None:
    self.steps[key] = {**self.steps.get(key, {}), **record}
    files.write_atomic(self.path, json.dumps({"steps": self.steps}, indent=1, sort_keys=True)
                       + "\n")

  def state(self, step: Step) -> tuple[str, dict[str, str]]:
    """('done' | 'changed' | 'resume' | 'new', today's digests): unchanged when either
    recorded identity matches today's."""
    digests, rec = self.digests(step), self.steps.get(step.key)
    if rec is None:
      return ("changed" if step.output.exists() else "new"), digests
    if not any(rec.get(identity) == digests[identity] for identity in IDENTITIES):
      by = rec.get("study")
      if by and self.study and by != self.study:
        raise UserError(self._clash(step, rec, by))
      return "changed", digests
    return ("done" if rec.get("status") == "done" else "resume"), digests

  def _clash(self, step: Step, rec: dict, by: str) -> str:
    """Two studies sharing a DIR give one step other inputs: rerunning it for one would
    overwrite the other's result, and each would redo it for ever."""
    old, new = rec.get("command", []), hashed_command(step.command)
    differ = [a for a in new if a not in old] + [a for a in old if a not in new]
    what = f"; its command differs in {', '.join(differ[:2])}" if differ else (
        "; a file it reads or a step it follows differs")
    return (f"{step.key}: study {by} made this step with other inputs{what}. Running it for "
            f"{self.study} would overwrite {by}'s result: give the arm another name in "
            f"{self.study}, or use another --workdir")
