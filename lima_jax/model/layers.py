"""Building blocks of the LLaMA family: RMSNorm, RoPE, attention, SwiGLU MLP, embeddings.

Numerics follow Hugging Face's `modeling_llama` (the reference our conversion tests compare
against): RMSNorm normalises in float32, RoPE uses the rotate_half layout with inverse
frequencies computed in float32, and Llama-3 frequency scaling is `_compute_llama3_parameters`
line for line. Modules take the model's (hashable) ModelConfig as `cfg`; model.py stacks them.
"""
import math
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

from lima_jax.model import attention
from lima_jax.model import axes
from lima_jax.model import lora
from lima_jax.model import splash
from lima_jax.model.config import DTYPES, ModelConfig

Initializer = Callable[..., jax.Array]


def as_dtype(name: str) -> Any:
  """The jnp dtype of a config dtype string ('float32' or 'bfloat16')."""
  if name not in DTYPES:
    raise ValueError(f"dtype {name!r} is not one of {sorted(DTYPES)}")
  return DTYPES[name]


def param(module: nn.Module, name: str, shape: Sequence[int], names: Sequence[str],
          init: Initializer, dtype: Any) -> jax.Array:
  """Declares a parameter boxed with its logical axis names (the sharding rules map them)."""
  init = nn.with_logical_partitioning(init, tuple(names))
  return module.param(name, init, tuple(shape), dtype)


def einsum(eq: str, x: jax.Array, w: jax.Array, dtype: Any) -> jax.Array:
  """`jnp.einsum` with both operands in the compute dtype (params may be stored wider)."""
  return jnp.einsum(eq, x.astype(dtype), w.astype(dtype))


def fan_in_init(in_axes: Sequence[int], out_axes: Sequence[int]) -> Initializer:
  """Truncated normal scaled by 1/sqrt(fan_in), for kernels whose input spans several axes."""
  return nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal",
                                          in_axis=tuple(in_axes), out_axis=tuple(out_axes))


class RMSNorm(nn.Module):
  """Root-mean-square layer norm with a learned per-feature scale (no bias, no centring)."""
  eps: float = 1e-6
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = param(self, "scale", (x.shape[-1],), axes.NORM, nn.initializers.ones,
                  self.param_dtype)
    # The statistics are taken in float32 even for bfloat16 activations, as HF does.
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
    return x32.astype(self.dtype) * scale.astype(self.dtype)


def rope_inv_freq(head_dim: int, theta: float,
                  scaling: Mapping[str, float] | None = None) -> np.ndarray:
  """Inverse RoPE frequencies [head_dim // 2], float32, optionally with Llama-3 scaling.

  Computed on the host in float32 (as torch does) so that the angles match HF bit for bit
  up to the final cos/sin.
  """
  exponents = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
  inv_freq = (np.float32(1.0) / np.power(np.float32(theta), exponents)).astype(np.float32)
  if not scaling:
    return inv_freq
  factor = scaling["factor"]
  low_freq_factor = scaling["low_freq_factor"]
  high_freq_factor = scaling["high_freq_factor"]
  old_context_len = scaling["original_max_position_embeddings"]
  low_freq_wavelen = old_context_len / low_freq_factor
  high_freq_wavelen = old_context_len / high_freq_factor
  wavelen = (2 * math.pi / inv_freq).astype(np.float32)
  # Long wavelengths (beyond the original context) are slowed down by `factor`, short ones
  # are kept, and the band in between is interpolated smoothly.
  scaled = np.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq).astype(np.float32)
  smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
  smoothed = (1 - smooth) * scaled / factor + smooth * scaled
  is_medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
  return np.where(is_medium, smoothed, scaled).astype(np.float32)


def rotate_half(x: jax.Array) -> jax.Array:
  half = x.shape[-1] // 2
  return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: np.ndarray) -> jax.Array:
  """Rotates x [B, T, N, K] by the angles positions [B, T] * inv_freq (rotate_half layout)."""
  freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)  # [B, T, K/2]
  angles = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]  # [B, T, 1, K]
  cos = jnp.cos(angles).astype(x.dtype)
  sin = jnp.sin(angles).astype(x.dtype)
  return x * cos + rotate_half(x) * sin


