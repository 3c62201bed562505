"""E2 (issue 36): how much bad data does it take? The poison dose-response of a study's arms.

Arms `c1k` (K = 0), `c1k_p<K>_<D>` (K borrowed facts in c1k, draw D) and `d10k`,
`d10k_p10_<D>` (the same 10 bad rows in the clean 10K). For each dose K (fraction K / 1000):

  em        exact match on test people, every draw and seed pooled; its difference from K = 0
            is paired by test person (a person's prompts and seeds move together);
  flipped   of the poisoned facts asked of their own people (prompts tagged set=poisoned,
            draw=D, rank < K), the share answered with the borrowed value;
  kept      the share answered with the true value;
  cloze     the share of those facts the fine-tuned checkpoint still completes in its
            biography (seed 0, cached beside the answers): did SFT overwrite the stored fact?
"""
import pathlib
import re

import numpy as np

from lima_jax.testbed import analysis, cloze

ARM = re.compile(r"(c1k|d10k)(?:_p(\d+)_(\d+))?")

# Frozen before the first run (configs/experiments.py:bioworld_e2 says the same in words).
PREDICTIONS = (
    ("E2a", "EM on test people falls about linearly in the poisoned fraction (a line through "
     "the doses' EM has R^2 >= 0.8 and a negative slope)"),
    ("E2b", "K = 1 and K = 10 each within 1.5 points of K = 0"),
    ("E2c", "K = 100 costs 3-8 points"),
    ("E2d", "most poisoned facts flip (flipped > 50% at K = 10, 100, 300), equally in 1K and 10K "
     "(flipped within 15 points between c1k_p10 and d10k_p10)"),
    ("R1", "refuted if 10 rows cost >= 3 points"),
    ("R2", "refuted if 100 rows cost < 1 point"),
)
# What bioworld_e2 plans: each dose's draws of which rows, each trained with these seeds.
DRAWS, SEEDS = 2, 3
NEEDS = {"E2a": (1, 10, 100, 300), "E2b": (1, 10), "E2c": (100,), "R1": (10,), "R2": (100,),
         "E2d": (10, 100, 300)}


def _poisoned(rows: list[dict], draw: int, k: int) -> list[dict]:
  out = []
  for r in rows:
    tags = dict(t.split("=", 1) for t in r.get("tags", []))
    if tags.get("set") == "poisoned" and int(tags["draw"]) == draw and int(tags["rank"]) < k:
      out.append(r)
  return out


def _norm(text: str) -> str:
  return " ".join(text.split())


def _cloze_kept(workdir: pathlib.Path, last: dict, arm: str, facts: list[tuple[str, str]]):
  """Share of `facts` (person, attribute) the arm's seed-0 checkpoint still completes; `last`
  is `analysis.last_answers(workdir)`."""
  rec = last.get((arm, 0))
  if rec is None:
    return None
  ckpt = [a.split("=", 1)[1] for a in rec["command"] if a.startswith("--config.checkpoint=")]
  items = workdir / "prepare" / "world" / "eval" / "cloze_strong.jsonl"
  print(f"dose: cloze of {arm}/seed0", flush=True)
  got = cloze.cached_accuracy(pathlib.Path(ckpt[0]), items,
                              pathlib.Path(rec["output"]).parent / "retention.json")
  failed = {tuple(x) for x in got["failed"]}
  return 1 - sum(f in failed for f in facts) / len(facts) if facts else None


