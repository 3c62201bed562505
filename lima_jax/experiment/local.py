"""Running a study's steps: readying one and recording its outcome in the manifest (`begin`,
`finish`, what both executors do), the environment and log of its command, the scripted judge
started for a run, and the local runner, which runs every step here, one after another (the
steps themselves: study.py; on Ray: ray_executor.py)."""
import contextlib
import os
import pathlib
import shutil
import subprocess
import sys
import time

from lima_jax.errors import UserError
from lima_jax.experiment import study
from lima_jax.experiment.manifest import Manifest, Step, hashed_command
from lima_jax.parallel import host_memory


def log_path(workdir: pathlib.Path, key: str) -> pathlib.Path:
  return workdir / "logs" / (key.replace("/", "__") + ".log")


def begin(step: Step, manifest: Manifest, workdir: pathlib.Path, label: str):
  """Readies one step to run: None when it is done (its record brought up to today's
  identities); else moves a stale output aside, records it running and returns its log."""
  state, digests = manifest.state(step)
  if state == "done":
    rec = manifest.steps[step.key]
    if any(rec.get(identity) != value for identity, value in digests.items()):
      manifest.set(step.key, **digests)  # matched on one identity: the other follows today's
    print(f"{label} {step.key}: done", flush=True)
    return None
  if state == "changed" and step.output.exists():
    old = manifest.steps.get(step.key, {}).get("inputs_sha256") or "unrecorded"
    aside = step.output.with_name(f"{step.output.name}.stale-{old[:8]}")
    shutil.rmtree(aside, ignore_errors=True)
    os.replace(step.output, aside)
    print(f"{label} {step.key}: inputs changed; previous output kept as {aside}", flush=True)
  log = log_path(workdir, step.key)
  log.parent.mkdir(parents=True, exist_ok=True)
  step.output.parent.mkdir(parents=True, exist_ok=True)
  if step.kind == "prepare":  # its {out}, made for it
    step.output.mkdir(exist_ok=True)
  manifest.set(step.key, status="running", **digests, output=str(step.output),
               command=hashed_command(step.command), log=str(log), kind=step.kind,
               arm=step.arm, seed=step.seed, epoch=step.epoch, protocol=step.protocol,
               study=manifest.study)
  print(f"{label} {step.key}: {'resuming' if state == 'resume' else 'running'} "
        f"(log: {log})", flush=True)
  return log


def finish(step: Step, manifest: Manifest, code: int, seconds: float, **record) -> None:
  """Records a run's outcome (`record`: more fields, as an executor's attempts)."""
  if code:
    manifest.set(step.key, status="failed", returncode=code, seconds=seconds, **record)
  else:
    manifest.set(step.key, status="done", returncode=0, seconds=seconds,
                 finished=time.strftime("%Y-%m-%dT%H:%M:%S"), **record)


def log_tail(log: pathlib.Path, lines: int = 15) -> list[str]:
  try:
    return log.read_text(errors="replace").strip().splitlines()[-lines:]
  except OSError:
    return []


def step_env(base: dict[str, str]) -> dict[str, str]:
  """The environment a step's command runs in."""
  return host_memory.with_huge_pages({**base, "PYTHONUNBUFFERED": "1"})


def execute(step: Step, manifest: Manifest, workdir: pathlib.Path, label: str) -> None:
  """Runs one step unless done; moves a stale output aside first; records the outcome."""
  log = begin(step, manifest, workdir, label)
  if log is None:
    return
  t0 = time.perf_counter()
  with open(log, "ab") as out:
    code = subprocess.run(step.command, stdout=out, stderr=subprocess.STDOUT,
                          env=step_env(dict(os.environ))).returncode
  seconds = round(time.perf_counter() - t0, 1)
  finish(step, manifest, code, seconds)
  if code:
    print("\n".join("    " + line for line in log_tail(log)), file=sys.stderr)
    raise UserError(f"{step.key} failed (exit {code}) after {seconds} s; full log: {log}; "
                    "fix it and rerun: finished steps are kept")
  print(f"{label} {step.key}: done in {seconds} s", flush=True)


@contextlib.contextmanager
def judge_for_run(c):
  """The study config to run with: when its protocols need a judge and it asks for the
  scripted one, that judge started on 127.0.0.1 for the run and named in judge.base_url."""
  needs_judge = any(p != "judge_free" for p in c.protocols)
  if needs_judge and c.judge.scripted:
    from lima_jax.eval.scripted_judge import Server
    with Server() as server:
      c = c.copy_and_resolve_references()
      c.judge.base_url = server.url
      yield c
    return
  if needs_judge and not c.judge.base_url:
    raise UserError("config judge.base_url: the protocols need a judge (or judge.scripted=True "
                    "for the scripted stand-in)")
  yield c


def run_local(c, workdir: pathlib.Path, arms: list[str], prepare=None) -> None:
  """Runs the prepare steps (all of them unless given), then the arms, here."""
  manifest = Manifest(workdir, c.name)
  if prepare is None:
    prepare = study.prepare_steps(c, workdir)
  with judge_for_run(c) as c:
    for i, step in enumerate(prepare, 1):
      execute(step, manifest, workdir, f"[prepare {i}/{len(prepare)}]")
    for i, arm in enumerate(arms, 1):
      label = f"[arm {i}/{len(arms)}]"
      for step in study.before_training(c, workdir, arm):
        execute(step, manifest, workdir, label)
      for seed in c.arms[arm].seeds:
        for step in study.after_training(c, workdir, arm, seed):
          execute(step, manifest, workdir, label)
