"""Interval code against closed forms and reference computations; coverage on simulated judges.
"""
import math

import numpy as np
import pytest

from lima_jax.eval import stats

Z = 1.959963984540054


@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (8, 10), (43, 300), (300, 300), (1, 7)])
def test_wilson_bounds_solve_the_score_equation(k, n):
  # Wilson's interval is {p : |k/n - p| <= z sqrt(p(1-p)/n)}: its ends solve it with equality.
  lo, hi = stats.wilson(k, n)
  for p in (lo, hi):
    if 0 < p < 1:
      assert abs(k / n - p) == pytest.approx(Z * math.sqrt(p * (1 - p) / n), rel=1e-9)
  assert lo <= k / n <= hi
  assert (lo == 0) == (k == 0) and (hi == 1) == (k == n)


def test_wilson_published_value():
  # Newcombe (1998), Table I, 81/263: 0.2553 to 0.3662 (Wilson score, no continuity).
  lo, hi = stats.wilson(81, 263)
  assert (round(lo, 4), round(hi, 4)) == (0.2553, 0.3662)


def test_cluster_bootstrap_matches_the_cluster_standard_error():
  rng = np.random.default_rng(1)
  n, k = 300, 5
  level = rng.normal(0, 1, n)  # A prompt's grades share its level: strongly correlated.
  values = [list(level[i] + rng.normal(0, 0.3, k)) for i in range(n)]
  lo, hi = stats.cluster_bootstrap(values, rounds=4000, seed=0)
  means = np.array([np.mean(v) for v in values])
  se = means.std(ddof=1) / math.sqrt(n)
  assert hi - lo == pytest.approx(2 * Z * se, rel=0.1)
  assert lo < means.mean() < hi
  # Counting the 1,500 grades as independent would give an interval ~sqrt(k) narrower.
  flat = np.concatenate(values)
  assert (hi - lo) > 1.8 * (2 * Z * flat.std(ddof=1) / math.sqrt(flat.size))


def test_rate_ci_uses_wilson_for_one_value_a_prompt():
  values = [[1.0]] * 30 + [[0.0]] * 70
  ci, method = stats.rate_ci(values, 100, 0)
  assert method == "wilson" and ci == pytest.approx(stats.wilson(30, 100))
  ci, method = stats.rate_ci([[1.0, 0.0]] * 50, 500, 0)
  assert method == "cluster_bootstrap" and ci == pytest.approx([0.5, 0.5])


def test_paired_bootstrap_against_the_normal_approximation():
  rng = np.random.default_rng(2)
  keys = [f"p{i}" for i in range(400)]
  a = {k: float(rng.random() < 0.6) for k in keys}
  b = {k: float(rng.random() < 0.5) for k in keys}
  res = stats.paired_bootstrap(a, b, rounds=4000, seed=0)
  d = np.array([a[k] - b[k] for k in keys])
  assert res["diff"] == pytest.approx(d.mean())
  se = d.std(ddof=1) / math.sqrt(len(d))
  assert res["diff_ci95"] == pytest.approx([d.mean() - Z * se, d.mean() + Z * se], abs=0.01)
  assert res["p_value"] < 0.05 or abs(d.mean()) < 2 * se
  only_a = stats.paired_bootstrap({"x": 1.0}, {"y": 0.0})
  assert only_a["n_prompts"] == 0


def _length_gamed(n, rng, length_effect, quality):
  """Soft preferences of a judge that adds `length_effect` (logit) per sd of length gap."""
  pref, dlen = [], []
  for _ in range(n):
    d = rng.normal(0, 400)
    p = 1 / (1 + np.exp(-(quality + length_effect * np.tanh(d / 400) + rng.normal(0, 0.3))))
    pref.append([p, p])  # Both orders of one pair.
    dlen.append([d, d])
  return pref, dlen


