r"""Run a study's arms, then compare them.

  python -m lima_jax.experiment run --config=configs/experiments.py:NAME --workdir=DIR \
    [--only=ARM,...] [--executor=local|tpu] [--dry_run]
  python -m lima_jax.experiment report --workdir=DIR

`run` prints the plan (each step's state: done, new, resume, changed), then runs what is
missing: the prepare steps (once, in order), then arm by arm; rerunning it after a kill, an
edit or a new arm redoes only what changed. `report` writes DIR/report/index.html, report.json and the figures. Studies and
their fields: configs/experiments.py.
"""
import importlib.util
import os
import pathlib
import shlex

from absl import app, flags, logging
from ml_collections import config_flags

from lima_jax import files
from lima_jax.errors import UserError, cli_main, parse_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Study: configs/experiments.py:NAME (tiny, dropout_epochs, shared_data); "
    "override fields with --config.a.b=value.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Study directory: manifest.json, arms/, logs/, "
                               "report/.")
_ONLY = flags.DEFINE_list("only", [], "run: these arms only (plus the baseline arm when a "
                          "pairwise protocol needs its answers).")
_EXECUTOR = flags.DEFINE_enum("executor", "local", ["local", "tpu"], "run: 'local' runs every "
                              "step here; 'tpu' (with --dry_run) prints each arm's launch/tpu.sh "
                              "commands, one slice per arm.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "run: print the plan, every command and the "
                             "judging estimate; run nothing.")
flags.mark_flags_as_required(["workdir"])


def _count_prompts(path: str) -> int:
  try:
    return sum(1 for line in open(path, encoding="utf-8") if line.strip())
  except OSError as e:
    raise UserError(f"config prompts: {path}: {e.strerror}") from None


def _eval_config():
  """configs/eval.py (its price table), loaded by path as config_flags loads configs."""
  spec = importlib.util.spec_from_file_location("eval_config", "configs/eval.py")
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except OSError:
    raise UserError("configs/eval.py not found: run from the repository root") from None
  return module


def _judge_estimate(c, workdir: pathlib.Path, arms: list[str]) -> str:
  """Calls, and a rough upper bound on tokens and cost, before any answer exists."""
  from lima_jax.experiment import study
  path, made_by = study.prompts_path(c, workdir)
  later = ""  # the prompts file does not exist yet: a prepare step makes it
  if made_by and not os.path.exists(path):
    later = (f" a prompt (the prompts, {path}, are made by prepare step "
             f"{', '.join(k.split('/', 1)[1] for k in made_by)}: not counted yet)")
  prompts = 1 if later else _count_prompts(path)
  # Epochs judged a run: '' the last, 'all' unknown before training (counted once), else the
  # spec's ('5-10' is six).
  from lima_jax.formats import checkpoint
  epochs = (len(checkpoint.parse_epochs(c.epochs, "config epochs"))
            if c.epochs not in ("", "all") else 1)
  units = 0
  for arm in arms:
    per_epoch = sum((2 if p in study.PAIRWISE else 1) * prompts * c.samples
                    for p in c.protocols if p != "judge_free"
                    and not (p in study.PAIRWISE and arm == c.baseline_arm))
    units += per_epoch * len(c.arms[arm].seeds) * epochs
  if not units:
    return "judging: none (judge_free only: no judge calls)"
  # A request holds the judge prompt (~300 tokens), the question and one or two answers at
  # the decoding limit (~4 characters a token); replies are ~200 tokens of reasons.
  answer = min(c.generate.max_new_tokens, 1024)
  tokens_in, tokens_out = units * (300 + 2 * answer), units * 200
  price = {}
  for item in _eval_config().PRICES.split(","):
    name, rate = item.split("=")
    price[name] = tuple(float(x) for x in rate.split("/"))
  cost = ""
  if c.judge.model in price:
    rate_in, rate_out = price[c.judge.model]
    cost = (f", about ${(tokens_in * rate_in + tokens_out * rate_out) / 1e6:,.2f} at "
            f"{c.judge.model}'s list price")
  every = " for every epoch checkpoint (a multiple of this)" if c.epochs == "all" else ""
  return (f"judging: {units:,} judge calls{later}{every}, at most ~{tokens_in / 1e6:.1f}M "
          f"prompt and ~{tokens_out / 1e6:.1f}M completion tokens{cost}")


