"""What an arm's answers say about the world: exact facts, format, stopping, refusals, and
which pre-registered predictions a study's arms support, with intervals over test people.

judge_free (lima_jax.eval) already scores `expected` exactly; this adds what needs the world:
whether a wrong answer is a well-formed wrong fact (a hallucination) or a format failure,
run-ons past a correct answer, refusals, and differences between arms clustered by person
(a person's prompts move together, so prompts are not independent draws).
"""
import json
import pathlib
import re

import numpy as np

from lima_jax.errors import UserError
from lima_jax.testbed import sft
from lima_jax.testbed.world import ATTRS, vocabulary

_REFUSAL = re.compile(r"^I have no information about ")
# Templates never in SFT data ('heldout': answers of worlds built before the paraphrase/novel
# split, whose held-out forms are today's paraphrase forms).
_HELD_OUT = ("paraphrase", "novel", "heldout")


def read_answers(path) -> list[dict]:
  rows = []
  try:
    lines = pathlib.Path(path).read_text(encoding="utf-8").splitlines()
  except OSError as e:
    raise UserError(f"{path}: cannot read ({e.strerror})") from None
  for i, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      r = json.loads(line)
      r["answer"] = r["answer"] if isinstance(r["answer"], str) else r["answer"][0]
      r["id"], r["expected"]  # noqa: B018 (present)
    except (json.JSONDecodeError, KeyError, TypeError, IndexError):
      raise UserError(f"{path}:{i}: not an answer row with id, expected and answer") from None
    rows.append(r)
  return rows


def _house_pattern(attr: str) -> re.Pattern:
  head, tail = sft.HOUSE[attr].split("{v}")
  return re.compile("^" + re.escape(head).replace(re.escape("{n}"), "(?P<n>.+?)")
                    + "(?P<v>.+?)" + re.escape(tail) + "$")


_PATTERNS = {a: _house_pattern(a) for a in ATTRS}


def judge(r: dict, values: dict) -> dict:
  """Labels of one answer (prompt tags + what the answer is)."""
  tags = dict(t.split("=", 1) for t in r.get("tags", []))
  ans, exp = " ".join(r["answer"].split()), " ".join(r["expected"].split())
  out = {"set": tags.get("set"), "attr": tags.get("attr"), "template": tags.get("template"),
         "style": tags.get("style"), "person": r["id"].split("/")[1] if "/" in r["id"] else "",
         "exact": ans == exp, "refusal": bool(_REFUSAL.match(ans)),
         "run_on": ans != exp and ans.startswith(exp)}
  attr = out["attr"]
  if out["set"] in ("test", "pool", "dev") and attr:
    m = _PATTERNS[attr].match(ans)
    want = _PATTERNS[attr].match(exp)
    # House style: the right name and a value of the attribute's kind (a run-on is not).
    out["format_ok"] = bool(m and want and m["n"] == want["n"] and m["v"] in values[attr])
    out["hallucination"] = bool(out["format_ok"] and m["v"] != want["v"])
  return out


def labelled(rows: list[dict]) -> list[dict]:
  voc = vocabulary()
  values = {"birth_year": set(voc["years"]), "birth_city": set(voc["cities"]),
            "university": set(voc["universities"]), "major": set(voc["majors"]),
            "employer": set(voc["employers"]), "employer_city": set(voc["employer_city"].values())}
  return [judge(r, values) for r in rows]


def _rate(items, key):
  vals = [float(i[key]) for i in items if key in i]
  return sum(vals) / len(vals) if vals else float("nan")


def metrics(rows: list[dict]) -> dict:
  """The judge-free figures of one answers file (rates in [0, 1])."""
  lab = labelled(rows)
  test = [x for x in lab if x["set"] == "test"]
  pool = [x for x in lab if x["set"] == "pool"]
  fake = [x for x in lab if x["set"] == "fake"]
  style = [x for x in lab if x["set"] == "style"]
  m = {"em_test": _rate(test, "exact"),
       "em_test_visible": _rate([x for x in test if x["template"] == "visible"], "exact"),
       "em_test_heldout": _rate([x for x in test if x["template"] in _HELD_OUT], "exact"),
       "em_test_paraphrase": _rate([x for x in test if x["template"] == "paraphrase"], "exact"),
       "em_test_novel": _rate([x for x in test if x["template"] == "novel"], "exact"),
       # Visible and paraphrase forms: what "EM test" measured before the novel forms existed.
       "em_test_vp": _rate([x for x in test if x["template"] in ("visible", "paraphrase")],
                           "exact"),
       "em_pool": _rate(pool, "exact"),
       "format_ok_test": _rate(test, "format_ok"),
       "hallucination_test": _rate(test, "hallucination"),
       "run_on_test": _rate(test, "run_on"),
       "false_refusal_test": _rate(test, "refusal"),
       "refusal_fake": _rate(fake, "exact"),
       "record_ok": _rate([x for x in style if x["style"] == "record"], "exact"),
       "value_ok": _rate([x for x in style if x["style"] == "value"], "exact"),
       "n_test": len(test)}
  for a in ATTRS:
    m[f"em_test_{a}"] = _rate([x for x in test if x["attr"] == a], "exact")
  dev = [x for x in lab if x["set"] == "dev"]
  if dev:  # dev people (no SFT row of theirs), when the arm answered eval/dev.jsonl too
    m["em_dev"] = _rate(dev, "exact")
  return m


