r"""Ahead-of-time planner: will a config fit a TPU slice, and how fast could it go?

  python -m lima_jax.plan --config=configs/lima.py:65b --topology=v4-256 [--mesh=1,-1,1]

The training step is compiled for the slice by libtpu's compiler on this machine (no TPU,
network or credentials), from abstract inputs, on a mesh of "compile-only" devices
(`jax.experimental.topologies`), with the attention training would use there
(`model.attention_impl`: 'auto' is Pallas splash on TPU). The compiled program gives per-chip
memory (parameters, optimizer state, the rest at peak, peak HBM). Its FLOPs and HBM bytes are
counted from the program's optimized HLO with every loop body weighted by its trip count
(`hlo_count`; XLA's cost analysis, which counts a body once, is printed beside it), plus
splash's FLOPs and bytes counted from the kernel's blocks (`roofline`: Pallas kernels are
invisible to both); the roofline bound is the larger of FLOPs / peak and bytes / bandwidth, and
the MFU it implies is the model count (6N + attention per token) over it. Step times at 40% and
60% MFU are printed beside it as what they are: assumptions. A config that does not fit gets
libtpu's own out-of-memory message and suggestions.

The step compiled is the real one, `step_lib.build_train_step`, with the config's model size (its
vocabulary grown by EOT), dtype, remat policy, dropout, batch, accumulation and optimizer.
"""
import dataclasses
import math
import re

import jax
import jax.numpy as jnp

from lima_jax.train import base_model
from lima_jax.parallel import sharding
from lima_jax.parallel import tpu_specs
from lima_jax.train import step as step_lib
from lima_jax.errors import UserError
from lima_jax.model import splash
from lima_jax.plan import common
from lima_jax.plan import hlo_count
from lima_jax.plan import roofline

MFUS = (0.4, 0.6)


@dataclasses.dataclass
class Plan:
  """Per-chip figures for one config on one slice (bytes, FLOPs, seconds)."""
  topology: str
  accelerator_type: str
  chips: int
  hosts: int
  mesh: dict[str, int]
  param_bytes: int  # Parameters held by one chip (its shards plus anything replicated).
  opt_state_bytes: int
  batch_bytes: int
  usable_hbm_bytes: int
  nominal_hbm_bytes: int
  fits: bool
  compile_seconds: float
  # From the compiled program (None when it does not fit):
  peak_bytes: int | None = None  # Peak HBM of the step, arguments included.
  argument_bytes: int | None = None  # State + batch + rng as XLA lays them out.
  temp_bytes: int | None = None  # XLA's temporary allocation (may overlap donated arguments).
  model_flops: float | None = None  # Per chip per step: 6N + attention per token (PaLM, app. B).
  tokens_per_step: int = 0
  # Assumed MFU -> seconds per step (a guess beside the compiler's roofline, not from it).
  step_seconds: dict[str, float] = dataclasses.field(default_factory=dict)
  attention: str = ""  # What the step runs: 'splash' or 'xla'.
  kernels_in_program: int | None = None  # Mosaic (Pallas) kernel calls in the compiled step.
  # Per chip per step, from the compiled step. XLA's cost analysis counts each loop body once
  # (the layer scan, accumulation, windowed einsums): a reference, not the step's work.
  xla_flops_loop_bodies_once: float | None = None
  xla_bytes_loop_bodies_once: float | None = None
  xla_optimal_seconds: float | None = None  # XLA's time estimate, loop bodies once, no kernels.
  # lima_jax.plan.hlo_count: every loop body times its trip count; matmul FLOPs; no kernels.
  hlo_flops: float | None = None
  hlo_bytes: float | None = None
  loops: int | None = None  # While loops in the program.
  unknown_loops: list[str] = dataclasses.field(default_factory=list)  # Counted once: bounds.
  kernel_flops: float = 0.0  # Splash's FLOPs and HBM bytes, counted from the kernel's blocks.
  kernel_bytes: float = 0.0
  roofline: dict[str, float] = dataclasses.field(default_factory=dict)  # compute/memory/seconds
  roofline_mfu: float | None = None  # model_flops / (roofline seconds x peak).
  oom_message: str = ""
  # Some 'tensor' group spans hosts: those hosts feed identical batch rows (each host loads and
  # sends more rows than its share); the collectives still run over ICI.
  tensor_across_hosts: bool = False
  suggestions: list[str] = dataclasses.field(default_factory=list)


