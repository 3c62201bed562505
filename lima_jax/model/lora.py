"""Low-rank adapters (LoRA) in the model's own projections, and a frozen base in int8 (QLoRA).

A target projection W, seen as a matrix [I, O] (its first `n_in` axes the input), computes
x @ W + (alpha / r) * dropout(x) @ A @ B with A [I, r] and B [r, O] (B starts at zero, so a new
adapter leaves the model as it was). A and B keep W's logical axis names on their I and O sides
and LORA_RANK (replicated by the rules table) on r, so they shard like the weight they adapt.

The adapters live in the params tree beside their weight (`attn/q_lora_a`, `attn/q_lora_b`), so
one tree and one `Transformer` serve training, scoring and decoding; `split` and `join` separate
them from the frozen base for the optimizer. With `base_dtype='int8'` a target's weight is held
as int8 with one float32 scale per output feature (`q` and `q_scale`: absmax, symmetric), and
x @ W is (x @ W_int8) * scale. `merge` folds everything back into plain float weights.

qwix 0.1.8 is not used: its linen LoRA intercepts `jnp.einsum` and finds the weight by identity
among the module's params, which fails on this model's reshaped two-dimensional weight views and
raises SetAttributeFrozenModuleError in `nn.compact` modules; docs/lora.md says more.
"""
import dataclasses
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lima_jax.model.axes import LORA_RANK

TARGETS = ("q", "k", "v", "o", "gate", "up", "down")
MODULE = {"q": "attn", "k": "attn", "v": "attn", "o": "attn", "gate": "mlp", "up": "mlp",
          "down": "mlp"}
N_IN = {"q": 1, "k": 1, "v": 1, "o": 2, "gate": 1, "up": 1, "down": 1}  # input axes of W
BASE_DTYPES = ("", "bfloat16", "int8")  # '': the model's param_dtype
SUFFIXES = ("_lora_a", "_lora_b")


@dataclasses.dataclass(frozen=True)
class LoraSpec:
  """What is adapted and how (hashable: part of the static ModelConfig)."""
  rank: int
  alpha: float
  dropout: float = 0.0
  targets: tuple = TARGETS
  base_dtype: str = ""

  def __post_init__(self):
    object.__setattr__(self, "targets", tuple(self.targets))

  @property
  def scale(self) -> float:
    return self.alpha / self.rank

  def to_dict(self) -> dict:
    return {**dataclasses.asdict(self), "targets": list(self.targets)}


def problems(spec: LoraSpec) -> list[str]:
  """What is wrong with a spec, each naming its train.lora field."""
  out = []
  if not isinstance(spec.rank, int) or spec.rank < 1:
    out.append(f"train.lora.rank={spec.rank}: must be a positive integer (0 turns LoRA off)")
  if not spec.alpha > 0:
    out.append(f"train.lora.alpha={spec.alpha}: must be positive")
  if not 0.0 <= spec.dropout < 1.0:
    out.append(f"train.lora.dropout={spec.dropout}: not in [0, 1)")
  bad = [t for t in spec.targets if t not in TARGETS]
  if bad or not spec.targets:
    out.append(f"train.lora.targets={','.join(spec.targets)}: each must be one of "
               f"{','.join(TARGETS)} (at least one)")
  if spec.base_dtype not in BASE_DTYPES:
    out.append(f"train.lora.base_dtype={spec.base_dtype!r}: not one of {list(BASE_DTYPES)}")
  return out


def _param(module: nn.Module, name, shape, names, init, dtype):
  return module.param(name, nn.with_logical_partitioning(init, tuple(names)), tuple(shape), dtype)