def per_person(rows_by_seed: list[list[dict]], key: str = "exact",
               template: str | None = None) -> dict:
  """{test person: mean of `key` over its test prompts and the seeds}."""
  acc: dict = {}
  for rows in rows_by_seed:
    for x in labelled(rows):
      if x["set"] == "test" and (template is None or x["template"] == template
                                 or (template == "heldout" and x["template"] in _HELD_OUT)):
        acc.setdefault(x["person"], []).append(float(x[key]))
  return {p: float(np.mean(v)) for p, v in acc.items()}


def paired_difference(a: dict, b: dict, rounds: int = 10000, seed: int = 0) -> dict:
  """Mean of a - b over the people both have, with a 95% bootstrap interval over people."""
  people = sorted(set(a) & set(b))
  if not people:
    raise UserError("no test person in common between the two arms")
  d = {p: a[p] - b[p] for p in people}
  return {"diff": float(np.mean(list(d.values()))), "ci95": mean_interval(d, rounds, seed),
          "n_people": len(people)}


def mean_interval(a: dict, rounds: int = 10000, seed: int = 0) -> list[float]:
  """A 95% bootstrap interval, over people, of the mean of {person: value}."""
  if not a:
    raise UserError("no test person to average over")
  v = np.array([a[p] for p in sorted(a)])
  means = v[np.random.default_rng(seed).integers(len(v), size=(rounds, len(v)))].mean(axis=1)
  return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]



def short(by_arm: dict, arms, seeds: int) -> str:
  """'' when each of `arms` has answers for `seeds` seeds, else which fall short ('ARM has 1
  of 3 seeds', 'ARM not run'). An experiment's outcome waits for its planned seeds: read
  earlier, it would be a result of whichever seeds happened to finish first."""
  out = []
  for a in arms:
    n = len(by_arm.get(a, ()))
    if n < seeds:
      out.append(f"{a} has {n} of {seeds} seeds" if n else f"{a} not run")
  return "; ".join(out)

# Pre-registered before the first full run (configs/experiments.py:bioworld says the same):
# (name, claim, kind, arms, key, x). 'at_least' / 'at_most': the arm's rate (mean over seeds)
# against x; 'near_best': within x of the best strong-base arm; 'diff_at_least': a - b >= x
# with the interval's lower end above 0; 'within': the interval of a - b inside +-x. The key of
# a difference is per person: 'exact' (all test prompts) or 'heldout' (forms never in SFT data:
# paraphrase and novel).
PREDICTIONS = (
    ("P1a", "curated 1K reaches 80% EM on test people", "at_least", ("c1k",), "em_test", 0.80),
    ("P1b", "curated 1K within 5 points of the best arm", "near_best", ("c1k",), "em_test", 0.05),
    ("P1c", "the weak base stays at or under 25% with the curated 1K", "at_most", ("weak_c1k",),
     "em_test", 0.25),
    ("P2", "2K and 32K clean examples within 3 points", "within", ("d32k", "d2k"), "exact", 0.03),
    ("P3", "curated 1K beats noisy 10K by 5 points", "diff_at_least", ("c1k", "n10k"), "exact",
     0.05),
    ("P4", "diverse 2K beats homogeneous 2K by 5 points on held-out forms", "diff_at_least",
     ("d2k", "h2k"), "heldout", 0.05),
    ("P5", "clean 2K beats unfiltered 2K by 3 points", "diff_at_least", ("d2k", "u2k"), "exact",
     0.03),
)