def _plan(c, workdir: pathlib.Path, arms: list[str], prepare: list, show_commands: bool):
  from lima_jax.experiment import study
  manifest = study.Manifest(workdir)
  # pending: prepare steps that will run; changed: those whose hash will change when they do
  # (a step following one is redone too, though its recorded hash still matches today).
  pending, changed = set(), set()

  def redone(status: str, step) -> str:
    redo = sorted(changed.intersection(step.after))
    return f"{status}, redone after {', '.join(redo)}" if redo and status != "new" else status

  if prepare:
    print("prepare:")
  for step in prepare:
    state = manifest.state(step)[0]
    follows_changed = bool(changed.intersection(step.after))
    if state != "done" or follows_changed:
      pending.add(step.key)
    if state in ("changed", "new") or follows_changed:
      changed.add(step.key)
    print(f"  {step.key:<40} {redone(state, step)}")
    if show_commands:
      print(f"    {shlex.join(step.command)}")
  for arm in arms:
    print(f"arm {arm}:")
    for step in study.before_training(c, workdir, arm, pending=pending):
      # Its own hash needs files that a pending prepare step has yet to write: shown is its
      # recorded status, and the prepare steps it follows that will change under it.
      status = redone(manifest.steps.get(step.key, {}).get("status", "new"), step)
      print(f"  {step.key:<40} {status}")
      if show_commands:
        print(f"    {shlex.join(step.command)}")
    later = [p for p in c.protocols if p != "judge_free"]
    print(f"  then per answered epoch ({c.epochs or 'the last'}): answer (judge_free)"
          + (f", {', '.join(later)}" if later else ""))
  print(_judge_estimate(c, workdir, arms))


def _tpu_commands(c, workdir: pathlib.Path, arms: list[str], prepare: list) -> list[str]:
  """The prepare steps (here), then one slice per arm and seed: create, setup, copy the
  data, train; then answers on the slice and judging here. Printed, not run (the runner does
  not drive TPUs yet)."""
  from lima_jax.experiment import study
  out, t = [shlex.join(step.command) for step in prepare], c.tpu
  study_dir = f"{t.bucket.rstrip('/')}/{c.name}"
  pending = {step.key for step in prepare}
  for arm in arms:
    for step in study.before_training(c, workdir, arm, pending=pending):
      if step.kind == "curate":
        out.append(shlex.join(step.command))
        continue
      name = f"{t.name_prefix}-{arm}-s{step.seed}".lower().replace("_", "-").replace(".", "-")
      tpu = ["launch/tpu.sh", f"--name={name}", f"--zone={t.zone}",
             f"--accelerator-type={t.accelerator_type}"]
      data = study.arm_data(c, workdir, arm)
      remote = [f"../lima_data/{arm}/{os.path.basename(d)}" for d in data]
      gcs = f"{study_dir}/data/{arm}"
      out += [shlex.join(tpu + ["create"]), shlex.join(tpu + ["setup"]),
              shlex.join(["gcloud", "storage", "cp", *data, gcs + "/"]),
              shlex.join(tpu + ["--worker=all", "ssh", "--", "gcloud", "storage", "cp", "-r",
                                gcs, "lima_data/"])]
      args = [a for a in step.command[3:] if not a.startswith(("--config=", "--workdir=",
                                                                "--config.data.train_files="))]
      out.append(shlex.join(tpu + [f"--config={c.base}",
                                   f"--workdir={study_dir}/{arm}/seed{step.seed}/train",
                                   "train", "--", *args,
                                   f"--config.data.train_files={','.join(remote)}"]))
  return out


@cli_main
def main(argv):
  if len(argv) != 2 or argv[1] not in ("run", "report"):
    raise app.UsageError("usage: python -m lima_jax.experiment {run|report} --workdir=DIR "
                         "[--config=configs/experiments.py:NAME]")
  if logging.get_verbosity() == logging.INFO:  # orbax's INFO lines would bury the progress
    logging.set_verbosity(logging.WARNING)
  workdir = pathlib.Path(_WORKDIR.value).absolute()
  if argv[1] == "report":
    from lima_jax.experiment import report
    report.main(workdir)
    return
  c = _CONFIG.value
  if c is None:
    raise UserError("run: needs --config=configs/experiments.py:NAME")
  from lima_jax.experiment import study
  arms = study.arm_order(c, _ONLY.value)
  prepare = study.needed_prepare(c, workdir, arms, only=bool(_ONLY.value))
  if _EXECUTOR.value == "tpu":
    if not _DRY_RUN.value:
      raise UserError("--executor=tpu runs nothing yet: add --dry_run for the launch/tpu.sh "
                      "commands of every arm, and run them yourself")
    print("\n".join(_tpu_commands(c, workdir, arms, prepare)))
    print(_judge_estimate(c, workdir, arms))
    return
  _plan(c, workdir, arms, prepare, show_commands=_DRY_RUN.value)
  if _DRY_RUN.value:
    return
  workdir.mkdir(parents=True, exist_ok=True)
  files.write_atomic(workdir / "study.json", c.to_json(indent=1) + "\n")
  study.run_local(c, workdir, arms, prepare)
  print(f"done: python -m lima_jax.experiment report --workdir={workdir}")


def run():
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
