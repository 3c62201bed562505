"""The LLaMA-family decoder in Flax linen (its config and named sizes: lima_jax.model.config).

One architecture covers LLaMA 1/2/3.x, Mistral (v0.2+, no sliding window), Qwen2/2.5 (biases on
q, k and v only) and SmolLM2 (a small Llama with tied embeddings); `arch` only says which
Hugging Face model_type a checkpoint came from and is written back to.

The parameter tree (docs/INTERFACES.md) stacks every per-layer tensor on a leading 'layers'
axis and is the same whether the layers run under `nn.scan` (default: an 80-layer model
compiles like a 1-layer one) or unrolled, so checkpoints never depend on that flag.

LIMA's residual dropout (rate p_top * i / (L - 1) on both residual branches of layer i) is
implemented by hand because the per-layer rate is a scanned, traced value that `nn.Dropout`
cannot take.
"""
from typing import Any, Mapping, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

from lima_jax.model import attention
from lima_jax.model import axes
from lima_jax.model import layers
from lima_jax.model.config import REMAT_POLICIES, ModelConfig


def dropout_rates(cfg: ModelConfig) -> np.ndarray:
  """Per-layer residual dropout rates [n_layers], float32.

  'linear' gives layer i the rate p_top * i / (L - 1) (0 at the bottom, p_top at the top);
  a single-layer model is its own top layer and gets p_top.
  """
  L, p = cfg.n_layers, cfg.dropout_top
  if cfg.dropout_schedule == "none":
    return np.zeros(L, np.float32)
  if cfg.dropout_schedule == "constant" or L == 1:
    return np.full(L, p, np.float32)
  return (p * np.arange(L) / (L - 1)).astype(np.float32)


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype: Any = None) -> dict:
  """An empty KV cache: k, v [L, B, max_len, G, K] and segment_ids [B, max_len] (0 = empty)."""
  dtype = layers.as_dtype(cfg.dtype) if dtype is None else dtype
  shape = (cfg.n_layers, batch, max_len, cfg.n_kv_heads, cfg.head_dim)
  return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype),
          "segment_ids": jnp.zeros((batch, max_len), jnp.int32)}


class LayerInputs(NamedTuple):
  """What each layer gets of its own: the scan hands layer i row i of every field.

  rate: residual dropout rates [L]; kv: None, or the cache's {'k', 'v'} [L, B, S, G, K].
  """
  rate: jax.Array
  kv: dict | None = None


class SharedInputs(NamedTuple):
  """What every layer gets alike (broadcast by the scan): RoPE positions [B, T] and either

  - segments [B, T], with mask, cache_index and LayerInputs.kv None: no cache (training,
    scoring); attention keeps packed segments apart itself; or
  - mask [B, 1, 1, T, S] and cache_index (int32 scalar, the slot of the first token), with
    LayerInputs.kv set and segments None: a KV cache (prefill, decoding), whose mask already
    says which slots each query sees.

  `block_inputs` builds both tuples and refuses any other combination, once a forward pass.
  """
  positions: jax.Array
  segments: jax.Array | None = None
  mask: jax.Array | None = None
  cache_index: jax.Array | None = None


def block_inputs(cfg: ModelConfig, positions, *, segments=None, mask=None, kv=None,
                 cache_index=None) -> tuple[LayerInputs, SharedInputs]:
  """(LayerInputs, SharedInputs) for the stacked `Block`s: one of SharedInputs' combinations."""
  fields = {"segments": segments, "mask": mask, "kv": kv, "cache_index": cache_index}
  given = [name for name, value in fields.items() if value is not None]
  if given not in (["segments"], ["mask", "kv", "cache_index"]):
    raise ValueError("Block takes segments (no cache) or mask, kv and cache_index (a cache), "
                     f"not {given}")
  return (LayerInputs(jnp.asarray(dropout_rates(cfg)), kv),
          SharedInputs(positions, segments, mask, cache_index))


