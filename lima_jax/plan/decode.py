r"""Ahead-of-time plan for decoding: which slice holds a model's weights and KV cache for
`generate`/`select`, and about how long a prompt set takes there.

  python -m lima_jax.plan --decode --config=configs/lima.py:65b --topology=v4-16 --mesh=1,1,8

What runs is the real decoder (`decoding.lower`: prefill plus the on-device loop of LIMA's
decoding) for one batch, compiled by libtpu for the slice's compile-only devices, with the
parameters in `--dtype` (bfloat16: what `generate --dtype=bfloat16` loads). The compiled
program gives the peak HBM per chip. Time is an estimate, not a measurement: decoding one
token is bound by HBM bandwidth (every step reads each chip's weight shards and the whole
KV cache), so a step takes (weights + cache per chip) / bandwidth, at the utilisations in
`BANDWIDTH_USE`; the prefill is counted at 40% MFU. Put the chips on `tensor` (mesh 1,1,N):
on `fsdp` every step would gather the weights over ICI as well, which the estimate ignores.
"""
import dataclasses
import math

import jax
import jax.numpy as jnp

from lima_jax.model import transformer as model_lib
from lima_jax.parallel import sharding
from lima_jax.parallel import tpu_specs
from lima_jax.model.config import ModelConfig
from lima_jax.decode.sampling import LIMA
from lima_jax.plan import common

BANDWIDTH_USE = (0.5, 0.8)
PREFILL_MFU = 0.4


@dataclasses.dataclass
class DecodePlan:
  """Per-chip bytes of one decode batch on one slice, and time estimates (seconds)."""
  topology: str
  accelerator_type: str
  chips: int
  mesh: dict[str, int]
  dtype: str
  batch: int  # Prompts decoded together.
  prompt_len: int  # Prompt bucket (tokens).
  new_tokens: int  # Room for answer tokens (LIMA's max, within the context).
  param_bytes: int  # Weights held by one chip.
  cache_bytes: int  # KV cache held by one chip.
  usable_hbm_bytes: int
  fits: bool
  compile_seconds: float
  peak_bytes: int | None = None  # From the compiled program: arguments, cache, temporaries.
  oom_message: str = ""
  step_seconds: dict[str, float] = dataclasses.field(default_factory=dict)  # use -> s/token.
  prefill_seconds: float = 0.0  # One batch's prompt pass.
  prompts: int = 0
  prompts_seconds: dict[str, float] = dataclasses.field(default_factory=dict)  # Worst case.


def _abstract_params(cfg: ModelConfig, mesh) -> dict:
  boxed = model_lib.abstract_params(cfg)
  shardings = sharding.logical_shardings(boxed, mesh)
  values = jax.tree.map(lambda b: b.value, boxed, is_leaf=lambda b: hasattr(b, "value"))
  return jax.tree.map(lambda v, s: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s),
                      values, shardings)


def _cache_bytes_per_chip(cfg: ModelConfig, mesh, batch: int, length: int) -> int:
  """K and V for every layer, split as `decoding` lays them out: rows over the batch axes,
  KV heads over `tensor` when they divide."""
  rows = -(-batch // sharding.batch_shards(mesh))
  heads = cfg.n_kv_heads
  if heads % mesh.shape["tensor"] == 0:
    heads //= mesh.shape["tensor"]
  return 2 * cfg.n_layers * rows * length * heads * cfg.head_dim * jnp.dtype(cfg.dtype).itemsize


def plan_decode(cfg: ModelConfig, mesh, slice_: tpu_specs.Slice, vocab_size: int,
                batch: int, prompt_len: int, prompts: int) -> DecodePlan:
  """Compiles one decode batch of `cfg` on `mesh` and estimates `prompts` prompts' time."""
  from lima_jax.decode import generator as decoding
  new_tokens = min(LIMA.max_new_tokens, cfg.max_seq_len - 1)
  prompt_len = decoding.bucket(prompt_len)  # the shape the decoder compiles
  params = _abstract_params(cfg, mesh)
  p_bytes = common.bytes_per_chip(params)
  p = DecodePlan(
      topology=slice_.topology, accelerator_type=slice_.accelerator_type, chips=slice_.chips,
      mesh=dict(mesh.shape), dtype=cfg.param_dtype, batch=batch, prompt_len=prompt_len,
      new_tokens=new_tokens, param_bytes=p_bytes,
      cache_bytes=_cache_bytes_per_chip(cfg, mesh, batch, prompt_len + new_tokens),
      usable_hbm_bytes=slice_.chip.usable_hbm_bytes, fits=True, compile_seconds=0.0,
      prompts=prompts)
  compiled, p.oom_message, p.compile_seconds = common.compile_for_slice(
      lambda: decoding.lower(params, cfg, mesh, vocab_size, batch, prompt_len).compile())
  p.fits = compiled is not None
  if not p.fits:
    return p
  p.peak_bytes = compiled.memory_analysis().peak_memory_in_bytes
  per_step = p.param_bytes + p.cache_bytes
  p.step_seconds = {f"{u:.0%}": per_step / (u * slice_.chip.hbm_bytes_per_s)
                    for u in BANDWIDTH_USE}
  n = model_lib.param_count(cfg)
  p.prefill_seconds = 2 * n * batch * prompt_len / (
      slice_.chips * PREFILL_MFU * slice_.chip.peak_bf16_flops)
  batches = math.ceil(prompts / batch)
  p.prompts_seconds = {u: batches * (p.prefill_seconds + new_tokens * s)
                       for u, s in p.step_seconds.items()}
  return p


def format_decode_plan(p: DecodePlan, title: str) -> str:
  mesh = " ".join(f"{k}={v}" for k, v in p.mesh.items())
  usable = p.usable_hbm_bytes / tpu_specs.GIB
  lines = [title, f"slice {p.accelerator_type} ({p.topology}): {p.chips} chips; mesh {mesh}; "
           f"compiled in {p.compile_seconds:.1f} s", "",
           f"memory per chip ({p.batch} prompt{'s' * (p.batch > 1)} of up to {p.prompt_len} "
           f"tokens, {p.new_tokens} new)",
           f"  weights ({p.dtype})    {common.size(p.param_bytes)}",
           f"  KV cache             {common.size(p.cache_bytes)}"]
  if not p.fits:
    return "\n".join(lines + [f"  DOES NOT FIT: libtpu says: {p.oom_message}"])
  lines += [f"  peak HBM             {common.size(p.peak_bytes)}   of {usable:.2f} GiB usable "
            f"({p.peak_bytes / p.usable_hbm_bytes:.0%}): fits", "",
            "estimate (HBM-bandwidth bound; not a measurement)",
            f"  prefill per batch    {common.seconds(p.prefill_seconds)}at {PREFILL_MFU:.0%} MFU"]
  for use, s in p.step_seconds.items():
    lines.append(f"  at {use} bandwidth    {common.seconds(s)}per token step; {p.prompts} prompts "
                 f"in at most {p.prompts_seconds[use] / 60:.1f} min")
  lines.append("  (at most: every answer runs to the token limit; the loop ends a batch when "
               "all its answers have stopped)")
  return "\n".join(lines)
