"""Logprobs as OpenAI reports them: the model's own, and their two wire shapes.

A logprob here is the log-softmax of the model's logits over the tokenizer's vocabulary (the
rows past it are sharding padding), before the repetition penalty, temperature, top-k and
top-p: what the model believes, as vLLM reports by default, and what loglikelihood tasks need.
The device ranks `TOP` alternatives (OpenAI's maximum) at every position that wants any; a
request's `top_logprobs` / `logprobs` keeps its first k.

Token text: an id's text in the middle of a text (SentencePiece drops the leading space of a
text's first piece), so the tokens of an answer concatenate to (nearly) its text.
"""
import functools

import jax
import jax.numpy as jnp

TOP = 20


def chosen_and_top(logits, tokens, vocab_size: int):
  """logits [N, V], tokens [N] -> (logprob of each token [N], top ids [N, TOP], their
  logprobs [N, TOP])."""
  real = jnp.arange(logits.shape[-1]) < vocab_size
  lp = jax.nn.log_softmax(jnp.where(real, logits.astype(jnp.float32), -jnp.inf), axis=-1)
  chosen = jnp.take_along_axis(lp, tokens[:, None].astype(jnp.int32), axis=-1)[:, 0]
  top_lps, top_ids = jax.lax.top_k(lp, TOP)
  return chosen, top_ids.astype(jnp.int32), top_lps


class Texts:
  """Cached token texts of one tokenizer."""

  def __init__(self, tok):
    self.tok = tok
    self._special = {tok.bos_id, tok.eos_id, tok.eot_id, tok.pad_id}
    anchor = tok.encode("a")
    self._anchor = anchor[-1:] if anchor else []
    self._anchor_text = tok.decode(self._anchor)

  @functools.lru_cache(maxsize=65536)
  def __call__(self, i: int) -> str:
    if i in self._special:
      return self.tok.id_to_piece(i)
    if not self._anchor:
      return self.tok.decode([i])
    return self.tok.decode(self._anchor + [i])[len(self._anchor_text):]


def chat_shape(entries, text) -> dict:
  """OpenAI chat's `logprobs`: entries are (id, logprob, [(id, logprob), ...])."""
  def one(i, lp):
    t = text(i)
    return {"token": t, "logprob": lp, "bytes": list(t.encode("utf-8"))}
  return {"content": [{**one(i, lp), "top_logprobs": [one(j, l) for j, l in top]}
                      for i, lp, top in entries]}


def completion_shape(entries, text, start: int = 0) -> dict:
  """OpenAI completions' legacy `logprobs`; an entry's logprob None (the first prompt token
  under echo) has no alternatives either. Offsets count characters from `start`."""
  tokens, lps, tops, offsets = [], [], [], []
  at = start
  for i, lp, top in entries:
    t = text(i)
    tokens.append(t)
    lps.append(lp)
    tops.append(None if lp is None else {text(j): l for j, l in top})
    offsets.append(at)
    at += len(t)
  return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}
