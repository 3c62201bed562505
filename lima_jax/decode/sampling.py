"""Choosing the next token: LIMA's decoding settings and the logit transforms they apply.

The order is Hugging Face's (processors, then warpers), so an exported model decodes the
same way there: mask the vocabulary padding, repetition penalty, then temperature, top-k and
top-p; greedy takes the argmax after the penalty. One difference is deliberate: LIMA
penalises previously *generated* tokens, so `seen` holds only the answer's own tokens;
Hugging Face's processor also counts the prompt unless given `prompt_ignore_length`.
"""
import dataclasses
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from lima_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Decoding:
  """How to choose tokens. Defaults: LIMA's. Only greedy, top_k and max_new_tokens (rounded
  up to a power of two) are compiled into a decoder; the other settings are its inputs.

  greedy: argmax instead of sampling (temperature, top_k and top_p are then unused; the
    repetition penalty still applies unless it is 1).
  top_k: keep the k most likely tokens (0: off). top_p: nucleus mass (1: off).
  """
  max_new_tokens: int = 2048
  temperature: float = 0.7
  top_p: float = 0.9
  top_k: int = 0
  repetition_penalty: float = 1.2
  greedy: bool = False

  def __post_init__(self):
    problems = []
    if self.max_new_tokens < 1:
      problems.append(f"max_new_tokens={self.max_new_tokens} must be >= 1")
    if not self.temperature > 0:
      problems.append(f"temperature={self.temperature} must be > 0")
    if not 0 < self.top_p <= 1:
      problems.append(f"top_p={self.top_p} must be in (0, 1]")
    if self.top_k < 0:
      problems.append(f"top_k={self.top_k} must be >= 0")
    if not self.repetition_penalty > 0:
      problems.append(f"repetition_penalty={self.repetition_penalty} must be > 0")
    if problems:
      raise UserError("decoding: " + "; ".join(problems))


LIMA = Decoding()
GREEDY = Decoding(greedy=True, repetition_penalty=1.0)


class Knobs(NamedTuple):
  """A Decoding whose float settings are (traced) arrays: the decode loop's view of it, so
  one compiled decoder serves every temperature, top_p and penalty."""
  greedy: bool
  top_k: int
  temperature: Any
  top_p: Any
  repetition_penalty: Any


def repetition_penalty(logits: jax.Array, seen: jax.Array, penalty) -> jax.Array:
  """CTRL's penalty on tokens where `seen` [B, V] is True: positive logits are divided by
  `penalty`, negative ones multiplied, so a seen token always becomes less likely."""
  return jnp.where(seen, jnp.where(logits > 0, logits / penalty, logits * penalty), logits)


def top_k_filter(logits: jax.Array, k: int) -> jax.Array:
  """Logits outside the k largest (per row) set to -inf; ties with the k-th are kept."""
  if not k or k >= logits.shape[-1]:
    return logits
  kth = jax.lax.top_k(logits, k)[0][..., -1:]
  return jnp.where(logits < kth, -jnp.inf, logits)


def top_p_filter(logits: jax.Array, p) -> jax.Array:
  """Nucleus filter: keeps the most likely tokens until their mass reaches p (1: all).

  A token is kept when the mass of the tokens more likely than it is below p, so the kept
  set is the smallest whose mass is >= p, and the most likely token is always kept.
  """
  desc = -jnp.sort(-logits, axis=-1)
  probs = jax.nn.softmax(desc, axis=-1)
  before = jnp.cumsum(probs, axis=-1) - probs
  n_keep = jnp.sum(before < p, axis=-1, keepdims=True)
  threshold = jnp.take_along_axis(desc, n_keep - 1, axis=-1)
  return jnp.where(logits < threshold, -jnp.inf, logits)


def allowed(width: int, vocab_size: int, banned: Sequence[int] = ()) -> jax.Array:
  """[width] bool: ids a decoder may emit. Rows past the tokenizer's vocabulary are sharding
  padding, and `banned` ids (BOS, PAD) are never an answer's token."""
  ids = jnp.arange(width)
  return (ids < vocab_size) & ~jnp.isin(ids, jnp.asarray(tuple(banned) or (-1,), jnp.int32))


def processed_logits(logits: jax.Array, seen: jax.Array, dec: Decoding | Knobs,
                     vocab_size: int, banned: Sequence[int] = ()) -> jax.Array:
  """The logits the next token is drawn from (argmax of them when greedy), [B, V]."""
  logits = jnp.where(allowed(logits.shape[-1], vocab_size, banned), logits, -jnp.inf)
  logits = repetition_penalty(logits, seen, dec.repetition_penalty)
  if dec.greedy:
    return logits
  return top_p_filter(top_k_filter(logits / dec.temperature, dec.top_k), dec.top_p)


def next_tokens(logits: jax.Array, seen: jax.Array, keys: jax.Array, dec: Decoding | Knobs,
                vocab_size: int, banned: Sequence[int] = ()) -> jax.Array:
  """[B] next tokens from logits [B, V]; keys [B] (one per row, unused when greedy)."""
  logits = processed_logits(logits, seen, dec, vocab_size, banned)
  if dec.greedy:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  return jax.vmap(jax.random.categorical)(keys, logits).astype(jnp.int32)