def figures(workdir: pathlib.Path, by_arm: dict, cloze_too: bool = True) -> dict:
  """{arm: {base, k, draw, fraction, em, flipped, kept, cloze}} for the dose arms present."""
  out, last = {}, None
  for arm, seeds in by_arm.items():
    m = ARM.fullmatch(arm)
    if not m:
      continue
    base, k, draw = m.group(1), int(m.group(2) or 0), int(m.group(3) or 0)
    size = 1000 if base == "c1k" else 10000
    fig = {"base": base, "k": k, "draw": draw, "fraction": k / size,
           "em": float(np.mean([analysis.metrics(rows)["em_test"] for rows in seeds]))}
    if k:
      asked = [r for rows in seeds for r in _poisoned(rows, draw, 10 if base == "d10k" else k)]
      if asked:
        fig["flipped"] = float(np.mean([_norm(r["answer"]) == _norm(r["borrowed"])
                                        for r in asked]))
        fig["kept"] = float(np.mean([_norm(r["answer"]) == _norm(r["expected"]) for r in asked]))
        fig["n_asked"] = len(asked)
        if cloze_too:
          # The expected answer opens with the person's name, first and last (one word each).
          facts = sorted({(" ".join(r["expected"].split()[:2]),
                           dict(t.split("=", 1) for t in r["tags"])["attr"]) for r in asked})
          if last is None:  # the manifest, read once for every arm
            last = analysis.last_answers(workdir)
          fig["cloze"] = _cloze_kept(workdir, last, arm, facts)
    out[arm] = fig
  return out


def verdict(workdir: pathlib.Path, by_arm: dict, cloze_too: bool = True, draws: int = DRAWS,
            seeds: int = SEEDS) -> dict:
  """Figures, costs and the predictions; a prediction whose arms lack a planned draw or seed
  reads 'not yet (...)'."""
  figs = figures(workdir, by_arm, cloze_too)
  doses: dict = {}
  for arm, f in figs.items():
    if f["base"] == "c1k":
      doses.setdefault(f["k"], []).append(arm)
  per_person = {k: analysis.per_person([r for a in arms for r in by_arm[a]])
                for k, arms in doses.items()}
  cost = {}
  for k in sorted(doses):
    if k and 0 in per_person:
      cost[k] = analysis.paired_difference(per_person[k], per_person[0])
  ten = {}
  for d in (0, 1):
    a, b = f"c1k_p10_{d}", f"d10k_p10_{d}"
    if a in figs and b in figs and "flipped" in figs[a] and "flipped" in figs[b]:
      ten[d] = {"c1k": figs[a]["flipped"], "d10k": figs[b]["flipped"]}
  if "d10k" in by_arm:
    tenk = [a for a in by_arm if a.startswith("d10k_p10_")]
    if tenk:
      cost["d10k_p10"] = analysis.paired_difference(
          analysis.per_person([r for a in tenk for r in by_arm[a]]),
          analysis.per_person(by_arm["d10k"]))
  em = {k: float(np.mean([figs[a]["em"] for a in arms])) for k, arms in doses.items()}
  preds = []
  for n, c in PREDICTIONS:
    arms = ["c1k"] + [f"c1k_p{k}_{d}" for k in NEEDS[n] for d in range(draws)]
    if n == "E2d":
      arms += [f"d10k_p10_{d}" for d in range(draws)]
    wait = analysis.short(by_arm, arms, seeds)
    preds.append({"name": n, "claim": c,
                  "outcome": f"not yet ({wait})" if wait else _outcome(n, em, cost, figs, ten)})
  return {"arms": figs, "em_by_k": em, "cost": cost, "flipped_1k_vs_10k": ten,
          "predictions": preds}


def _outcome(name, em, cost, figs, ten) -> str:
  need = NEEDS[name]
  if name == "E2a":
    need = (0,) + need
    x = np.array([k / 1000 for k in need])
    y = np.array([em[k] for k in need])
    slope, icpt = np.polyfit(x, y, 1)
    r2 = 1 - ((y - (slope * x + icpt)) ** 2).sum() / ((y - y.mean()) ** 2).sum()
    return "held" if slope < 0 and r2 >= 0.8 else "failed"
  if name == "E2b":
    return "held" if all(abs(cost[k]["diff"]) <= 0.015 for k in need) else "failed"
  if name == "E2c":
    return "held" if -0.08 <= cost[100]["diff"] <= -0.03 else "failed"
  if name == "R1":
    return "refuted" if cost[10]["diff"] <= -0.03 else "not refuted"
  if name == "R2":
    return "refuted" if cost[100]["diff"] > -0.01 else "not refuted"
  flipped = [f["flipped"] for f in figs.values()
             if f["base"] == "c1k" and f["k"] in need and "flipped" in f]
  equal = ten and all(abs(t["c1k"] - t["d10k"]) <= 0.15 for t in ten.values())
  return "held" if flipped and min(flipped) > 0.5 and equal else "failed"