class Block(nn.Module):
  """One decoder layer, written as a scan body: (x, LayerInputs, SharedInputs)."""
  cfg: ModelConfig
  deterministic: bool = True

  def residual_dropout(self, y, rate, name):
    if self.deterministic:
      return y
    keep = jax.random.bernoulli(self.make_rng("dropout"), 1.0 - rate, y.shape)
    # Sown (a no-op unless 'intermediates' is mutable) so the realised rates can be checked.
    self.sow("intermediates", name, keep)
    return jnp.where(keep, y / (1.0 - rate).astype(y.dtype), jnp.zeros_like(y))

  @nn.compact
  def __call__(self, x, per_layer: LayerInputs, shared: SharedInputs):
    cfg = self.cfg
    dtype = layers.as_dtype(cfg.dtype)
    norm = lambda name: layers.RMSNorm(cfg.norm_eps, dtype, layers.as_dtype(cfg.param_dtype),
                                       name=name)
    h, new_kv = layers.Attention(cfg, name="attn")(
        norm("attn_norm")(x), shared.positions, shared.segments, shared.mask, per_layer.kv,
        shared.cache_index)
    x = nn.with_logical_constraint(x + self.residual_dropout(h, per_layer.rate, "attn_keep"),
                                   axes.ACT_EMBED)
    x = checkpoint_name(x, "residual")
    h = layers.MLP(cfg, name="mlp")(norm("mlp_norm")(x))
    x = nn.with_logical_constraint(x + self.residual_dropout(h, per_layer.rate, "mlp_keep"),
                                   axes.ACT_EMBED)
    return x, new_kv


class Transformer(nn.Module):
  """LLaMA decoder: tokens [B, T] -> float32 logits [B, T, V].

  `apply({'params': p}, tokens, positions=None, segment_ids=None, deterministic=True,
  cache=None, cache_index=None, rngs={'dropout': key})`:

  - positions [B, T]: RoPE positions (default: slot index, i.e. arange(T) + cache_index).
  - segment_ids [B, T]: tokens attend only to earlier tokens with the same id (packing);
    0 marks padding. Default: one segment.
  - deterministic=False turns residual dropout on (needs a 'dropout' rng).
  - cache (from `init_cache`) and cache_index (int or int32 scalar, the slot of tokens[:, 0]):
    the tokens' keys/values are written at slots cache_index.. and attention covers every
    filled slot; returns (logits, new_cache) instead of logits.
  - return_hidden=True returns the final-norm outputs [B, T, D] instead of logits, for a loss
    that applies the output projection itself (lima_jax.train.loss).

  Decoding a batch of prompts of different lengths: right-pad them to P, prefill with
  cache_index=0 and segment_ids 1 on real tokens, 0 on padding (the pad slots are then never
  attended); row b's next token comes from logits[b, len_b - 1]. Each later step feeds one
  token per row with cache_index = P + step, positions = len_b + step, segment_ids = 1.
  """
  cfg: ModelConfig

  @nn.compact
  def __call__(self, tokens, positions=None, segment_ids=None, deterministic=True, cache=None,
               cache_index=None, return_hidden=False):
    cfg = self.cfg
    dtype, pdtype = layers.as_dtype(cfg.dtype), layers.as_dtype(cfg.param_dtype)
    B, T = tokens.shape
    segments = jnp.ones((B, T), jnp.int32) if segment_ids is None else segment_ids
    if cache is None:
      slots = jnp.broadcast_to(jnp.arange(T), (B, T))
      per_layer, shared = block_inputs(cfg, slots if positions is None else positions,
                                       segments=segments)
    else:
      if cache_index is None:
        raise ValueError("cache_index is required with a cache")
      cache_index = jnp.asarray(cache_index, jnp.int32)
      slots = jnp.broadcast_to(cache_index + jnp.arange(T), (B, T))
      kv_segments = jax.lax.dynamic_update_slice_in_dim(
          cache["segment_ids"], segments.astype(jnp.int32), cache_index, 1)
      kv_slots = jnp.broadcast_to(jnp.arange(kv_segments.shape[1]), kv_segments.shape)
      per_layer, shared = block_inputs(
          cfg, slots if positions is None else positions,
          mask=attention.attention_mask(segments, kv_segments, slots, kv_slots),
          kv={"k": cache["k"], "v": cache["v"]}, cache_index=cache_index)

    embedding = layers.Embed(cfg, name="embed")
    x = embedding(tokens)
    x = nn.with_logical_constraint(x, axes.ACT_EMBED)

    block = Block
    if cfg.remat_policy != "none":
      block = nn.remat(Block, policy=REMAT_POLICIES[cfg.remat_policy],
                       prevent_cse=not cfg.scan_layers)
    stack = nn.scan(
        block, variable_axes={"params": 0, "intermediates": 0},
        split_rngs={"params": True, "dropout": True}, in_axes=(0, nn.broadcast),
        length=cfg.n_layers, unroll=1 if cfg.scan_layers else cfg.n_layers,
        metadata_params={nn.PARTITION_NAME: axes.LAYERS})
    x, new_kv = stack(cfg, deterministic, name="layers")(x, per_layer, shared)

    x = layers.RMSNorm(cfg.norm_eps, dtype, pdtype, name="final_norm")(x)
    if return_hidden:
      if cache is not None:
        raise ValueError("return_hidden does not combine with a cache")
      return x
    if cfg.tie_embeddings:
      logits = embedding.attend(x)
    else:
      logits = layers.LMHead(cfg, name="lm_head")(x)
    logits = nn.with_logical_constraint(logits.astype(jnp.float32), axes.ACT_VOCAB)
    if cache is None:
      return logits
    return logits, {"k": new_kv["k"], "v": new_kv["v"], "segment_ids": kv_segments}


