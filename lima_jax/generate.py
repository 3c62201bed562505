r"""Answers from a checkpoint with LIMA's decoding: `generate()`, the CLI and a terminal chat.

    python -m lima_jax.generate --checkpoint=CKPT --prompts=F.jsonl --out=F.jsonl
    python -m lima_jax.generate --checkpoint=CKPT --interactive

Prompts are rendered as in training (BOS, then every utterance followed by EOT) up to and
including the last user turn's EOT, so the model answers as the assistant and ends its turn
with EOT. Defaults are LIMA's: nucleus sampling (p=0.9) at temperature 0.7, repetition penalty
1.2 on the tokens generated so far, at most 2,048 new tokens (never past the model's context).
The batched, KV-cached decoder itself is `lima_jax.decoding`.
"""
import dataclasses
import itertools
import json
import pathlib
import time
from typing import Sequence

import jax

from lima_jax import distributed, files
from lima_jax import model as model_lib
from lima_jax import sharding
from lima_jax.decoding import Answer, Generator, render_prompt
from lima_jax.model_config import ModelConfig
from lima_jax.sampling import GREEDY, LIMA, Decoding
from lima_jax.errors import UserError

__all__ = ["generate", "load", "read_prompts", "Answer", "Decoding", "Generator", "GREEDY",
           "LIMA", "render_prompt"]


def generate(params, cfg: ModelConfig, tok, conversations: Sequence[Sequence[str]],
             *, mesh=None, max_new_tokens: int = 64, greedy: bool = True,
             decoding: Decoding | None = None, seed: int = 0, batch_size: int = 8) -> list[str]:
  """Answers, one per conversation ending on a user turn.

  greedy=True is plain argmax (no repetition penalty); greedy=False is LIMA's sampling.
  `decoding` replaces both (and max_new_tokens) when given.
  """
  if decoding is None:
    decoding = dataclasses.replace(GREEDY if greedy else LIMA, max_new_tokens=max_new_tokens)
  gen = Generator(params, cfg, tok, mesh=mesh, batch_size=batch_size)
  return [a.text for a in gen.answer(conversations, decoding, seed)]


def load(path, mesh=None, dtype: str | None = None):
  """(params, cfg, tok, meta) of a checkpoint; params go straight into their shardings.

  dtype ('bfloat16' or 'float32'): cast while restoring, so only the cast copy is ever
  resident (bfloat16 halves a float32 checkpoint's bytes); cfg.param_dtype says what was
  loaded. Default: as stored.
  """
  from lima_jax import checkpoint
  from lima_jax.tokenizer import Tokenizer
  meta = checkpoint.read_meta(path)
  try:
    cfg = ModelConfig.from_dict(meta["model_config"])
  except (KeyError, TypeError, UserError) as e:
    raise UserError(f"{path}: bad or missing model_config in meta ({e})") from None
  if not meta.get("tokenizer"):
    raise UserError(f"{path}: the checkpoint holds no tokenizer (meta 'tokenizer' is empty)")
  try:
    tok = Tokenizer.from_meta(meta["tokenizer"])
  except UserError as e:
    raise UserError(f"{path}: {e}") from None
  if tok.vocab_size > cfg.vocab_size:
    raise UserError(f"{path}: tokenizer has {tok.vocab_size} ids but the model only "
                    f"{cfg.vocab_size} embedding rows")
  if dtype is not None:
    if dtype not in ("float32", "bfloat16"):
      raise UserError(f"dtype: {dtype!r} is not 'float32' or 'bfloat16'")
    cfg = dataclasses.replace(cfg, param_dtype=dtype)
  shardings = None
  if mesh is not None:
    shardings = sharding.logical_shardings(model_lib.abstract_params(cfg), mesh)
  try:
    params, _ = checkpoint.load(path, shardings, dtype)
  except (ValueError, KeyError, OSError) as e:
    raise UserError(f"{path}: cannot restore the parameters ({type(e).__name__}: {e})") from None
  return params, cfg, tok, meta