def test_length_controlled_removes_a_length_preference():
  rng = np.random.default_rng(3)
  # Equal quality, but the system's answers are longer on most prompts and the judge likes
  # length: the raw rate is well above 1/2; read at zero length gap it is near 1/2 again.
  gaps = np.abs(rng.normal(0, 400, 300)) * np.where(rng.random(300) < 0.85, 1, -1)
  dlen = [[d, d] for d in gaps]
  pref = [[1 / (1 + np.exp(-2.0 * np.tanh(d / 400)))] * 2 for d in gaps]
  raw = np.mean([p[0] for p in pref])
  lc = stats.length_controlled(pref, dlen, rounds=50)
  assert raw > 0.65
  assert lc["lc_win_rate"] == pytest.approx(0.5, abs=0.03)
  lo, hi = lc["lc_win_rate_ci95"]
  assert lo <= lc["lc_win_rate"] <= hi
  # Without a length effect LC and the raw rate agree.
  pref, dlen = _length_gamed(300, np.random.default_rng(4), length_effect=0.0, quality=0.8)
  lc = stats.length_controlled(pref, dlen, rounds=20)
  assert lc["lc_win_rate"] == pytest.approx(np.mean([p[0] for p in pref]), abs=0.03)


@pytest.mark.slow
def test_coverage_of_the_intervals_on_simulated_judges():
  """Measured: how often the 95% intervals hold the true rate / mean of simulated judges."""
  rng = np.random.default_rng(5)
  sims, n, k = 1000, 100, 5
  true_win = 0.3
  # The truth of the clipped, rounded grades is not exactly 3.5: take it from a huge draw.
  big = 3.5 + rng.normal(0, 0.8, 200_000)
  truth = float(np.clip(np.round(big[:, None] + rng.normal(0, 0.7, (200_000, k))), 1, 6).mean())
  hits_wilson = hits_cluster = hits_paired = 0
  for s in range(sims):
    # Two systems on the same prompts, per-prompt scores correlated through the prompt.
    ease = rng.random(n)
    a = {i: float(rng.random() < 0.3 + 0.4 * ease[i]) for i in range(n)}  # mean 0.5
    b = {i: float(rng.random() < 0.2 + 0.4 * ease[i]) for i in range(n)}  # mean 0.4
    lo, hi = stats.paired_bootstrap(a, b, rounds=500, seed=s)["diff_ci95"]
    hits_paired += lo <= 0.1 <= hi
    wins = rng.random(n) < true_win
    lo, hi = stats.wilson(int(wins.sum()), n)
    hits_wilson += lo <= true_win <= hi
    # k grades a prompt around a prompt level: the mean's truth is the level mean, 3.5.
    level = 3.5 + rng.normal(0, 0.8, n)
    grades = [list(np.clip(np.round(level[i] + rng.normal(0, 0.7, k)), 1, 6)) for i in range(n)]
    lo, hi = stats.cluster_bootstrap(grades, rounds=500, seed=s)
    hits_cluster += lo <= truth <= hi
  cov_w, cov_c, cov_p = hits_wilson / sims, hits_cluster / sims, hits_paired / sims
  print(f"coverage over {sims} simulated judges: Wilson {cov_w:.3f}, cluster bootstrap "
        f"{cov_c:.3f}, paired bootstrap {cov_p:.3f}")
  # Wilson's exact coverage at n=100, p=0.3 (a sum over the binomial) is 0.937, not 0.95:
  # the simulated rate must agree with it to 4 standard errors of 1,000 draws.
  exact = sum(math.comb(n, j) * true_win ** j * (1 - true_win) ** (n - j) for j in range(n + 1)
              if stats.wilson(j, n)[0] <= true_win <= stats.wilson(j, n)[1])
  assert abs(cov_w - exact) <= 4 * math.sqrt(exact * (1 - exact) / sims)
  # Over a grid of true rates Wilson's exact coverage stays near 95% (Brown, Cai, DasGupta).
  grid = [sum(math.comb(n, j) * p ** j * (1 - p) ** (n - j) for j in range(n + 1)
              if stats.wilson(j, n)[0] <= p <= stats.wilson(j, n)[1])
          for p in np.linspace(0.05, 0.95, 19)]
  assert 0.92 <= min(grid) and abs(np.mean(grid) - 0.95) < 0.01
  # 1,000 simulations: a true 95% lands in [0.936, 0.964] 95% of the time; percentile
  # bootstraps on 100 prompts run a little short, so they get a wider band below.
  assert 0.92 <= cov_c <= 0.97
  assert 0.92 <= cov_p <= 0.97

