"""DIR/report.html (self-contained: the figure is inlined) and the figure itself.

Pairwise runs draw winrates.png in the style of LIMA's Figure 1 (one stacked bar per
baseline: the system wins / neither / the baseline wins); graded runs draw scores.png (the
grade distribution, mean and interval). The page shows the figures table with intervals,
then every prompt side by side with the judge's reasons for both orders.
"""
import base64
import html
import io

_COLORS = {"win": "#2b7bba", "tie": "#c9c9c9", "loss": "#d9663a"}


def _fmt(v, ci=None) -> str:
  if v is None:
    return "-"
  if isinstance(v, float):
    text = f"{v:.3f}"
  else:
    text = html.escape(str(v))
  if ci and None not in ci:
    text += f" <span class=ci>[{ci[0]:.3f}, {ci[1]:.3f}]</span>"
  return text


def winrate_figure(rows, path, title="") -> bytes:
  """rows: [(label, wins, ties, losses)]; writes a PNG and returns its bytes."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(7.5, 0.8 + 0.6 * len(rows)), dpi=120)
  for i, (label, w, t, l) in enumerate(rows):
    n = max(w + t + l, 1)
    left = 0.0
    for name, count, text in (("win", w, "system wins"), ("tie", t, "neither significantly "
                              "better"), ("loss", l, "baseline wins")):
      share = count / n
      ax.barh(i, share, left=left, color=_COLORS[name], edgecolor="white",
              label=text if i == 0 else None)
      if share >= 0.06:
        ax.text(left + share / 2, i, f"{100 * share:.0f}%", ha="center", va="center",
                fontsize=9, color="black" if name == "tie" else "white")
      left += share
  ax.set_yticks(range(len(rows)), [r[0] for r in rows])
  ax.set_xlim(0, 1)
  ax.invert_yaxis()
  ax.set_xticks([0, .25, .5, .75, 1], ["0%", "25%", "50%", "75%", "100%"])
  ax.legend(ncol=3, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False, fontsize=9)
  if title:
    ax.set_title(title, fontsize=10, pad=24)
  for side in ("top", "right"):
    ax.spines[side].set_visible(False)
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format="png")
  plt.close(fig)
  data = buf.getvalue()
  with open(path, "wb") as f:
    f.write(data)
  return data


def _score_figure(scores, mean, ci, path, top) -> bytes:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6.5, 2.8), dpi=120)
  values = list(range(1, top + 1))
  counts = [sum(1 for s in scores if round(s) == v) for v in values]
  ax.bar(values, counts, color=_COLORS["win"])
  if mean is not None:
    ax.axvline(mean, color="black", lw=1)
    if ci and None not in ci:
      ax.axvspan(ci[0], ci[1], color="black", alpha=0.15)
    ax.set_title(f"mean {mean:.2f} (95% CI {ci[0]:.2f}-{ci[1]:.2f})", fontsize=10)
  ax.set_xticks(values)
  ax.set_xlabel("grade")
  ax.set_ylabel("answers")
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format="png")
  plt.close(fig)
  with open(path, "wb") as f:
    f.write(buf.getvalue())
  return buf.getvalue()


def _table(out: dict) -> str:
  rows = []
  for key, value in out.items():
    if key.endswith("_ci95") or isinstance(value, (dict, list)) and key not in ("turns",
                                                                                "categories"):
      continue
    if key == "turns":
      for t in value:
        rows.append(f"<tr><th>turn {t['turn']} mean</th><td>{_fmt(t['mean'], t['mean_ci95'])}"
                    f" (n={t['n']})</td></tr>")
      continue
    if key == "categories":
      for name, t in value.items():
        rows.append(f"<tr><th>{html.escape(name)} mean</th><td>"
                    f"{_fmt(t['mean'], t['mean_ci95'])} (n={t['n']})</td></tr>")
      continue
    rows.append(f"<tr><th>{html.escape(key)}</th><td>{_fmt(value, out.get(key + '_ci95'))}"
                "</td></tr>")
  return "<table class=figures>" + "".join(rows) + "</table>"


def _judgment(job, row) -> str:
  if row is None:
    return "<div class=judge><b>pending</b> (not judged: budget)</div>"
  label = {"ab": "system as A", "ba": "system as B"}.get(job.item.get("order"), "")
  verdict = html.escape(str(row["verdict"])) if row["verdict"] else row["status"]
  text = row["raw"] if row["raw"] is not None else row["error"] or ""
  return (f"<div class=judge><b>{label} turn {job.item.get('turn', 1) or 1}: {verdict}</b>"
          f"<pre>{html.escape(text)}</pre></div>")


def _examples(us, detail, system, pairs, limit) -> str:
  by_unit = {(a.key, a.sample): (a, None) for a in system}
  for a, b in pairs or []:
    by_unit[a.key, a.sample] = (a, b)
  outcome = (detail.get("outcome") or {}) if detail else {}
  score = (detail.get("score") or {}) if detail else {}
  parts = []
  for i, (u, judgments) in enumerate(us.items()):
    if i >= limit:
      parts.append(f"<p>... {len(us) - limit} more (report.examples)</p>")
      break
    a, b = by_unit[u[0], u[1]]
    head = outcome.get(u) or (f"grade {score[u]:g}" if u in score else "incomplete")
    turn = u[2] - 1 if u[2] else 0
    cols = f"<div class=col><h4>system</h4><pre>{html.escape(a.answer[turn])}</pre></div>"
    if b is not None:
      cols += f"<div class=col><h4>baseline</h4><pre>{html.escape(b.answer[turn])}</pre></div>"
    parts.append(
        f"<details{' open' if i < 2 else ''}><summary><span class='tag {html.escape(str(head))}'>{html.escape(head)}"
        f"</span> {html.escape(str(u[0]))} s{u[1]}{f' t{u[2]}' if u[2] else ''}: "
        f"{html.escape(a.turns[turn][:120])}</summary><pre class=prompt>"
        f"{html.escape(a.turns[turn])}</pre><div class=row>{cols}</div>"
        + "".join(_judgment(j, r) for j, r in judgments) + "</details>")
  return "".join(parts)


_CSS = """body{font:14px system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table.figures{border-collapse:collapse}table.figures th{text-align:left;padding:2px 12px 2px 0;
font-weight:500;color:#555}.ci{color:#777}pre{white-space:pre-wrap;background:#f6f6f6;
padding:6px;margin:4px 0;max-height:20em;overflow:auto}.row{display:flex;gap:12px}
.col{flex:1;min-width:0}details{border-top:1px solid #ddd;padding:4px 0}
.tag{display:inline-block;min-width:4em;padding:0 4px;border-radius:3px;background:#eee}
.tag.win{background:#2b7bba;color:#fff}.tag.loss{background:#d9663a;color:#fff}
.judge pre{background:#fffbe6}img{max-width:100%}"""


def write(workdir, out, us, detail, system, pairs, config) -> None:
  img = ""
  if "wins" in out and out.get("n"):
    data = winrate_figure([(f"{out['system']} vs {out['baseline']}", out["wins"], out["ties"],
                            out["losses"])], workdir / "winrates.png",
                          title=f"{out['protocol']}, judge {out.get('judge_model', '')}")
    img = base64.b64encode(data).decode()
  elif "mean" in out and out.get("n") and detail:
    top = 6 if out["protocol"] == "lima_likert" else 10
    data = _score_figure(list(detail["score"].values()), out["mean"], out["mean_ci95"],
                         workdir / "scores.png", top)
    img = base64.b64encode(data).decode()
  page = [f"<!doctype html><meta charset=utf-8><title>{html.escape(out['protocol'])}: "
          f"{html.escape(str(out['system']))}</title><style>{_CSS}</style>",
          f"<h1>{html.escape(out['protocol'])}: {html.escape(str(out['system']))}"
          + (f" vs {html.escape(str(out['baseline']))}" if out.get("baseline") else "")
          + "</h1>"]
  if img:
    page.append(f"<img alt=figure src='data:image/png;base64,{img}'>")
  page.append(_table(out))
  if us is not None:
    examples = _examples(us, detail, system, pairs, config.report.examples)
    page.append(f"<h2>Per prompt</h2>{examples}")
  (workdir / "report.html").write_text("".join(page), encoding="utf-8")
