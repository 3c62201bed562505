"""E3 (issue 36): does a larger base close the gap? Arms d250 ... d8k, c1k and n10k on the
2.2M base (no suffix) and on a larger one (suffix `_m`: 6.9M, or `_l`: 15M).

Per base: exact match on test people by data size (the clean mixture), the plateau (the best of
d2k and d8k), and the paired differences c1k - d2k and c1k - n10k (by test person).
"""
import pathlib
import re

import numpy as np

from lima_jax.testbed import analysis

ARM = re.compile(r"(d250|d500|c1k|d2k|d8k|n10k)(?:_(m|l))?")
SIZES = {"d250": 250, "d500": 500, "c1k": 1000, "d2k": 2000, "d8k": 8000, "n10k": 10000}
BASES = {"": "2.2M", "m": "6.9M", "l": "15M"}

# Frozen before the first run (configs/experiments.py:bioworld_e3 says the same in words).
PREDICTIONS = (
    ("E3a", "the plateau rises (by >= 3 points), c1k comes within 3 points of d2k, and c1k - "
     "n10k widens"),
    ("E3b", "the plateau moves less than 3 points"),
)
SEEDS = 2  # what bioworld_e3 plans for each arm


def verdict(by_arm: dict, seeds: int = SEEDS) -> dict:
  """Each base's figures and the predictions; they read 'not yet (...)' until the arms they
  compare have `seeds` seeds on both bases."""
  bases: dict = {}
  for arm, runs in by_arm.items():
    m = ARM.fullmatch(arm)
    if m:
      bases.setdefault(m.group(2) or "", {})[m.group(1)] = runs
  out = {}
  for b, arms in sorted(bases.items()):
    em = {a: float(np.mean([analysis.metrics(r)["em_test"] for r in s])) for a, s in arms.items()}
    people = {a: analysis.per_person(s) for a, s in arms.items()}
    fig = {"params": BASES[b], "em": em,
           "em_ci95": {a: analysis.mean_interval(p) for a, p in people.items()}}
    if "d2k" in em or "d8k" in em:
      fig["plateau"] = max(em.get("d2k", -1), em.get("d8k", -1))
    for x, y in (("c1k", "d2k"), ("c1k", "n10k")):
      if x in arms and y in arms:
        fig[f"{x}-{y}"] = analysis.paired_difference(people[x], people[y])
    out[b] = fig
  preds = []
  big = next((b for b in ("m", "l") if b in out), None)
  # Past this wait, both bases have c1k, d2k, d8k and n10k: their plateaus and differences.
  wait = analysis.short(by_arm, [a + s for s in ("", f"_{big or 'm'}")
                                 for a in ("c1k", "d2k", "d8k", "n10k")], seeds)
  for name, claim in PREDICTIONS:
    if wait:
      preds.append({"name": name, "claim": claim, "outcome": f"not yet ({wait})"})
      continue
    small, large = out[""], out[big]
    rise = large["plateau"] - small["plateau"]
    if name == "E3b":
      ok = abs(rise) < 0.03
    else:
      widen = large["c1k-n10k"]["diff"] > small["c1k-n10k"]["diff"]
      ok = rise >= 0.03 and large["c1k-d2k"]["diff"] >= -0.03 and widen
    preds.append({"name": name, "claim": claim, "outcome": "held" if ok else "failed",
                  "plateau_rise": rise, "larger_base": BASES[big]})
  return {"bases": out, "predictions": preds}


def figure(e3: dict, path: pathlib.Path) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 4))
  for i, (b, f) in enumerate(e3["bases"].items()):
    def bars(names, fmt, label):
      y = np.array([100 * f["em"][a] for a in names])
      lo, hi = (np.array([100 * f["em_ci95"][a][j] for a in names]) for j in (0, 1))
      ax.errorbar([SIZES[a] for a in names], y, yerr=[y - lo, hi - y], fmt=fmt, capsize=3,
                  color=f"C{i}", label=f"{label}, base {f['params']}")
    clean = sorted((a for a in f["em"] if a.startswith("d")), key=SIZES.get)
    if clean:
      bars(clean, "o-", "clean mixture")
    for a, fmt, label in (("c1k", "s", "curated 1K"), ("n10k", "x", "noisy 10K")):
      if a in f["em"]:  # beside the clean line, not on it
        bars([a], fmt, label)
  ax.set_xscale("log")
  ax.set_xlabel("SFT examples (log scale; error bars: 95% over test people)")
  ax.set_ylabel("exact match on test people (%)")
  ax.set_ylim(0, 100)
  ax.set_title("Bioworld E3: score against examples, one line per base")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def markdown(e3: dict) -> str:
  names = ("d250", "d500", "c1k", "d2k", "d8k", "n10k")
  lines = ["| base | " + " | ".join(names) + " | c1k - d2k | c1k - n10k |",
           "|" + "---|" * (len(names) + 3)]
  for f in e3["bases"].values():
    cells = [f"{100 * f['em'][a]:.1f}" if a in f["em"] else "-" for a in names]
    for k in ("c1k-d2k", "c1k-n10k"):
      d = f.get(k)
      cells.append(f"{100 * d['diff']:+.1f} [{100 * d['ci95'][0]:+.1f}, "
                   f"{100 * d['ci95'][1]:+.1f}]" if d else "-")
    lines.append(f"| {f['params']} | " + " | ".join(cells) + " |")
  lines += ["", "| prediction | claim | outcome |", "|---|---|---|"]
  lines += [f"| {p['name']} | {p['claim']} | {p['outcome']} |" for p in e3["predictions"]]
  return "\n".join(lines) + "\n"