class Attention(nn.Module):
  """Causal grouped-query self-attention with RoPE; optionally reads and writes a KV cache."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x, positions, segments=None, mask=None, kv=None, cache_index=None):
    """Without a cache, `segments` [B, T] keeps packed sequences apart (slot t is query t and
    key t); with one (kv, cache_index), `mask` [B, 1, 1, T, S] says which cache slots each
    query sees."""
    cfg = self.cfg
    dtype, pdtype = as_dtype(cfg.dtype), as_dtype(cfg.param_dtype)
    D, H, G, K = cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    init = fan_in_init((0,), (1, 2))
    zeros = nn.initializers.zeros
    B, T = x.shape[:2]
    x2 = x.reshape(B * T, D)  # two-dimensional matmuls (see MLP)

    def project(name, n, names):  # lora.dense: the weight, and its adapters when targeted
      return lora.dense(self, cfg.lora, name, x2, (D, n, K), names, 1, init, dtype,
                        pdtype).reshape(B, T, n, K)

    q, k, v = project("q", H, axes.Q), project("k", G, axes.KV), project("v", G, axes.KV)
    if cfg.attention_bias or cfg.qkv_bias:
      q += param(self, "q_bias", (H, K), axes.Q_BIAS, zeros, pdtype).astype(dtype)
      k += param(self, "k_bias", (G, K), axes.KV_BIAS, zeros, pdtype).astype(dtype)
      v += param(self, "v_bias", (G, K), axes.KV_BIAS, zeros, pdtype).astype(dtype)
    q = nn.with_logical_constraint(q, axes.ACT_HEADS)
    k = nn.with_logical_constraint(k, axes.ACT_KV_HEADS)
    inv_freq = rope_inv_freq(K, cfg.rope_theta, cfg.rope_scaling_dict)
    q = apply_rope(q, positions, inv_freq)
    k = apply_rope(k, positions, inv_freq)

    new_kv = None
    if kv is not None:
      k_all = jax.lax.dynamic_update_slice_in_dim(kv["k"], k.astype(kv["k"].dtype), cache_index, 1)
      v_all = jax.lax.dynamic_update_slice_in_dim(kv["v"], v.astype(kv["v"].dtype), cache_index, 1)
      new_kv = {"k": k_all, "v": v_all}
      out = attention.cached_attention(q.reshape(B, T, G, H // G, K), k_all.astype(dtype),
                                       v_all.astype(dtype), mask).reshape(B, T, H, K)
      impl = None
    else:
      impl = splash.resolve_impl(cfg.attention_impl, cfg.dtype)
    if impl == "splash":
      out = splash.splash_attention(q, k, v, segments, cfg.splash_block)
    elif impl == "cudnn":
      # cuDNN's fused flash attention (NVIDIA GPUs, bfloat16/float16); the mask keeps packed
      # segments apart. Query head h uses kv head h // (H / G) here too.
      slots = jnp.broadcast_to(jnp.arange(T), (B, T))
      mask = attention.attention_mask(segments, segments, slots, slots)
      q, k, v = (checkpoint_name(t, "qkv") for t in (q, k, v))
      out = checkpoint_name(
          jax.nn.dot_product_attention(q, k, v, mask=mask[:, 0], implementation="cudnn"),
          "attention")
    elif impl == "xla":
      # Head-major for the blocked kernel; query head h uses kv head h // (H / G), so the R = H / G
      # queries sharing a kv head are rows t * R + r of one [T * R, K] matrix.
      qh = q.reshape(B, T, G, H // G, K).transpose(0, 2, 1, 3, 4).reshape(B, G, T * H // G, K)
      kh, vh = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
      qh, kh, vh = (checkpoint_name(t, "qkv") for t in (qh, kh, vh))
      block = cfg.attention_block if cfg.attention_block < T else 0
      out = attention.causal_attention(qh, kh, vh, segments, block)
      out = out.reshape(B, G, T, H // G, K).transpose(0, 2, 1, 3, 4).reshape(B, T, H, K)
    out = nn.with_logical_constraint(out, axes.ACT_HEADS)
    out = lora.dense(self, cfg.lora, "o", out.reshape(B * T, H * K), (H, K, D), axes.O, 2,
                     fan_in_init((0, 1), (2,)), dtype, pdtype).reshape(B, T, D)
    if cfg.attention_bias:
      out += param(self, "o_bias", (D,), axes.EMBED_BIAS, zeros, pdtype).astype(dtype)
    return out, new_kv


class MLP(nn.Module):
  """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    dtype, pdtype = as_dtype(cfg.dtype), as_dtype(cfg.param_dtype)
    D, F = cfg.dim, cfg.hidden_dim
    init = fan_in_init((0,), (1,))
    zeros = nn.initializers.zeros

    def proj(name, h, shape, names, eq, bias_shape, bias_names):
      y = lora.dense(self, cfg.lora, name, h, shape, names, 1, init, dtype, pdtype)
      if cfg.mlp_bias:
        y += param(self, f"{name}_bias", bias_shape, bias_names, zeros, pdtype).astype(dtype)
      return y

    # Two-dimensional matmuls: on CPU, XLA lays out their gradients without the transposes
    # that [B, T, F] einsums get.
    B, T = x.shape[:2]
    x = x.reshape(B * T, D)
    gate = checkpoint_name(
        proj("gate", x, (D, F), axes.MLP_IN, "ND,DF->NF", (F,), axes.MLP_BIAS), "mlp")
    up = checkpoint_name(proj("up", x, (D, F), axes.MLP_IN, "ND,DF->NF", (F,), axes.MLP_BIAS),
                         "mlp")
    h = nn.with_logical_constraint(nn.silu(gate) * up, axes.ACT_MLP)
    return proj("down", h, (F, D), axes.MLP_OUT, "NF,FD->ND", (D,), axes.EMBED_BIAS).reshape(
        B, T, D)


class Embed(nn.Module):
  """Token embedding [V, D]; `attend` gives the tied output projection."""
  cfg: ModelConfig

  def setup(self):
    cfg = self.cfg
    # std 1/sqrt(D) keeps tied logits of unit scale on RMS-normalised inputs.
    self.embedding = param(self, "embedding", (cfg.vocab_size, cfg.dim), axes.EMBEDDING,
                           nn.initializers.normal(cfg.dim**-0.5), as_dtype(cfg.param_dtype))

  def __call__(self, tokens):
    return jnp.take(self.embedding, tokens, axis=0).astype(as_dtype(self.cfg.dtype))

  def attend(self, x):
    return einsum("BTD,VD->BTV", x, self.embedding, as_dtype(self.cfg.dtype))


class LMHead(nn.Module):
  """Untied output projection [D, V]."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    kernel = param(self, "kernel", (cfg.dim, cfg.vocab_size), axes.LM_HEAD,
                   fan_in_init((0,), (1,)), as_dtype(cfg.param_dtype))
    return einsum("BTD,DV->BTV", x, kernel, as_dtype(cfg.dtype))