def dense(module: nn.Module, spec: LoraSpec | None, name: str, x: jax.Array,
          shape: Sequence[int], names: Sequence[str], n_in: int, init, dtype: Any,
          pdtype: Any) -> jax.Array:
  """x [N, I] @ the projection `name` of `shape` (its first n_in axes the input I) -> [N, O],
  declaring the weight (and, when `spec` targets it, its adapters or int8 scale)."""
  I, O = math.prod(shape[:n_in]), math.prod(shape[n_in:])
  on = spec is not None and name in spec.targets
  mm = lambda a, w: jnp.einsum("NI,IO->NO", a.astype(dtype), w.astype(dtype))
  if on and spec.base_dtype == "int8":
    w = _param(module, name, shape, names, nn.initializers.zeros, jnp.int8)
    s = _param(module, f"{name}_scale", shape[n_in:], names[n_in:], nn.initializers.ones,
               jnp.float32)
    y = mm(x, w.reshape(I, O)) * s.reshape(O).astype(dtype)
  else:
    y = mm(x, _param(module, name, shape, names, init, pdtype).reshape(I, O))
  if not on:
    return y
  r = spec.rank
  # A as PEFT starts it (uniform, 1/sqrt(fan in)); B zero, so the adapted model starts as the base.
  a_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform",
                                            in_axis=tuple(range(n_in)), out_axis=(n_in,))
  a = _param(module, f"{name}_lora_a", tuple(shape[:n_in]) + (r,), tuple(names[:n_in]) +
             (LORA_RANK,), a_init, jnp.float32)
  b = _param(module, f"{name}_lora_b", (r,) + tuple(shape[n_in:]), (LORA_RANK,) +
             tuple(names[n_in:]), nn.initializers.zeros, jnp.float32)
  if spec.dropout and module.has_rng("dropout"):  # only where the caller asked for dropout
    keep = jax.random.bernoulli(module.make_rng("dropout"), 1.0 - spec.dropout, x.shape)
    x = jnp.where(keep, x / jnp.asarray(1.0 - spec.dropout, x.dtype), jnp.zeros_like(x))
  low = jnp.einsum("NI,IR->NR", x.astype(dtype), a.reshape(I, r).astype(dtype))
  return y + jnp.einsum("NR,RO->NO", low, b.reshape(r, O).astype(dtype)) * jnp.asarray(
      spec.scale, dtype)


# ----------------------------------------------------------------------------------------------
# The params tree: adapters apart from the frozen base, int8, merge.
# ----------------------------------------------------------------------------------------------

def is_adapter(name: str) -> bool:
  return name.endswith(SUFFIXES)


def split(params: dict) -> tuple[dict, dict]:
  """(frozen base, adapters): two nested dicts with the tree's structure, each holding only
  its own leaves (a dict left empty is dropped)."""
  frozen, adapters = {}, {}
  for k, v in params.items():
    if isinstance(v, dict):
      f, a = split(v)
      if f:
        frozen[k] = f
      if a:
        adapters[k] = a
    else:
      (adapters if is_adapter(k) else frozen)[k] = v
  return frozen, adapters


def join(frozen: dict | None, adapters: dict) -> dict:
  """The inverse of `split` (frozen None: the adapters are the whole tree)."""
  if frozen is None:
    return adapters
  out = dict(frozen)
  for k, v in adapters.items():
    out[k] = join(out[k], v) if isinstance(v, dict) and k in out else v
  return out


def _layers(params: dict, name: str) -> dict:
  return params["layers"][MODULE[name]]


def quantize(params: dict, spec: LoraSpec) -> dict:
  """A float base -> its targets in int8 with one float32 scale per output feature (symmetric
  absmax over the input axes, per layer); other parameters as they were."""
  out = jax.tree.map(lambda x: x, params)
  for name in spec.targets:
    node = _layers(out, name)
    w = jnp.asarray(node[name], jnp.float32)  # [L, *in, *out]
    axes_in = tuple(range(1, 1 + N_IN[name]))
    peak = jnp.max(jnp.abs(w), axis=axes_in)
    scale = jnp.where(peak > 0, peak / 127.0, 1.0)
    q = jnp.round(w / jnp.expand_dims(scale, axes_in))
    node[name] = jnp.clip(q, -127, 127).astype(jnp.int8)
    node[f"{name}_scale"] = scale.astype(jnp.float32)
  return out


def dequantize(params: dict, spec: LoraSpec) -> dict:
  """int8 targets (and their scales) -> float32 weights; a tree without int8 as it was."""
  out = jax.tree.map(lambda x: x, params)
  for name in spec.targets:
    node = _layers(out, name)
    if f"{name}_scale" in node:
      scale = node.pop(f"{name}_scale")
      node[name] = jnp.asarray(node[name], jnp.float32) * jnp.expand_dims(
          scale, tuple(range(1, 1 + N_IN[name])))
  return out


def merge(params: dict, spec: LoraSpec, dtype: Any = jnp.float32) -> dict:
  """The plain model's params (no adapters, no int8): each target W (dequantized) + (alpha/r)
  A @ B, in float32 then `dtype`; other parameters as they were."""
  frozen, adapters = split(params)
  out = dequantize(frozen, spec)
  for name in spec.targets:
    node, ad = _layers(out, name), _layers(adapters, name)
    w = jnp.asarray(node[name], jnp.float32)
    a, b = (jnp.asarray(ad[name + s], jnp.float32) for s in SUFFIXES)
    L, r = a.shape[0], a.shape[-1]
    delta = jnp.einsum("LIR,LRO->LIO", a.reshape(L, -1, r), b.reshape(L, r, -1),
                       precision=jax.lax.Precision.HIGHEST)
    node[name] = (w + spec.scale * delta.reshape(w.shape)).astype(dtype)
  return out


def count(params: Any) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
