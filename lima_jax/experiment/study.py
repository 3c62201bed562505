"""A study's steps: what each one runs, reads and follows.

Prepare steps run first, once a study (prepare.py: they and the `{NAME}` placeholders through
which the arms' fields name them, whose steps then follow them). Each arm is runs (one a
training seed) of: curate (once an arm, when the arm curates) -> train -> answer
(lima_jax.eval's judge_free on a checkpoint, which writes answers.jsonl, over the arm's
prompts: its own `prompts`, else the study's) -> judge (one lima_jax.eval per further
protocol; a pairwise one against the baseline arm's answers of the same prompts). Answer and
judge steps exist per answered epoch, known once training has written its checkpoints, so the
plan grows as it runs. An arm with `model` (a model arm: a converted base, say) trains
nothing: its one answer step and its judge steps answer that checkpoint as it is, known when
the plan is made.

Each step's identity and the manifest that records it: manifest.py; running them here:
local.py, on Ray: ray_executor.py.
"""
import dataclasses
import os
import pathlib
import sys

from lima_jax.errors import UserError
from lima_jax.experiment.manifest import Step
from lima_jax.experiment.prepare import (fill, fill_all, keys, made_later, placeholders,
                                         prepare_steps, prompts_path)

PAIRWISE = ("lima_pairwise", "alpaca_eval")


def _python(module: str, *args: str) -> list[str]:
  return [sys.executable, "-m", module, *args]


def _overrides(items) -> list[str]:
  out = []
  for item in items:
    if "=" not in item:
      raise UserError(f"override {item!r}: expected 'field=value'")
    out.append(f"--config.{item}")
  return out


# --- An arm's fields, and the prepare steps they name ----------------------------------------

@dataclasses.dataclass
class ArmInputs:
  """An arm's fields with their placeholders filled; `after`: the prepare steps they name."""
  data: str
  pool: str
  overrides: tuple[str, ...]
  curate_overrides: tuple[str, ...]
  base_overrides: tuple[str, ...]
  model: str  # a model arm's checkpoint ('' for an arm that trains)
  after: tuple[str, ...]  # named by any field (what --only=ARM needs)
  curate_after: tuple[str, ...]  # named by pool or curate_overrides (the curate step's)
  train_after: tuple[str, ...]  # named by data (uncurated), overrides, base_overrides


def resolve_arm(c, workdir: pathlib.Path, arm: str) -> ArmInputs:
  a, values = c.arms[arm], placeholders(c, workdir)
  data, u1 = fill(a.data or "", values, f"arms.{arm}.data")
  pool, u2 = fill(a.pool or "", values, f"arms.{arm}.pool")
  overrides, u3 = fill_all(values, a.overrides, f"arms.{arm}.overrides")
  curate_overrides, u4 = fill_all(values, a.curate_overrides, f"arms.{arm}.curate_overrides")
  base_overrides, u5 = fill_all(values, c.base_overrides, "base_overrides")
  model, u6 = fill(a.get("model") or "", values, f"arms.{arm}.model")
  if model:  # it does not train: base_overrides are not its
    return ArmInputs(data, pool, overrides, curate_overrides, (), model, keys(u6), (), ())
  return ArmInputs(data, pool, overrides, curate_overrides, base_overrides, "",
                   keys(set(u1) | set(u2) | u3 | u4 | u5), keys(set(u2) | u4),
                   keys((set() if a.curate else set(u1)) | u3 | u5))


def needed_prepare(c, workdir: pathlib.Path, arms: list[str], only: bool) -> list[Step]:
  """The prepare steps to run for these arms: all of them, or with --only those the arms
  (their fields and prompts, and the study's shared fields) name, and the steps those
  follow."""
  steps = prepare_steps(c, workdir)
  if not only:
    return steps
  values = placeholders(c, workdir)
  _, used = fill_all(values, c.base_overrides, "base_overrides")
  _, used_eval = fill_all(values, c.eval_overrides, "eval_overrides")
  want = set(keys(used | used_eval))
  for arm in arms:
    want.update(resolve_arm(c, workdir, arm).after, prompts_path(c, workdir, arm)[1])
  for step in reversed(steps):  # a step follows earlier ones only
    if step.key in want:
      want.update(step.after)
  return [s for s in steps if s.key in want]


# --- An arm's steps ---------------------------------------------------------------------------

def run_dir(workdir: pathlib.Path, arm: str, seed: int) -> pathlib.Path:
  return workdir / "arms" / arm / f"seed{seed}"


def arm_data(c, workdir: pathlib.Path, arm: str) -> list[str]:
  a = c.arms[arm]
  if a.curate:
    return [str(workdir / "arms" / arm / "data.jsonl")]
  data = resolve_arm(c, workdir, arm).data
  if not data:
    raise UserError(f"config arms.{arm}: needs data (training files) or curate (a preset)")
  return data.split(",")


