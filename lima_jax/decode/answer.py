"""Answers from a model: one call for a list of conversations, a prompts file or a terminal chat.

Prompts are rendered as in training (BOS, then every utterance followed by EOT) up to and
including the last user turn's EOT, so the model answers as the assistant and ends its turn
with EOT. `python -m lima_jax.generate` is the command line around this module.
"""
import dataclasses
import itertools
import time
from typing import Optional, Sequence

import jax

from lima_jax import files
from lima_jax.decode.generator import Generator, render_prompt
from lima_jax.decode.prompts import read_prompts
from lima_jax.decode.sampling import GREEDY, LIMA, Decoding
from lima_jax.errors import UserError
from lima_jax.model.config import ModelConfig


def generate(params, cfg: ModelConfig, tok, conversations: Sequence[Sequence[str]],
             *, mesh=None, max_new_tokens: int = 64, greedy: bool = True,
             decoding: Optional[Decoding] = None, seed: int = 0,
             batch_size: int = 8) -> list[str]:
  """Answers, one per conversation ending on a user turn.

  greedy=True is plain argmax (no repetition penalty); greedy=False is LIMA's sampling.
  `decoding` replaces both (and max_new_tokens) when given.
  """
  if decoding is None:
    decoding = dataclasses.replace(GREEDY if greedy else LIMA, max_new_tokens=max_new_tokens)
  gen = Generator(params, cfg, tok, mesh=mesh, batch_size=batch_size)
  return [a.text for a in gen.answer(conversations, decoding, seed)]


def open_generator(path, *, mesh=None, dtype: Optional[str] = None, batch_size: int = 8,
                   **kwargs) -> Generator:
  """The decoder of any model file `lima_jax.formats.model_file.open` reads; `kwargs` go to
  `Generator` (stop_ids, loop)."""
  from lima_jax.formats import model_file
  m = model_file.open(path, mesh=mesh, dtype=dtype)
  return Generator(m.params, m.config, m.tokenizer, mesh=mesh, batch_size=batch_size, **kwargs)


def answer_file(gen: Generator, prompts, out, dec: Decoding = LIMA, seed: int = 0,
                rows=None) -> Optional[str]:
  """Answers every prompt of the prompts file `prompts` (`rows`: its `read_prompts`, when the
  caller read it already) into `out`, JSONL written atomically: each row plus 'answer',
  'n_tokens' and 'stopped'. Returns a summary line on process 0 (which writes), else None."""
  rows = read_prompts(prompts) if rows is None else rows
  tok, ctx = gen.tok, gen.cfg.max_seq_len
  ids = [render_prompt(turns, tok) for _, turns, _ in rows]
  for (_, _, n), p in zip(rows, ids):
    if len(p) >= ctx:
      raise UserError(f"{prompts}:{n}: the prompt is {len(p)} tokens; the model's context "
                      f"is {ctx}")
  t0 = time.perf_counter()
  results = gen.answer_ids(ids, dec, seed, progress=True)
  seconds = time.perf_counter() - t0
  if jax.process_index() != 0:  # every host holds every answer; one writes them
    return None
  files.write_jsonl(out, [
      {**obj, "answer": tok.decode(a), "n_tokens": len(a), "stopped": stopped}
      for (obj, _, _), (a, stopped) in zip(rows, results)])
  total = sum(len(a) for a, _ in results)
  return (f"wrote {len(rows)} answers to {out}: {total} tokens in {seconds:.1f}s "
          f"({total / seconds:.1f} tokens/s, compilation included)")


def chat(gen: Generator, dec: Decoding, seed: int) -> None:
  """A multi-turn chat on stdin/stdout; the oldest exchanges are forgotten to fit the context."""
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
