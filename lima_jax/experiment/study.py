"""A study's steps, the manifest that records them, and the local runner.

Each arm is runs (one a training seed) of: curate (once an arm, when the arm curates) ->
train -> answer (lima_jax.eval's judge_free on a checkpoint, which writes answers.jsonl) ->
judge (one lima_jax.eval per further protocol). Answer and judge steps exist per answered
epoch, known once training has written its checkpoints, so the plan grows as it runs.

A step's identity is the sha256 of its inputs: its command (the judge's URL left out: the
judge is its model), the content of the files it reads, and the hashes of the steps it
follows. DIR/manifest.json maps step keys to {status, inputs_sha256, output, ...}; it is
rewritten atomically after every change, so a killed run leaves it consistent.
"""
import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

from lima_jax import files
from lima_jax.errors import UserError

PAIRWISE = ("lima_pairwise", "alpaca_eval")


@dataclasses.dataclass
class Step:
  key: str  # 'ARM/curate', 'ARM/seedS/train', 'ARM/seedS/eE/answer', 'ARM/seedS/eE/PROTOCOL'
  arm: str
  kind: str  # curate | train | answer | judge
  command: list[str]
  output: pathlib.Path  # What the step writes (a directory, or the curated file).
  files: tuple[str, ...] = ()  # Inputs hashed by content.
  after: tuple[str, ...] = ()  # Keys of the steps whose outputs it reads.
  seed: int | None = None
  epoch: int | None = None
  protocol: str = ""


def _sha256_file(path: str) -> str:
  h = hashlib.sha256()
  try:
    with open(path, "rb") as f:
      for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
  except OSError as e:
    raise UserError(f"{path}: cannot read ({e.strerror})") from None
  return h.hexdigest()


def _hashed_command(command: list[str]) -> list[str]:
  return [a for a in command if not a.startswith("--config.judge.base_url=")]


class Manifest:
  """DIR/manifest.json: {"steps": {key: record}}; every change is written at once."""

  def __init__(self, workdir: pathlib.Path):
    self.path = workdir / "manifest.json"
    self.steps: dict[str, dict] = {}
    if self.path.exists():
      try:
        self.steps = json.loads(self.path.read_text())["steps"]
      except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise UserError(f"{self.path}: not a study manifest ({e})") from None

  def digest(self, step: Step) -> str:
    parts = {"command": _hashed_command(step.command),
             "files": {f: _sha256_file(f) for f in step.files},
             "after": {k: self.steps.get(k, {}).get("inputs_sha256") for k in step.after}}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()

  def set(self, key: str, **record) -> None:
    self.steps[key] = {**self.steps.get(key, {}), **record}
    files.write_atomic(self.path, json.dumps({"steps": self.steps}, indent=1, sort_keys=True)
                       + "\n")

  def state(self, step: Step) -> tuple[str, str]:
    """('done' | 'changed' | 'resume' | 'new', digest)."""
    digest, rec = self.digest(step), self.steps.get(step.key)
    if rec is None:
      return ("changed" if step.output.exists() else "new"), digest
    if rec.get("inputs_sha256") != digest:
      return "changed", digest
    return ("done" if rec.get("status") == "done" else "resume"), digest


def _python(module: str, *args: str) -> list[str]:
  return [sys.executable, "-m", module, *args]


def _overrides(items) -> list[str]:
  out = []
  for item in items:
    if "=" not in item:
      raise UserError(f"override {item!r}: expected 'field=value'")
    out.append(f"--config.{item}")
  return out


def run_dir(workdir: pathlib.Path, arm: str, seed: int) -> pathlib.Path:
  return workdir / "arms" / arm / f"seed{seed}"


def arm_data(c, workdir: pathlib.Path, arm: str) -> list[str]:
  a = c.arms[arm]
  if a.curate:
    return [str(workdir / "arms" / arm / "data.jsonl")]
  if not a.data:
    raise UserError(f"config arms.{arm}: needs data (training files) or curate (a preset)")
  return a.data.split(",")


