"""How well a selector's scores agree with known labels (planted noise, a study's ground truth).

  auroc               the chance that a random good row scores better than a random bad one
                      (Mann-Whitney U / (n_good x n_bad), a tie counting half): 1 separates
                      them perfectly, 0.5 is chance, whatever the scores' scale.
  precision_by_label  of the chosen rows, the share carrying each label (e.g. 'clean',
                      'wrong_fact', 'truncated'): the precision of a choice is its 'clean' share.

Pure numpy, no model: a study reads `--scores` lines and its planted labels by origin.
"""
from typing import Iterable, Mapping, Sequence

import numpy as np


def auroc(scores_good: Sequence[float], scores_bad: Sequence[float], *,
          higher_is_better: bool) -> float:
  """P(good scores better than bad) + P(tie) / 2; NaN when either side is empty.

  higher_is_better: True for ifd and influence, False for loss and consistency (the
  selector keeps the lowest). A score must be finite: where a row has none (null in
  `--scores`), the caller decides whether it counts as the worst or not at all.
  """
  good = np.asarray(scores_good, np.float64)
  bad = np.asarray(scores_bad, np.float64)
  if not (np.isfinite(good).all() and np.isfinite(bad).all()):
    raise ValueError("auroc: scores must be finite (drop or replace the unscored rows)")
  if not len(good) or not len(bad):
    return float("nan")
  if not higher_is_better:
    good, bad = -good, -bad
  # Ranks of all scores together, ties given their average rank: then the good rows' rank
  # sum less its minimum is U, the count of (good, bad) pairs the good row wins (ties half).
  both = np.concatenate([good, bad])
  order = np.argsort(both, kind="stable")
  ranks = np.empty(len(both))
  ranks[order] = np.arange(1, len(both) + 1)
  _, inverse = np.unique(both, return_inverse=True)
  for v in np.flatnonzero(np.bincount(inverse) > 1):
    tied = inverse == v
    ranks[tied] = ranks[tied].mean()
  u = ranks[:len(good)].sum() - len(good) * (len(good) + 1) / 2
  return float(u / (len(good) * len(bad)))


def precision_by_label(chosen_origins: Iterable[str],
                       labels_by_origin: Mapping[str, str]) -> dict[str, float]:
  """{label: share of the chosen rows with it}, largest first; an origin without a label is
  an error (a study's labels must cover its pool)."""
  chosen = list(chosen_origins)
  if not chosen:
    return {}
  missing = [o for o in chosen if o not in labels_by_origin]
  if missing:
    raise KeyError(f"{len(missing)} chosen origins have no label, e.g. {missing[0]!r}")
  labels, counts = np.unique([labels_by_origin[o] for o in chosen], return_counts=True)
  order = np.lexsort((labels, -counts))
  return {str(labels[i]): float(counts[i] / len(chosen)) for i in order}
