"""Answers from a model: one call for a list of conversations, a prompts file or a terminal chat.

Prompts are rendered as in training: in LIMA's format BOS, then every utterance followed by EOT,
up to and including the last user turn's EOT, so the model answers as the assistant and ends
its turn with EOT; in a chat template's, the conversation with the generation prompt, and the
answer ends at the template's end-of-turn token (`open_model` picks the format).
`python -m lima_jax.generate` is the command line around this module.
"""
import dataclasses
import itertools
import time
from typing import Optional, Sequence

import jax

from lima_jax import files
from lima_jax.decode.generator import Generator
from lima_jax.decode.prompts import read_prompts
from lima_jax.decode.sampling import GREEDY, LIMA, Decoding
from lima_jax.errors import UserError
from lima_jax.model.config import ModelConfig


def generate(params, cfg: ModelConfig, tok, conversations: Sequence[Sequence[str]],
             *, mesh=None, max_new_tokens: int = 64, greedy: bool = True,
             decoding: Optional[Decoding] = None, seed: int = 0,
             batch_size: int = 8, renderer=None) -> list[str]:
  """Answers, one per conversation ending on a user turn.

  greedy=True is plain argmax (no repetition penalty); greedy=False is LIMA's sampling.
  `decoding` replaces both (and max_new_tokens) when given. renderer: the conversation format
  (`lima_jax.tokenizer.chat.renderer`), default LIMA's.
  """
  if decoding is None:
    decoding = dataclasses.replace(GREEDY if greedy else LIMA, max_new_tokens=max_new_tokens)
  gen = Generator(params, cfg, tok, mesh=mesh, batch_size=batch_size, renderer=renderer)
  return [a.text for a in gen.answer(conversations, decoding, seed)]


def open_model(path, *, mesh=None, dtype: Optional[str] = None, fmt: Optional[str] = None,
               chat_template: str = ""):
  """(ModelFile, renderer): any model file, ready to answer in format `fmt` ('lima' or
  'chat_template'; default the model's own, `ModelFile.format`), with the Jinja template of the
  file `chat_template` instead of the model's.

  A model that answers as it is: in its chat template no id is added (the template's end of
  turn is its own token); in LIMA's format a model without an EOT row gets one, a copy of its
  line break's row (`eot_as_line_break`): it reads the prompt as the same text with line breaks
  between utterances. Training starts the row elsewhere (the mean embedding) and learns it."""
  from lima_jax.formats import model_file
  from lima_jax.tokenizer import chat
  m = model_file.read(path, need_tokenizer=True)
  fmt = fmt or m.format
  if fmt not in chat.FORMATS:
    raise UserError(f"format: {fmt!r} is not one of {chat.FORMATS}")
  template, name = m.chat_template, m.template_name
  if chat_template:
    template, name = chat.read_template(chat_template), chat_template
  renderer = chat.renderer(fmt, m.tokenizer, template, name or str(path))  # fails before weights
  tok, rows = m.tokenizer, m.config.vocab_size
  if tok.base_vocab_size > rows:
    raise UserError(f"{path}: the tokenizer has {tok.base_vocab_size} pieces but the model only "
                    f"{rows} embedding rows: it does not belong to it")
  grow = fmt == "lima" and tok.vocab_size > rows
  m = model_file.open(path, mesh=mesh, dtype=dtype, check_vocab=False,
                      vocab_multiple=128 if grow else None)
  if grow:
    m = dataclasses.replace(m, params=eot_as_line_break(m.params, m.tokenizer))
  return m, (chat.renderer(fmt, m.tokenizer, template, name) if fmt == "lima" else renderer)


def eot_as_line_break(params, tok) -> dict:
  """`params` whose EOT row (the embedding's, and lm_head's when untied) is the row of the line
  break: a model that never learned EOT reads it as the line break that separates utterances in
  the plain text it saw. The mean embedding training starts from is no token the model knows:
  SmolLM2-135M-Instruct answers "\n", then its own end of turn, to every LIMA-format question
  that way (docs/chat-templates.md). With tied rows EOT also scores as a line break, so an
  answer may end where a line would."""
  newline = tok.encode("\n")[-1:]  # SentencePiece: ['▁', '<0x0A>']
  if not newline:
    return params
  src, eot = newline[0], tok.eot_id

  def copy_row(x, axis):
    index = (slice(None),) * axis
    return jax.jit(lambda a: a.at[index + (eot,)].set(a[index + (src,)]),
                   out_shardings=getattr(x, "sharding", None))(x)
  out = {**params, "embed": {**params["embed"],
                             "embedding": copy_row(params["embed"]["embedding"], 0)}}
  if "lm_head" in params:
    out["lm_head"] = {**params["lm_head"], "kernel": copy_row(params["lm_head"]["kernel"], 1)}
  return out


def open_generator(path, *, mesh=None, dtype: Optional[str] = None, batch_size: int = 8,
                   fmt: Optional[str] = None, chat_template: str = "", **kwargs) -> Generator:
  """The decoder of any model file `lima_jax.formats.model_file.open` reads, answering in
  format `fmt` (see `open_model`); `kwargs` go to `Generator` (stop_ids, loop)."""
  m, renderer = open_model(path, mesh=mesh, dtype=dtype, fmt=fmt, chat_template=chat_template)
  return Generator(m.params, m.config, m.tokenizer, mesh=mesh, batch_size=batch_size,
                   renderer=renderer, **kwargs)


def answer_file(gen: Generator, prompts, out, dec: Decoding = LIMA, seed: int = 0,
                rows=None) -> Optional[str]:
  """Answers every prompt of the prompts file `prompts` (`rows`: its `read_prompts`, when the
  caller read it already) into `out`, JSONL written atomically: each row plus 'answer',
  'n_tokens' and 'stopped'. Returns a summary line on process 0 (which writes), else None."""
  rows = read_prompts(prompts) if rows is None else rows
  tok, ctx = gen.tok, gen.cfg.max_seq_len
  ids = [gen.prompt_ids(conv) for _, conv, _ in rows]
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
    while len(conv) > 1 and len(gen.prompt_ids(conv)) >= ctx:
      conv = conv[2:]  # forget the oldest exchange to stay within the context
    if len(gen.prompt_ids(conv)) >= ctx:
      print(f"(too long: the model's context is {ctx} tokens)", flush=True)
      continue
    answer = gen.answer([conv], dec, seed + turn)[0]
    print(f"assistant> {answer.text}", flush=True)
    history = conv + [answer.text]