def abstract_params(cfg: ModelConfig) -> dict:
  """The parameter tree as shapes (nn.LogicallyPartitioned leaves over ShapeDtypeStructs):
  shardings, sizes and checks before any weight exists. Nothing is allocated, and no key is
  made outside the trace (so it works under a mesh of compile-only devices too)."""
  return jax.eval_shape(lambda: Transformer(cfg).init(
      jax.random.key(0), jnp.zeros((1, 1), jnp.int32)))["params"]


def param_count(cfg: ModelConfig) -> int:
  """Number of parameters, from shapes only."""
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract_params(cfg)))


def resize_vocab(params: Mapping[str, Any], new_vocab_size: int) -> dict:
  """Grows the vocabulary to new_vocab_size (e.g. to add LIMA's EOT token).

  New embedding (and lm_head) rows are the mean of the existing ones, so a new token starts
  as an "average" token rather than noise. Boxed (LogicallyPartitioned) leaves stay boxed and
  dtypes are kept. Returns a new params dict; update the config's vocab_size to match.
  """

  def grow(leaf, axis):
    boxed = isinstance(leaf, nn.meta.AxisMetadata)
    value = leaf.unbox() if boxed else leaf
    old = value.shape[axis]
    if new_vocab_size < old:
      raise ValueError(f"resize_vocab only grows: {new_vocab_size} < current {old}")
    mean = jnp.mean(jnp.asarray(value, jnp.float32), axis=axis, keepdims=True)
    extra = jnp.repeat(mean, new_vocab_size - old, axis=axis).astype(value.dtype)
    value = jnp.concatenate([jnp.asarray(value), extra], axis=axis)
    return leaf.replace_boxed(value) if boxed else value

  out = dict(params)
  out["embed"] = {**params["embed"], "embedding": grow(params["embed"]["embedding"], 0)}
  if "lm_head" in params:
    out["lm_head"] = {**params["lm_head"], "kernel": grow(params["lm_head"]["kernel"], 1)}
  return out