def _model_flops(params, tokens_per_step: int, seq_len: int) -> float:
  """Training FLOPs of the whole step: 6 per matmul parameter per token, plus attention's
  12*L*H*K*T per token (Chowdhery et al. 2022, app. B). The input embedding is a lookup."""
  flat = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(params)}
  n = sum(math.prod(x.shape) for k, x in flat.items()
          if "norm" not in k and not ("embedding" in k and any("lm_head" in j for j in flat)))
  q = next((x.shape for k, x in flat.items() if re.search(r"\['attn'\]\['q'\]", k)), None)
  attention = 12 * q[0] * q[2] * q[3] * seq_len if q and len(q) == 4 else 0
  return float((6 * n + attention) * tokens_per_step)


def plan_costs(p: Plan, config, cfg, mesh, slice_: tpu_specs.Slice) -> None:
  """Adds splash's own FLOPs and bytes to the compiled count, and the roofline of the sum."""
  if p.attention == "splash":
    block = splash.block_size(config.data.max_len, cfg.splash_block,
                              mesh.devices.flat[0].device_kind)
    args = (cfg, config.train.batch_size, config.data.max_len, block, cfg.remat_policy)
    p.kernel_flops = roofline.splash_flops(*args) / slice_.chips
    p.kernel_bytes = roofline.splash_bytes(
        *args, itemsize=jnp.dtype(cfg.dtype).itemsize) / slice_.chips
  p.roofline = roofline.roofline(p.hlo_flops + p.kernel_flops, p.hlo_bytes + p.kernel_bytes,
                                 slice_.chip)
  p.roofline_mfu = p.model_flops / (p.roofline["seconds"] * slice_.chip.peak_bf16_flops)


def plan_step(built, mesh: jax.sharding.Mesh, slice_: tpu_specs.Slice, seq_len: int) -> Plan:
  """Compiles `built.train_step` for the mesh and reads memory and FLOPs off the program."""
  state, batch = built.abstract_state, built.abstract_batch
  tokens = math.prod(jax.tree.leaves(batch)[0].shape)
  p = Plan(topology=slice_.topology, accelerator_type=slice_.accelerator_type,
           chips=slice_.chips, hosts=slice_.hosts, mesh=dict(mesh.shape),
           param_bytes=common.bytes_per_chip(state.params),
           opt_state_bytes=common.bytes_per_chip(state.opt_state),
           batch_bytes=common.bytes_per_chip(batch),
           usable_hbm_bytes=slice_.chip.usable_hbm_bytes, nominal_hbm_bytes=slice_.chip.hbm_bytes,
           fits=True, compile_seconds=0.0, tokens_per_step=tokens,
           tensor_across_hosts=sharding.tensor_groups_cross_hosts(mesh.devices))
  rng = jax.eval_shape(lambda: jax.random.key(0))

  def compile_():
    with jax.set_mesh(mesh):
      return built.train_step.lower(state, batch, rng).compile()
  compiled, p.oom_message, p.compile_seconds = common.compile_for_slice(compile_)
  p.fits = compiled is not None
  p.model_flops = _model_flops(state.params, tokens, seq_len) / slice_.chips
  if p.fits:
    mem = compiled.memory_analysis()
    p.peak_bytes, p.argument_bytes = mem.peak_memory_in_bytes, mem.argument_size_in_bytes
    p.temp_bytes = mem.temp_size_in_bytes
    cost, text = roofline.cost_of(compiled), compiled.as_text()
    p.xla_flops_loop_bodies_once, p.xla_bytes_loop_bodies_once = cost.flops, cost.bytes
    p.xla_optimal_seconds = cost.optimal_seconds
    n = hlo_count.count(text)
    p.hlo_flops, p.hlo_bytes, p.loops, p.unknown_loops = n.flops, n.bytes, n.loops, n.unknown_loops
    p.kernels_in_program = roofline.kernels_in(text)
    p.step_seconds = {f"{u:.0%}": p.model_flops / (u * slice_.chip.peak_bf16_flops) for u in MFUS}
  return p