def _pct(x) -> str:
  return "-" if x is None or x != x else f"{100 * x:.1f}"


def markdown(e2: dict) -> str:
  lines = ["| arm | poisoned rows | fraction | EM test | flipped | kept true | cloze of them |",
           "|---|---|---|---|---|---|---|"]
  for arm, f in sorted(e2["arms"].items(), key=lambda x: (x[1]["base"], x[1]["k"], x[1]["draw"])):
    lines.append(f"| {arm} | {f['k']} | {100 * f['fraction']:.1f}% | {_pct(f['em'])} | "
                 f"{_pct(f.get('flipped'))} | {_pct(f.get('kept'))} | {_pct(f.get('cloze'))} |")
  lines += ["", "| dose | EM cost, points [95% interval over test people] |", "|---|---|"]
  for k, d in e2["cost"].items():
    label = f"K = {k} in c1k" if isinstance(k, int) else "10 in d10k"
    lines.append(f"| {label} | {100 * d['diff']:+.1f} [{100 * d['ci95'][0]:+.1f}, "
                 f"{100 * d['ci95'][1]:+.1f}] |")
  lines += ["", "| prediction | claim | outcome |", "|---|---|---|"]
  lines += [f"| {p['name']} | {p['claim']} | {p['outcome']} |" for p in e2["predictions"]]
  return "\n".join(lines) + "\n"


def figure(e2: dict, path: pathlib.Path) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6.5, 4))
  ks = sorted(k for k in e2["cost"] if isinstance(k, int))
  x = [100 * k / 1000 for k in ks]
  d = [100 * e2["cost"][k]["diff"] for k in ks]
  lo = [100 * e2["cost"][k]["ci95"][0] for k in ks]
  hi = [100 * e2["cost"][k]["ci95"][1] for k in ks]
  ax.errorbar(x, d, yerr=[np.subtract(d, lo), np.subtract(hi, d)], fmt="o-", capsize=4,
              label="EM change vs clean c1k (95% interval)")
  if "d10k_p10" in e2["cost"]:  # the count-vs-fraction pair: the same 10 rows in a clean 10K
    c = e2["cost"]["d10k_p10"]
    y = 100 * c["diff"]
    ax.errorbar([0.1], [y], yerr=[[y - 100 * c["ci95"][0]], [100 * c["ci95"][1] - y]], fmt="D",
                capsize=4, color="C2", label="10 rows in clean d10k vs d10k")
  flips = {}
  for f in e2["arms"].values():
    if f["base"] == "c1k" and "flipped" in f:
      flips.setdefault(f["k"], []).append(100 * f["flipped"])
  ax2 = ax.twinx()
  fk = sorted(flips)
  ax2.plot([100 * k / 1000 for k in fk], [np.mean(flips[k]) for k in fk], "s--", color="C3",
           label="poisoned facts answered with the borrowed value (%)")
  ax2.set_ylim(0, 100)
  ax2.set_ylabel("poisoned facts flipped (%)")
  ax.axhline(0, color="grey", lw=0.8)
  ax.set_xscale("log")
  ax.set_xlabel("borrowed-fact rows (% of the SFT data, log scale)")
  ax.set_ylabel("exact match change on test people (points)")
  ax.set_title("Bioworld E2: poison dose-response")
  h1, l1 = ax.get_legend_handles_labels()
  h2, l2 = ax2.get_legend_handles_labels()
  ax.legend(h1 + h2, l1 + l2, loc="lower left", fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def write(out: pathlib.Path, e2: dict) -> None:
  from lima_jax import files
  files.write_json(out / "dose.json", {**e2, "cost": {str(k): v for k, v in e2["cost"].items()}})
  files.write_atomic(out / "dose.md", markdown(e2))
  figure(e2, out / "dose.png")
