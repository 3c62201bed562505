"""Renders `report.figures` as one self-contained HTML page: inline CSS and SVG, no assets.

The page must open from an e-mail attachment or a bucket, offline, so nothing is fetched:
charts are drawn here as SVG and every string from the data is escaped.
"""
import html
import json
from typing import Any, Sequence

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:3px 8px;
text-align:right}th{background:#f4f4f4}td.l,th.l{text-align:left}
pre{background:#f6f6f6;padding:.6em;overflow-x:auto;white-space:pre-wrap;font-size:12px}
.ex{border:1px solid #ddd;margin:.6em 0;padding:.4em .8em}.muted{color:#777}
.key span{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px;vertical-align:-1px}
"""
_COLOURS = ("#8aa4c8", "#d9822b", "#59a14f", "#b07aa1")


def _e(value: Any) -> str:
  return html.escape(str(value), quote=True)


def _num(value: Any) -> str:
  if isinstance(value, float):
    return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.0f}"
  return f"{value:,}" if isinstance(value, int) else _e(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], left: int = 1) -> str:
  head = "".join(f"<th class=l>{_e(h)}</th>" if i < left else f"<th>{_e(h)}</th>"
                 for i, h in enumerate(header))
  # Text columns read left-aligned, numbers right-aligned so their digits line up.
  body = "".join("<tr>" + "".join(f"<td class=l>{_e(c)}</td>" if i < left or isinstance(c, str)
                                  else f"<td>{_num(c)}</td>" for i, c in enumerate(row)) +
                 "</tr>" for row in rows)
  return f"<table><tr>{head}</tr>{body}</table>"


def _bars(labels: Sequence[str], series: dict[str, Sequence[float]], *, unit: str = "") -> str:
  """Grouped vertical bars, one group per label, one colour per series (SVG)."""
  width, height, pad = 900, 240, 40
  peak = max((v for vals in series.values() for v in vals), default=0) or 1
  group = (width - pad) / max(len(labels), 1)
  bar = group * 0.8 / max(len(series), 1)
  parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 60}" '
           f'role="img"><line x1="{pad}" y1="{height}" x2="{width}" y2="{height}" '
           'stroke="#999"/>']
  for s, (name, values) in enumerate(series.items()):
    for i, v in enumerate(values):
      h = (height - 20) * v / peak
      x = pad + i * group + group * 0.1 + s * bar
      parts.append(f'<rect x="{x:.1f}" y="{height - h:.1f}" width="{bar:.1f}" height="{h:.1f}" '
                   f'fill="{_COLOURS[s % len(_COLOURS)]}"><title>{_e(name)} {_e(labels[i])}: '
                   f'{v:.3g}{_e(unit)}</title></rect>')
  tilt = len(labels) > 6  # many narrow groups: slanted labels, so that they do not overlap
  for i, label in enumerate(labels):
    x = pad + (i + 0.5) * group
    place = (f'text-anchor="end" transform="rotate(-30 {x:.1f} {height + 14})"' if tilt
             else 'text-anchor="middle"')
    parts.append(f'<text x="{x:.1f}" y="{height + 14}" font-size="11" {place}>{_e(label)}'
                 '</text>')
  parts.append(f'<text x="4" y="14" font-size="11">{peak:.3g}{_e(unit)}</text></svg>')
  key = "".join(f'<span style="background:{_COLOURS[s % len(_COLOURS)]}"></span>{_e(name)}'
                for s, name in enumerate(series))
  return f'<div class=key>{key}</div>{"".join(parts)}'


def _stages(fig: dict) -> str:
  rows = [["pool (read)", "", fig["pool"]["records"], "", "", "", ""]]
  for st in fig["stages"]:
    n_in, n_out = sum(st["before"].values()), sum(st["after"].values())
    reasons = "; ".join(f"{k}: {v}" for k, v in st["reasons"].items()) or st["note"]
    rows.append([st["name"], n_in, n_out, n_in - n_out, st["changed"],
                 round(st["seconds"], 2), reasons])
  sources = sorted(fig["pool"]["per_source"])
  per = [["pool"] + [fig["pool"]["per_source"].get(s, 0) for s in sources]]
  per += [[st["name"]] + [st["after"].get(s, 0) for s in sources] for st in fig["stages"]]
  return (_table(["stage", "in", "out", "removed", "rewritten", "seconds", "why"], rows) +
          "<p>Records per source after each stage:</p>" +
          _table(["stage"] + sources, per))


def _lengths(fig: dict) -> str:
  lengths = fig["lengths"]
  edges = lengths["edges"]
  labels = [f"{a}-{b}" for a, b in zip(edges, edges[1:])] + [f"{edges[-1]}+"]
  series = {}
  for name in ("pool", "chosen"):
    total = sum(lengths[name]) or 1
    series[name] = [c / total for c in lengths[name]]
  means = _table(["", "pool", "candidates", "chosen"],
                 [["mean chars"] + [lengths["mean"][k] for k in ("pool", "candidates", "chosen")],
                  ["median chars"] + [lengths["median"][k]
                                      for k in ("pool", "candidates", "chosen")]])
  return _bars(labels, series) + means


def _diversity(fig: dict) -> str:
  div = fig["diversity"]
  if not div:
    return "<p class=muted>Not computed (report.diversity=False).</p>"
  names = ("mean_pairwise_distance", "mean_nearest_distance", "max_nearest_distance",
           "cluster_coverage")
  rows = [[n, div["chosen"][n], div["random"][n]] for n in names]
  return (f"<p>Embedder <b>{_e(div['embedder'])}</b> on the {_e(div['field'])}, "
          f"{div['embedding_dims']} dims, {div['candidates']:,} candidates, "
          f"{div['clusters']} k-means clusters. Higher pairwise distance and coverage, lower "
          "nearest distance: more diverse.</p>" +
          _table(["figure", "chosen", "random sample"], rows) +
          _bars(["pairwise distance", "nearest distance", "cluster coverage"],
                {"chosen": [div["chosen"][n] for n in names if n != "max_nearest_distance"],
                 "random sample": [div["random"][n] for n in names
                                   if n != "max_nearest_distance"]}))


def _examples(items: Sequence[dict]) -> str:
  out = []
  for ex in items:
    scores = ", ".join(f"{k}={v:.3g}" for k, v in ex["scores"].items())
    out.append(f"<div class=ex><b>{ex['score']:.4g}</b> <span class=muted>{_e(ex['source'])} "
               f"· {_e(ex['origin'])} · {ex['response_chars']:,} chars · {_e(scores)}</span>"
               f"<pre>{_e(ex['prompt'])}</pre><pre>{_e(ex['response'])}</pre></div>")
  return "".join(out) or "<p class=muted>none</p>"


def render(fig: dict) -> str:
  chosen = fig["chosen"]
  dup = fig["duplicates"]
  dup_rows = [[d["stage"], d["origin"], d["reason"]] for d in dup["examples"]]
  skipped = ("<p>Skipped malformed rows: " + _e(fig["pool"]["skipped_count"]) + "</p><pre>" +
             _e("\n".join(fig["pool"]["skipped_rows"])) + "</pre>"
             if fig["pool"]["skipped_count"] else "")
  return "".join([
      "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
      f"<title>lima_jax curation: {chosen['n']} chosen</title><style>{_CSS}</style></head><body>",
      f"<h1>Curation report: {chosen['n']:,} of {fig['pool']['records']:,} records</h1>",
      f"<pre>{_e(fig['command'])}</pre>",
      "<h2>Chosen</h2>",
      _table(["source", "pool", "chosen"],
             [[s, fig["pool"]["per_source"].get(s, 0), chosen["per_source"].get(s, 0)]
              for s in sorted(set(fig["pool"]["per_source"]) | set(chosen["per_source"]))]),
      f"<p>Mean response length {chosen['mean_response_chars']:,.0f} chars; mean score "
      f"{chosen['mean_score']:.4g}.</p>", skipped,
      "<h2>Stages</h2>", _stages(fig),
      "<h2>Duplicates and test overlap</h2>",
      f"<p>exact {dup['exact_dedup']:,}, near {dup['near_dedup']:,}, test overlap "
      f"{dup['test_overlap']:,} removed.</p>",
      _table(["stage", "record", "reason"], dup_rows, left=3) if dup_rows else "",
      "<h2>Response length (share of records)</h2>", _lengths(fig),
      "<h2>Diversity</h2>", _diversity(fig),
      "<h2>Top examples by score</h2>", _examples(fig["examples"]["top"]),
      "<h2>Bottom examples by score</h2>", _examples(fig["examples"]["bottom"]),
      "<h2>Config</h2>", f"<pre>{_e(json.dumps(fig['config'], indent=1))}</pre>",
      "</body></html>\n",
  ])