def before_training(c, workdir: pathlib.Path, arm: str) -> list[Step]:
  """The arm's curate step (if any) and one train step a seed."""
  a, steps = c.arms[arm], []
  data = arm_data(c, workdir, arm)
  field = "pool" if a.curate else "data"
  for path in (a[field] or "").split(","):  # the files this arm starts from, before any work
    if not path or not os.path.exists(path):
      missing = f"{path} does not exist" if path else "not set"
      raise UserError(f"config arms.{arm}.{field}: {missing}"
                      + (f"; {a.hint}" if a.get("hint") else ""))
  if a.curate:
    if not a.pool or a.n <= 0:
      raise UserError(f"config arms.{arm}: curate={a.curate!r} needs pool and n > 0")
    out = pathlib.Path(data[0])
    steps.append(Step(
        f"{arm}/curate", arm, "curate",
        _python("lima_jax.curate", f"--config=configs/curate.py:{a.curate}",
                f"--config.pool={a.pool}", f"--config.n={a.n}", f"--config.seed={a.curate_seed}",
                *_overrides(a.curate_overrides), f"--out={out}",
                f"--report={out.with_suffix('.html')}"),
        out, files=tuple(a.pool.split(","))))
  base_file = c.base.split(":")[0]
  for seed in a.seeds:
    out = run_dir(workdir, arm, seed) / "train"
    steps.append(Step(
        f"{arm}/seed{seed}/train", arm, "train",
        _python("lima_jax.main", f"--config={c.base}", f"--workdir={out}",
                *_overrides(c.base_overrides), f"--config.data.train_files={','.join(data)}",
                f"--config.seed={seed}", *_overrides(a.overrides)),
        out, files=(base_file,) if a.curate else (base_file, *data),
        after=(f"{arm}/curate",) if a.curate else (), seed=seed))
  return steps


def _epochs(c, train_dir: pathlib.Path) -> dict[int, pathlib.Path]:
  from lima_jax import select  # the epoch-end checkpoints, as `select` finds them
  found = select.find_epoch_checkpoints(train_dir)
  if not found:
    raise UserError(f"{train_dir}: training finished without an epoch checkpoint")
  spec = "" if c.epochs == "all" else c.epochs
  if not c.epochs:
    return {max(found): pathlib.Path(found[max(found)].path)}
  return {e: pathlib.Path(found[e].path)
          for e in select.parse_epochs(spec, found, str(train_dir))}


def after_training(c, workdir: pathlib.Path, arm: str, seed: int) -> list[Step]:
  """Answer and judge steps for each answered epoch of a finished training run."""
  run, steps, g = run_dir(workdir, arm, seed), [], c.generate
  train_key = f"{arm}/seed{seed}/train"
  for epoch, ckpt in sorted(_epochs(c, run / "train").items()):
    base = f"{arm}/seed{seed}/e{epoch}"
    answers = run / f"e{epoch}" / "answer"
    steps.append(Step(
        f"{base}/answer", arm, "answer",
        _python("lima_jax.eval", "--config=configs/eval.py:judge_free", f"--workdir={answers}",
                f"--config.checkpoint={ckpt}", f"--config.prompts={c.prompts}",
                f"--config.name={arm}", f"--config.generate.samples={c.samples}",
                *(f"--config.generate.{k}={g[k]}" for k in sorted(g.keys())),
                *_overrides(c.eval_overrides)),
        answers, files=(c.prompts,), after=(train_key,), seed=seed, epoch=epoch,
        protocol="judge_free"))
    for protocol in c.protocols:
      if protocol == "judge_free":
        continue
      extra, after = [], (f"{base}/answer",)
      if protocol in PAIRWISE:
        if not c.baseline_arm:
          raise UserError(f"config baseline_arm: {protocol} judges against a baseline arm")
        if arm == c.baseline_arm:
          continue
        other = run_dir(workdir, c.baseline_arm, seed) / f"e{epoch}" / "answer"
        extra = [f"--config.baseline={other / 'answers.jsonl'}",
                 f"--config.baseline_name={c.baseline_arm}"]
        after += (f"{c.baseline_arm}/seed{seed}/e{epoch}/answer",)
      out = run / f"e{epoch}" / protocol
      steps.append(Step(
          f"{base}/{protocol}", arm, "judge",
          _python("lima_jax.eval", f"--config=configs/eval.py:{protocol}", f"--workdir={out}",
                  f"--config.answers={answers / 'answers.jsonl'}", f"--config.name={arm}",
                  *extra, f"--config.judge.base_url={c.judge.base_url}",
                  f"--config.judge.model={c.judge.model}",
                  f"--config.judge.api_key_env={c.judge.api_key_env}",
                  *_overrides(c.eval_overrides)),
          out, after=after, seed=seed, epoch=epoch, protocol=protocol))
  return steps


