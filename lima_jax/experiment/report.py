"""A study side by side: arm x metric with 95% intervals, paired differences, figures.

Reads DIR/study.json, DIR/manifest.json and each finished step's results.json,
per_prompt.json and prompt_tags.json (lima_jax.eval's contract, docs/INTERFACES.md); writes
DIR/report/report.json, index.html (self-contained) and the PNGs it shows. The table shows
each protocol's FIELDS, the metric's field and `report.fields`; any field of results.json
may be the metric. One seed: the intervals are eval's own. Several seeds: the value is the
mean over seeds, and the interval of a protocol's per-prompt score (`score` for pairwise,
`mean` for graded, `exact_rate` and `exact_rate:TAG` for judge_free, over the prompts with
TAG) is a two-level bootstrap (seeds, then prompts within each drawn seed); other fields show
the seeds' range. Paired differences use the same per-prompt scores, so a pair of arms that
answered different prompts files (an arm's own `prompts`) is skipped, with a note.
"""
import base64
import html
import json
import os
import pathlib

import numpy as np

from lima_jax import files
from lima_jax.errors import UserError
from lima_jax.experiment.report_figures import figures

FIELDS = {  # shown when results.json has them; any other field through report.fields
    "judge_free": ("exact_rate", "stopped_rate", "mean_words", "empty_rate", "looping_rate"),
    "lima_pairwise": ("win_rate", "tie_rate", "loss_rate", "equal_or_better", "score"),
    "lima_likert": ("mean",),
    "mt_bench": ("mean",),
    "alpaca_eval": ("win_rate", "lc_win_rate"),
}
PER_PROMPT = {"score", "mean"}  # fields that are the mean of per_prompt.json's scores


def per_prompt_tag(protocol: str, field: str) -> str | None:
  """None when `field` is not the mean of per_prompt.json's scores; else the tag whose
  prompts it is over ('' = all)."""
  if protocol == "judge_free":
    if field == "exact_rate":
      return ""
    return field.split(":", 1)[1] if field.startswith("exact_rate:") else None
  return "" if field in PER_PROMPT else None


def _scores(entry, tag: str) -> dict:
  """An entry's per-prompt scores, over the prompts with `tag` ('' = all)."""
  per_prompt = entry[1]
  if not tag:
    return per_prompt
  tags = entry[2] if len(entry) > 2 else {}
  return {k: v for k, v in per_prompt.items() if tag in tags.get(k, ())}


