"""From stored judgments to the figures of results.json (field names: docs/INTERFACES.md).

A unit is what one outcome is about: a (prompt, sample[, turn]) pair judged in both orders,
or one graded answer. A unit counts only when all its judgments parsed; the others are
reported (n_failed, n_unparsed, n_pending) beside every figure, never folded into ties.
"""
import collections
import math

from lima_jax.eval import stats

_WIN = {("ab", "A"): "win", ("ab", "B"): "loss", ("ba", "A"): "loss", ("ba", "B"): "win"}
_SCORE = {"win": 1.0, "tie": 0.5, "loss": 0.0}


def _unit(item: dict) -> tuple:
  return (item["prompt"], item["sample"], item.get("turn", 0))


def units(jobs, rows: dict) -> dict:
  """{unit: [(job, row or None), ...]} in job order."""
  out = collections.OrderedDict()
  for job, key in jobs:
    out.setdefault(_unit(job.item), []).append((job, rows.get(key)))
  return out


def _by_prompt(values: dict) -> list[list[float]]:
  grouped = collections.OrderedDict()
  for (prompt, _, _), v in values.items():
    grouped.setdefault(prompt, []).append(v)
  return list(grouped.values())


def _ok(judgments) -> bool:
  return all(r is not None and r["status"] == "ok" for _, r in judgments)


def pairwise(us: dict, config, soft: bool = False) -> tuple[dict, dict]:
  """W/T/L with both orders required to agree; returns (figures, {unit: outcome})."""
  outcome, flips, pref = {}, 0, {}
  for u, judgments in us.items():
    if not _ok(judgments):
      continue
    mapped = {j.item["order"]: _WIN.get((j.item["order"], r["verdict"]["label"]), "tie")
              for j, r in judgments}
    flips += mapped["ab"] != mapped["ba"]
    outcome[u] = mapped["ab"] if mapped["ab"] == mapped["ba"] else "tie"
    if soft:
      pref[u] = sum(r["verdict"]["p_a"] if j.item["order"] == "ab" else 1 - r["verdict"]["p_a"]
                    for j, r in judgments) / 2
  n = len(outcome)
  b = config.bootstrap
  fig = {"n": n, "n_prompts": len({u[0] for u in outcome}),
         "samples_per_prompt": _samples(outcome)}
  for name, test in (("win", lambda o: o == "win"), ("tie", lambda o: o == "tie"),
                     ("loss", lambda o: o == "loss"), ("equal_or_better", lambda o: o != "loss")):
    count = sum(map(test, outcome.values()))
    rate_name = name if name == "equal_or_better" else f"{name}_rate"
    if name != "equal_or_better":
      fig[{"win": "wins", "tie": "ties", "loss": "losses"}[name]] = count
    fig[rate_name] = count / n if n else math.nan
    ci, method = stats.rate_ci(_by_prompt({u: float(test(o)) for u, o in outcome.items()}),
                               b.rounds, b.seed)
    fig[f"{rate_name}_ci95"] = ci
  fig["ci_method"] = method if n else ""
  fig["position_flip_rate"] = flips / n if n else math.nan
  fig["score"] = sum(_SCORE[o] for o in outcome.values()) / n if n else math.nan
  if soft:
    fig["preference"] = sum(pref.values()) / n if n else math.nan
    fig["preference_ci95"] = stats.cluster_bootstrap(_by_prompt(pref), b.rounds, b.seed)
    return fig, {"outcome": outcome, "pref": pref}
  return fig, {"outcome": outcome}


def graded(us: dict, config) -> tuple[dict, dict]:
  """Mean grade over every graded answer, interval from a bootstrap over prompts."""
  score = {u: judgments[0][1]["verdict"]["score"] for u, judgments in us.items()
           if _ok(judgments)}
  b = config.bootstrap
  fig = _mean_fig(score, b)
  fig["samples_per_prompt"] = _samples(score)
  turns = sorted({u[2] for u in score})
  if turns != [0]:
    fig["turns"] = [{"turn": t, **_mean_fig({u: s for u, s in score.items() if u[2] == t}, b)}
                    for t in turns]
  category = {u: js[0][0].item["category"] for u, js in us.items() if js[0][0].item.get(
      "category")}
  if category:  # MT-Bench's per-category means (both turns).
    fig["categories"] = {c: _mean_fig({u: s for u, s in score.items() if category.get(u) == c},
                                      b) for c in sorted(set(category.values()))}
  return fig, {"score": score}


def _mean_fig(score: dict, b) -> dict:
  n = len(score)
  return {"n": n, "n_prompts": len({u[0] for u in score}),
          "mean": sum(score.values()) / n if n else math.nan,
          "mean_ci95": stats.cluster_bootstrap(_by_prompt(score), b.rounds, b.seed)}


def _samples(values: dict) -> int:
  per = collections.Counter(prompt for prompt, _ in {u[:2] for u in values})
  return max(per.values()) if per else 0


def bookkeeping(us: dict, prices) -> dict:
  """Counts of the judgments the figures rest on: failures, unparsed, pending, tokens."""
  c = collections.Counter()
  for judgments in us.values():
    for _, r in judgments:
      if r is None:
        c["pending"] += 1
        continue
      c[r["status"]] += 1
      c["prompt_tokens"] += r["prompt_tokens"]
      c["completion_tokens"] += r["completion_tokens"]
  from lima_jax.eval import client
  return {"n_judgments": sum(len(j) for j in us.values()), "n_failed": c["failed"],
          "n_unparsed": c["unparsed"], "n_pending": c["pending"],
          "prompt_tokens": c["prompt_tokens"], "completion_tokens": c["completion_tokens"],
          "cost_usd": client.cost(prices, c["prompt_tokens"], c["completion_tokens"])}


def per_prompt_scores(detail: dict) -> dict:
  """{prompt: mean score over its units}: what `compare` pairs across runs."""
  values = detail.get("pref") or detail.get("score")
  if values is None:
    values = {u: _SCORE[o] for u, o in detail["outcome"].items()}
  grouped = collections.defaultdict(list)
  for u, v in values.items():
    grouped[u[0] if u[2] == 0 else f"{u[0]}#turn{u[2]}"].append(v)
  return {k: sum(v) / len(v) for k, v in grouped.items()}
