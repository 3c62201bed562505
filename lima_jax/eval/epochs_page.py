"""The checkpoint-selection page: each prompt with every epoch's answers side by side, one
self-contained HTML file (no external resources), with the judge's choice when there is one."""
import dataclasses
import html
import json

from lima_jax.decode.sampling import Decoding


_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:right}
section{border-top:2px solid #888;margin-top:1.5em;padding-top:.5em}
.turn{white-space:pre-wrap;background:#f4f4f4;padding:.5em;margin:.3em 0}
.grid{display:grid;gap:.8em}.cell{border:1px solid #ccc;padding:.5em;overflow-wrap:anywhere}
.cell h3{font-size:.9em;margin:0 0 .4em;color:#555}.cell div{white-space:pre-wrap}
.cut{color:#a00}
"""


def _interval(ci) -> str:
  return "" if not ci or ci[0] is None else f" [{ci[0]:.2f}, {ci[1]:.2f}]"


def render_html(workdir, prompts: list[list[str]], rows: list[dict], chosen, dec: Decoding,
                seed: int, choice: dict | None = None) -> str:
  """One page, no external resources: a summary table, then each prompt and its answers."""
  e = html.escape
  loss = lambda x: "–" if x is None else f"{x:.4f}"
  judged = ""
  if choice is not None:
    judged = ("<th>judge: helpfulness 1-6 (95% interval)</th>"
              "<th>judge: against the best so far (W/T/L, win rate)</th>")
    ladder = {m["epoch"]: m for m in choice["pairwise"]}
  parts = [f"<!doctype html><meta charset='utf-8'><title>Checkpoint selection: {e(str(workdir))}"
           f"</title><style>{_CSS}</style><h1>Checkpoint selection</h1>"
           f"<p>{e(str(workdir))} — {len(prompts)} prompts; decoding: "
           f"{e(json.dumps(dataclasses.asdict(dec)))}, seed {seed}</p>",
           "<table><tr><th>epoch</th><th>step</th><th>eval loss</th><th>mean answer tokens</th>"
           f"<th>answers cut at max_new_tokens</th>{judged}</tr>"]
  for i, ck in enumerate(chosen):
    lengths = [r["answers"][i]["n_tokens"] for r in rows]
    cut = sum(not r["answers"][i]["stopped"] for r in rows)
    cells = ""
    if choice is not None:
      grade = choice["likert"].get(ck.epoch, {})
      mean = "–" if grade.get("mean") is None else f"{grade['mean']:.2f}"
      m = ladder.get(ck.epoch)
      match = "first" if m is None else (
          f"vs epoch {m['against']}: {m['wins']}/{m['ties']}/{m['losses']}, "
          f"{m['win_rate']:.2f}{_interval(m.get('win_rate_ci95'))}")
      cells = f"<td>{mean}{_interval(grade.get('mean_ci95'))}</td><td>{e(match)}</td>"
    parts.append(f"<tr><td>{ck.epoch}</td><td>{ck.step}</td><td>{loss(ck.eval_loss)}</td>"
                 f"<td>{sum(lengths) / len(lengths):.1f}</td><td>{cut}</td>{cells}</tr>")
  parts.append("</table>")
  if choice is not None:
    parts.append(f"<p><b>Best epoch by the judge: {choice['best_epoch']}</b> (each epoch meets "
                 "the best so far and takes its place when it wins more prompts than it loses); "
                 f"by the 1-6 grade alone: {choice['best_by_likert']}. Judgments: "
                 "judged/*/report.html.</p>")
  columns = f"grid-template-columns:repeat({len(chosen)},minmax(16em,1fr))"
  for n, (turns, row) in enumerate(zip(prompts, rows), 1):
    title = f"Prompt {n}" + (f" ({e(str(row['id']))})" if "id" in row else "")
    parts.append(f"<section><h2>{title}</h2>")
    for k, turn in enumerate(turns):
      parts.append(f"<div class='turn'><b>{'user' if k % 2 == 0 else 'assistant'}:</b> "
                   f"{e(turn)}</div>")
    parts.append(f"<div class='grid' style='{columns}'>")
    for a in row["answers"]:
      cut = "" if a["stopped"] else " <span class='cut'>(cut)</span>"
      parts.append(f"<div class='cell'><h3>epoch {a['epoch']} · {a['n_tokens']} tokens{cut} · "
                   f"eval loss {loss(a['eval_loss'])}</h3><div>{e(a['answer'])}</div></div>")
    parts.append("</div></section>")
  return "\n".join(parts) + "\n"
