"""Checkpoint choice by judge: what lima_jax.select calls to name LIMA's best epoch.

Every epoch's answers get a lima_likert grade; then a ladder of lima_pairwise matches: each
epoch meets the best so far and takes its place when it wins more prompts than it loses.
All judgments of all epochs share one store, WORKDIR/judgments.sqlite (a request's key is
its content), so rerunning select re-asks nothing, nor do epochs that answer alike.

How lima_jax.select can call it, after compare_epochs() returned its rows (each prompt row
plus "answers": [{epoch, answer, stopped, ...}]) and with a judge asked for:

  from lima_jax import eval as lima_eval            # imported only then
  per_epoch = {e: [{**{k: v for k, v in r.items() if k != "answers"}, **a}
                   for r in rows for a in r["answers"] if a["epoch"] == e] for e in chosen}
  choice = lima_eval.judge_epochs(per_epoch, out_dir / "judged", eval_config)

eval_config: configs/eval.py:lima_likert (e.g. config_flags.DEFINE_config_file, so every
field can be overridden) with judge.base_url and judge.model set. choice["likert"][e]
("mean", "mean_ci95"), the ladder's wins/ties/losses and win_rate_ci95, and
choice["best_epoch"] go in the page's summary table.
"""
import copy
import pathlib

from lima_jax.eval import answers as answers_lib
from lima_jax.eval import run


def judge_epochs(answers_by_epoch, workdir, config) -> dict:
  """answers_by_epoch: {epoch: an answers file, a list of rows as lima_jax.generate writes
  them (the prompt row plus "answer"), or a list of answers.Answer}, in any order;
  config: configs/eval.py:lima_likert with the judge set. Returns {"likert": {epoch:
  results}, "pairwise": [{"epoch", "against", **results}], "best_epoch", "best_by_likert"}.
  """
  workdir = pathlib.Path(workdir)
  loaded = {e: _answers(a, f"epoch {e}") for e, a in sorted(answers_by_epoch.items())}
  likert_cfg = copy.deepcopy(config)
  with likert_cfg.unlocked():
    likert_cfg.protocol, likert_cfg.answers, likert_cfg.baseline = "lima_likert", "", ""
    likert_cfg.store = likert_cfg.store or str(workdir / "judgments.sqlite")
  pair_cfg = copy.deepcopy(likert_cfg)
  with pair_cfg.unlocked():
    pair_cfg.protocol = "lima_pairwise"
  likert = {}
  for epoch, answers in loaded.items():
    with likert_cfg.unlocked():
      likert_cfg.name = f"epoch {epoch}"
    likert[epoch] = run.evaluate(likert_cfg, workdir / f"likert_epoch{epoch}", answers=answers)
  ladder, best = [], None
  for epoch, answers in loaded.items():
    if best is None:
      best = epoch
      continue
    with pair_cfg.unlocked():
      pair_cfg.name, pair_cfg.baseline_name = f"epoch {epoch}", f"epoch {best}"
    r = run.evaluate(pair_cfg, workdir / f"pairwise_epoch{epoch}_vs_{best}", answers=answers,
                     baseline=loaded[best])
    ladder.append({"epoch": epoch, "against": best, **r})
    if r["wins"] > r["losses"]:
      best = epoch
  graded = {e: r["mean"] for e, r in likert.items() if r.get("mean") is not None}
  return {"likert": likert, "pairwise": ladder, "best_epoch": best,
          "best_by_likert": max(graded, key=graded.get) if graded else None}


def _answers(a, name):
  if isinstance(a, (str, pathlib.Path)):
    return answers_lib.read(a)
  a = list(a)
  return a if a and isinstance(a[0], answers_lib.Answer) else answers_lib.from_rows(a, name)
