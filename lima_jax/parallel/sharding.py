"""Mesh construction, the logical-axis rules (one table) and batch placement.

Parameters and activations carry logical axis names (the tuples of lima_jax/model/axes.py;
the tree in docs/INTERFACES.md); `RULES` maps them onto the mesh axes ('data', 'fsdp',
'tensor'). Pure FSDP is the default: with mesh (1, N, 1) every weight matrix is split along its embedding dimension over N devices and the batch over all of them.
'tensor' is Megatron-style: heads, MLP hidden units and the vocabulary split, activations
between blocks replicated.
"""
import math
from typing import Any, Optional, Sequence

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
    ("lora_rank", None),  # LoRA's rank axis (lima_jax/model/lora.py): small, replicated
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


def device_grid(shape: Sequence[int], devices: Sequence[Any]) -> np.ndarray:
  """The devices as a (data, fsdp, tensor) array in JAX's topology-aware order (TPU: rings
  along the torus; elsewhere: the given order)."""
  shape = resolve_mesh_shape(shape, len(devices))
  try:
    return mesh_utils.create_device_mesh(shape, devices)
  except (NotImplementedError, ValueError):
    # A TPU torus (e.g. 4x4x4) cannot give every logical shape (1, 32, 2) without splitting a
    # physical axis; allow it rather than refusing a valid mesh (some links go unused).
    return mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)


def parse_mesh_shape(value, flag: str = "--mesh") -> tuple[int, ...]:
  """'1,-1,1' (or ['1', '-1', '1'], as absl lists come) -> (1, -1, 1); one line if not ints."""
  items = value.split(",") if isinstance(value, str) else list(value)
  try:
    return tuple(int(s) for s in items)
  except ValueError:
    raise UserError(f"{flag}={','.join(items)}: expected three integers data,fsdp,tensor, "
                    "e.g. 1,-1,1") from None


def make_mesh(shape: Sequence[int], devices=None) -> jax.sharding.Mesh:
  """A ('data', 'fsdp', 'tensor') mesh with Auto axes (Explicit breaks logical constraints)."""
  devices = jax.devices() if devices is None else devices
  grid = device_grid(shape, devices)
  return jax.sharding.Mesh(grid, AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(AXES))


def auto_mesh_shape(n_devices: int, devices_per_host: int, micro_batch: int) -> tuple[int, ...]:
  """The mesh training uses when `mesh.shape` is (): the batch over fsdp as far as the
  micro-batch divides, the remaining factor on 'tensor', which must fit inside one host.

  E.g. 128 chips, 4 a host, micro-batch 32 -> (1, 32, 4); 8 devices, batch 8 -> (1, 8, 1).
  """
  fsdp = max(f for f in range(1, n_devices + 1) if n_devices % f == 0 and micro_batch % f == 0)
  tensor = n_devices // fsdp
  if tensor > devices_per_host or devices_per_host % tensor:
    raise UserError(
        f"mesh.shape=(): the micro-batch of {micro_batch} (train.batch_size/"
        f"train.grad_accum_steps) splits over at most {fsdp} of the {n_devices} devices, and "
        f"the other factor {tensor} does not fit on 'tensor' inside a host of "
        f"{devices_per_host}: raise train.batch_size or set mesh.shape explicitly")
  return (1, fsdp, tensor)


def host_major_grid(shape: Sequence[int], devices: Sequence[Any]) -> np.ndarray:
  """Devices sorted by (process, id) and reshaped: each 'tensor' group inside one host when
  'tensor' divides the devices per host."""
  ordered = sorted(devices, key=lambda d: (d.process_index, d.id))
  return np.asarray(ordered, dtype=object).reshape(resolve_mesh_shape(shape, len(devices)))


def tensor_groups_cross_hosts(grid: np.ndarray) -> bool:
  """Whether some 'tensor' group (devices that hold one batch shard) spans several hosts."""
  procs = np.vectorize(lambda d: d.process_index, otypes=[int])(grid)
  return bool(np.any(procs != procs[..., :1]))


def choose_mesh(mesh_shape: Sequence[int], devices: Sequence[Any],
                micro_batch: int) -> jax.sharding.Mesh:
  """`mesh.shape` as given, or () for `auto_mesh_shape` laid out with 'tensor' inside hosts."""
  if tuple(mesh_shape):
    return make_mesh(mesh_shape, devices)
  per_host = max(sum(d.process_index == p for d in devices)
                 for p in {d.process_index for d in devices})
  shape = auto_mesh_shape(len(devices), per_host, micro_batch)
  grid = device_grid(shape, devices)
  if tensor_groups_cross_hosts(grid):
    grid = host_major_grid(shape, devices)
  return jax.sharding.Mesh(grid, AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(AXES))


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


