"""E1 (issue 36): what each selector's 1K of the raw pool holds, against the planted labels.

A curate arm's step writes `arms/ARM/data.scores.jsonl` (lima_jax.curate --scores): every pool
row's origin (`raw.jsonl:LINE`), the selector's score and whether it was chosen. The planted
label of each row is read from the world's raw pool by line. Per arm and noise kind:

  share     the kind's share of the chosen rows (the pool's share beside it);
  removed   1 - share / pool share: how much of the kind the selection cut, against taking
            rows at random (0) or none of the kind (1);
  auroc     how well the selector's score puts clean rows before the kind's rows (1: every
            clean row first, 0.5: chance), over the rows it scored; the orientation is the
            selector's own (`PREFERS`).

Precision is the chosen rows' clean share. Exact match on test people comes from the verdict's
arm table, with a 95% bootstrap interval over test people; differences are paired by person.
"""
import json
import pathlib

from lima_jax.curate import agreement
from lima_jax.errors import UserError
from lima_jax.testbed import analysis, sft

# Which end of a selector's score it keeps: +1 the highest (ifd: IFD at most 1, influence:
# similarity to the target), -1 the lowest (loss, consistency: NLL).
PREFERS = {"ifd": 1, "influence": 1, "loss": -1, "consistency": -1}
KINDS = tuple(k for k in sft.NOISE if k != "clean")
# The arms each prediction reads, and the seeds bioworld_e1 trains each with.
NEEDS = {"E1a": ("consistency1k", "loss1k"), "E1b": ("consistency1k", "loss1k", "oracle1k"),
         "E1c": ("ifd_base1k", "random1k"), "E1d": ("influence1k", "random1k", "oracle1k"),
         "R1": ("ifd_base1k", "random1k"), "R2": ("loss1k",)}
SEEDS = 3

# Frozen before the first run (configs/experiments.py:bioworld_e1 says the same in words).
# (name, claim, test) where test reads the figures below; 'refutes' entries refute when true.
PREDICTIONS = (
    ("E1a", "consistency1k and loss1k remove >= 90% of borrowed and other-attribute rows, "
     "AUROC >= 0.95 on each"),
    ("E1b", "consistency1k and loss1k within 3 points of oracle1k (EM)"),
    ("E1c", "ifd_base1k holds borrowed rows above their pool share and scores at or below "
     "random1k"),
    ("E1d", "influence1k lands between random1k and oracle1k"),
    ("R1", "refuted if ifd_base1k holds fewer borrowed rows than random1k"),
    ("R2", "refuted if loss1k's AUROC on borrowed rows is under 0.8"),
)


def _line(origin: str) -> int:
  try:
    return int(origin.rsplit(":", 1)[1])
  except (IndexError, ValueError):
    raise UserError(f"origin {origin!r}: expected 'path:line'") from None


def read_labels(raw_file: pathlib.Path) -> list[str]:
  return [json.loads(line)["noise"] for line in raw_file.read_text().splitlines()]


def selector_figures(scores_file: pathlib.Path, labels: list[str], selector: str) -> dict:
  """precision, and share / removed / auroc per noise kind, of one curate step's scores."""
  rows = [json.loads(line) for line in scores_file.read_text().splitlines()]
  if len(rows) != len(labels):
    raise UserError(f"{scores_file}: {len(rows)} rows, but the raw pool has {len(labels)}")
  lab = [labels[_line(r["origin"]) - 1] for r in rows]
  chosen = [x for r, x in zip(rows, lab) if r["chosen"]]
  pool = {k: lab.count(k) / len(lab) for k in sft.NOISE}
  out = {"selector": selector, "n_chosen": len(chosen), "pool_share": pool,
         "precision": chosen.count("clean") / len(chosen) if chosen else float("nan"),
         "filtered": sum(r.get("stage") is not None for r in rows), "kinds": {}}
  sign = PREFERS.get(selector)
  # IFD above 1 (the preset's max_ifd) is never kept: it ranks below every eligible row.
  scored = [(-1e9 if selector == "ifd" and r["score"] > 1 else sign * r["score"], x)
            for r, x in zip(rows, lab) if sign is not None and r["score"] is not None]
  for k in KINDS:
    share = chosen.count(k) / len(chosen) if chosen else float("nan")
    fig = {"share": share, "removed": 1 - share / pool[k] if pool[k] else float("nan")}
    good = [s for s, x in scored if x == "clean"]
    bad = [s for s, x in scored if x == k]
    fig["auroc"] = agreement.auroc(good, bad, higher_is_better=True) if good and bad else None
    out["kinds"][k] = fig
  return out


def curate_arms(workdir: pathlib.Path) -> dict:
  """{arm: (its selector, its scores file)} for the study's curate steps that wrote scores."""
  steps = json.loads((workdir / "manifest.json").read_text())["steps"]
  out = {}
  for rec in steps.values():
    if rec.get("kind") != "curate" or rec.get("status") != "done":
      continue
    preset = next((a.split(":", 1)[1] for a in rec["command"]
                   if a.startswith("--config=configs/curate.py:")), "")
    scores = pathlib.Path(rec["output"]).with_suffix(".scores.jsonl")
    if scores.exists():
      out[rec["arm"]] = (preset, scores)
  return out