def suggest(p: Plan, config) -> list[str]:
  """What would lower the peak, most effective first."""
  out, state = [], p.param_bytes + p.opt_state_bytes
  if state > 0.8 * p.usable_hbm_bytes:
    out.append(f"parameters + optimizer state alone take {state / tpu_specs.GIB:.1f} GiB per "
               "chip: shard them over more chips (a bigger slice)")
  data, fsdp, tensor = (p.mesh[a] for a in sharding.AXES)
  if data > 1:  # Same batch shards, but no chip holds a replica of the state any more.
    out.append(f"--mesh=1,{data * fsdp},{tensor}: split parameters, gradients and optimizer "
               "state over the chips now on 'data' too (fsdp)")
  if config.model.remat_policy != "full":
    out.append("--config.model.remat_policy=full: recompute activations in the backward pass "
               "instead of keeping them (about 1/3 more FLOPs)")
  accum, batch = config.train.grad_accum_steps, config.train.batch_size
  if batch % (2 * accum * data * fsdp) == 0:
    out.append(f"--config.train.grad_accum_steps={2 * accum}: halve the micro-batch "
               "(same global batch and loss, half the activations)")
  return out


def format_plan(p: Plan, title: str) -> str:
  mesh = " ".join(f"{k}={v}" for k, v in p.mesh.items())
  lines = [title,
           f"slice {p.accelerator_type} ({p.topology}): {p.chips} chips on {p.hosts} hosts; "
           f"mesh {mesh}; compiled in {p.compile_seconds:.1f} s",
           f"attention: {p.attention}" + (f" ({p.kernels_in_program} Pallas kernel calls in the "
                                          "program)" if p.kernels_in_program is not None else "")]
  if p.tensor_across_hosts:
    lines.append(
        f"note: each 'tensor' group of {p.mesh['tensor']} chips spans several hosts, which then "
        "feed identical batch rows (more host input work and host-to-chip traffic per host; "
        "the collectives still run over ICI); with mesh.shape=() the planner and training "
        "keep 'tensor' inside a host")
  lines += ["", "memory per chip", f"  parameters           {common.size(p.param_bytes)}",
            f"  optimizer state      {common.size(p.opt_state_bytes)}",
            f"  batch                {common.size(p.batch_bytes)}"]
  if p.fits:
    usable = p.usable_hbm_bytes / tpu_specs.GIB
    rest = common.size(p.peak_bytes - p.argument_bytes)
    lines += [f"  the rest at peak     {rest}   (activations, "
              "gradients, gathered weights)",
              f"  peak HBM             {common.size(p.peak_bytes)}   of {usable:.2f} GiB usable "
              f"({p.peak_bytes / p.usable_hbm_bytes:.0%}): fits"]
  else:
    lines += [f"  DOES NOT FIT: libtpu says: {p.oom_message}"]
  lines += ["", "per step",
            f"  tokens               {p.tokens_per_step:,} ({p.tokens_per_step // p.chips:,} "
            "per chip)",
            f"  model FLOPs per chip {p.model_flops:.3e}   (6N + attention per token: the MFU "
            "count)"]
  if p.fits and p.roofline:
    flops, bytes_ = p.hlo_flops + p.kernel_flops, p.hlo_bytes + p.kernel_bytes
    lines += [
        f"  XLA cost analysis    {p.xla_flops_loop_bodies_once:.3e} FLOPs, "
        f"{p.xla_bytes_loop_bodies_once:.3e} bytes   (each loop body once, of {p.loops} loops; "
        "Pallas kernels excluded: a reference)",
        f"  loop-weighted HLO    {p.hlo_flops:.3e} FLOPs, {p.hlo_bytes:.3e} bytes   (matmuls; "
        "every loop body x its trip count; Pallas kernels excluded)"]
    if p.attention == "splash":
      lines.append(f"  + splash kernel      {p.kernel_flops:.3e} FLOPs, {p.kernel_bytes:.3e} "
                   "bytes   (counted from its blocks)")
    if p.unknown_loops:
      lines.append(f"  LOWER BOUNDS: {len(p.unknown_loops)} loop(s) of unknown trip count "
                   f"counted once ({', '.join(p.unknown_loops)})")
    lines += [
        f"  = FLOPs run          {flops:.3e}   ({flops / p.model_flops:.2f} x the model count)",
        f"  = HBM bytes          {bytes_:.3e}",
        f"  roofline step        {common.seconds(p.roofline['seconds'])}= max(FLOPs run / peak "
        f"{common.seconds(p.roofline['compute_seconds']).strip()}, bytes / bandwidth "
        f"{common.seconds(p.roofline['memory_seconds']).strip()}): a lower bound",
        f"  implied MFU          {p.roofline_mfu:9.0%}    at that bound; XLA's own estimate "
        + (f"{common.seconds(p.xla_optimal_seconds).strip()} (loop bodies once, kernels not "
           "included)" if p.xla_optimal_seconds > 0 else
           f"unusable (it reads {p.xla_optimal_seconds:.3g} s)")]
  if p.fits:
    for mfu, s in p.step_seconds.items():
      lines.append(f"  at {mfu} MFU          {common.seconds(s)}per step, "
                   f"{p.tokens_per_step / p.chips / s:,.0f} tokens/s per chip (assumed MFU, a "
                   "guess)")
  if p.suggestions:
    lines += ["", "to fit:" if not p.fits else "to save memory:"]
    lines += [f"  - {s}" for s in p.suggestions]
  return "\n".join(lines)