def micro_batch(global_batch: int, grad_accum: int) -> int:
  if grad_accum < 1 or global_batch % grad_accum:
    raise UserError(f"train.batch_size={global_batch} is not divisible by "
                    f"train.grad_accum_steps={grad_accum}")
  return global_batch // grad_accum


def check_batch(global_batch: int, grad_accum: int, mesh: jax.sharding.Mesh) -> None:
  """Each micro-batch must split evenly over the batch shards (data x fsdp). Any number of
  processes works: each feeds the rows its own devices hold (`process_rows`)."""
  micro, shards = micro_batch(global_batch, grad_accum), batch_shards(mesh)
  if micro % shards:
    raise UserError(f"micro-batch {micro} (train.batch_size/train.grad_accum_steps) is not "
                    f"divisible by the {shards} batch shards of mesh {dict(mesh.shape)}")


def device_rows(grid: np.ndarray, global_batch: int, grad_accum: int = 1) -> dict[Any, np.ndarray]:
  """Global batch rows each device holds under `batch_sharding`: micro-batch j is rows
  [j*m, (j+1)*m) (m = global_batch / grad_accum), split over data x fsdp in grid order, and the
  devices of one 'tensor' group hold the same rows. Pure index arithmetic, so it can be checked
  on devices that are not real (tests/test_multihost.py compares it with JAX's own map).

  E.g. grid (1, 2, 2) = [[[a, b], [c, d]]], batch 8, grad_accum 2 (m = 4):
    a, b -> rows [0, 1, 4, 5];  c, d -> rows [2, 3, 6, 7].
  """
  data, fsdp, _ = grid.shape
  m = global_batch // grad_accum
  per_shard = m // (data * fsdp)
  out = {}
  for (d, f, _), device in np.ndenumerate(grid):
    shard = np.arange(per_shard) + (d * fsdp + f) * per_shard
    out[device] = (shard[None, :] + m * np.arange(grad_accum)[:, None]).ravel()
  return out


def process_rows(grid: np.ndarray, global_batch: int, grad_accum: int = 1,
                 process: Optional[int] = None) -> np.ndarray:
  """The sorted global rows that `process`'s devices hold (default: this process): exactly what
  it must feed. Replicas of a row on other hosts are fed the same row by those hosts."""
  process = jax.process_index() if process is None else process
  rows = [r for dev, r in device_rows(grid, global_batch, grad_accum).items()
          if dev.process_index == process]
  return np.unique(np.concatenate(rows)) if rows else np.zeros(0, np.int64)


def put_batch(local: dict[str, np.ndarray], mesh: jax.sharding.Mesh,
              rows: Optional[np.ndarray] = None, global_batch: Optional[int] = None,
              grad_accum: int = 1) -> dict[str, jax.Array]:
  """Assembles the global batch from this process's rows: `local[k][i]` is global row
  `rows[i]` (from `process_rows`; default: `local` is the whole batch); the global shape is
  [B, T], or [A, B/A, T] with accumulation (micro-batch j = rows [j*B/A, (j+1)*B/A)). No host
  holds more than its rows."""
  if rows is None:
    global_batch = len(next(iter(local.values())))
    rows = np.arange(global_batch)
  sharding = batch_sharding(mesh, grad_accum)
  where = {int(r): i for i, r in enumerate(rows)}
  m = global_batch // grad_accum

  def one(v):
    shape = ((grad_accum, m) if grad_accum > 1 else (global_batch,)) + v.shape[1:]

    def fetch(index):
      if grad_accum > 1:
        micro = np.arange(grad_accum)[index[0]]
        inner = np.arange(m)[index[1]]
        wanted = (micro[:, None] * m + inner[None, :]).ravel()
        part = v[[where[int(r)] for r in wanted]].reshape(len(micro), len(inner), *v.shape[1:])
        return part[(slice(None), slice(None)) + tuple(index[2:])]
      return v[[where[int(r)] for r in np.arange(global_batch)[index[0]]]][
          (slice(None),) + tuple(index[1:])]

    return jax.make_array_from_callback(shape, sharding, fetch)

  return {k: one(v) for k, v in local.items()}
