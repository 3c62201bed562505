"""Choosing a checkpoint by its answers, as LIMA did: what `python -m lima_jax.select` runs.

LIMA found that held-out perplexity does not track answer quality, so it compared the
checkpoints of epochs 5 to 10 by their answers to a 50-prompt dev set. `compare_epochs` has
each chosen epoch's checkpoint (`lima_jax.formats.epoch_checkpoints`) answer every prompt with
the same decoding and seed, and writes them side by side (OUT/answers.jsonl, OUT/index.html).

`judge_epochs` names the best epoch: every epoch's answers get a lima_likert grade; then a
ladder of lima_pairwise matches: each epoch meets the best so far and takes its place when it
wins more prompts than it loses. All judgments of all epochs share one store,
WORKDIR/judgments.sqlite (a request's key is its content), so rerunning select re-asks nothing,
nor do epochs that answer alike. Its config: configs/eval.py:lima_likert with judge.base_url and
judge.model set; choice["likert"][e] ("mean", "mean_ci95"), the ladder's wins/ties/losses and
win_rate_ci95, and choice["best_epoch"] go in the page's summary table.
"""
import copy
import os
import pathlib

import jax
from etils import epath
from tqdm import tqdm

from lima_jax import files
from lima_jax.decode.generator import Generator
from lima_jax.decode import answer as answer_lib
from lima_jax.decode.prompts import read_prompts
from lima_jax.decode.sampling import LIMA, Decoding
from lima_jax.errors import UserError
from lima_jax.eval import answers as answers_lib
from lima_jax.eval import run
from lima_jax.eval.epochs_page import render_html
from lima_jax.tokenizer import chat
from lima_jax.formats.epoch_checkpoints import find_epoch_checkpoints, select_epochs


def compare_epochs(workdir, prompts_path, epochs: str = "5-10", out_dir=None,
                   dec: Decoding = LIMA, seed: int = 0, batch_size: int = 8,
                   mesh=None, dtype: str | None = None, judge_config=None,
                   fmt: str | None = None, chat_template: str = "") -> list[dict]:
  """Answers from each chosen epoch; writes OUT/answers.jsonl and OUT/index.html.

  Returns the JSONL rows: each prompt row plus "answers": [{epoch, step, eval_loss, answer,
  n_tokens, stopped}, ...] in epoch order. On several processes (a pod), every process
  returns all rows and process 0 writes the files. dtype: as for `model_file.open`.
  judge_config: configs/eval.py:lima_likert with its judge set; then `judge_epochs` chooses
  (each epoch's 1-6 grade, the pairwise ladder, the best epoch), the choice heads the page
  and is written to OUT/judged.json.
  """
  workdir = epath.Path(workdir)
  if out_dir is None and "://" in os.fspath(workdir):
    raise UserError(f"{workdir}: not a local directory; give --out for the results")
  rows = read_prompts(prompts_path)  # bad prompts fail before any model is loaded
  available = find_epoch_checkpoints(workdir)
  chosen = [available[e] for e in select_epochs(epochs, available, str(workdir / "checkpoints"))]
  out_dir = pathlib.Path(out_dir or os.fspath(workdir / "select"))
  out = [{**obj, "answers": []} for obj, _, _ in rows]
  quiet = None if jax.process_index() == 0 else True  # one bar on a pod, not one per host
  for ck in tqdm(chosen, desc="epochs", unit="epoch", disable=quiet):
    # In the format each checkpoint was trained in unless `fmt` says otherwise.
    m, renderer = answer_lib.open_model(ck.path, mesh=mesh, dtype=dtype, fmt=fmt,
                                        chat_template=chat_template)
    # Same model every epoch: the compiled decoder is shared, only the weights change.
    generator = Generator(m.params, m.config, m.tokenizer, mesh=mesh, batch_size=batch_size,
                          renderer=renderer)
    answers = generator.answer([conv for _, conv, _ in rows], dec, seed, progress=True)
    for row, a in zip(out, answers):
      row["answers"].append({"epoch": ck.epoch, "step": ck.step, "eval_loss": ck.eval_loss,
                             "answer": a.text, "n_tokens": len(a.tokens), "stopped": a.stopped})
    del m, generator  # one checkpoint in memory at a time
  if jax.process_index() != 0:
    return out
  out_dir.mkdir(parents=True, exist_ok=True)
  files.write_jsonl(out_dir / "answers.jsonl", out)
  choice = None
  if judge_config is not None:
    per_epoch = {ck.epoch: [{**{k: v for k, v in r.items() if k != "answers"}, **a}
                            for r in out for a in r["answers"] if a["epoch"] == ck.epoch]
                 for ck in chosen}
    choice = judge_epochs(per_epoch, out_dir / "judged", judge_config)
    files.write_json(out_dir / "judged.json", choice)
  page = render_html(workdir, [[f"{m['role']}: {m['content']}" if m["role"] in chat.SYSTEM_ROLES
                                else m["content"] for m in conv] for _, conv, _ in rows],
                     out, chosen, dec, seed, choice)
  files.write_atomic(out_dir / "index.html", page)
  return out


def judge_epochs(answers_by_epoch, workdir, config) -> dict:
  """answers_by_epoch: {epoch: an answers file, a list of rows as lima_jax.generate writes
  them (the prompt row plus "answer"), or a list of answers.Answer}, in any order;
  config: configs/eval.py:lima_likert with the judge set. Returns {"likert": {epoch:
  results}, "pairwise": [{"epoch", "against", **results}], "best_epoch", "best_by_likert"}.
  """
  workdir = pathlib.Path(workdir)
  loaded = {e: _answers(a, f"epoch {e}") for e, a in sorted(answers_by_epoch.items())}
  likert_cfg = copy.deepcopy(config)
  with likert_cfg.unlocked():
    likert_cfg.protocol, likert_cfg.answers, likert_cfg.baseline = "lima_likert", "", ""
    likert_cfg.store = likert_cfg.store or str(workdir / "judgments.sqlite")
  pair_cfg = copy.deepcopy(likert_cfg)
  with pair_cfg.unlocked():
    pair_cfg.protocol = "lima_pairwise"
  likert = {}
  for epoch, answers in loaded.items():
    with likert_cfg.unlocked():
      likert_cfg.name = f"epoch {epoch}"
    likert[epoch] = run.evaluate(likert_cfg, workdir / f"likert_epoch{epoch}", answers=answers)
  ladder, best = [], None
  for epoch, answers in loaded.items():
    if best is None:
      best = epoch
      continue
    with pair_cfg.unlocked():
      pair_cfg.name, pair_cfg.baseline_name = f"epoch {epoch}", f"epoch {best}"
    r = run.evaluate(pair_cfg, workdir / f"pairwise_epoch{epoch}_vs_{best}", answers=answers,
                     baseline=loaded[best])
    ladder.append({"epoch": epoch, "against": best, **r})
    if r["wins"] > r["losses"]:
      best = epoch
  graded = {e: r["mean"] for e, r in likert.items() if r.get("mean") is not None}
  return {"likert": likert, "pairwise": ladder, "best_epoch": best,
          "best_by_likert": max(graded, key=graded.get) if graded else None}


def _answers(a, name):
  if isinstance(a, (str, pathlib.Path)):
    return answers_lib.read(a)
  a = list(a)
  return a if a and isinstance(a[0], answers_lib.Answer) else answers_lib.from_rows(a, name)