# ----------------------------------------------------------------------------------------------
# Command line.
# ----------------------------------------------------------------------------------------------

def read_prompts(path) -> list[tuple[dict, list[str], int]]:
  """(row, utterances, line number) per prompt of a JSONL file: LIMA test rows
  ({"conversations": [...]} ending on a user turn; utterances as strings or {"role",
  "content"}) or {"prompt": str}."""
  try:
    lines = pathlib.Path(path).read_text(encoding="utf-8").splitlines()
  except (OSError, UnicodeDecodeError) as e:
    raise UserError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from None
  rows = []
  for n, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      obj = json.loads(line)
    except json.JSONDecodeError as e:
      raise UserError(f"{path}:{n}: invalid JSON ({e.msg})") from None
    turns = obj.get("conversations") if isinstance(obj, dict) else None
    if isinstance(obj, dict) and turns is None and isinstance(obj.get("prompt"), str):
      turns = [obj["prompt"]]
    if not isinstance(turns, list) or not turns:
      raise UserError(f"{path}:{n}: needs 'conversations' (a list of utterances ending on a user "
                      "turn) or 'prompt' (a string)")
    turns = [t.get("content") if isinstance(t, dict) else t for t in turns]
    if not all(isinstance(t, str) for t in turns):
      raise UserError(f"{path}:{n}: 'conversations' must hold strings or "
                      "{\"role\", \"content\"} objects")
    if len(turns) % 2 == 0:
      raise UserError(f"{path}:{n}: 'conversations' ends on an assistant turn ({len(turns)} "
                      "utterances); a prompt must end on a user turn")
    rows.append((obj, turns, n))
  if not rows:
    raise UserError(f"{path}: no prompts")
  return rows


def _chat(gen: Generator, dec: Decoding, seed: int) -> None:
  print("chat: /reset clears the history, /quit or Ctrl-D ends", flush=True)
  history, ctx = [], gen.cfg.max_seq_len
  for turn in itertools.count():
    try:
      text = input("user> ")
    except EOFError:
      break
    if text.strip() == "/quit":
      break
    if text.strip() in ("/reset", ""):
      history = [] if text.strip() else history
      continue
    conv = history + [text]
    while len(conv) > 1 and len(render_prompt(conv, gen.tok)) >= ctx:
      conv = conv[2:]  # forget the oldest exchange to stay within the context
    if len(render_prompt(conv, gen.tok)) >= ctx:
      print(f"(too long: the model's context is {ctx} tokens)", flush=True)
      continue
    answer = gen.answer([conv], dec, seed + turn)[0]
    print(f"assistant> {answer.text}", flush=True)
    history = conv + [answer.text]


def main(argv) -> None:
  from absl import flags, logging
  f = flags.FLAGS
  if len(argv) > 1:
    raise UserError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not f["verbosity"].present:
    logging.set_verbosity(logging.ERROR)  # orbax's INFO lines would bury the answers
  if not f.checkpoint or not (f.interactive or (f.prompts and f.out)):
    raise UserError("needs --checkpoint and either --prompts and --out, or --interactive")
  rows = [] if f.interactive else read_prompts(f.prompts)
  if rows and not pathlib.Path(f.out).absolute().parent.is_dir():
    raise UserError(f"{f.out}: its directory does not exist")
  if f.interactive and (f.local_processes or f.distributed):
    raise UserError("--interactive runs in one process; drop --distributed/--local_processes")
  if not distributed.start(f, "lima_jax.generate"):
    return
  dec, mesh = decoding_from_flags(f), mesh_from_flags(f)
  params, cfg, tok, _ = load(f.checkpoint, mesh, f.dtype)
  gen = Generator(params, cfg, tok, mesh=mesh, batch_size=f.batch_size)
  if f.interactive:
    return _chat(gen, dec, f.seed)
  prompts = [render_prompt(turns, tok) for _, turns, _ in rows]
  for (_, _, n), p in zip(rows, prompts):
    if len(p) >= cfg.max_seq_len:
      raise UserError(f"{f.prompts}:{n}: the prompt is {len(p)} tokens; the model's context "
                      f"is {cfg.max_seq_len}")
  t0 = time.perf_counter()
  results = gen.answer_ids(prompts, dec, f.seed, progress=True)
  seconds = time.perf_counter() - t0
  if jax.process_index() != 0:  # every host holds every answer; one writes them
    return
  files.write_jsonl(f.out, [
      {**obj, "answer": tok.decode(ids), "n_tokens": len(ids), "stopped": stopped}
      for (obj, _, _), (ids, stopped) in zip(rows, results)])
  total = sum(len(ids) for ids, _ in results)
  print(f"wrote {len(rows)} answers to {f.out}: {total} tokens in {seconds:.1f}s "
        f"({total / seconds:.1f} tokens/s, compilation included)")