def is_model_arm(c, arm: str) -> bool:
  """An arm whose `model` is a checkpoint answered as it is (a converted base): no training."""
  return bool(c.arms[arm].get("model"))


def before_training(c, workdir: pathlib.Path, arm: str, pending=frozenset()) -> list[Step]:
  """The arm's steps known before any training: its curate step (if any) and one train step
  a seed; for a model arm, its answer and judge steps. `pending`: keys of prepare steps not
  run yet, whose files are not looked for."""
  _check_pairing(c, workdir, arm)
  if is_model_arm(c, arm):
    return model_arm_steps(c, workdir, arm, pending)
  a, steps = c.arms[arm], []
  r = resolve_arm(c, workdir, arm)
  data = arm_data(c, workdir, arm)
  field = "pool" if a.curate else "data"
  for path in (r.pool if a.curate else r.data).split(","):  # the files this arm starts from
    if path and made_later(workdir, path, r.after, pending):
      continue  # a prepare step still to run makes it
    if not path or not os.path.exists(path):
      missing = f"{path} does not exist" if path else "not set"
      raise UserError(f"config arms.{arm}.{field}: {missing}"
                      + (f"; {a.hint}" if a.get("hint") else ""))
  if a.curate:
    if not r.pool or a.n <= 0:
      raise UserError(f"config arms.{arm}: curate={a.curate!r} needs pool and n > 0")
    out = pathlib.Path(data[0])
    steps.append(Step(
        f"{arm}/curate", arm, "curate",
        _python("lima_jax.curate", f"--config=configs/curate.py:{a.curate}",
                f"--config.pool={r.pool}", f"--config.n={a.n}", f"--config.seed={a.curate_seed}",
                *_overrides(r.curate_overrides), f"--out={out}",
                f"--report={out.with_suffix('.html')}",
                f"--scores={out.with_suffix('.scores.jsonl')}"),
        out, files=tuple(r.pool.split(",")), after=r.curate_after))
  base_file = c.base.split(":")[0]
  for seed in a.seeds:
    out = run_dir(workdir, arm, seed) / "train"
    steps.append(Step(
        f"{arm}/seed{seed}/train", arm, "train",
        _python("lima_jax.main", f"--config={c.base}", f"--workdir={out}",
                *_overrides(r.base_overrides), f"--config.data.train_files={','.join(data)}",
                f"--config.seed={seed}", *_overrides(r.overrides)),
        out, files=(base_file,) if a.curate else (base_file, *data),
        after=((f"{arm}/curate",) if a.curate else ()) + r.train_after, seed=seed))
  return steps


def _check_pairing(c, workdir: pathlib.Path, arm: str) -> None:
  """A pairwise protocol judges the arm's answers against the baseline arm's prompt by
  prompt: both must answer the same prompts file (checked when the study is planned)."""
  pairwise = [p for p in c.protocols if p in PAIRWISE]
  base = c.baseline_arm
  if not pairwise or base not in c.arms or base == arm:
    return
  mine, theirs = prompts_path(c, workdir, arm)[0], prompts_path(c, workdir, base)[0]
  if os.path.normpath(mine) != os.path.normpath(theirs):
    field = arm if c.arms[arm].get("prompts") else base
    raise UserError(f"config arms.{field}.prompts: {', '.join(pairwise)} would judge arm {arm} "
                    f"(prompts {mine}) against baseline_arm {base} (prompts {theirs}) prompt "
                    "by prompt; give both the same prompts, or judge without a pairwise "
                    "protocol")


def _epochs(c, train_dir: pathlib.Path) -> dict[int, pathlib.Path]:
  from lima_jax.formats import epoch_checkpoints  # as `select` finds them
  found = epoch_checkpoints.find_epoch_checkpoints(train_dir)
  if not found:
    raise UserError(f"{train_dir}: training finished without an epoch checkpoint")
  spec = "" if c.epochs == "all" else c.epochs
  if not c.epochs:
    return {max(found): pathlib.Path(found[max(found)].path)}
  return {e: pathlib.Path(found[e].path)
          for e in epoch_checkpoints.select_epochs(spec, found, str(train_dir))}


def after_training(c, workdir: pathlib.Path, arm: str, seed: int) -> list[Step]:
  """Answer and judge steps for each answered epoch of a finished training run (none for a
  model arm: its steps are known before training)."""
  if is_model_arm(c, arm):
    return []
  run = run_dir(workdir, arm, seed)
  steps = []
  for epoch, ckpt in sorted(_epochs(c, run / "train").items()):
    steps += _answer_and_judge(c, workdir, arm, f"{arm}/seed{seed}/e{epoch}", run / f"e{epoch}",
                               ckpt, (f"{arm}/seed{seed}/train",), seed, epoch)
  return steps


