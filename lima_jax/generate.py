"""Generation (minimal): greedy answers by full recomputation, used for the demo's samples.

Prompts are rendered as in training (BOS, each utterance followed by EOT), so the model answers
as the assistant and stops at EOT. The causal mask makes the tokens after the cursor irrelevant,
so one fixed-size buffer serves every step and compiles once.
"""
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lima_jax import model as model_lib


def render_prompt(turns: Sequence[str], tok) -> list[int]:
  ids = [tok.bos_id]
  for turn in turns:
    ids += tok.encode(turn) + [tok.eot_id]
  return ids


def generate(params, cfg: model_lib.ModelConfig, tok, conversations: Sequence[Sequence[str]],
             *, mesh=None, max_new_tokens: int = 64, greedy: bool = True) -> list[str]:
  """Greedy answers (one per conversation, which ends on a user turn)."""
  if not greedy:
    raise NotImplementedError("only greedy decoding is implemented here")
  del mesh  # Params already carry their shardings; jit follows them.
  model = model_lib.Transformer(cfg)
  prompts = [render_prompt(c, tok) for c in conversations]
  size = max(map(len, prompts)) + max_new_tokens

  @jax.jit
  def next_token(params, buf, cursor):
    logits = model.apply({"params": params}, buf[None], deterministic=True)[0, cursor - 1]
    # Rows past the tokenizer's vocabulary are sharding padding: never a valid token.
    return jnp.argmax(jnp.where(jnp.arange(logits.shape[-1]) < tok.vocab_size, logits, -jnp.inf))

  answers = []
  stops = {tok.eot_id, tok.eos_id}
  for ids in prompts:
    buf = np.zeros(size, np.int32)
    buf[:len(ids)] = ids
    out = []
    for cursor in range(len(ids), len(ids) + max_new_tokens):
      t = int(next_token(params, jnp.asarray(buf), cursor))
      if t in stops:
        break
      buf[cursor] = t
      out.append(t)
    answers.append(tok.decode(out))
  return answers
