r"""Choosing a checkpoint by reading its answers, as LIMA did.

    python -m lima_jax.select --workdir=DIR --prompts=F.jsonl [--epochs=5-10] [--out=DIR/select]

LIMA found that held-out perplexity does not track answer quality, so it compared the
checkpoints of epochs 5 to 10 by their answers to a 50-prompt dev set. For each chosen epoch,
the checkpoint that ended it (found by `meta["epoch"]` under WORKDIR/checkpoints/*) answers
every prompt with the same decoding and seed. OUT/index.html, one self-contained page, shows
each prompt with the epochs' answers side by side, their lengths and each epoch's eval loss;
OUT/answers.jsonl holds the same data (each prompt row plus "answers", one per epoch).
"""
import dataclasses
import html
import json
import os
import pathlib
import sys

import jax
from etils import epath
from tqdm import tqdm

from lima_jax import checkpoint, distributed, files
from lima_jax import generate as gen_lib
from lima_jax.decoding import Generator
from lima_jax.sampling import LIMA, Decoding
from lima_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class EpochCheckpoint:
  epoch: int
  step: int
  path: epath.Path
  eval_loss: float | None


def _epoch_ends(workdir: epath.Path) -> dict[int, dict]:
  """{epoch: its last metrics row} from metrics.jsonl (a row whose epoch is a whole number)."""
  path = workdir / "metrics.jsonl"
  if not path.exists():
    return {}
  ends = {}
  for n, line in enumerate(path.read_text().splitlines(), 1):
    try:
      row = json.loads(line)
      epoch = float(row["epoch"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
      # A run killed mid-write leaves a torn last line; the loss column is only a guide.
      print(f"warning: {path}:{n}: not a metrics row, ignored", file=sys.stderr)
      continue
    if epoch.is_integer() and epoch >= 1:
      ends[int(epoch)] = row
  return ends


def find_epoch_checkpoints(workdir) -> dict[int, EpochCheckpoint]:
  """The checkpoint that ended each epoch, by epoch.

  A checkpoint saved mid-epoch (every_steps, preemption) carries the number of epochs done
  so far, like the one that ended the previous epoch; metrics.jsonl tells them apart by
  step, and without it the earlier step is the epoch's end.
  """
  workdir = epath.Path(workdir)  # local or gs://, as training
  root = workdir / "checkpoints"
  if not root.is_dir():
    raise UserError(f"{root}: no checkpoints directory (is {workdir} a training workdir?)")
  ends = _epoch_ends(workdir)
  found: dict[int, EpochCheckpoint] = {}
  for d in sorted((d for d in root.iterdir() if d.name.isdigit()), key=lambda d: int(d.name)):
    if not (d / "meta").exists():
      continue
    meta = checkpoint.read_meta(d)
    epoch, step = meta.get("epoch"), meta.get("step", int(d.name))
    if not isinstance(epoch, int) or epoch < 1 or epoch in found:
      continue
    end = ends.get(epoch)
    if end is not None and end.get("step") != step:
      continue
    loss = meta.get("eval_loss")
    if loss is None and end is not None:
      loss = end.get("eval_loss")
    found[epoch] = EpochCheckpoint(epoch, step, d, loss)
  return found


def parse_epochs(spec: str, available: dict[int, EpochCheckpoint], where: str) -> list[int]:
  """'5-10', '5,8,10' or '' (all available) -> epochs, all of which must be available."""
  if not available:
    raise UserError(f"{where}: no epoch-end checkpoint found")
  if not spec.strip():
    return sorted(available)
  wanted = checkpoint.parse_epochs(spec, "--epochs")
  missing = sorted(wanted - set(available))
  if missing or not wanted:
    raise UserError(f"--epochs={spec}: no checkpoint for epoch(s) {missing} in {where}; "
                    f"available epochs: {', '.join(map(str, sorted(available)))}")
  return sorted(wanted)


def compare_epochs(workdir, prompts_path, epochs: str = "5-10", out_dir=None,
                   dec: Decoding = LIMA, seed: int = 0, batch_size: int = 8,
                   mesh=None, dtype: str | None = None, judge=None) -> list[dict]:
  """Answers from each chosen epoch; writes OUT/answers.jsonl and OUT/index.html.

  Returns the JSONL rows: each prompt row plus "answers": [{epoch, step, eval_loss, answer,
  n_tokens, stopped}, ...] in epoch order. On several processes (a pod), every process
  returns all rows and process 0 writes the files. dtype: as for `generate.load`.
  judge: optional `judge({epoch: answer rows}, out_dir) -> choice` (the CLI passes
  lima_jax.eval.judge_epochs with its judge); the choice (each epoch's 1-6 grade, the
  pairwise ladder, the best epoch) heads the page and is written to OUT/judged.json.
  """
  workdir = epath.Path(workdir)
  if out_dir is None and "://" in os.fspath(workdir):
    raise UserError(f"{workdir}: not a local directory; give --out for the results")
  rows = gen_lib.read_prompts(prompts_path)  # bad prompts fail before any model is loaded
  available = find_epoch_checkpoints(workdir)
  chosen = [available[e] for e in parse_epochs(epochs, available, str(workdir / "checkpoints"))]
  out_dir = pathlib.Path(out_dir or os.fspath(workdir / "select"))
  out = [{**obj, "answers": []} for obj, _, _ in rows]
  quiet = None if jax.process_index() == 0 else True  # one bar on a pod, not one per host
  bar = tqdm(chosen, desc="epochs", unit="epoch", disable=quiet)
  for ck in bar:
    params, cfg, tok, _ = gen_lib.load(ck.path, mesh, dtype)
    # Same model every epoch: the compiled decoder is shared, only the weights change.
    generator = Generator(params, cfg, tok, mesh=mesh, batch_size=batch_size)
    answers = generator.answer([turns for _, turns, _ in rows], dec, seed, progress=True)
    for row, a in zip(out, answers):
      row["answers"].append({"epoch": ck.epoch, "step": ck.step, "eval_loss": ck.eval_loss,
                             "answer": a.text, "n_tokens": len(a.tokens), "stopped": a.stopped})
    del params, generator  # one checkpoint in memory at a time
  if jax.process_index() != 0:
    return out
  out_dir.mkdir(parents=True, exist_ok=True)
  files.write_jsonl(out_dir / "answers.jsonl", out)
  choice = None
  if judge is not None:
    per_epoch = {ck.epoch: [{**{k: v for k, v in r.items() if k != "answers"}, **a}
                            for r in out for a in r["answers"] if a["epoch"] == ck.epoch]
                 for ck in chosen}
    choice = judge(per_epoch, out_dir / "judged")
    files.write_json(out_dir / "judged.json", choice)
  page = render_html(workdir, [turns for _, turns, _ in rows], out, chosen, dec, seed, choice)
  files.write_atomic(out_dir / "index.html", page)
  return out


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


def main(argv) -> None:
  from absl import flags, logging
  f = flags.FLAGS
  if len(argv) > 1:
    raise UserError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not f["verbosity"].present:
    logging.set_verbosity(logging.ERROR)
  if not f.workdir or not f.prompts:
    raise UserError("needs --workdir and --prompts")
  if not distributed.start(f, "lima_jax.select"):
    return
  judge = None
  if f["judge"].value.base_url:
    judge = _judge(f["judge"].value)
  out = compare_epochs(f.workdir, f.prompts, f.epochs, f.out, gen_lib.decoding_from_flags(f),
                       f.seed, f.batch_size, gen_lib.mesh_from_flags(f), f.dtype, judge)
  if jax.process_index() != 0:
    return
  out_dir = f.out or os.path.join(f.workdir, "select")
  print(f"wrote {os.path.join(out_dir, 'index.html')} and answers.jsonl "
        f"({len(out)} prompts x {len(out[0]['answers'])} epochs)")
  if judge is not None:
    choice = json.loads(pathlib.Path(out_dir, "judged.json").read_text())
    print(f"best epoch by the judge: {choice['best_epoch']} (by the 1-6 grade alone: "
          f"{choice['best_by_likert']}); {os.path.join(out_dir, 'judged.json')}")


def _eval_config():
  """configs/eval.py beside the package (the judge flags' defaults), loaded by path as
  config_flags loads configs."""
  import importlib.util
  path = pathlib.Path(__file__).resolve().parents[1] / "configs" / "eval.py"
  spec = importlib.util.spec_from_file_location("lima_eval_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config("lima_likert")


def _judge(judge_flags):
  """judge_epochs with the flags' judge; eval is imported only when a judge is asked for."""
  from lima_jax import eval as lima_eval
  config = _eval_config()
  config.judge = judge_flags
  if not judge_flags.model:
    raise UserError("--judge.model: the judge's model name is needed with --judge.base_url")
  return lambda per_epoch, out_dir: lima_eval.judge_epochs(per_epoch, out_dir, config)


def run() -> None:
  from absl import app, flags
  from lima_jax.errors import cli_main
  flags.DEFINE_string("workdir", None, "Training workdir (holds checkpoints/ and metrics.jsonl).")
  flags.DEFINE_string("prompts", None, "JSONL prompts, as for lima_jax.generate (e.g. a 50-prompt "
                      "dev set of {\"conversations\": [prompt]} rows).")
  flags.DEFINE_string("epochs", "5-10", "Epochs to compare: '5-10', '5,8,10', or '' for every "
                      "epoch with a checkpoint (LIMA: 5-10).")
  flags.DEFINE_string("out", None, "Output directory for index.html and answers.jsonl "
                      "(default WORKDIR/select).")
  gen_lib.define_decoding_flags()
  from ml_collections import config_flags
  config_flags.DEFINE_config_dict(
      "judge", _eval_config().judge, "Judge the epochs (configs/eval.py's judge fields): with "
      "--judge.base_url=URL --judge.model=NAME every epoch's answers get LIMA's 1-6 grade and a "
      "pairwise ladder against the best so far, and the page names the best epoch.",
      lock_config=True)
  app.run(cli_main(main))


if __name__ == "__main__":
  run()
