"""AUROC and precision of a choice against known labels (lima_jax.curate.agreement)."""
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from lima_jax.curate import agreement


def test_auroc_by_hand_with_a_tie():
  # good [1, 2, 3] against bad [0, 0.5, 2], higher better, 9 pairs:
  #   1 beats 0 and 0.5, loses to 2       -> 2
  #   2 beats 0 and 0.5, ties with 2      -> 2.5
  #   3 beats all three                   -> 3
  # (2 + 2.5 + 3) / 9 = 7.5 / 9
  assert agreement.auroc([1, 2, 3], [0, 0.5, 2], higher_is_better=True) == pytest.approx(7.5 / 9)
  # Lower better: the same pairs the other way round, the tie still half: 1.5 / 9.
  assert agreement.auroc([1, 2, 3], [0, 0.5, 2], higher_is_better=False) == pytest.approx(1.5 / 9)
  assert agreement.auroc([5, 6], [1, 2], higher_is_better=True) == 1.0
  assert agreement.auroc([1, 1], [1], higher_is_better=True) == 0.5  # all tied
  assert np.isnan(agreement.auroc([], [1.0], higher_is_better=True))
  with pytest.raises(ValueError, match="finite"):
    agreement.auroc([1.0, float("nan")], [0.0], higher_is_better=True)


def test_auroc_equals_sklearn_on_many_ties():
  rng = np.random.default_rng(0)
  good = rng.integers(0, 6, 40).astype(float)  # few distinct values: ties everywhere
  bad = rng.integers(0, 4, 25).astype(float)
  labels = np.r_[np.ones(40), np.zeros(25)]
  expected = roc_auc_score(labels, np.r_[good, bad])
  assert agreement.auroc(good, bad, higher_is_better=True) == pytest.approx(expected)
  assert agreement.auroc(good, bad, higher_is_better=False) == pytest.approx(1 - expected)


def test_precision_by_label():
  labels = {"a:1": "clean", "a:2": "wrong_fact", "a:3": "clean", "a:4": "truncated"}
  got = agreement.precision_by_label(["a:1", "a:2", "a:3"], labels)
  assert got == {"clean": pytest.approx(2 / 3), "wrong_fact": pytest.approx(1 / 3)}
  assert list(got) == ["clean", "wrong_fact"]  # largest share first
  assert agreement.precision_by_label([], labels) == {}
  with pytest.raises(KeyError, match="a:9"):
    agreement.precision_by_label(["a:1", "a:9"], labels)
