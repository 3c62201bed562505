"""Prepare steps and their placeholders: what a study runs once before any arm, and how the
other fields name it.

A prepare step (`c.prepare.NAME`: any command, e.g. building a synthetic world or pretraining
a base) writes DIR/prepare/NAME. That directory is the `{NAME}` placeholder of the other
prepare steps' commands and files, of the arms' fields and of the study's shared ones
(`prompts`, `base_overrides`, `eval_overrides`); `{workdir}` is the study's DIR. A step whose
field names `{NAME}` follows prepare step NAME, so `fill` returns the names it used with the
text. The arms' steps: study.py.
"""
import os
import pathlib
import re
import sys

from lima_jax.errors import UserError
from lima_jax.experiment.manifest import Step

_PLACEHOLDER = re.compile(r"\{\{[A-Za-z_][A-Za-z0-9_]*\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
RESERVED = ("out", "workdir")


def prepare_names(c) -> list[str]:
  """The study's prepare step names as the config lists them (checked: usable as
  placeholders)."""
  prep = c.get("prepare") or {}
  names = list(prep.keys())
  for name in names:
    if not _NAME.match(name) or name in RESERVED:
      raise UserError(f"config prepare.{name}: a prepare step's name must be an identifier "
                      f"other than {' and '.join(RESERVED)} (it is the {{NAME}} placeholder)")
  if names and "prepare" in c.arms:
    raise UserError("config arms.prepare: 'prepare' names the prepare steps; rename the arm")
  return names


def prepare_dir(workdir: pathlib.Path, name: str) -> pathlib.Path:
  return workdir / "prepare" / name


def fill(text: str, values: dict[str, str], field: str) -> tuple[str, tuple[str, ...]]:
  """`text` with each {NAME} (an identifier in braces) replaced from `values`; returns it and
  the names it used. Other braces stay as they are ('{"a": 1}', code); {{NAME}} is a literal
  {NAME}. An unknown name is an error naming `field`."""
  used = []

  def one(m):
    if m.group(1) is None:
      return m.group(0)[1:-1]
    name = m.group(1)
    if name not in values:
      known = ", ".join(f"{{{k}}}" for k in values) or "none"
      raise UserError(f"config {field}: unknown placeholder {{{name}}} in {text!r} (known "
                      f"here: {known})")
    used.append(name)
    return values[name]
  return _PLACEHOLDER.sub(one, text), tuple(dict.fromkeys(used))


def placeholders(c, workdir: pathlib.Path) -> dict[str, str]:
  """What arms' fields may name: every prepare step's directory, and {workdir}."""
  return {"workdir": str(workdir),
          **{n: str(prepare_dir(workdir, n)) for n in prepare_names(c)}}


def fill_all(values, items, field: str) -> tuple[tuple[str, ...], set[str]]:
  """`fill` of each item; FIELD[i] names the item in an error."""
  out, used = [], set()
  for i, item in enumerate(items):
    text, names = fill(item, values, f"{field}[{i}]")
    out.append(text)
    used.update(names)
  return tuple(out), used


def keys(names) -> tuple[str, ...]:
  """The step keys of the prepare steps named ({workdir} is none)."""
  return tuple(f"prepare/{n}" for n in sorted(names) if n != "workdir")


def made_later(workdir: pathlib.Path, path: str, after, pending) -> bool:
  """Whether `path` lies in the directory of a prepare step it follows (`after`) that has not
  run yet (`pending`): a file not to look for now."""
  dirs = [str(prepare_dir(workdir, k.split("/", 1)[1])) for k in after if k in pending]
  return any(path == d or path.startswith(d + os.sep) for d in dirs)


def prompts_path(c, workdir: pathlib.Path, arm: str = "") -> tuple[str, tuple[str, ...]]:
  """The prompts an arm's answer steps answer (its own `prompts`, else the study's) with their
  placeholders filled, and the prepare steps they name; no arm: the study's."""
  own = c.arms[arm].get("prompts") if arm else ""
  text, used = fill(own or c.prompts, placeholders(c, workdir),
                    f"arms.{arm}.prompts" if own else "prompts")
  return text, keys(used)


def prepare_steps(c, workdir: pathlib.Path) -> list[Step]:
  """Every prepare step, each after the steps it follows (else in the config's order). In
  its command and files {out} is the step's own directory, {NAME} another step's (which it
  then follows, as it does those in `after`), {workdir} the study's. A command starting
  with 'python' runs under this interpreter."""
  names = prepare_names(c)
  values = placeholders(c, workdir)
  steps = {}
  for name in names:
    p, field = c.prepare[name], f"prepare.{name}"
    out = prepare_dir(workdir, name)
    others = {k: v for k, v in values.items() if k != name}
    command = list(p.get("command") or ())
    if not command or not all(isinstance(a, str) for a in command):
      raise UserError(f"config {field}.command: needs the command as a tuple of strings")
    command, used = fill_all({**others, "out": str(out)}, command, f"{field}.command")
    files_, used_f = fill_all(others, tuple(p.get("files") or ()), f"{field}.files")
    after = (set(used) | used_f) - {"out", "workdir"}
    for other in p.get("after") or ():
      if other not in names or other == name:
        raise UserError(f"config {field}.after: {other!r} is not another prepare step "
                        f"({', '.join(n for n in names if n != name) or 'none'})")
      after.add(other)
    command = list(command)
    if command[0] in ("python", "python3"):
      command[0] = sys.executable
    steps[name] = Step(f"prepare/{name}", "", "prepare", command, out, files=files_,
                       after=keys(after))
  ordered, placed = [], set()
  while len(ordered) < len(names):  # the first step whose steps are all placed, each time
    ready = [n for n in names if n not in placed
             and all(k.split("/", 1)[1] in placed for k in steps[n].after)]
    if not ready:
      raise UserError("config prepare: steps that follow each other in a circle (or follow "
                      "one that does): " + ", ".join(n for n in names if n not in placed))
    ordered.append(steps[ready[0]])
    placed.add(ready[0])
  return ordered