def verdict(workdir: pathlib.Path, v: dict, by_arm: dict) -> dict:
  """The E1 section of a study's verdict: figures per selector arm and the predictions."""
  raw = workdir / "prepare" / "world" / "sft" / "raw.jsonl"
  labels = read_labels(raw)
  figs = {a: selector_figures(f, labels, p) for a, (p, f) in sorted(curate_arms(workdir).items())}
  people: dict = {}  # per_person of each arm, judged once however many pairs name it

  def person(a):
    if a not in people:
      people[a] = analysis.per_person(by_arm[a])
    return people[a]

  for arm, fig in figs.items():
    fig["em_test"] = v["arms"].get(arm, {}).get("em_test")
    fig["em_ci95"] = analysis.mean_interval(person(arm)) if arm in by_arm else None

  def diff(a, b):
    if a not in by_arm or b not in by_arm:
      return None
    return analysis.paired_difference(person(a), person(b))

  em = {a: v["arms"][a]["em_test"] for a in by_arm}
  diffs = {f"{a}-{b}": diff(a, b) for a, b in (
      ("consistency1k", "oracle1k"), ("loss1k", "oracle1k"), ("ifd_base1k", "random1k"),
      ("influence1k", "random1k"), ("oracle1k", "influence1k"), ("loss1k", "random1k"),
      ("consistency1k", "random1k"), ("oracle1k", "random1k"), ("oracle1k", "c1k"),
      ("influence1k", "c1k"))}
  outcomes = []
  for name, claim in PREDICTIONS:
    wait = analysis.short(by_arm, NEEDS[name], SEEDS)
    outcomes.append({"name": name, "claim": claim, "outcome": f"not yet ({wait})" if wait
                     else _outcome(name, figs, em, diffs)})
  return {"selectors": figs, "differences": diffs, "predictions": outcomes}


def _outcome(name: str, figs: dict, em: dict, diffs: dict) -> str:
  need = NEEDS[name]  # each with its seeds: `verdict` waits for them
  if name == "E1a":
    ok = all(figs[a]["kinds"][k]["removed"] >= 0.9 and (figs[a]["kinds"][k]["auroc"] or 0) >= 0.95
             for a in need for k in ("borrowed", "other_attr"))
  elif name == "E1b":
    ok = all(abs(em[a] - em["oracle1k"]) <= 0.03 for a in need[:2])
  elif name == "E1c":
    f = figs["ifd_base1k"]
    ok = (f["kinds"]["borrowed"]["share"] > f["pool_share"]["borrowed"]
          and em["ifd_base1k"] <= em["random1k"])
  elif name == "E1d":
    ok = em["random1k"] < em["influence1k"] < em["oracle1k"]
  elif name == "R1":
    return ("refuted" if figs["ifd_base1k"]["kinds"]["borrowed"]["share"]
            < figs["random1k"]["kinds"]["borrowed"]["share"] else "not refuted")
  else:
    auroc = figs["loss1k"]["kinds"]["borrowed"]["auroc"]
    return "refuted" if auroc is not None and auroc < 0.8 else "not refuted"
  return "held" if ok else "failed"


def _pct(x) -> str:
  return "-" if x is None or x != x else f"{100 * x:.1f}"


def markdown(e1: dict) -> str:
  kinds = ("borrowed", "other_attr", "format", "run_on", "truncated")
  head = ["selector arm", "precision", "EM test [95%]"] + [f"{k} removed / AUROC" for k in kinds]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for arm, f in sorted(e1["selectors"].items(), key=lambda x: -(x[1]["em_test"] or 0)):
    ci = f.get("em_ci95")
    em = _pct(f["em_test"]) + (f" [{_pct(ci[0])}, {_pct(ci[1])}]" if ci else "")
    cells = [arm, _pct(f["precision"]), em]
    for k in kinds:
      auroc = f["kinds"][k]["auroc"]
      cells.append(f"{_pct(f['kinds'][k]['removed'])} / "
                   + ("-" if auroc is None else f"{auroc:.3f}"))
    lines.append("| " + " | ".join(cells) + " |")
  lines += ["", "| difference | EM points [95% interval over test people] |", "|---|---|"]
  for k, d in e1["differences"].items():
    if d:
      lines.append(f"| {k} | {100 * d['diff']:+.1f} [{100 * d['ci95'][0]:+.1f}, "
                   f"{100 * d['ci95'][1]:+.1f}] |")
  lines += ["", "| prediction | claim | outcome |", "|---|---|---|"]
  lines += [f"| {p['name']} | {p['claim']} | {p['outcome']} |" for p in e1["predictions"]]
  return "\n".join(lines) + "\n"