# A model arm's steps: ARM/base/answer and ARM/base/PROTOCOL, in DIR/arms/ARM/base/; the
# report shows them as epoch 0 (no training), with no seed.
MODEL_EPOCH = 0


def _answer_of(c, workdir: pathlib.Path, arm: str, seed, epoch) -> tuple[str, pathlib.Path]:
  """The key and directory of `arm`'s answer step that another arm's seed and epoch is
  judged against: a model arm has one."""
  if is_model_arm(c, arm):
    return f"{arm}/base/answer", workdir / "arms" / arm / "base" / "answer"
  return (f"{arm}/seed{seed}/e{epoch}/answer",
          run_dir(workdir, arm, seed) / f"e{epoch}" / "answer")


def model_arm_steps(c, workdir: pathlib.Path, arm: str, pending=frozenset()) -> list[Step]:
  """A model arm's answer and judge steps, on its checkpoint as it is: checked here, at plan
  time (a model a pending prepare step makes is not looked for)."""
  a, r = c.arms[arm], resolve_arm(c, workdir, arm)
  field = f"config arms.{arm}.model"
  given = [k for k in ("data", "curate", "pool", "overrides", "curate_overrides") if a.get(k)]
  if given:
    raise UserError(f"{field}: a model arm answers its checkpoint as it is, without training; "
                    f"drop its {', '.join(given)} (or the model, to train)")
  if not made_later(workdir, r.model, r.after, pending) and not os.path.exists(r.model):
    raise UserError(f"{field}: {r.model} does not exist" + (f"; {a.hint}" if a.get("hint")
                                                            else ""))
  if (c.baseline_arm and c.baseline_arm != arm and not is_model_arm(c, c.baseline_arm)
      and any(p in PAIRWISE for p in c.protocols)):
    raise UserError(f"{field}: {', '.join(p for p in c.protocols if p in PAIRWISE)} would "
                    f"judge it against {c.baseline_arm}, which trains (which seed and epoch?); "
                    "make the model arm the baseline_arm, or judge it without a pairwise "
                    "protocol")
  return _answer_and_judge(c, workdir, arm, f"{arm}/base", workdir / "arms" / arm / "base",
                           pathlib.Path(r.model), r.after, None, MODEL_EPOCH)


def _answer_and_judge(c, workdir, arm, base, out, ckpt, after, seed, epoch) -> list[Step]:
  """One checkpoint's answer step (BASE/answer in OUT/answer) and a judge step a further
  protocol (BASE/PROTOCOL); `after`: what the checkpoint comes from."""
  g, steps = c.generate, []
  prompts, prompts_after = prompts_path(c, workdir, arm)
  eval_overrides, used = fill_all(placeholders(c, workdir), c.eval_overrides,
                                   "eval_overrides")
  eval_after = keys(used)
  answers = out / "answer"
  fmt = c.arms[arm].get("format") or ""
  if fmt not in ("", "lima", "chat_template"):
    raise UserError(f"config arms.{arm}.format: {fmt!r} is not 'lima' or 'chat_template' ('': "
                    "the checkpoint's own)")
  steps.append(Step(
      f"{base}/answer", arm, "answer",
      _python("lima_jax.eval", "--config=configs/eval.py:judge_free", f"--workdir={answers}",
              *([f"--format={fmt}"] if fmt else []),
              f"--config.checkpoint={ckpt}", f"--config.prompts={prompts}",
              f"--config.name={arm}", f"--config.generate.samples={c.samples}",
              *(f"--config.generate.{k}={g[k]}" for k in sorted(g.keys())),
              *_overrides(eval_overrides)),
      answers, files=(prompts,), after=(*after, *prompts_after, *eval_after), seed=seed,
      epoch=epoch, protocol="judge_free"))
  for protocol in c.protocols:
    if protocol == "judge_free":
      continue
    extra, judge_after = [], (f"{base}/answer", *eval_after)
    if protocol in PAIRWISE:
      if not c.baseline_arm:
        raise UserError(f"config baseline_arm: {protocol} judges against a baseline arm")
      if arm == c.baseline_arm:
        continue
      other_key, other = _answer_of(c, workdir, c.baseline_arm, seed, epoch)
      extra = [f"--config.baseline={other / 'answers.jsonl'}",
               f"--config.baseline_name={c.baseline_arm}"]
      judge_after += (other_key,)
    steps.append(Step(
        f"{base}/{protocol}", arm, "judge",
        _python("lima_jax.eval", f"--config=configs/eval.py:{protocol}",
                f"--workdir={out / protocol}", f"--config.answers={answers / 'answers.jsonl'}",
                f"--config.name={arm}", *extra, f"--config.judge.base_url={c.judge.base_url}",
                f"--config.judge.model={c.judge.model}",
                f"--config.judge.api_key_env={c.judge.api_key_env}",
                *_overrides(eval_overrides)),
        out / protocol, after=judge_after, seed=seed, epoch=epoch, protocol=protocol))
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
