"""LoRA against full fine-tuning (issue 36): arms `ARM_lora` beside the full arms ARM.

Per pair: exact match on test people of each, their paired difference (by test person), and
the knowledge each kept (the verdict's biography cloze after SFT, seed 0).
"""
from lima_jax.testbed import analysis

# Frozen before the first run (configs/experiments.py:bioworld_lora says the same in words).
PREDICTIONS = (
    ("L1", "every LoRA arm keeps biography cloze >= 97% after SFT"),
    ("L2", "with LoRA d32k no longer falls below d2k (the 95% interval of d32k_lora - "
     "d2k_lora reaches 0)"),
)
SEEDS = 3  # what bioworld_lora plans for each arm


def verdict(v: dict, by_arm: dict, seeds: int = SEEDS) -> dict:
  """Each pair's figures and the predictions ('not yet (...)' until their arms have `seeds`
  seeds)."""
  pairs = {}
  for arm in sorted(a for a in by_arm if a.endswith("_lora")):
    full = arm.removesuffix("_lora")
    m = v["arms"][arm]
    rec = {"em_lora": m["em_test"], "retention_lora": m.get("retention")}
    if full in by_arm:
      rec.update(em_full=v["arms"][full]["em_test"], retention_full=v["arms"][full].get(
          "retention"), lora_minus_full=analysis.paired_difference(
              analysis.per_person(by_arm[arm]), analysis.per_person(by_arm[full])))
    pairs[full] = rec
  out = []
  for name, claim in PREDICTIONS:
    wait = analysis.short(by_arm, [f"{a}_lora" for a in (
        ("c1k", "d2k", "d32k", "n10k") if name == "L1" else ("d32k", "d2k"))], seeds)
    if wait:
      out.append({"name": name, "claim": claim, "outcome": f"not yet ({wait})"})
    elif name == "L1":
      kept = [p["retention_lora"] for p in pairs.values()]
      if any(k is None for k in kept):
        out.append({"name": name, "claim": claim, "outcome": "not yet (cloze not measured)"})
        continue
      out.append({"name": name, "claim": claim, "min_retention": min(kept),
                  "outcome": "held" if min(kept) >= 0.97 else "failed"})
    else:
      d = analysis.paired_difference(analysis.per_person(by_arm["d32k_lora"]),
                                     analysis.per_person(by_arm["d2k_lora"]))
      out.append({"name": name, "claim": claim, **d,
                  "outcome": "held" if d["ci95"][1] >= 0 else "failed"})
  return {"pairs": pairs, "predictions": out}


def _pct(x) -> str:
  return "-" if x is None or x != x else f"{100 * x:.1f}"


def markdown(lv: dict) -> str:
  lines = ["| arm | EM full | EM LoRA | LoRA - full [95%] | cloze after full | cloze after LoRA |",
           "|---|---|---|---|---|---|"]
  for arm, p in lv["pairs"].items():
    d = p.get("lora_minus_full")
    diff = (f"{100 * d['diff']:+.1f} [{100 * d['ci95'][0]:+.1f}, {100 * d['ci95'][1]:+.1f}]"
            if d else "-")
    lines.append(f"| {arm} | {_pct(p.get('em_full'))} | {_pct(p['em_lora'])} | {diff} | "
                 f"{_pct(p.get('retention_full'))} | {_pct(p['retention_lora'])} |")
  lines += ["", "| prediction | claim | evidence | outcome |", "|---|---|---|---|"]
  for p in lv["predictions"]:
    ev = (f"lowest cloze {_pct(p['min_retention'])}%" if "min_retention" in p else
          f"d32k_lora - d2k_lora = {100 * p['diff']:+.1f} [{100 * p['ci95'][0]:+.1f}, "
          f"{100 * p['ci95'][1]:+.1f}]" if "diff" in p else "-")
    lines.append(f"| {p['name']} | {p['claim']} | {ev} | {p['outcome']} |")
  return "\n".join(lines) + "\n"