def _read_json(path: pathlib.Path):
  try:
    return json.loads(path.read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise UserError(f"{path}: cannot read ({e})") from None


def collect(workdir: pathlib.Path) -> tuple[dict, dict]:
  """(study config dict, {(arm, protocol, epoch): {seed: (results, per_prompt)}})."""
  if not (workdir / "manifest.json").exists():
    raise UserError(f"{workdir}: no manifest.json (run the study first)")
  study = _read_json(workdir / "study.json")
  steps = _read_json(workdir / "manifest.json")["steps"]
  found: dict = {}
  for rec in steps.values():
    if rec.get("status") != "done" or rec.get("kind") not in ("answer", "judge"):
      continue
    out = pathlib.Path(rec["output"])
    per_prompt, tags = out / "per_prompt.json", out / "prompt_tags.json"
    found.setdefault((rec["arm"], rec["protocol"], rec["epoch"]), {})[rec["seed"]] = (
        _read_json(out / "results.json"),
        _read_json(per_prompt) if per_prompt.exists() else {},
        _read_json(tags) if tags.exists() else {})
  if not found:
    raise UserError(f"{workdir}: no finished answer or judge step yet")
  return study, found


def _bootstrap_seeds_prompts(per_seed: list[dict], rounds: int, rng) -> list[float]:
  """95% interval of the mean score, drawing seeds, then prompts within each drawn seed."""
  tables = [np.array(list(p.values()), float) for p in per_seed if p]
  if not tables:
    return [None, None]
  means = np.empty(rounds)
  for r in range(rounds):
    drawn = rng.integers(len(tables), size=len(tables))
    means[r] = np.mean([tables[i][rng.integers(len(tables[i]), size=len(tables[i]))].mean()
                        for i in drawn])
  return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def figure(by_seed: dict, field: str, rounds: int, rng, protocol: str = "") -> dict:
  """{value, ci95, seeds, per_seed} of one field for one arm, protocol and epoch."""
  values = [e[0].get(field) for e in by_seed.values()]
  values = [v for v in values if v is not None]
  if not values:
    return {"value": None, "ci95": [None, None], "seeds": len(by_seed), "per_seed": []}
  tag = per_prompt_tag(protocol, field)
  if len(by_seed) == 1:
    entry = next(iter(by_seed.values()))
    ci = entry[0].get(f"{field}_ci95")
    if ci is None and tag is not None:
      ci = _bootstrap_seeds_prompts([_scores(entry, tag)], rounds, rng)
    return {"value": values[0], "ci95": ci or [None, None], "seeds": 1, "per_seed": values}
  ci = (_bootstrap_seeds_prompts([_scores(e, tag) for e in by_seed.values()], rounds, rng)
        if tag is not None else [min(values), max(values)])
  return {"value": float(np.mean(values)), "ci95": ci, "seeds": len(by_seed),
          "per_seed": values, "ci_method": "seeds x prompts" if tag is not None
          else "range over seeds"}


def paired(found: dict, a: str, b: str, protocol: str, epoch, rounds: int, rng,
           baseline: str = "", field: str = "", epoch_b=None) -> dict:
  """Mean per-prompt score of arm a minus arm b on the prompts both have (seeds averaged
  per prompt), with a paired bootstrap over prompts: a at `epoch`, b at `epoch_b` (default
  the same). Pairwise scores are against the baseline arm, which against itself scores 0.5
  (a tie) on every prompt. judge_free's per-prompt score is the exact share; `field`
  exact_rate:TAG keeps the prompts with TAG."""
  tag = per_prompt_tag(protocol, field) or ""
  epochs = {a: epoch, b: epoch if epoch_b is None else epoch_b}

  def scores(arm):
    per = [_scores(e, tag) for e in found.get((arm, protocol, epochs[arm]), {}).values()]
    per = [p for p in per if p]
    keys = set.intersection(*(set(p) for p in per)) if per else set()
    return {k: float(np.mean([p[k] for p in per])) for k in keys}
  sa, sb = scores(a), scores(b)
  if baseline and protocol in ("lima_pairwise", "alpaca_eval"):
    if a == baseline and not sa:
      sa = {k: 0.5 for k in sb}
    if b == baseline and not sb:
      sb = {k: 0.5 for k in sa}
  shared = sorted(set(sa) & set(sb))
  score = ({"judge_free": "exact_rate" + (f":{tag}" if tag else ""), "lima_pairwise": "score",
            "alpaca_eval": "preference"}.get(protocol, "mean"))
  head = {"pair": f"{a}-{b}", "protocol": protocol, "score": score, "epoch": epoch,
          "epochs": [epochs[a], epochs[b]]}
  if not shared:
    return {**head, "n_prompts": 0, "difference": None, "ci95": [None, None]}
  d = np.array([sa[k] - sb[k] for k in shared])
  boot = [d[rng.integers(len(d), size=len(d))].mean() for _ in range(rounds)]
  return {**head, "n_prompts": len(shared), "difference": float(d.mean()),
          "ci95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))]}


def _metric(spec: str) -> tuple[str, str]:
  protocol, _, field = spec.partition(".")
  if not protocol or not field:
    raise UserError(f"config report.metric: {spec!r} is not PROTOCOL.FIELD (e.g. "
                    "judge_free.exact_rate:set=test)")
  return protocol, field


def _fields(protocol: str, metric: tuple[str, str], extra) -> list[str]:
  """The table's fields of one protocol: its FIELDS, the metric's, then report.fields
  ('FIELD' for every protocol, 'PROTOCOL.FIELD' for one)."""
  out = list(FIELDS.get(protocol, ()))
  if metric[0] == protocol:
    out.append(metric[1])
  for spec in extra:
    p, dot, f = spec.partition(".")
    if not dot:
      out.append(spec)
    elif p == protocol:
      out.append(f)
  return list(dict.fromkeys(out))


def build(workdir: pathlib.Path) -> dict:
  study, found = collect(workdir)
  rounds, rng = study["report"]["bootstrap_rounds"], np.random.default_rng(0)
  metric = _metric(study["report"]["metric"])
  extra = tuple(study["report"].get("fields") or ())
  have = {}  # protocol -> fields any of its results.json has
  for (_, protocol, _), by_seed in found.items():
    have.setdefault(protocol, set()).update(k for e in by_seed.values() for k in e[0])
  if metric[0] in have and metric[1] not in have[metric[0]]:
    fields = sorted(k for k in have[metric[0]] if not k.endswith("_ci95"))
    raise UserError(f"config report.metric: no {metric[0]} results.json has {metric[1]!r} "
                    f"(they have {', '.join(fields)})"
                    + ("; exact_rate needs 'expected' (and the tag) in the prompts rows"
                       if metric[1].startswith("exact_") else ""))
  rows = []
  for (arm, protocol, epoch), by_seed in sorted(found.items(), key=lambda kv: (
      list(study["arms"]).index(kv[0][0]), kv[0][1], kv[0][2])):
    for field in _fields(protocol, metric, extra):
      if field not in have[protocol]:  # e.g. exact_rate without `expected` in the prompts
        continue
      rows.append({"arm": arm, "protocol": protocol, "epoch": epoch, "field": field,
                   **figure(by_seed, field, rounds, rng, protocol)})
  shown = {f"{r['protocol']}.{r['field']}" for r in rows} | {r["field"] for r in rows}
  missing = [spec for spec in extra if spec not in shown]
  last = {arm: max(e for (a, _, e) in found if a == arm) for (arm, _, _) in found}
  metric_protocol = metric[0]
  pairs = []
  for spec in study["report"]["pairs"]:
    a, _, b = spec.partition("-")
    if a not in study["arms"] or b not in study["arms"]:
      raise UserError(f"config report.pairs: {spec!r} is not 'ARM-ARM' of this study")
    prompts = [study["arms"][arm].get("prompts") or study.get("prompts", "") for arm in (a, b)]
    if len({os.path.normpath(p) for p in prompts}) > 1:  # each arm answered its own file
      pairs.append({"pair": spec, "protocol": metric_protocol, "epoch": None,
                    "epochs": [None, None], "n_prompts": 0, "difference": None,
                    "ci95": [None, None],
                    "skipped": f"{a} answered {prompts[0]}, {b} {prompts[1]}"})
      continue
    # Arms on one epoch schedule meet at the last epoch both have answered; arms trained for
    # different epochs (matched examples seen) each at their own last one.
    epoch = min(last.get(a, 0), last.get(b, 0))
    both = all((arm, metric_protocol, epoch) in found for arm in (a, b))
    ea, eb = (epoch, epoch) if both else (last.get(a, 0), last.get(b, 0))
    pairs.append(paired(found, a, b, metric_protocol, ea, rounds, rng,
                        study.get("baseline_arm", ""), field=metric[1], epoch_b=eb))
  return {"study": study["name"], "metric": study["report"]["metric"], "rows": rows,
          "baseline_arm": study.get("baseline_arm", ""), "missing_fields": missing,
          "pairs": pairs, "last_epoch": last,
          "size_arms": list(study["report"].get("size_arms") or ()),
          "n_examples": {arm: a["n_examples"] for arm, a in study["arms"].items()}}


def _epochs(pair: dict) -> str:
  ea, eb = pair["epochs"]
  return str(ea) if ea == eb else f"{ea} / {eb}"


def _fmt(v) -> str:
  if v is None:
    return "-"
  return f"{v:.3f}" if isinstance(v, float) and abs(v) < 100 else f"{v:,.1f}"


def _pair_row(p: dict) -> str:
  """A row of the paired differences' table."""
  esc = html.escape
  if p.get("skipped"):
    cells = f"<td colspan=5>skipped, not the same prompts: {esc(p['skipped'])}</td>"
  else:
    cells = (f"<td>{esc(p['protocol'])}<br><small>{esc(p.get('score', ''))}</small></td>"
             f"<td>{_epochs(p)}</td><td>{p['n_prompts']}</td><td>{_fmt(p['difference'])}</td>"
             f"<td>[{_fmt(p['ci95'][0])}, {_fmt(p['ci95'][1])}]</td>")
  return f"<tr><td>{esc(p['pair'])}</td>{cells}</tr>"


def render(rep: dict, pngs: dict[str, bytes]) -> str:
  esc = html.escape
  cols = sorted({(r["protocol"], r["field"]) for r in rep["rows"]})
  cells = {(r["arm"], r["epoch"], r["protocol"], r["field"]): r for r in rep["rows"]}
  keys = sorted({(r["arm"], r["epoch"]) for r in rep["rows"]},
                key=lambda k: (list(rep["n_examples"]).index(k[0]), k[1]))
  head = "".join(f"<th>{esc(p)}<br>{esc(f)}</th>" for p, f in cols)
  body = []
  for arm, epoch in keys:
    tds = []
    for p, f in cols:
      r = cells.get((arm, epoch, p, f))
      if r is None:
        baseline = arm == rep.get("baseline_arm") and p in ("lima_pairwise", "alpaca_eval")
        tds.append("<td><small>baseline</small></td>" if baseline else "<td></td>")
        continue
      lo, hi = r["ci95"]
      ci = f"<br><small>[{_fmt(lo)}, {_fmt(hi)}]</small>" if lo is not None else ""
      tds.append(f"<td>{_fmt(r['value'])}{ci}</td>")
    seeds = max(cells[k]["seeds"] for k in cells if k[:2] == (arm, epoch))
    body.append(f"<tr><th>{esc(arm)}</th><td>{epoch}</td><td>{seeds}</td>{''.join(tds)}</tr>")
  pairs = "".join(_pair_row(p) for p in rep["pairs"])
  imgs = "".join(f'<figure><img src="data:image/png;base64,{base64.b64encode(b).decode()}" '
                 f'alt="{esc(n)}"><figcaption>{esc(n)}</figcaption></figure>'
                 for n, b in pngs.items())
  return f"""<!doctype html><html><head><meta charset="utf-8">
<title>lima_jax study {esc(rep['study'])}</title><style>
body{{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}}
table{{border-collapse:collapse;margin:1em 0;font-size:13px}}td,th{{border:1px solid #ccc;padding:4px 8px;
text-align:right;vertical-align:top}}small{{color:#666}}figure{{display:inline-block;margin:0 1em 1em 0}}
</style></head><body><h1>Study {esc(rep['study'])}</h1>
<p>Each cell: value and its 95% interval. Figures' metric: <code>{esc(rep['metric'])}</code>.</p>
<table><tr><th>arm</th><th>epoch</th><th>seeds</th>{head}</tr>{''.join(body)}</table>
<h2>Paired differences of the per-prompt score (same prompts)</h2><table><tr><th>pair</th><th>protocol</th>
<th>epoch</th><th>prompts</th><th>difference</th><th>95% interval</th></tr>{pairs}</table>
{imgs}</body></html>"""


def main(workdir: pathlib.Path) -> None:
  rep = build(workdir)
  out = workdir / "report"
  out.mkdir(parents=True, exist_ok=True)
  pngs = figures(rep, workdir)
  for name, data in pngs.items():
    files.write_atomic(out / name, data)
  files.write_json(out / "report.json", rep)
  files.write_atomic(out / "index.html", render(rep, pngs))
  print(f"wrote {out / 'index.html'} ({len({r['arm'] for r in rep['rows']})} arms, "
        f"{len(rep['pairs'])} paired differences, {len(pngs)} figures)")
  for spec in rep["missing_fields"]:
    print(f"  report.fields: {spec!r} is in no finished step's results.json")
  for p in rep["pairs"]:
    if p.get("skipped"):
      print(f"  {p['pair']}: skipped, not the same prompts ({p['skipped']})")
    elif p["difference"] is None:
      print(f"  {p['pair']}: no prompt scored by both arms at epoch {_epochs(p)} (not run yet?)")
    else:
      print(f"  {p['pair']} ({p['protocol']} {p['score']}, epoch {_epochs(p)}, "
            f"{p['n_prompts']} prompts): "
            f"{p['difference']:+.3f} [{p['ci95'][0]:+.3f}, {p['ci95'][1]:+.3f}]")