def make_plan(config, topology: str, mesh_shape=None) -> Plan:
  """Plans `config` on the slice named `topology` ('v4-256' or 'v4:4x4x8')."""
  slice_ = tpu_specs.parse_slice(topology)
  micro = config.train.batch_size // max(config.train.grad_accum_steps, 1)
  shape = config.mesh.shape if mesh_shape is None else mesh_shape
  mesh = common.topology_mesh(slice_, shape, micro)
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if micro % shards == 0 or config.train.batch_size % config.train.grad_accum_steps:
    sharding.check_batch(config.train.batch_size, config.train.grad_accum_steps, mesh)
  else:
    fsdp = math.gcd(micro, slice_.chips)
    raise UserError(f"micro-batch {micro} (train.batch_size/train.grad_accum_steps) does not "
                    f"split over the {shards} batch shards (data x fsdp) of mesh "
                    f"{dict(mesh.shape)}; put the other chips on 'tensor', e.g. "
                    f"--mesh=1,{fsdp},{slice_.chips // fsdp}")
  cfg = base_model.planned_model_config(config)
  with jax.set_mesh(mesh):
    built = step_lib.build_train_step(config, mesh, cfg, total_steps=1000)  # Any schedule.
  p = plan_step(built, mesh, slice_, config.data.max_len)
  p.attention = splash.check_impl(cfg.attention_impl, cfg.dtype, "tpu")
  if p.fits:
    plan_costs(p, config, cfg, mesh, slice_)
  if not p.fits or p.peak_bytes > 0.9 * p.usable_hbm_bytes:
    p.suggestions = suggest(p, config)
  return p


