"""Intervals for judged scores: prompts are the unit that is sampled, so they are resampled.

- `wilson`: the score interval of a proportion (one outcome a prompt).
- `cluster_bootstrap`: percentile interval of a mean over prompts when each prompt holds
  several outcomes (LIMA's k samples): whole prompts are drawn, so their samples move
  together and the interval is not narrowed by counting k correlated grades as k prompts.
- `paired_bootstrap`: the difference of two systems judged on the same prompts.
- `length_controlled`: AlpacaEval's idea on any prompt set: a logistic model of the soft
  preference on tanh(normalised length difference) plus a penalised per-prompt term,
  read at zero length difference, with a bootstrap over prompts that refits it.
"""
import math

import numpy as np

Z95 = 1.959963984540054  # Two-sided 95% normal quantile.


def wilson(k: float, n: int, z: float = Z95) -> list[float]:
  if n == 0:
    return [math.nan, math.nan]
  p = k / n
  centre = (p + z * z / (2 * n)) / (1 + z * z / n)
  half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
  # At p = 0 or 1 the bound is exactly 0 or 1 (rounding would leave 1e-19).
  return [0.0 if k <= 0 else centre - half, 1.0 if k >= n else centre + half]


def _clusters(values_by_prompt: list[list[float]]):
  sums = np.array([sum(v) for v in values_by_prompt], float)
  counts = np.array([len(v) for v in values_by_prompt], float)
  return sums, counts


def _draws(n: int, rounds: int, seed: int) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, n, size=(rounds, n))


def cluster_bootstrap(values_by_prompt: list[list[float]], rounds: int = 2000, seed: int = 0
                      ) -> list[float]:
  """95% percentile interval of the mean of all values, drawing whole prompts."""
  values_by_prompt = [v for v in values_by_prompt if v]
  if not values_by_prompt:
    return [math.nan, math.nan]
  sums, counts = _clusters(values_by_prompt)
  idx = _draws(len(sums), rounds, seed)
  means = sums[idx].sum(1) / counts[idx].sum(1)
  return [float(x) for x in np.quantile(means, [0.025, 0.975])]


def rate_ci(values_by_prompt: list[list[float]], rounds: int, seed: int) -> tuple[list, str]:
  """Interval of a rate (values 0/1): Wilson with one value a prompt, else the clustered
  bootstrap. Returns (interval, method)."""
  values_by_prompt = [v for v in values_by_prompt if v]
  if all(len(v) == 1 for v in values_by_prompt):
    return wilson(sum(v[0] for v in values_by_prompt), len(values_by_prompt)), "wilson"
  return cluster_bootstrap(values_by_prompt, rounds, seed), "cluster_bootstrap"


def paired_bootstrap(a: dict, b: dict, rounds: int = 2000, seed: int = 0) -> dict:
  """Mean of per-prompt score a - b over the prompts both have, with a 95% interval and a
  two-sided bootstrap p-value for 'no difference'."""
  keys = sorted(set(a) & set(b))
  if not keys:
    return {"n_prompts": 0, "diff": math.nan, "diff_ci95": [math.nan, math.nan],
            "p_value": math.nan}
  d = np.array([a[k] - b[k] for k in keys], float)
  means = d[_draws(len(d), rounds, seed)].mean(1)
  p = min(1.0, 2 * min((means <= 0).mean(), (means >= 0).mean()))
  return {"n_prompts": len(keys), "diff": float(d.mean()),
          "diff_ci95": [float(x) for x in np.quantile(means, [0.025, 0.975])],
          "p_value": float(p)}


# --- Length-controlled win rate ---------------------------------------------------------

def _fit_lc(x, y, prompt, n_prompts, l2, iters=30):
  """Penalised logistic regression with soft labels y: logit = t + b*x + g[prompt]. Newton
  steps; the per-prompt block of the Hessian is diagonal, so each step is a 2x2 Schur solve
  (O(rows), not a dense (P+2)^2 system). Returns mean_p sigmoid(t + g_p): the rate at zero
  length gap."""
  tb, g = np.zeros(2), np.zeros(n_prompts)
  eps = 1e-6  # t and b barely penalised: keeps the system solvable on degenerate data.
  per = lambda v: np.bincount(prompt, weights=v, minlength=n_prompts)
  for _ in range(iters):
    p = 1 / (1 + np.exp(-(tb[0] + tb[1] * x + g[prompt])))
    r, s = p - y, p * (1 - p)
    g1 = np.array([r.sum(), (r * x).sum()]) + eps * tb
    g2 = per(r) + l2 * g
    a = np.array([[s.sum() + eps, (s * x).sum()], [(s * x).sum(), (s * x * x).sum() + eps]])
    c = np.stack([per(s), per(s * x)])  # [2, P]
    d = per(s) + l2
    schur = a - (c / d) @ c.T
    d1 = np.linalg.solve(schur, g1 - c @ (g2 / d))
    d2 = (g2 - c.T @ d1) / d
    tb, g = tb - d1, g - d2
    if max(np.abs(d1).max(), np.abs(d2).max()) < 1e-9:
      break
  return float(np.mean(1 / (1 + np.exp(-(tb[0] + g)))))


def length_controlled(pref_by_prompt: list[list[float]], dlen_by_prompt: list[list[float]],
                      l2: float = 1.0, rounds: int = 200, seed: int = 0) -> dict:
  """pref: P(system better) per judgment; dlen: len(system) - len(baseline) in characters,
  per judgment, grouped by prompt. Returns lc_win_rate, its 95% interval and the length
  coefficient (positive: the judge likes longer answers)."""
  keep = [i for i, v in enumerate(pref_by_prompt) if v]
  pref = [pref_by_prompt[i] for i in keep]
  dlen = [dlen_by_prompt[i] for i in keep]
  if not pref:
    return {"lc_win_rate": math.nan, "lc_win_rate_ci95": [math.nan, math.nan]}
  sd = np.std(np.concatenate([np.asarray(d, float) for d in dlen])) or 1.0

  def fit(chosen):
    y = np.concatenate([np.asarray(pref[i], float) for i in chosen])
    x = np.tanh(np.concatenate([np.asarray(dlen[i], float) for i in chosen]) / sd)
    prompt = np.concatenate([np.full(len(pref[i]), j) for j, i in enumerate(chosen)])
    return _fit_lc(x, np.clip(y, 0, 1), prompt, len(chosen), l2)

  n = len(pref)
  point = fit(range(n))
  boots = [fit(row) for row in _draws(n, rounds, seed)]
  return {"lc_win_rate": point,
          "lc_win_rate_ci95": [float(x) for x in np.quantile(boots, [0.025, 0.975])]}
