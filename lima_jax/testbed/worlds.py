"""World variance (issue 36): the core arms on worlds of other seeds, each with its own base.

Arms `ARM_w1`, `ARM_w2` are ARM trained and scored on the worlds of seeds 1 and 2 (their own
people, tokenizer and base); ARM itself is world 0. Per arm: exact match on test people in each
world and the mean over worlds. Per pair (e.g. c1k - n10k): the difference in each world,
paired by test person, and pooled over worlds with a two-level bootstrap (worlds drawn with
replacement, then each drawn world's test people), so the interval covers the world and its
base as well as the data order.
"""
import re

import numpy as np

from lima_jax.testbed import analysis

WORLD = re.compile(r"(.+)_w(\d+)")
PAIRS = (("c1k", "n10k"), ("d2k", "u2k"), ("d32k", "d2k"), ("c1k", "d2k"))


def split(by_arm: dict) -> dict:
  """{world: {arm: answers rows per seed}}; arms without a suffix are world 0."""
  out: dict = {}
  for arm, seeds in by_arm.items():
    m = WORLD.fullmatch(arm)
    world, base = (int(m.group(2)), m.group(1)) if m else (0, arm)
    out.setdefault(world, {})[base] = seeds
  return out


def _pooled(per_world: list[dict], rounds: int = 10000, seed: int = 0) -> dict:
  """Mean over worlds of the per-person mean difference, with a two-level 95% interval."""
  rng = np.random.default_rng(seed)
  diffs = [np.array(list(d.values())) for d in per_world]
  means = []
  for _ in range(rounds):
    worlds = rng.integers(len(diffs), size=len(diffs))
    means.append(np.mean([diffs[w][rng.integers(len(diffs[w]), size=len(diffs[w]))].mean()
                          for w in worlds]))
  return {"diff": float(np.mean([d.mean() for d in diffs])),
          "ci95": [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))],
          "worlds": len(diffs)}


def verdict(by_arm: dict) -> dict:
  worlds = split(by_arm)
  arms = sorted({a for w in worlds.values() for a in w})
  em = {a: {w: float(np.mean([analysis.metrics(r)["em_test"] for r in worlds[w][a]]))
            for w in sorted(worlds) if a in worlds[w]} for a in arms}
  pairs = {}
  for a, b in PAIRS:
    per_world, each = [], {}
    for w in sorted(worlds):
      if a in worlds[w] and b in worlds[w]:
        pa, pb = analysis.per_person(worlds[w][a]), analysis.per_person(worlds[w][b])
        people = sorted(set(pa) & set(pb))
        per_world.append({p: pa[p] - pb[p] for p in people})
        each[w] = analysis.paired_difference(pa, pb)
    if len(per_world) > 1:
      pairs[f"{a}-{b}"] = {"by_world": each, "pooled": _pooled(per_world)}
  return {"em": {a: {"by_world": v, "mean": float(np.mean(list(v.values())))}
                 for a, v in em.items()}, "pairs": pairs, "worlds": sorted(worlds)}


def markdown(wv: dict) -> str:
  ws = wv["worlds"]
  lines = ["| arm | " + " | ".join(f"world {w}" for w in ws) + " | mean |",
           "|" + "---|" * (len(ws) + 2)]
  for a, f in wv["em"].items():
    cells = [f"{100 * f['by_world'][w]:.1f}" if w in f["by_world"] else "-" for w in ws]
    lines.append(f"| {a} | " + " | ".join(cells) + f" | {100 * f['mean']:.1f} |")
  lines += ["", "| difference | " + " | ".join(f"world {w}" for w in ws)
            + " | pooled [95%: worlds, then people] |", "|" + "---|" * (len(ws) + 2)]
  for name, p in wv["pairs"].items():
    cells = []
    for w in ws:
      d = p["by_world"].get(w)
      cells.append(f"{100 * d['diff']:+.1f} [{100 * d['ci95'][0]:+.1f}, "
                   f"{100 * d['ci95'][1]:+.1f}]" if d else "-")
    q = p["pooled"]
    lines.append(f"| {name} | " + " | ".join(cells) + f" | {100 * q['diff']:+.1f} "
                 f"[{100 * q['ci95'][0]:+.1f}, {100 * q['ci95'][1]:+.1f}] |")
  return "\n".join(lines) + "\n"
