"""Attention kernels: the blocked causal self-attention that training runs (a custom VJP that
recomputes probabilities in the backward pass), and plain masked attention over a KV cache.

Layouts are chosen for XLA:CPU and work on every backend: training attention is head-major
(q [B, G, T * R, K], k and v [B, G, T, K]) with key-major scores [B, G, S, M], so that every
einsum gets its operands without per-block transposes and the softmax reduces over a major axis
(which XLA:CPU vectorises; over the minor axis it emits a scalar tree reduction). That is
faster than the [B, T, G, R, K] version with a stored mask (docs/performance.md,
benchmarks/results/ablation/).
"""
import functools

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name


def attention_mask(q_segments: jax.Array, kv_segments: jax.Array, q_slots: jax.Array,
                   kv_slots: jax.Array) -> jax.Array:
  """Boolean mask [B, 1, 1, T, S]: causal by slot, and only within the same segment id.

  Slots are indices in the key/value sequence (the cache when decoding), not RoPE positions,
  so packed or padded rows stay causal whatever their positions.
  """
  causal = q_slots[:, :, None] >= kv_slots[:, None, :]
  same = q_segments[:, :, None] == kv_segments[:, None, :]
  return (causal & same)[:, None, None, :, :]


def cached_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
  """softmax(q k^T / sqrt(K), masked) v for q [B, T, G, R, K] on a cache k, v [B, S, G, K]
  with mask [B, 1, 1, T, S] (decoding and prefill; not differentiated, so no custom VJP)."""
  s = jnp.einsum("BTGRK,BSGK->BGRTS", q, k, preferred_element_type=jnp.float32)
  s = jnp.where(mask, s * q.shape[-1]**-0.5, jnp.finfo(jnp.float32).min)
  p = jax.nn.softmax(s, axis=-1).astype(q.dtype)
  return jnp.einsum("BGRTS,BSGK->BTGRK", p, v)


def _blocks(T: int, block: int) -> list[tuple[int, int]]:
  """[a, b) of each query block; block (a, b) meets keys [0, b). block 0: one block."""
  step = block or T
  return [(a, min(a + step, T)) for a in range(0, T, step)]


def _scores(q, k, segments, a: int, b: int):
  """Masked, scaled float32 scores of query block [a, b) on keys [0, b), key-major:
  [B, G, b, (b - a) * R]."""
  R = q.shape[2] // k.shape[2]
  s = jnp.einsum("BGSK,BGMK->BGSM", k[:, :, :b], q[:, :, a * R:b * R],
                 preferred_element_type=jnp.float32) * q.shape[-1]**-0.5
  query = a + jnp.arange((b - a) * R) // R  # row m is query a + m // R
  causal = jnp.arange(b)[:, None] <= query[None, :]
  same = segments[:, :b, None] == jnp.repeat(segments[:, a:b], R, axis=1)[:, None, :]
  return jnp.where((causal & same)[:, None], s, jnp.finfo(jnp.float32).min)


def _attention_fwd(q, k, v, segments, block):
  outs, lses = [], []
  for a, b in _blocks(k.shape[2], block):
    s = _scores(q, k, segments, a, b)
    top = jnp.max(s, axis=2, keepdims=True)  # finite: every query sees itself
    p = jnp.exp(s - top)
    total = jnp.sum(p, axis=2, keepdims=True)  # [B, G, 1, M]
    o = jnp.einsum("BGSM,BGSK->BGMK", p.astype(q.dtype), v[:, :, :b],
                   preferred_element_type=jnp.float32)
    outs.append((o / jnp.swapaxes(total, 2, 3)).astype(q.dtype))
    lses.append(top + jnp.log(total))
  return jnp.concatenate(outs, axis=2), jnp.concatenate(lses, axis=3)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def causal_attention(q, k, v, segments, block: int):
  """Causal self-attention within segments, head-major: q [B, G, T * R, K] (row t * R + r is
  query t of head g * R + r), k and v [B, G, T, K], segments [B, T] (tokens attend to earlier
  tokens with the same id; 0 is padding). Returns [B, G, T * R, K].

  Flash-attention's bookkeeping in plain XLA: the backward pass recomputes the scores from the
  saved log-sum-exp instead of keeping [B, G, T, T] probabilities per layer (on CPU that stash,
  written and read back, cost more than the matmuls), and query block [a, b) only meets keys
  [0, b): causal attention's masked upper triangle is skipped (6 of 16 score tiles at 4 blocks).
  The mask is built from the segment ids inside each block's fusion, never stored.
  """
  return _attention_fwd(q, k, v, segments, block)[0]


def _attention_vjp_fwd(q, k, v, segments, block):
  out, lse = _attention_fwd(q, k, v, segments, block)
  out, lse = checkpoint_name(out, "attention"), checkpoint_name(lse, "attention")
  return out, (q, k, v, segments, out, lse)


def _attention_vjp_bwd(block, res, d_out):
  q, k, v, segments, out, lse = res
  R = q.shape[2] // k.shape[2]
  # sum_k d_out * out: the softmax backward's row term, [B, G, 1, M].
  delta = jnp.einsum("BGMK,BGMK->BGM", d_out.astype(jnp.float32), out.astype(jnp.float32))
  delta = delta[:, :, None, :]
  dq, dk, dv = [], jnp.zeros(k.shape, jnp.float32), jnp.zeros(v.shape, jnp.float32)
  for a, b in _blocks(k.shape[2], block):
    rows = slice(a * R, b * R)
    p = jnp.exp(_scores(q, k, segments, a, b) - lse[..., rows])  # masked entries: exactly 0
    do = d_out[:, :, rows]
    dv = dv.at[:, :, :b].add(jnp.einsum("BGSM,BGMK->BGSK", p.astype(q.dtype), do,
                                        preferred_element_type=jnp.float32))
    dp = jnp.einsum("BGSK,BGMK->BGSM", v[:, :, :b], do, preferred_element_type=jnp.float32)
    ds = (p * (dp - delta[..., rows]) * q.shape[-1]**-0.5).astype(q.dtype)
    dq.append(jnp.einsum("BGSM,BGSK->BGMK", ds, k[:, :, :b]))
    dk = dk.at[:, :, :b].add(jnp.einsum("BGSM,BGMK->BGSK", ds, q[:, :, rows],
                                        preferred_element_type=jnp.float32))
  return jnp.concatenate(dq, axis=2), dk.astype(k.dtype), dv.astype(v.dtype), None


causal_attention.defvjp(_attention_vjp_fwd, _attention_vjp_bwd)