def define_decoding_flags() -> None:
  """Flags shared with `lima_jax.select`: decoding, batch, seed, mesh (defaults: LIMA's)."""
  from absl import flags
  d = LIMA
  flags.DEFINE_integer("batch_size", 8, "Prompts decoded together (rounded up to a multiple of "
                       "the mesh's batch shards).", lower_bound=1)
  flags.DEFINE_integer("max_new_tokens", d.max_new_tokens, "Most tokens per answer (LIMA: "
                       "2048); never past the model's context.", lower_bound=1)
  flags.DEFINE_float("temperature", d.temperature, "Sampling temperature (LIMA: 0.7).")
  flags.DEFINE_float("top_p", d.top_p, "Nucleus sampling mass, 1 = off (LIMA: 0.9).")
  flags.DEFINE_integer("top_k", d.top_k, "Keep only the k most likely tokens, 0 = off.")
  flags.DEFINE_float("repetition_penalty", d.repetition_penalty, "CTRL-style penalty on tokens "
                     "already generated in this answer, 1 = off (LIMA: 1.2).")
  flags.DEFINE_bool("greedy", False, "Argmax instead of sampling (the repetition penalty still "
                    "applies; add --repetition_penalty=1 for plain greedy).")
  flags.DEFINE_integer("seed", 0, "Sampling seed; an answer depends on it and on the prompt's "
                       "index in the file, not on the batch size.")
  flags.DEFINE_list("mesh", ["1", "-1", "1"], "Device mesh (data,fsdp,tensor) over every "
                    "device of the job (all hosts); one -1 takes the remaining devices.")
  flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "Parameter dtype to load (cast while "
                    "restoring; bfloat16 halves a float32 checkpoint). Default: as stored.")
  distributed.define_flags()


def decoding_from_flags(f) -> Decoding:
  return Decoding(max_new_tokens=f.max_new_tokens, temperature=f.temperature, top_p=f.top_p,
                  top_k=f.top_k, repetition_penalty=f.repetition_penalty, greedy=f.greedy)


def mesh_from_flags(f):
  return sharding.make_mesh(sharding.parse_mesh_shape(f.mesh))


def _define_flags() -> None:
  from absl import flags
  flags.DEFINE_string("checkpoint", None, "lima_jax checkpoint directory (e.g. "
                      "WORKDIR/checkpoints/STEP); its meta holds the model config and tokenizer.")
  flags.DEFINE_string("prompts", None, "JSONL prompts: LIMA test rows {\"id\", \"conversations\": "
                      "[prompt]} (a conversation ending on a user turn) or {\"prompt\": str}.")
  flags.DEFINE_string("out", None, "JSONL output: each input row plus 'answer', 'n_tokens' and "
                      "'stopped' (false when cut at max_new_tokens). Written atomically.")
  flags.DEFINE_bool("interactive", False, "Chat in the terminal (multi-turn, keeps the history) "
                    "instead of reading --prompts.")
  define_decoding_flags()


def run() -> None:
  """Console-script entry point (lima-generate)."""
  from absl import app
  from lima_jax.errors import cli_main
  _define_flags()
  app.run(cli_main(main))


if __name__ == "__main__":
  run()