def arm_order(c, only: list[str]) -> list[str]:
  """Arms to run, the baseline first (the others' pairwise judgments read its answers)."""
  arms = list(c.arms.keys())
  for name in only:
    if name not in arms:
      raise UserError(f"--only: no arm {name!r}; the study has {', '.join(arms)}")
  chosen = [a for a in arms if not only or a in only]
  if c.baseline_arm:
    if c.baseline_arm not in arms:
      raise UserError(f"config baseline_arm: {c.baseline_arm!r} is not an arm "
                      f"({', '.join(arms)})")
    if c.baseline_arm not in chosen and any(p in PAIRWISE for p in c.protocols):
      chosen.insert(0, c.baseline_arm)  # its answers are inputs of the others' judgments
    chosen.sort(key=lambda a: a != c.baseline_arm)
  return chosen


def log_path(workdir: pathlib.Path, key: str) -> pathlib.Path:
  return workdir / "logs" / (key.replace("/", "__") + ".log")


def execute(step: Step, manifest: Manifest, workdir: pathlib.Path, label: str) -> None:
  """Runs one step unless done; moves a stale output aside first; records the outcome."""
  state, digest = manifest.state(step)
  if state == "done":
    print(f"{label} {step.key}: done", flush=True)
    return
  if state == "changed" and step.output.exists():
    old = manifest.steps.get(step.key, {}).get("inputs_sha256") or "unrecorded"
    aside = step.output.with_name(f"{step.output.name}.stale-{old[:8]}")
    shutil.rmtree(aside, ignore_errors=True)
    os.replace(step.output, aside)
    print(f"{label} {step.key}: inputs changed; previous output kept as {aside}", flush=True)
  log = log_path(workdir, step.key)
  log.parent.mkdir(parents=True, exist_ok=True)
  step.output.parent.mkdir(parents=True, exist_ok=True)
  manifest.set(step.key, status="running", inputs_sha256=digest, output=str(step.output),
               command=_hashed_command(step.command), log=str(log), kind=step.kind,
               arm=step.arm, seed=step.seed, epoch=step.epoch, protocol=step.protocol)
  print(f"{label} {step.key}: {'resuming' if state == 'resume' else 'running'} "
        f"(log: {log})", flush=True)
  t0 = time.perf_counter()
  with open(log, "ab") as out:
    code = subprocess.run(step.command, stdout=out, stderr=subprocess.STDOUT,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"}).returncode
  seconds = round(time.perf_counter() - t0, 1)
  if code:
    manifest.set(step.key, status="failed", returncode=code, seconds=seconds)
    tail = log.read_text(errors="replace").strip().splitlines()[-15:]
    print("\n".join("    " + line for line in tail), file=sys.stderr)
    raise UserError(f"{step.key} failed (exit {code}) after {seconds} s; full log: {log}; "
                    "fix it and rerun: finished steps are kept")
  manifest.set(step.key, status="done", returncode=0, seconds=seconds,
               finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
  print(f"{label} {step.key}: done in {seconds} s", flush=True)
