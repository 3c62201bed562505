"""Mesh construction, the logical-axis rules (one table) and batch placement.

Parameters carry logical axis names (see docs/INTERFACES.md); `RULES` maps them onto the mesh
axes ('data', 'fsdp', 'tensor'). Pure FSDP is the default: with mesh (1, N, 1) every weight
matrix is split along its embedding dimension over N devices and the batch over all of them.
'tensor' is Megatron-style: heads, MLP hidden units and the vocabulary split, activations
between blocks replicated.
"""
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from lima_jax.errors import UserError

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# The one table: logical name -> mesh axis (or None: replicated).
RULES = (
    # Parameters.
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("layers", None),
    ("norm", None),
    # Activations.
    ("activation_batch", BATCH_AXES),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_kv_heads", "tensor"),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
)


def resolve_mesh_shape(shape: Sequence[int], n_devices: int) -> tuple[int, ...]:
  """Fills the one -1 in (data, fsdp, tensor) so that the product is the device count."""
  shape = tuple(int(s) for s in shape)
  if len(shape) != len(AXES):
    raise UserError(f"mesh.shape: expected 3 sizes for {AXES}, got {shape}")
  if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
    raise UserError(f"mesh.shape: {shape}: sizes must be positive, with at most one -1")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if n_devices % known:
      raise UserError(f"mesh.shape: {shape} cannot fill {n_devices} devices "
                      f"({n_devices} is not a multiple of {known})")
    shape = tuple(n_devices // known if s == -1 else s for s in shape)
  if math.prod(shape) != n_devices:
    raise UserError(f"mesh.shape: {shape} needs {math.prod(shape)} devices, "
                    f"but {n_devices} are available")
  return shape


def make_mesh(shape: Sequence[int], devices=None) -> jax.sharding.Mesh:
  """A ('data', 'fsdp', 'tensor') mesh with Auto axes (Explicit breaks logical constraints)."""
  devices = jax.devices() if devices is None else devices
  shape = resolve_mesh_shape(shape, len(devices))
  axis_types = (jax.sharding.AxisType.Auto,) * len(AXES)
  try:
    return jax.make_mesh(shape, AXES, axis_types=axis_types, devices=devices)
  except NotImplementedError:
    # A TPU torus (e.g. 4x4x4) cannot give every logical shape (1, 32, 2) without splitting a
    # physical axis; allow it rather than refusing a valid mesh (some links go unused).
    grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
    return jax.sharding.Mesh(grid, AXES, axis_types=axis_types)


def _divisible_spec(spec: P, shape: Sequence[int], mesh: jax.sharding.Mesh) -> P:
  """Replicates any dimension the mesh does not divide evenly, rather than failing to compile.

  This keeps odd shapes (a 2-way kv-head dim on 4-way 'tensor', a norm scale) working on any
  mesh; the cost is memory, which the planner reports.
  """
  out = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    size = math.prod(mesh.shape[a] for a in names)
    out.append(axes if names and dim % size == 0 else None)
  return P(*out)


def logical_shardings(boxed_tree: Any, mesh: jax.sharding.Mesh) -> Any:
  """NamedShardings for a tree of `nn.LogicallyPartitioned` (e.g. from `jax.eval_shape(init)`)."""
  specs = nn.get_partition_spec(boxed_tree)
  shapes = nn.meta.unbox(boxed_tree)

  def one(spec, x):
    mesh_spec = nn.logical_to_mesh_axes(tuple(spec), RULES)
    return NamedSharding(mesh, _divisible_spec(mesh_spec, x.shape, mesh))

  return jax.tree.map(one, specs, shapes, is_leaf=lambda s: isinstance(s, P))


def batch_sharding(mesh: jax.sharding.Mesh, grad_accum: int = 1) -> NamedSharding:
  """Batches are [B, T], B split over ('data', 'fsdp'); with accumulation [A, B/A, T]."""
  if grad_accum > 1:
    return NamedSharding(mesh, P(None, BATCH_AXES, None))
  return NamedSharding(mesh, P(BATCH_AXES, None))


def batch_shards(mesh: jax.sharding.Mesh) -> int:
  return math.prod(mesh.shape[a] for a in BATCH_AXES)


def check_batch(global_batch: int, grad_accum: int, mesh: jax.sharding.Mesh) -> None:
  """A micro-batch must split evenly over the batch axes and over the processes."""
  if global_batch % grad_accum:
    raise UserError(f"train.batch_size={global_batch} is not divisible by "
                    f"train.grad_accum_steps={grad_accum}")
  micro, shards = global_batch // grad_accum, batch_shards(mesh)
  if micro % shards:
    raise UserError(f"micro-batch {micro} (train.batch_size/train.grad_accum_steps) is not "
                    f"divisible by the {shards} batch shards of mesh {dict(mesh.shape)}")
  if global_batch % jax.process_count():
    raise UserError(f"train.batch_size={global_batch} is not divisible by the "
                    f"{jax.process_count()} processes")


def put_batch(local: dict[str, np.ndarray], mesh: jax.sharding.Mesh,
              grad_accum: int = 1) -> dict[str, jax.Array]:
  """Assembles the global batch from each process's own rows (no host holds all of it).

  With accumulation each process cuts its rows into A equal chunks; micro-batch j is the union
  of every process's chunk j. Any split gives the same summed loss and gradient.
  """
  sharding = batch_sharding(mesh, grad_accum)

  def one(v):
    if grad_accum > 1:
      v = v.reshape(grad_accum, v.shape[0] // grad_accum, *v.shape[1:])
    return jax.make_array_from_process_local_data(sharding, v)

  return {k: one(v) for k, v in local.items()}
