r"""Ahead-of-time planner: will a config fit a TPU slice, and how fast could it go?

  python -m lima_jax.plan --config=configs/lima.py:65b --topology=v4-256 [--mesh=1,-1,1]
  python -m lima_jax.plan --decode --config=configs/lima.py:65b --topology=v4-16 --mesh=1,1,8

(--decode: see lima_jax/plan_decode.py.)

The training step is compiled for the slice by libtpu's compiler on this machine (no TPU,
network or credentials), from abstract inputs, on a mesh of "compile-only" devices
(`jax.experimental.topologies`). The compiled program gives per-chip memory (parameters,
optimizer state, the rest at peak, peak HBM); FLOPs per step are counted from the parameter
shapes (XLA's cost analysis counts a scanned loop body only once), and step time and tokens/s
are estimated at 40% and 60% model FLOPs utilisation (MFU). A config that does not fit gets
libtpu's own out-of-memory message and suggestions.

The step compiled is the real one, `train.build_train_step`, with the config's model size (its
vocabulary grown by EOT), dtype, remat policy, dropout, batch, accumulation and optimizer.

Exit status: 0 fits, 3 does not fit, 1 bad input (one line on stderr).
"""
import contextlib
import dataclasses
import importlib.util
import math
import os
import re
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
from absl import app, flags
from ml_collections import config_flags

from lima_jax import base_model, files, sharding, tpu_specs, train
from lima_jax.errors import UserError, cli_main

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
  # XLA's cost analysis counts a loop body once, so with layers under nn.scan this is about one
  # layer's FLOPs plus the rest: kept for reference, not used for the estimates.
  xla_flops_loop_bodies_once: float | None = None
  model_flops: float | None = None  # Per chip per step: 6N + attention per token (PaLM, app. B).
  tokens_per_step: int = 0
  step_seconds: dict[str, float] = dataclasses.field(default_factory=dict)  # MFU -> seconds.
  oom_message: str = ""
  # Some 'tensor' group spans hosts: those hosts feed identical batch rows (each host loads and
  # sends more rows than its share); the collectives still run over ICI.
  tensor_across_hosts: bool = False
  suggestions: list[str] = dataclasses.field(default_factory=list)


def require_libtpu() -> None:
  if os.environ.get("TPU_LIBRARY_PATH") or importlib.util.find_spec("libtpu"):
    return
  raise UserError("libtpu is not installed; the planner needs its compiler (not a TPU): "
                  "pip install -r requirements-tpu.txt")