def verdict(by_arm: dict) -> dict:
  """{arm: [answers rows of each seed]} -> per-arm metrics (mean over seeds) and each
  prediction's evidence and outcome ('held', 'failed', or 'not run' when an arm is missing)."""
  arms = {}
  for a, seeds in by_arm.items():
    per_seed = [metrics(rows) for rows in seeds]
    arms[a] = {k: float(np.mean([m[k] for m in per_seed])) for k in per_seed[0]}
    arms[a]["seeds"] = len(seeds)
  out = []
  for name, claim, kind, names, key, x in PREDICTIONS:
    rec = {"name": name, "claim": claim, "arms": list(names)}
    if any(a not in by_arm for a in names):
      out.append({**rec, "outcome": "not run"})
      continue
    if kind in ("at_least", "at_most"):
      v = arms[names[0]][key]
      rec.update(value=v, outcome="held" if (v >= x if kind == "at_least" else v <= x)
                 else "failed")
    elif kind == "near_best":
      strong = [a for a in arms if not a.startswith("weak")]
      best = max(strong, key=lambda a: arms[a][key])
      rec.update(value=arms[names[0]][key], best=best, best_value=arms[best][key],
                 outcome="held" if arms[best][key] - arms[names[0]][key] <= x else "failed")
    else:
      a, b = names
      template = "heldout" if key == "heldout" else None
      d = paired_difference(per_person(by_arm[a], "exact", template),
                            per_person(by_arm[b], "exact", template))
      lo, hi = d["ci95"]
      ok = (d["diff"] >= x and lo > 0) if kind == "diff_at_least" else (-x < lo and hi < x)
      rec.update(d, outcome="held" if ok else "failed")
    out.append(rec)
  return {"arms": arms, "predictions": out}


def clean_share(train_files: list[str], raw_file: pathlib.Path, subset_size: int = 0,
                seed: int = 0) -> float:
  """Share of the SFT rows an arm trained on that are clean (or refusals of fake names): the
  planted labels of the raw pool, looked up by text for rows that a curation step copied
  without them. With `data.subset_size`, only the run's subset counts (every bioworld row is
  usable, so the subset is drawn from all rows in file order, as training draws it)."""
  labels = {}
  for line in raw_file.read_text(encoding="utf-8").splitlines():
    r = json.loads(line)
    labels[tuple(r["conversations"])] = r["noise"]
  noise = []
  for f in train_files:
    for line in pathlib.Path(f).read_text(encoding="utf-8").splitlines():
      r = json.loads(line)
      noise.append(r.get("noise") or labels.get(tuple(r["conversations"]), "unknown"))
  if subset_size:
    from lima_jax.data import batches
    noise = [noise[i] for i in batches.subset_indices(len(noise), seed, subset_size)]
  ok = sum(x in ("clean", "refusal") for x in noise)
  return ok / len(noise) if noise else float("nan")


def study_data(workdir: pathlib.Path) -> dict:
  """{arm: [(its SFT files, data.subset_size, seed) for each trained seed]} from the train
  steps' config.json (a subset is each seed's own)."""
  steps = json.loads((workdir / "manifest.json").read_text())["steps"]
  out: dict = {}
  for rec in steps.values():
    config = pathlib.Path(rec.get("output", "")) / "config.json"
    if rec.get("kind") == "train" and config.exists():
      c = json.loads(config.read_text())
      files = [f for f in c["data"]["train_files"].split(",") if f]
      out.setdefault(rec["arm"], []).append((files, c["data"].get("subset_size", 0), c["seed"]))
  return out


def last_answers(workdir: pathlib.Path) -> dict:
  """{(arm, seed): manifest record of its last answered epoch's answer step}."""
  try:
    steps = json.loads((workdir / "manifest.json").read_text())["steps"]
  except (OSError, json.JSONDecodeError, KeyError) as e:
    raise UserError(f"{workdir}: no readable manifest.json ({e})") from None
  last: dict = {}
  for rec in steps.values():
    if rec.get("kind") == "answer" and rec.get("status") == "done":
      k = (rec["arm"], rec["seed"])
      if k not in last or (rec.get("epoch") or 0) > (last[k].get("epoch") or 0):
        last[k] = rec
  return last


def study_answers(workdir: pathlib.Path) -> dict:
  """{arm: [answers rows per seed]} from a study's manifest (the last answered epoch)."""
  last = last_answers(workdir)
  by_arm: dict = {}
  for (arm, _), rec in sorted(last.items()):
    by_arm.setdefault(arm, []).append(read_answers(pathlib.Path(rec["output"]) / "answers.jsonl"))
  if not by_arm:
    raise UserError(f"{workdir}: no finished answer step yet")
  return by_arm


def main(world: pathlib.Path, answers: list[str], out: str | None) -> None:
  if not (world / "world.json").exists():
    raise UserError(f"--world={world}: no world.json (run `build` first)")
  result = {a: metrics(read_answers(a)) for a in answers}
  text = json.dumps(result, indent=1)
  if out:
    from lima_jax import files
    files.write_atomic(out, text + "\n")
  print(text)
