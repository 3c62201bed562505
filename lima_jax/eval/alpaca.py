"""AlpacaEval's own file formats, so its `alpaca_eval` command can score our answers and we
can read what its annotators decided.

- model outputs: a JSON list of {instruction, output, generator}, one per instruction (sample
  0 of k), written as ANSWERS.alpaca_eval.json next to answers.jsonl;
- annotations: its annotations.json, a list of rows with `preference` in [1, 2] (1: output_1,
  the reference, preferred; 2: output_2, the model; 1.5 a draw; fractional from a judge's
  logprobs), read into AlpacaEval's plain win rate with our interval over instructions.
AlpacaEval's length-controlled rate is not computed here: its GLM needs a file from the hub
(docs/evaluation.md).
"""
import json
import math
import pathlib

from lima_jax import files
from lima_jax.errors import UserError
from lima_jax.eval import stats


def _instruction(row: dict) -> str | None:
  if isinstance(row.get("instruction"), str):
    return row["instruction"]
  conv = row.get("conversations")
  if isinstance(conv, list) and conv and isinstance(conv[0], str):
    return conv[0]
  if isinstance(row.get("prompt"), str):
    return row["prompt"]
  return None


def write_model_outputs(rows: list[dict], out_path, generator: str) -> int:
  """One entry per instruction (sample 0; multi-turn rows skipped: AlpacaEval is single-turn).
  Returns the count written."""
  outs = [{"instruction": inst, "output": row["answer"], "generator": generator}
          for row in rows if row.get("sample", 0) == 0 and isinstance(row.get("answer"), str)
          and (inst := _instruction(row)) is not None
          and len(row.get("conversations") or [inst]) == 1]
  files.write_json(pathlib.Path(out_path), outs)
  return len(outs)


def output_path(answers_path) -> pathlib.Path:
  p = pathlib.Path(answers_path)
  return p.with_name(p.name.removesuffix(".jsonl") + ".alpaca_eval.json")


def read_annotations(path, rounds: int = 2000, seed: int = 0) -> dict:
  """AlpacaEval's win rate of output_2 over output_1 from its annotations.json, in [0, 1],
  with a bootstrap interval over instructions (rows of one instruction move together)."""
  path = pathlib.Path(path)
  try:
    rows = json.loads(path.read_text(encoding="utf-8"))
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise UserError(f"{path}: cannot read AlpacaEval annotations "
                    f"({getattr(e, 'strerror', None) or e})") from None
  if not isinstance(rows, list):
    raise UserError(f"{path}: AlpacaEval annotations are a JSON list")
  by_inst, generators = {}, set()
  for i, row in enumerate(rows):
    pref = row.get("preference") if isinstance(row, dict) else None
    if pref is None or (isinstance(pref, float) and math.isnan(pref)):
      continue  # AlpacaEval's own marker of an annotation that failed
    if not isinstance(pref, (int, float)) or not 1 <= pref <= 2 or not isinstance(
        row.get("instruction"), str):
      raise UserError(f"{path}: row {i}: needs 'instruction' and 'preference' in [1, 2]")
    by_inst.setdefault(row["instruction"], []).append(float(pref) - 1)
    generators.add((row.get("generator_2"), row.get("generator_1")))
  if not by_inst:
    raise UserError(f"{path}: no annotated rows")
  values = list(by_inst.values())
  flat = [v for vs in values for v in vs]
  (model, reference), = generators if len(generators) == 1 else ((None, None),)
  return {"win_rate": sum(flat) / len(flat),
          "win_rate_ci95": stats.cluster_bootstrap(values, rounds, seed),
          "n": len(flat), "n_instructions": len(values),
          "n_draws": sum(v == 0.5 for v in flat), "generator": model, "reference": reference}
