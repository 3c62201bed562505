r"""Run a study's arms, then compare them.

  python -m lima_jax.experiment run --config=configs/experiments.py:NAME --workdir=DIR \
    [--only=ARM,...] [--dry_run] \
    [--executor=local|ray [--ray_address=auto|HOST:PORT] [--max_retries=N]]
  python -m lima_jax.experiment report --workdir=DIR

`run` prints the plan (each step's state: done, new, resume, changed), then runs what is
missing: here, the prepare steps (once, in order), then arm by arm; on Ray, every step as soon
as the steps it follows are done; rerunning it after a kill, an
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
_EXECUTOR = flags.DEFINE_enum("executor", "local", ["local", "ray"], "run: 'local' runs every "
                              "step here, one after another; 'ray' runs them on a Ray cluster, "
                              "each as soon as the steps it follows are done, placed as the "
                              "config's resources.train and resources.answer say "
                              "(docs/studies.md; pip install -r requirements-ray.txt).")
_RAY_ADDRESS = flags.DEFINE_string("ray_address", None, "run --executor=ray: the cluster, 'auto' "
                                   "(the one this machine belongs to) or HOST:PORT of its head; "
                                   "unset: a Ray started here for the run.")
_MAX_RETRIES = flags.DEFINE_integer("max_retries", 3, "run --executor=ray: how many times a step "
                                    "that lost a host (node gone, process killed) is retried on "
                                    "a fresh placement; a step failing on its own is not.",
                                    lower_bound=0)
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "run: print the plan, every command and the "
                             "judging estimate; run nothing.")
flags.mark_flags_as_required(["workdir"])


def _count_prompts(path: str, field: str) -> int:
  try:
    return sum(1 for line in open(path, encoding="utf-8") if line.strip())
  except OSError as e:
    raise UserError(f"config {field}: {path}: {e.strerror}") from None


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
  paths, made, counts = {}, {}, {}  # arm -> its prompts; path -> prepare steps, or rows
  for arm in arms:
    paths[arm], made_by = study.prompts_path(c, workdir, arm)  # its own, else the study's
    if made_by and not os.path.exists(paths[arm]):  # a prepare step makes it: not counted yet
      made[paths[arm]] = made_by
    elif paths[arm] not in counts:
      counts[paths[arm]] = _count_prompts(
          paths[arm], f"arms.{arm}.prompts" if c.arms[arm].get("prompts") else "prompts")
  # Epochs judged a run: '' the last, 'all' unknown before training (counted once), else the
  # spec's ('5-10' is six).
  from lima_jax.formats import checkpoint
  epochs = (len(checkpoint.parse_epochs(c.epochs, "config epochs"))
            if c.epochs not in ("", "all") else 1)
  units = later = 0  # judge calls; those a prompt of prompts not made yet (counted once)
  pending = {}  # the files not made yet that judged arms answer: their prepare steps
  for arm in arms:
    per_epoch = sum((2 if p in study.PAIRWISE else 1) * c.samples
                    for p in c.protocols if p != "judge_free"
                    and not (p in study.PAIRWISE and arm == c.baseline_arm))
    # A model arm answers once: one checkpoint, no seeds or epochs.
    n = per_epoch * (1 if study.is_model_arm(c, arm) else len(c.arms[arm].seeds) * epochs)
    units += n * counts.get(paths[arm], 1)
    if n and paths[arm] in made:
      later += n
      pending[paths[arm]] = made[paths[arm]]
  if not units:
    return "judging: none (judge_free only: no judge calls)"
  calls = f"{units - later:,} judge calls" if units > later else ""
  if later:
    steps = sorted({k.split("/", 1)[1] for after in pending.values() for k in after})
    calls += (f"{' and ' if calls else ''}{later:,} judge calls a prompt (the prompts, "
              f"{', '.join(pending)}, are made by prepare step {', '.join(steps)}: not counted "
              "yet)")
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
  return (f"judging: {calls}{every}, at most ~{tokens_in / 1e6:.1f}M "
          f"prompt and ~{tokens_out / 1e6:.1f}M completion tokens{cost}")


def _plan(c, workdir: pathlib.Path, arms: list[str], prepare: list, show_commands: bool):
  from lima_jax.experiment import study
  from lima_jax.experiment.manifest import Manifest
  manifest = Manifest(workdir, c.name)
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
    if study.is_model_arm(c, arm):  # it answers its model as it is: every step is above
      continue
    later = [p for p in c.protocols if p != "judge_free"]
    print(f"  then per answered epoch ({c.epochs or 'the last'}): answer (judge_free)"
          + (f", {', '.join(later)}" if later else ""))
  print(_judge_estimate(c, workdir, arms))


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
  ray = _EXECUTOR.value == "ray"
  if not ray and _RAY_ADDRESS.value:
    raise UserError("--ray_address: only with --executor=ray")
  if ray:
    from lima_jax.experiment import placement, ray_executor
    placements = placement.plan(c, workdir, arms, prepare)  # a bad placement stops here
  _plan(c, workdir, arms, prepare, show_commands=_DRY_RUN.value)
  if ray and _DRY_RUN.value:
    print("placements (--executor=ray):")
    print("\n".join("  " + line for line in placements))
  if _DRY_RUN.value:
    return
  workdir.mkdir(parents=True, exist_ok=True)
  files.write_atomic(workdir / "study.json", c.to_json(indent=1) + "\n")
  if ray:
    ray_executor.run_ray(c, workdir, arms, prepare, _RAY_ADDRESS.value, _MAX_RETRIES.value)
  else:
    from lima_jax.experiment import local
    local.run_local(c, workdir, arms, prepare)
  print(f"done: python -m lima_jax.experiment report --workdir={workdir}")


def run():
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
