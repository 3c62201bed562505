"""Next-token cross-entropy fused with the output projection, computed on loss tokens only.

The plain way (`Transformer` returning logits, then log-softmax) builds float32 logits
[B, T, V] (0.5 GB at 8 x 512 x 32K, 2 GB at 8 x 2048 x 32K), and spends the head's three
matmuls (forward, d_hidden, d_weight) on every position, although only loss tokens (the
assistant's; padding and prompts are masked out) have a gradient. In SFT that is 40-60% of
the head's work wasted, and the head is ~half the FLOPs of a small model with a 32K vocabulary.

Here the batch's rows are joined into `groups` sequences (one per batch shard: rows never
leave their device), each group's loss tokens are moved to its front (a stable sort), and the
head and log-softmax run over chunks of `chunk` positions per group, only as many chunks as the
group with most loss tokens needs (a while loop with a traced trip count). Under
differentiation the forward pass also computes the gradients while each chunk's logits exist,
so [B, T, V] is never stored and never recomputed. Numerically this is the plain computation
reordered: logits accumulate in float32 whatever the compute dtype, and the weight gradient
accumulates in float32 over chunks.

Worked example: B = 8 rows of T = 512 on one device (groups = 1), 2,377 loss tokens in all,
chunk = 256: ceil(2377 / 256) = 10 chunks, so the head covers 2,560 of the 4,096 positions.
Per row (groups = 8, the same batch over 8 devices) with chunk = 32 and 336 loss tokens in the
fullest row it would be 11 chunks, 8 x 352 = 2,816 positions.
"""
import functools

import jax
import jax.numpy as jnp


def nll_sums(hidden: jax.Array, w: jax.Array, targets: jax.Array, loss_mask: jax.Array, *,
             chunk: int, vocab_first: bool, groups: int = 1) -> tuple[jax.Array, jax.Array]:
  """(sum of next-token NLL over loss tokens, number of loss tokens), float32 scalars.

  hidden [B, T, D] are the final-norm outputs (compute dtype); w is the output projection,
  [V, D] if `vocab_first` (a tied embedding table) else [D, V] (lm_head); targets [B, T] int;
  loss_mask [B, T] bool. `groups` (dividing B) is the number of batch shards: consecutive
  rows B / groups at a time are joined, so that no token crosses devices. Differentiable in
  hidden and w.
  """
  B, T, D = hidden.shape
  if B % groups:
    raise ValueError(f"nll_sums: {B} rows do not split into {groups} groups")
  B, T = groups, B // groups * T
  hidden, targets, loss_mask = (hidden.reshape(B, T, D), targets.reshape(B, T),
                                loss_mask.reshape(B, T))
  chunk = max(1, min(chunk, T))
  order = jnp.argsort(~loss_mask, axis=1, stable=True)  # loss positions first, in order
  counts = jnp.sum(loss_mask, axis=1, dtype=jnp.int32)
  padded = -(-T // chunk) * chunk
  h = jnp.take_along_axis(hidden, order[:, :, None], axis=1)
  t = jnp.take_along_axis(targets, order, axis=1)
  if padded != T:
    h = jnp.pad(h, ((0, 0), (0, padded - T), (0, 0)))
    t = jnp.pad(t, ((0, 0), (0, padded - T)))
  valid = jnp.arange(padded)[None, :] < counts[:, None]
  n_chunks = -(-jnp.max(counts) // chunk)
  total = _chunked_nll(h, w if vocab_first else w.T, t, valid, n_chunks, chunk)
  return total, jnp.sum(counts).astype(jnp.float32)


def _chunk_logits(h, w, i, chunk):
  """The chunk's hidden states [N, D] (N = B * C) and float32 logits, vocab-major: [V, N].

  2-D matmuls (XLA:CPU gives [B, C, *] einsums' gradients transposed copies), and [V, N]
  rather than [N, V]: with few rows, Eigen (XLA:CPU's matmul library under train.py's
  compiler options) runs [V, D] x [D, N] at 143 GFLOP/s but [N, D] x [D, V] at 59 (2-core AVX2,
  N = 256, V = 32000, D = 320).
  """
  hc = jax.lax.dynamic_slice_in_dim(h, i * chunk, chunk, axis=1).reshape(-1, h.shape[-1])
  logits = jnp.einsum("VD,ND->VN", w.astype(h.dtype), hc, preferred_element_type=jnp.float32)
  return hc, logits


def _slice(x, i, chunk):
  return jax.lax.dynamic_slice_in_dim(x, i * chunk, chunk, axis=1)


def _forward(h, w, t, valid, n_chunks, chunk, with_grads: bool):
  """The NLL sum; with_grads also gives its gradients in h and w, from the same logits."""
  V = w.shape[0]

  def body(i, carry):
    total, dh, dw = carry
    hc, logits = _chunk_logits(h, w, i, chunk)
    lse = jax.nn.logsumexp(logits, axis=0, keepdims=True)  # [1, N]
    tc, vc = _slice(t, i, chunk).reshape(-1), _slice(valid, i, chunk).reshape(-1)
    target = jnp.take_along_axis(logits, tc[None, :], axis=0)[0]
    total += jnp.sum(jnp.where(vc, lse[0] - target, 0.0))
    if not with_grads:
      return total, dh, dw
    # d(lse - target) / d logits = softmax - onehot, on valid positions only.
    onehot = tc[None, :] == jnp.arange(V)[:, None]
    dlogits = jnp.where(vc[None, :], jnp.exp(logits - lse) - onehot, 0.0).astype(h.dtype)
    dhc = jnp.einsum("VN,VD->ND", dlogits, w.astype(h.dtype)).reshape(h.shape[0], chunk, -1)
    dw += jnp.einsum("VN,ND->VD", dlogits, hc, preferred_element_type=jnp.float32)
    return total, jax.lax.dynamic_update_slice_in_dim(dh, dhc, i * chunk, axis=1), dw

  init = (jnp.float32(0), jnp.zeros_like(h) if with_grads else None,
          jnp.zeros(w.shape, jnp.float32) if with_grads else None)
  return jax.lax.fori_loop(0, n_chunks, body, init)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _chunked_nll(h, w, t, valid, n_chunks, chunk):
  return _forward(h, w, t, valid, n_chunks, chunk, with_grads=False)[0]


def _fwd(h, w, t, valid, n_chunks, chunk):
  # The gradients are computed here, while each chunk's logits exist (as Liger's fused linear
  # cross-entropy does): recomputing them in the backward pass would cost a fourth matmul.
  total, dh, dw = _forward(h, w, t, valid, n_chunks, chunk, with_grads=True)
  return total, (dh, dw.astype(w.dtype))


def _bwd(chunk, res, g):
  dh, dw = res
  return (g * dh).astype(dh.dtype), (g * dw).astype(dw.dtype), None, None, None


_chunked_nll.defvjp(_fwd, _bwd)
