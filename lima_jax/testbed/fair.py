"""Fairness to the large arms (issue 36): does P1b or P2 change when every arm trains for
the same steps, or at the learning rate its own dev people prefer?

Two kinds of arm, beside the core arms c1k, d2k, d32k:
  ARM_eq     the same steps as c1k: 16 epochs of a fresh 1,000 of the arm's rows each
             (data.epoch_examples), not the core's ~16,000 examples of repeats;
  ARM_lrX    ARM at learning rate X ('1e4' is 1e-4), answering the dev people's prompts
             (set=dev) as well as the test prompts: each family's rate is the one with the
             best exact match on dev people (mean over seeds), and its test answers stand
             for the family.
P1b (curated 1K within 5 points of the best arm) and P2 (d32k - d2k within +-3 points, the
95% interval over test people inside) are then read again on each kind, as the core verdict
reads them (`analysis`).
"""
import re

from lima_jax.errors import UserError
from lima_jax.testbed import analysis

LR_ARM = re.compile(r"(?P<family>[a-z0-9]+)_lr(?P<mant>\d+)e(?P<exp>\d+)")

# Frozen before the first run (configs/experiments.py:bioworld_fair says the same in words).
PREDICTIONS = (
    ("F1", "matched steps (ARM_eq) leave P1b's and P2's outcomes as they are"),
    ("F2", "per-arm learning rates chosen on dev people leave P1b's and P2's outcomes as they "
     "are"),
)
# What bioworld_fair plans: the arms each prediction reads, each with SEEDS seeds.
SEEDS = 3
PLANNED = {"F1": ("d2k_eq", "d32k_eq", "n10k_eq"),
           "F2": tuple(f"{f}_lr{r}" for f in ("c1k", "d2k", "d32k") for r in ("1e4", "3e4", "1e3"))}


def learning_rate(arm: str) -> float | None:
  m = LR_ARM.fullmatch(arm)
  return float(f"{m['mant']}e-{m['exp']}") if m else None


def choose_rates(v: dict) -> dict:
  """{family: {'by_rate': {rate: {'em_dev', 'em_test', 'arm'}}, 'chosen': arm}}."""
  fams: dict = {}
  for arm, m in v["arms"].items():
    rate = learning_rate(arm)
    if rate is None:
      continue
    if "em_dev" not in m:
      raise UserError(f"arm {arm}: its answers hold no dev prompts (set=dev), so no rate "
                       "can be chosen on dev people")
    fam = fams.setdefault(LR_ARM.fullmatch(arm)["family"], {"by_rate": {}})
    fam["by_rate"][rate] = {"arm": arm, "em_dev": m["em_dev"], "em_test": m["em_test"]}
  for fam in fams.values():
    # Ties go to the smaller rate: the gentler update.
    best = max(sorted(fam["by_rate"]), key=lambda r: fam["by_rate"][r]["em_dev"])
    fam["chosen"] = fam["by_rate"][best]["arm"]
    fam["chosen_rate"] = best
  return fams


def _p1b_p2(by_arm: dict, names: dict) -> dict:
  """P1b and P2 as `analysis.verdict` reads them, on the arms `names` maps the core names
  (c1k, d2k, d32k, n10k) to."""
  got = {p["name"]: p for p in analysis.verdict(
      {core: by_arm[arm] for core, arm in names.items()})["predictions"]}
  out = {}
  if got["P1b"]["outcome"] != "not run":
    p = got["P1b"]
    out["P1b"] = {"c1k": p["value"], "best": names[p["best"]], "best_value": p["best_value"],
                  "outcome": p["outcome"]}
  if got["P2"]["outcome"] != "not run":
    p = got["P2"]
    out["P2"] = {"diff": p["diff"], "ci95": p["ci95"], "n_people": p["n_people"],
                 "a": names["d32k"], "b": names["d2k"], "outcome": p["outcome"]}
  return out


def verdict(v: dict, by_arm: dict, seeds: int = SEEDS, planned: dict = PLANNED) -> dict:
  """The readings of P1b and P2 and the predictions ('not yet (...)' until the arms in
  `planned` have `seeds` seeds)."""
  core = {a: a for a in ("c1k", "d2k", "d32k", "n10k") if a in by_arm}
  readings = {"core": _p1b_p2(by_arm, core)}
  eq = {a: (f"{a}_eq" if f"{a}_eq" in by_arm else a) for a in core}
  if any(x != a for a, x in eq.items()):
    readings["matched steps"] = _p1b_p2(by_arm, eq)
  rates = choose_rates(v)
  if rates:
    readings["rate chosen on dev"] = _p1b_p2(by_arm, {f: r["chosen"] for f, r in rates.items()})
  preds = []
  for name, claim, kind in (("F1", PREDICTIONS[0][1], "matched steps"),
                            ("F2", PREDICTIONS[1][1], "rate chosen on dev")):
    wait = analysis.short(by_arm, planned[name], seeds)
    if wait or kind not in readings:
      preds.append({"name": name, "claim": claim, "outcome": f"not yet ({wait or 'not run'})"})
      continue
    same = all(readings[kind].get(p, {}).get("outcome") == readings["core"].get(p, {}).get(
        "outcome") for p in ("P1b", "P2"))
    preds.append({"name": name, "claim": claim, "outcome": "held" if same else "failed"})
  return {"rates": rates, "readings": readings, "predictions": preds}


def _pct(x) -> str:
  return "-" if x is None or x != x else f"{100 * x:.1f}"


def markdown(fv: dict) -> str:
  lines = []
  if fv["rates"]:
    lines += ["| family | learning rate | EM dev people | EM test people | chosen |",
              "|---|---|---|---|---|"]
    for fam, r in sorted(fv["rates"].items()):
      for rate, m in sorted(r["by_rate"].items()):
        lines.append(f"| {fam} | {rate:g} | {_pct(m['em_dev'])} | {_pct(m['em_test'])} | "
                     f"{'yes' if m['arm'] == r['chosen'] else ''} |")
    lines.append("")
  lines += ["| reading | P1b: c1k vs the best arm | P2: d32k - d2k [95%] |", "|---|---|---|"]
  for kind, p in fv["readings"].items():
    b = p.get("P1b")
    p1b = (f"{_pct(b['c1k'])} vs {b['best']} {_pct(b['best_value'])}: {b['outcome']}"
           if b else "-")
    d = p.get("P2")
    p2 = (f"{d['a']} - {d['b']} = {100 * d['diff']:+.1f} [{100 * d['ci95'][0]:+.1f}, "
          f"{100 * d['ci95'][1]:+.1f}]: {d['outcome']}" if d else "-")
    lines.append(f"| {kind} | {p1b} | {p2} |")
  lines += ["", "| prediction | claim | outcome |", "|---|---|---|"]
  lines += [f"| {p['name']} | {p['claim']} | {p['outcome']} |" for p in fv["predictions"]]
  return "\n".join(lines) + "\n"
