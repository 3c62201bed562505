"""Answers from a checkpoint, so one command goes from a checkpoint to a score.

Through the library's public functions only (`lima_jax.formats.model_file.open`,
`lima_jax.decode`: read_prompts, Generator). k samples a prompt: sample s
decodes with seed + s (an answer depends only on the seed and the prompt's index). A prompt longer than the model's context leaves room for
the answer by keeping its last tokens (BOS first): small models meet LIMA's long prompts,
and the count of cut prompts is printed, not hidden. Each answer row is its prompt row
(`id`, `expected`, `tags`, ... as they were) plus `answer`, `stopped`, `sample` and
`prompt_truncated`. Beside it, OUT.alpaca_eval.json: AlpacaEval's model outputs (`alpaca`).
"""
import hashlib
import json
import pathlib
import time

from lima_jax import files
from lima_jax.errors import UserError
from lima_jax.eval import alpaca


def _decoding(g):
  from lima_jax.decode.sampling import Decoding
  return Decoding(max_new_tokens=g.max_new_tokens, temperature=g.temperature,
                          top_p=g.top_p, repetition_penalty=g.repetition_penalty,
                          greedy=g.get("greedy", False))


def _fit(ids: list[int], ctx: int, room: int) -> tuple[list[int], bool]:
  keep = ctx - min(room, ctx // 2)  # Never less than half the context for the prompt.
  if len(ids) <= keep:
    return ids, False
  return ids[:1] + ids[len(ids) - keep + 1:], True


def _answer_all(gen, convs, dec, seed):
  ctx = gen.cfg.max_seq_len
  fitted = [_fit(gen.prompt_ids(c), ctx, dec.max_new_tokens) for c in convs]
  out = gen.answer_ids([ids for ids, _ in fitted], dec, seed, progress=True)
  return [(gen.tok.decode(ids), stopped, cut) for (ids, stopped), (_, cut) in zip(out, fitted)]


def _read_mt_bench(path) -> list[dict]:
  rows = []
  for n, line in enumerate(pathlib.Path(path).read_text(encoding="utf-8").splitlines(), 1):
    if line.strip():
      row = json.loads(line)
      if not isinstance(row.get("turns"), list):
        raise UserError(f"{path}:{n}: an MT-Bench question needs 'turns'")
      rows.append(row)
  return rows


def _read_prompts(path):
  """lima_jax.generate's prompt files, and AlpacaEval's (`instruction`, optional `input`)."""
  from lima_jax.decode.prompts import read_prompts
  first = pathlib.Path(path).read_text(encoding="utf-8").lstrip().split("\n", 1)[0]
  if '"instruction"' not in first:
    return read_prompts(path)
  rows = []
  for n, line in enumerate(pathlib.Path(path).read_text(encoding="utf-8").splitlines(), 1):
    if not line.strip():
      continue
    try:
      obj = json.loads(line)
      text = obj["instruction"] + (f"\n\n{obj['input']}" if obj.get("input") else "")
    except (json.JSONDecodeError, KeyError, TypeError):
      raise UserError(f"{path}:{n}: needs 'instruction' (AlpacaEval prompts)") from None
    rows.append((obj, [text], n))
  return rows


def check_prompts(config) -> None:
  """The prompts file exists and its rows' `expected` and `tags` are well typed (they are
  copied into the answers, where exact match reads them); errors name FILE:LINE."""
  from lima_jax.eval import answers as answers_lib
  if not config.prompts:
    raise UserError("config prompts: --config.checkpoint needs --config.prompts=F.jsonl")
  path = pathlib.Path(config.prompts)
  try:
    text = path.read_text(encoding="utf-8")
  except (OSError, UnicodeDecodeError) as e:
    raise UserError(f"config prompts: {path}: "
                    f"{getattr(e, 'strerror', None) or e}") from None
  for n, line in enumerate(text.splitlines(), 1):
    try:
      row = json.loads(line) if line.strip() else None
    except json.JSONDecodeError as e:
      raise UserError(f"{path}:{n}: invalid JSON ({e.msg})") from None
    if isinstance(row, dict):
      answers_lib.labels(f"{path}:{n}", row)


def _recipe(config, fmt=None, chat_template: str = "") -> dict:
  """What the answers depend on; a rerun with the same recipe reuses them (decoding the
  300 LIMA prompts k times is the slow part of a rerun)."""
  prompts = pathlib.Path(config.prompts)
  if not prompts.is_file():
    raise UserError(f"config prompts: {prompts}: no such file")
  meta = pathlib.Path(config.checkpoint) / "meta"
  return {"checkpoint": str(pathlib.Path(config.checkpoint).resolve()),
          "checkpoint_meta_mtime": meta.stat().st_mtime if meta.exists() else None,
          "prompts_sha256": hashlib.sha256(prompts.read_bytes()).hexdigest(),
          "protocol_turns": 2 if config.protocol == "mt_bench" else 1,
          "generate": config.generate.to_dict(),
          **({"format": fmt, "chat_template": chat_template} if fmt or chat_template else {})}


def _alpaca_outputs(config, rows, out_path) -> None:
  """AlpacaEval's model-outputs JSON beside the answers (what `alpaca_eval evaluate
  --model_outputs` reads); the generator is the run's name or the checkpoint's."""
  ckpt = pathlib.Path(config.checkpoint)
  name = config.name or f"lima_jax-{ckpt.parent.parent.name}-{ckpt.name}"
  alpaca.write_model_outputs(rows, alpaca.output_path(out_path), name)


def generate_answers(config, out_path, fmt=None, chat_template: str = "") -> str:
  """Writes the checkpoint's answers to `out_path` (JSONL, atomically); returns the path.
  OUT.recipe.json records what they came from; the same recipe reuses them. fmt, chat_template:
  the conversation format (`lima_jax.decode.answer.open_model`; default the checkpoint's)."""
  from lima_jax.decode import answer
  g = config.generate
  if not config.prompts:
    raise UserError("config prompts: --config.checkpoint needs --config.prompts=F.jsonl")
  out_path = pathlib.Path(out_path)
  recipe, recipe_path = _recipe(config, fmt, chat_template), out_path.with_suffix(".recipe.json")
  if out_path.exists() and recipe_path.exists() and json.loads(
      recipe_path.read_text()) == recipe:
    print(f"reusing {out_path} (same checkpoint, prompts and decoding)", flush=True)
    if config.protocol != "mt_bench" and not alpaca.output_path(out_path).exists():
      _alpaca_outputs(config, [json.loads(l) for l in out_path.read_text().splitlines() if l],
                      out_path)
    return str(out_path)
  gen = answer.open_generator(config.checkpoint, batch_size=g.batch_size, fmt=fmt,
                              chat_template=chat_template)
  cfg = gen.cfg
  dec = _decoding(g)
  t0, rows, n_cut = time.perf_counter(), [], 0
  if config.protocol == "mt_bench":
    questions = _read_mt_bench(config.prompts)
    for s in range(g.samples):
      first = _answer_all(gen, [q["turns"][:1] for q in questions], dec, g.seed + s)
      second = _answer_all(gen, [[q["turns"][0], a, q["turns"][1]]
                                 for q, (a, _, _) in zip(questions, first)], dec, g.seed + s)
      for q, a1, a2 in zip(questions, first, second):
        n_cut += a1[2] + a2[2]
        rows.append({**q, "answers": [a1[0], a2[0]], "stopped": a1[1] and a2[1], "sample": s})
  else:
    prompts = _read_prompts(config.prompts)
    for s in range(g.samples):
      for (obj, _, _), (text, stopped, cut) in zip(
          prompts, _answer_all(gen, [t for _, t, _ in prompts], dec, g.seed + s)):
        n_cut += cut
        rows.append({**obj, "answer": text, "stopped": stopped, "sample": s,
                     "prompt_truncated": cut})
  files.write_jsonl(out_path, rows)
  if config.protocol != "mt_bench":
    _alpaca_outputs(config, rows, out_path)
  recipe_path.write_text(json.dumps(recipe) + "\n")
  print(f"generated {len(rows)} answers in {time.perf_counter() - t0:.0f}s -> {out_path}"
        + (f" ({n_cut} prompts cut to the model's context of {cfg.max_seq_len} tokens)"
           if n_cut else ""), flush=True)
  return str(out_path)