@contextlib.contextmanager
def _libtpu_noise_hidden():
  """Hides what libtpu writes to stderr while it loads: off a TPU VM it always warns that it
  cannot find TPU workers, which is expected here. Shown after all if loading fails."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as sink:
    os.dup2(sink.fileno(), 2)
    try:
      yield
    except BaseException:
      os.dup2(saved, 2)
      sink.seek(0)
      sys.stderr.write(sink.read().decode(errors="replace"))
      raise
    finally:
      os.dup2(saved, 2)
      os.close(saved)


def topology_mesh(slice_: tpu_specs.Slice, mesh_shape, micro_batch: int) -> jax.sharding.Mesh:
  """A ('data', 'fsdp', 'tensor') mesh over compile-only devices of the slice: `mesh_shape`,
  or () for the one training would choose (`sharding.choose_mesh`)."""
  from jax.experimental import topologies
  require_libtpu()
  # libtpu lets one process per machine hold the TPU; compiling touches no TPU, so planners and
  # tests may run side by side.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  try:
    with _libtpu_noise_hidden():
      devices = topologies.get_topology_desc(
          slice_.topology, platform="tpu", chip_config_name=slice_.chip.chip_config,
          chips_per_host_bounds=slice_.host_bounds, num_slices=1, wrap=slice_.wrap).devices
  except (RuntimeError, jax.errors.JaxRuntimeError) as e:
    raise UserError(f"--topology={slice_.topology}: libtpu could not describe this slice: "
                    f"{str(e).splitlines()[0]}") from None
  return sharding.choose_mesh(mesh_shape, devices, micro_batch)


def _bytes_per_chip(tree) -> int:
  return sum(math.prod(x.sharding.shard_shape(x.shape)) * jnp.dtype(x.dtype).itemsize
             for x in jax.tree.leaves(tree))


def _model_flops(params, tokens_per_step: int, seq_len: int) -> float:
  """Training FLOPs of the whole step: 6 per matmul parameter per token, plus attention's
  12*L*H*K*T per token (Chowdhery et al. 2022, app. B). The input embedding is a lookup."""
  flat = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(params)}
  n = sum(math.prod(x.shape) for k, x in flat.items()
          if "norm" not in k and not ("embedding" in k and any("lm_head" in j for j in flat)))
  q = next((x.shape for k, x in flat.items() if re.search(r"\['attn'\]\['q'\]", k)), None)
  attention = 12 * q[0] * q[2] * q[3] * seq_len if q and len(q) == 4 else 0
  return float((6 * n + attention) * tokens_per_step)


_OOM = re.compile(r"RESOURCE_EXHAUSTED: (.*?)(?:\n|$)")


def plan_step(built, mesh: jax.sharding.Mesh, slice_: tpu_specs.Slice, seq_len: int) -> Plan:
  """Compiles `built.train_step` for the mesh and reads memory and FLOPs off the program."""
  state, batch = built.abstract_state, built.abstract_batch
  tokens = math.prod(jax.tree.leaves(batch)[0].shape)
  p = Plan(topology=slice_.topology, accelerator_type=slice_.accelerator_type,
           chips=slice_.chips, hosts=slice_.hosts, mesh=dict(mesh.shape),
           param_bytes=_bytes_per_chip(state.params),
           opt_state_bytes=_bytes_per_chip(state.opt_state), batch_bytes=_bytes_per_chip(batch),
           usable_hbm_bytes=slice_.chip.usable_hbm_bytes, nominal_hbm_bytes=slice_.chip.hbm_bytes,
           fits=True, compile_seconds=0.0, tokens_per_step=tokens,
           tensor_across_hosts=sharding.tensor_groups_cross_hosts(mesh.devices))
  rng = jax.eval_shape(lambda: jax.random.key(0))
  start = time.perf_counter()
  try:
    with jax.set_mesh(mesh):
      compiled = built.train_step.lower(state, batch, rng).compile()
  except jax.errors.JaxRuntimeError as e:
    m = _OOM.search(str(e))
    if not m:
      raise
    p.fits, p.oom_message = False, m.group(1).strip()
  p.compile_seconds = time.perf_counter() - start
  p.model_flops = _model_flops(state.params, tokens, seq_len) / slice_.chips
  if p.fits:
    mem = compiled.memory_analysis()
    p.peak_bytes, p.argument_bytes = mem.peak_memory_in_bytes, mem.argument_size_in_bytes
    p.temp_bytes = mem.temp_size_in_bytes
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    p.xla_flops_loop_bodies_once = float(cost.get("flops", 0.0)) or None
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


def _size(b: int) -> str:
  for unit, scale in (("GiB", 2**30), ("MiB", 2**20)):
    if b >= scale:
      return f"{b / scale:9.2f} {unit}"
  return f"{b / 2**10:9.2f} KiB"


def _seconds(s: float) -> str:
  for unit, scale in (("s ", 1.0), ("ms", 1e-3)):
    if s >= scale:
      return f"{s / scale:9.2f} {unit} "
  return f"{s / 1e-6:9.2f} us "


def format_plan(p: Plan, title: str) -> str:
  mesh = " ".join(f"{k}={v}" for k, v in p.mesh.items())
  lines = [title,
           f"slice {p.accelerator_type} ({p.topology}): {p.chips} chips on {p.hosts} hosts; "
           f"mesh {mesh}; compiled in {p.compile_seconds:.1f} s"]
  if p.tensor_across_hosts:
    lines.append(
        f"note: each 'tensor' group of {p.mesh['tensor']} chips spans several hosts, which then "
        "feed identical batch rows (more host input work and host-to-chip traffic per host; "
        "the collectives still run over ICI); with mesh.shape=() the planner and training "
        "keep 'tensor' inside a host")
  lines += ["", "memory per chip", f"  parameters           {_size(p.param_bytes)}",
            f"  optimizer state      {_size(p.opt_state_bytes)}",
            f"  batch                {_size(p.batch_bytes)}"]
  if p.fits:
    usable = p.usable_hbm_bytes / tpu_specs.GIB
    lines += [f"  the rest at peak     {_size(p.peak_bytes - p.argument_bytes)}   (activations, "
              "gradients, gathered weights)",
              f"  peak HBM             {_size(p.peak_bytes)}   of {usable:.2f} GiB usable "
              f"({p.peak_bytes / p.usable_hbm_bytes:.0%}): fits"]
  else:
    lines += [f"  DOES NOT FIT: libtpu says: {p.oom_message}"]
  lines += ["", "per step",
            f"  tokens               {p.tokens_per_step:,} ({p.tokens_per_step // p.chips:,} "
            "per chip)",
            f"  model FLOPs per chip {p.model_flops:.3e}   (6N + attention per token)"]
  if p.fits:
    for mfu, s in p.step_seconds.items():
      lines.append(f"  at {mfu} MFU          {_seconds(s)}per step, "
                   f"{p.tokens_per_step / p.chips / s:,.0f} tokens/s per chip")
  if p.suggestions:
    lines += ["", "to fit:" if not p.fits else "to save memory:"]
    lines += [f"  - {s}" for s in p.suggestions]
  return "\n".join(lines)


def make_plan(config, topology: str, mesh_shape=None) -> Plan:
  """Plans `config` on the slice named `topology` ('v4-256' or 'v4:4x4x8')."""
  slice_ = tpu_specs.parse_slice(topology)
  micro = config.train.batch_size // max(config.train.grad_accum_steps, 1)
  mesh = topology_mesh(slice_, config.mesh.shape if mesh_shape is None else mesh_shape, micro)
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if micro % shards == 0 or config.train.batch_size % config.train.grad_accum_steps:
    sharding.check_batch(config.train.batch_size, config.train.grad_accum_steps, mesh)
  else:
    fsdp = math.gcd(micro, slice_.chips)
    raise UserError(f"micro-batch {micro} (train.batch_size/train.grad_accum_steps) does not "
                    f"split over the {shards} batch shards (data x fsdp) of mesh "
                    f"{dict(mesh.shape)}; put the other chips on 'tensor', e.g. "
                    f"--mesh=1,{fsdp},{slice_.chips // fsdp}")
  with jax.set_mesh(mesh):
    built = train.build_train_step(config, mesh, base_model.planned_model_config(config),
                                   total_steps=1000)  # The schedule's length changes nothing.
  p = plan_step(built, mesh, slice_, config.data.max_len)
  if not p.fits or p.peak_bytes > 0.9 * p.usable_hbm_bytes:
    p.suggestions = suggest(p, config)
  return p


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  # Compile-only TPU devices need no TPU backend; CPU serves for everything else.
  jax.config.update("jax_platforms", "cpu")
  f = flags.FLAGS
  config = f.config
  mesh = sharding.parse_mesh_shape(f.mesh) if f.mesh else None
  if f.decode:
    return _main_decode(config, f, mesh)
  p = make_plan(config, f.topology, mesh)
  size = config.model.size or "(size from model.init)"
  print(format_plan(p, f"lima_jax plan: {size}, batch {config.train.batch_size} x "
                    f"{config.data.max_len} tokens, step: train.build_train_step"))
  if f.out:
    files.write_json(f.out, dataclasses.asdict(p), indent=2)
  if not p.fits:
    sys.exit(3)


def _main_decode(config, f, mesh_shape) -> None:
  from lima_jax import plan_decode
  slice_ = tpu_specs.parse_slice(f.topology)
  mesh = topology_mesh(slice_, config.mesh.shape if mesh_shape is None else mesh_shape,
                       f.decode_batch)
  if f.decode_batch % sharding.batch_shards(mesh):
    raise UserError(f"--decode_batch={f.decode_batch} does not split over the "
                    f"{sharding.batch_shards(mesh)} batch shards of mesh {dict(mesh.shape)}")
  cfg = dataclasses.replace(base_model.planned_model_config(config), param_dtype=f.dtype)
  with jax.set_mesh(mesh):
    p = plan_decode.plan_decode(cfg, mesh, slice_, cfg.vocab_size, f.decode_batch,
                                f.prompt_len, f.prompts)
  size = config.model.size or "(size from model.init)"
  print(plan_decode.format_decode_plan(p, f"lima_jax plan --decode: {size}, LIMA's decoding"))
  if f.out:
    files.write_json(f.out, dataclasses.asdict(p), indent=2)
  if not p.fits:
    sys.exit(3)


def run():
  config_flags.DEFINE_config_file(
      "config", None, "Training config: configs/FILE.py[:VARIANT]; override fields with "
      "--config.a.b=value, as for lima_jax.main.", lock_config=True)
  flags.DEFINE_string("topology", None, "TPU slice: a Cloud accelerator type (v4-256, v5p-128, "
                      "v5litepod-16, v6e-64) or a chip grid (v4:4x4x8, v5e:4x4).")
  flags.DEFINE_string("mesh", None, "Mesh sizes data,fsdp,tensor (one may be -1: the rest of "
                      "the chips); default: the config's mesh.shape ((): the mesh training "
                      "would choose).")
  flags.DEFINE_string("out", None, "Also write the plan as JSON to this file.")
  flags.DEFINE_bool("decode", False, "Plan decoding (generate, select) instead of training: "
                    "memory of one batch, and a bandwidth-bound time estimate.")
  flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "--decode: parameter dtype "
                    "(as generate --dtype loads it).")
  flags.DEFINE_integer("decode_batch", 8, "--decode: prompts decoded together (generate "
                       "--batch_size).", lower_bound=1)
  flags.DEFINE_integer("prompt_len", 512, "--decode: longest prompt, in tokens (rounded up to a "
                       "power of two, as the decoder does).", lower_bound=1)
  flags.DEFINE_integer("prompts", 50, "--decode: prompts to estimate the time of (LIMA's dev "
                       "set: 50).", lower_bound=1)
  flags.mark_flags_as_required(["config", "topology"])
  app.run(cli_main(main))


if __name__ == "__main__":
  run()
