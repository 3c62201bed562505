"""Pallas splash attention (jax.experimental.pallas.ops.tpu.splash_attention) for training on TPU,
and which attention a run uses (`resolve_impl`).

The kernel takes one example at a time ([H, T, K] queries on [G, T, K] keys and values, query
head h on KV head h // (H / G), as lima_jax's layout has it), so it is vmapped over the batch and
run under shard_map: each device gets its batch rows and its 'tensor' share of the heads, as the
logical-axis rules (parallel/sharding.RULES) place them; the kernel sees only local shapes.
Packed sequences are kept apart by segment ids, the causal mask is static, and a length that is
not a multiple of the block is padded (padding queries see only padding: their outputs are cut
off, so they add nothing to any gradient).

Off TPU the same kernel runs through Pallas' interpreter (slow: for tests and for checking a
config), so every check of splash runs on CPU.
"""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name
from jax.experimental.pallas.ops.tpu import splash_attention as sa

from lima_jax.errors import UserError
from lima_jax.model.config import ATTENTION_IMPLS

LANES = 128  # The kernel's key blocks are a multiple of the TPU's 128 lanes, interpreted or not.
# Query and key block per TPU generation (device_kind substring -> tokens), for
# model.splash_block=0. Starting points after MaxText's 512 default, larger where the MXU is
# 256 wide; not tuned on hardware here (docs/tpu.md).
BLOCKS = (("v6", 1024), ("v5", 512), ("v4", 512))
DEFAULT_BLOCK = 512


def _device():
  """(platform, device_kind) of the mesh being traced for (the planner's compile-only TPUs
  included), else of the default backend."""
  mesh = jax.sharding.get_abstract_mesh()
  device = None if mesh.empty else mesh.abstract_device
  if device is not None:
    return device.platform, device.device_kind or ""
  return jax.default_backend(), jax.devices()[0].device_kind


def resolve_impl(impl: str, dtype: str, platform: str | None = None) -> str:
  """'auto' made concrete: splash on TPU, cuDNN on GPU in bfloat16, XLA otherwise."""
  if impl != "auto":
    return impl
  platform = platform or _device()[0]
  if platform == "tpu":
    return "splash"
  if platform == "gpu" and dtype == "bfloat16":
    return "cudnn"
  return "xla"


def check_impl(impl: str, dtype: str, platform: str) -> str:
  """The attention a run on `platform` uses; one line naming the field when it cannot."""
  if impl not in ATTENTION_IMPLS:
    raise UserError(f"model.attention_impl={impl!r} is not one of {list(ATTENTION_IMPLS)}")
  chosen = resolve_impl(impl, dtype, platform)
  if chosen == "cudnn" and (platform != "gpu" or dtype != "bfloat16"):
    raise UserError(f"model.attention_impl='cudnn' needs NVIDIA GPUs and model.dtype='bfloat16' "
                    f"(this run: {platform}, {dtype}); use 'auto' or 'xla'")
  if chosen == "splash" and platform == "gpu":
    raise UserError("model.attention_impl='splash' is a TPU kernel (CPU runs it interpreted, "
                    "for checks); on GPUs use 'auto', 'cudnn' or 'xla'")
  return chosen


def describe(impl: str, dtype: str, platform: str) -> str:
  """The run's first line: which attention trains, and why."""
  chosen = check_impl(impl, dtype, platform)
  how = {"splash": "Pallas splash kernel" + (" (interpreted: slow)" if platform != "tpu" else ""),
         "cudnn": "cuDNN flash attention", "xla": "blocked XLA attention"}[chosen]
  return f"attention: {chosen} ({how}; model.attention_impl={impl!r} on {platform})"


def block_size(T: int, override: int, device_kind: str) -> int:
  """Query and key block: the override, else the generation's, never beyond T rounded up."""
  block = override or next((b for k, b in BLOCKS if k in device_kind.lower()), DEFAULT_BLOCK)
  return min(block, -(-T // LANES) * LANES)


def _kernel(heads: int, length: int, block: int, interpret: bool):
  mask = sa.MultiHeadMask([sa.CausalMask((length, length))] * heads)
  sizes = sa.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                        block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
                        block_q_dq=block, block_kv_dq=block)
  # Its output and log-sum-exp are named like the XLA path's, so remat policies keep them alike.
  return sa.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1,
                            residual_checkpoint_name="attention", interpret=interpret)


def splash_attention(q, k, v, segments, block: int = 0):
  """Causal attention within segments: q [B, T, H, K], k and v [B, T, G, K], segments [B, T]
  (0: padding). Returns [B, T, H, K]. `block` overrides the generation's block size."""
  B, T, H, K = q.shape
  G = k.shape[2]
  platform, kind = _device()
  size = block_size(T, block, kind)
  padded = -(-T // size) * size
  # The kernel does not scale: the queries are, in float32 before the cast back.
  q = (q.astype(jnp.float32) * K**-0.5).astype(q.dtype)
  q, k, v = (jnp.pad(t, ((0, 0), (0, padded - T), (0, 0), (0, 0))).transpose(0, 2, 1, 3)
             for t in (q, k, v))
  segments = jnp.pad(segments.astype(jnp.int32), ((0, 0), (0, padded - T)))
  q, k, v = (checkpoint_name(t, "qkv") for t in (q, k, v))

  mesh = jax.sharding.get_abstract_mesh()
  batch, heads = nn.logical_to_mesh_axes(("activation_batch", "activation_heads"))
  shards = lambda axis: 1 if mesh.empty or axis is None else math.prod(
      mesh.shape[a] for a in ((axis,) if isinstance(axis, str) else axis))
  batch = batch if B % shards(batch) == 0 else None
  heads = heads if H % shards(heads) == 0 else None
  if G % shards(heads):  # KV heads that do not split like the queries: one per query head.
    k, v = (jnp.repeat(t, H // G, axis=1) for t in (k, v))

  def local(q, k, v, segments):
    kernel = _kernel(q.shape[1], padded, size, interpret=platform != "tpu")
    one = lambda q, k, v, s: kernel(q, k, v, segment_ids=sa.SegmentIds(s, s))
    return jax.vmap(one)(q, k, v, segments)

  if mesh.empty or mesh.size == 1:
    out = local(q, k, v, segments)
  else:
    spec = jax.P(batch, heads, None, None)
    out = jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, spec, jax.P(batch, None)),
                        out_specs=spec, check_vma=False)(q, k, v, segments)
  return out.transpose(0, 2, 1, 3)[:, :T]
