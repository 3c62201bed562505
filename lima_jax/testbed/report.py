"""A bioworld study's verdict: the arms' exact scores, the predictions, one figure.

Writes DIR/report/bioworld.json, bioworld.md (the tables, ready for the README) and
bioworld.png (exact match on test people by arm, visible and held-out question forms, with
each arm's seeds as dots).
"""
import json
import pathlib

from lima_jax import files
from lima_jax.testbed import analysis

COLUMNS = (("clean_data", "clean SFT rows"), ("em_test", "EM test"), ("em_test_visible", "visible forms"),
           ("em_test_heldout", "held-out forms"), ("em_pool", "EM SFT people"),
           ("format_ok_test", "house format"), ("hallucination_test", "wrong fact"),
           ("run_on_test", "run-on"), ("refusal_fake", "refuses fakes"),
           ("false_refusal_test", "refuses real"), ("record_ok", "record style"),
           ("value_ok", "value style"))


def _pct(v) -> str:
  return "-" if v is None or v != v else f"{100 * v:.1f}"


def markdown(v: dict, order: list[str]) -> str:
  head = "| arm | seeds | " + " | ".join(t for _, t in COLUMNS) + " |"
  lines = [head, "|" + "---|" * (len(COLUMNS) + 2)]
  for a in order:
    m = v["arms"][a]
    lines.append(f"| {a} | {m['seeds']} | "
                 + " | ".join(_pct(m.get(k, float("nan"))) for k, _ in COLUMNS) + " |")
  lines += ["", "| prediction | claim | evidence | outcome |", "|---|---|---|---|"]
  for p in v["predictions"]:
    if "diff" in p:
      lo, hi = p["ci95"]
      ev = (f"{p['arms'][0]} - {p['arms'][1]} = {100 * p['diff']:+.1f} points "
            f"[{100 * lo:+.1f}, {100 * hi:+.1f}] over {p['n_people']} people")
    elif "best" in p:
      ev = f"{_pct(p['value'])}% vs best {p['best']} {_pct(p['best_value'])}%"
    elif "value" in p:
      ev = f"{p['arms'][0]} {_pct(p['value'])}%"
    else:
      ev = "arm(s) " + ", ".join(p["arms"]) + " not run"
    lines.append(f"| {p['name']} | {p['claim']} | {ev} | {p['outcome']} |")
  return "\n".join(lines) + "\n"


def figure(v: dict, by_arm: dict, order: list[str], path: pathlib.Path) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np
  fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(order)), 4))
  x = np.arange(len(order))
  for off, key, label in ((-0.2, "em_test_visible", "visible forms"),
                          (0.2, "em_test_heldout", "held-out forms")):
    ax.bar(x + off, [100 * v["arms"][a][key] for a in order], 0.4, label=label)
    for i, a in enumerate(order):
      seeds = [100 * analysis.metrics(rows)[key] for rows in by_arm[a]]
      ax.plot([i + off] * len(seeds), seeds, "k.", ms=4)
  ax.set_xticks(x, order, rotation=30, ha="right")
  ax.set_ylabel("exact match on test people (%)")
  ax.set_ylim(0, 100)
  ax.set_title("Bioworld: SFT arms on people never seen in fine-tuning")
  ax.legend(loc="upper right")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(workdir: pathlib.Path) -> dict:
  by_arm = analysis.study_answers(workdir)
  v = analysis.verdict(by_arm)
  raw = workdir / "prepare" / "world" / "sft" / "raw.jsonl"
  for arm, data in analysis.study_data(workdir).items():
    if arm in v["arms"]:
      v["arms"][arm]["clean_data"] = analysis.clean_share(data, raw) if raw.exists() else None
  order = sorted(by_arm, key=lambda a: (a.startswith("weak"), -v["arms"][a]["em_test"]))
  out = workdir / "report"
  out.mkdir(parents=True, exist_ok=True)
  files.write_json(out / "bioworld.json", v)
  md = markdown(v, order)
  files.write_atomic(out / "bioworld.md", md)
  figure(v, by_arm, order, out / "bioworld.png")
  print(md)
  print(f"wrote {out / 'bioworld.json'}, {out / 'bioworld.md'}, {out / 'bioworld.png'}")
  return v
