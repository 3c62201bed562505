"""Across runs: one table (`compare`) and LIMA's judge agreement (`agreement`)."""
import collections
import json
import pathlib

from lima_jax.errors import UserError
from lima_jax.eval import stats, store

_WIN = {("ab", "A"): "win", ("ab", "B"): "loss", ("ba", "A"): "loss", ("ba", "B"): "win"}


def _load(d) -> dict:
  path = pathlib.Path(d) / "results.json"
  try:
    return json.loads(path.read_text(encoding="utf-8"))
  except (OSError, json.JSONDecodeError) as e:
    raise UserError(f"{path}: cannot read results ({getattr(e, 'strerror', None) or e})"
                    ) from None


def _ci(r, key) -> str:
  v, ci = r.get(key), r.get(key + "_ci95")
  if v is None:
    return "-"
  return f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci and None not in ci else f"{v:.3f}"


def compare(dirs, rounds: int = 2000, seed: int = 0, png: str = "") -> str:
  """The table; with `png`, LIMA's Figure 1 over the pairwise runs (one bar a baseline)."""
  runs = [(d, _load(d)) for d in dirs]
  if png:
    bars = [(f"{r['system']} vs {r['baseline']} ({r['protocol']})", r["wins"], r["ties"],
             r["losses"])
            for _, r in runs if r.get("wins") is not None]
    if not bars:
      raise UserError("compare --png: none of these runs is pairwise")
    from lima_jax.eval import report
    report.winrate_figure(bars, png, title="judged win / tie / loss")
  lines = [f"{'run':28} {'protocol':13} {'n':>5} {'W/T/L':>13} {'main figure (95% CI)':32} "
           f"{'failed':>6} {'unparsed':>8} {'calls':>6}"]
  for d, r in runs:
    wtl = f"{r['wins']}/{r['ties']}/{r['losses']}" if "wins" in r else ""
    main = (f"win {_ci(r, 'win_rate')}" if "wins" in r else f"mean {_ci(r, 'mean')}"
            if "mean" in r else f"exact {_ci(r, 'exact_rate')}" if "exact_rate" in r else "")
    lines.append(f"{str(d)[-28:]:28} {r['protocol']:13} {r.get('n', 0):>5} {wtl:>13} "
                 f"{main:32} {r.get('n_failed', 0):>6} {r.get('n_unparsed', 0):>8} "
                 f"{r.get('judge_calls', 0):>6}")
  if len(runs) == 2 and runs[0][1]["protocol"] == runs[1][1]["protocol"]:
    per = []
    for d, _ in runs:
      p = pathlib.Path(d) / "per_prompt.json"
      per.append(json.loads(p.read_text()) if p.exists() else None)
    if None not in per:
      res = stats.paired_bootstrap(per[0], per[1], rounds, seed)
      if res["n_prompts"]:
        lines.append(f"paired bootstrap over {res['n_prompts']} shared prompts: "
                     f"{dirs[0]} - {dirs[1]} = {res['diff']:+.3f} "
                     f"[{res['diff_ci95'][0]:+.3f}, {res['diff_ci95'][1]:+.3f}], "
                     f"p = {res['p_value']:.3f} (per-prompt score: win 1, tie 0.5, loss 0; "
                     "or the grade; or judge_free's exact share)")
      else:
        lines.append("paired bootstrap: the two runs share no prompt")
  return "\n".join(lines)


def _labels(path) -> dict:
  """{(prompt, sample, turn): 'win'|'tie'|'loss' or a grade} from a judgments.sqlite or a
  human label file (JSONL: prompt or id, optional sample, label win/tie/loss or A/B/C with
  the system as A)."""
  path = pathlib.Path(path)
  if not path.exists():
    raise UserError(f"{path}: no such file")
  if path.suffix in (".jsonl", ".json"):
    out = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
        label = {"A": "win", "B": "loss", "C": "tie"}.get(row["label"], row["label"])
        key = str(row.get("prompt", row.get("id")))
      except (json.JSONDecodeError, KeyError, TypeError):
        raise UserError(f"{path}:{n}: needs 'prompt' (or 'id') and 'label'") from None
      if label not in ("win", "tie", "loss"):
        raise UserError(f"{path}:{n}: label must be win/tie/loss or A/B/C, got {label!r}")
      out[key, row.get("sample", 0), row.get("turn", 0)] = label
    return out
  orders, same = collections.defaultdict(dict), set()
  for r in store.read_rows(path):
    if r["status"] != "ok":
      continue
    it = r["item"]
    unit = (it["prompt"], it["sample"], it.get("turn", 0))
    if "order" in it:
      orders[unit][it["order"]] = _WIN.get((it["order"], r["verdict"]["label"]), "tie")
      if it["a"] == it["b"]:  # Identical answers: both orders were one request (a tie).
        same.add(unit)
    else:
      orders[unit]["grade"] = r["verdict"]["score"]
  out = {}
  for unit, o in orders.items():
    if "grade" in o:
      out[unit] = o["grade"]
    elif len(o) == 2:
      out[unit] = o["ab"] if o["ab"] == o["ba"] else "tie"
    elif unit in same:
      out[unit] = "tie"
  return out


def agreement(a, b) -> str:
  """LIMA's tie-discounted accuracy: 1 for the same label, 1/2 when one of them is a tie,
  0 otherwise; for grades, exact agreement and the mean absolute difference."""
  la, lb = _labels(a), _labels(b)
  shared = sorted(set(la) & set(lb), key=str)
  if not shared:
    raise UserError(f"{a} and {b} share no judged prompt")
  if all(isinstance(la[k], str) for k in shared):
    score = [1.0 if la[k] == lb[k] else 0.5 if "tie" in (la[k], lb[k]) else 0.0 for k in shared]
    confusion = collections.Counter((la[k], lb[k]) for k in shared)
    table = ", ".join(f"{x}/{y}: {c}" for (x, y), c in sorted(confusion.items()))
    ci, _ = stats.rate_ci([[s] for s in score], 0, 0)
    return (f"tie-discounted agreement {sum(score) / len(score):.3f} on {len(shared)} shared "
            f"units (Wilson 95% [{ci[0]:.3f}, {ci[1]:.3f}], half-credit counted as 0.5); "
            f"{table}")
  diffs = [abs(float(la[k]) - float(lb[k])) for k in shared]
  exact = sum(d == 0 for d in diffs) / len(diffs)
  return (f"grades on {len(shared)} shared units: exact agreement {exact:.3f}, mean absolute "
          f"difference {sum(diffs) / len(diffs):.3f}")
