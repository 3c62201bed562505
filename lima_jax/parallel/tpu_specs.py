"""TPU chips and slice names: what the planner needs to know about a slice it cannot touch.

Figures are the public ones from Google Cloud's TPU pages (cloud.google.com/tpu/docs/v4, /v5e,
/v5p, /v6e): peak bf16 FLOP/s, HBM and HBM bandwidth per chip. `usable_hbm` is what libtpu
itself lets a program use (it keeps the rest); it was read from libtpu 0.0.42.1's
out-of-memory message ("exceeds available HBM (30.75G)" on v4), so a newer libtpu may differ.

Cloud names a slice by accelerator type: v4 and v5p count TensorCores (two per chip, used
as one "megacore" device by JAX), so v4-256 is 128 chips; v5e ("v5litepod") and v6e count
chips. libtpu names it by chip grid instead ('v4:4x4x8'); `parse_slice` takes either.
"""
import dataclasses
import math
import re

from lima_jax.errors import UserError

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str  # The name users write: 'v4', 'v5p', 'v5e', 'v6e'.
  libtpu_name: str  # Prefix of libtpu's topology names: 'v4', 'v5', 'v5e', 'v6e'.
  hbm_bytes: int  # Nominal HBM per chip.
  usable_hbm_bytes: int  # What libtpu lets one program allocate per chip.
  peak_bf16_flops: float  # Per chip, dense matmuls.
  cores_per_chip_in_name: int  # 2 where accelerator names count TensorCores.
  grid_dims: int  # 3: 3D torus (v4, v5p); 2: 2D torus (v5e, v6e).
  chip_config: str  # libtpu's chip_config_name: 'megacore' puts both cores in one device.
  runtime_version: str  # Default TPU VM software version (cloud.google.com/tpu/docs/runtimes).
  aliases: tuple[str, ...] = ()  # Other accelerator-type prefixes for this chip.
  hbm_bytes_per_s: float = 0.0  # Peak HBM bandwidth per chip: what bounds a decode step.


CHIPS = {
    # v4: 275 TFLOP/s bf16, 32 GiB HBM2 at 1,200 GB/s per chip, 2 TensorCores per chip.
    "v4": Chip("v4", "v4", 32 * GIB, int(30.75 * GIB), 275e12, 2, 3, "megacore",
               "tpu-ubuntu2204-base", hbm_bytes_per_s=1200e9),
    # v5e: 197 TFLOP/s bf16, 16 GB HBM2 at 819 GB/s per chip, 1 TensorCore per chip.
    "v5e": Chip("v5e", "v5e", 16 * GIB, int(15.75 * GIB), 197e12, 1, 2, "default",
                "v2-alpha-tpuv5-lite", aliases=("v5litepod",), hbm_bytes_per_s=819e9),
    # v5p: 459 TFLOP/s bf16, 95 GB HBM2e at 2,765 GB/s per chip, 2 TensorCores per chip.
    "v5p": Chip("v5p", "v5", 95 * GIB, int(95.74 * GIB), 459e12, 2, 3, "megacore",
                "v2-alpha-tpuv5", hbm_bytes_per_s=2765e9),
    # v6e (Trillium): 918 TFLOP/s bf16, 32 GB HBM at 1,640 GB/s per chip, 1 TensorCore/chip.
    "v6e": Chip("v6e", "v6e", 32 * GIB, int(31.25 * GIB), 918e12, 1, 2, "default",
                "v2-alpha-tpuv6e", hbm_bytes_per_s=1640e9),
}

# Single-slice sizes Cloud offers for the 2D chips (cloud.google.com/tpu/docs/v5e, /v6e).
_GRID_2D_CHIPS = (1, 4, 8, 16, 32, 64, 128, 256)
_SMALL_3D = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4)}


@dataclasses.dataclass(frozen=True)
class Slice:
  chip: Chip
  grid: tuple[int, ...]  # Chips along each torus dimension.

  @property
  def chips(self) -> int:
    return math.prod(self.grid)

  @property
  def topology(self) -> str:
    """libtpu's name, for jax.experimental.topologies.get_topology_desc."""
    return f"{self.chip.libtpu_name}:{'x'.join(map(str, self.grid))}"

  @property
  def accelerator_type(self) -> str:
    prefix = "v5litepod" if self.chip.name == "v5e" else self.chip.name
    return f"{prefix}-{self.chips * self.chip.cores_per_chip_in_name}"

  @property
  def host_bounds(self) -> tuple[int, int, int]:
    """Chips per host along each dimension (libtpu's chips_per_host_bounds)."""
    if self.chips == 1:
      return (1, 1, 1)
    if self.chip.grid_dims == 2 and self.chips == 8:
      return (2, 4, 1)  # The one 8-chip host of v5e-8 / v6e-8; bigger slices use 4-chip hosts.
    return (2, 2, 1)

  @property
  def hosts(self) -> int:
    grid = self.grid + (1,) * (3 - len(self.grid))
    return math.prod(g // min(g, b) for g, b in zip(grid, self.host_bounds))

  @property
  def wrap(self) -> tuple[bool, bool, bool]:
    """Which dimensions close into a torus: whole 4x4x4 cubes on 3D chips, 16-long rows on 2D."""
    if self.chip.grid_dims == 3:
      return (self.chips >= 64,) * 3
    return tuple(g == 16 for g in self.grid) + (False,)


def _grid_3d(chips: int) -> tuple[int, int, int]:
  """Cloud's default shape: below a cube a fixed table, then whole 4x4x4 cubes, most cubic."""
  if chips in _SMALL_3D:
    return _SMALL_3D[chips]
  if chips % 64:
    raise ValueError(chips)
  best = None
  for a in range(4, chips + 1, 4):
    for b in range(a, chips // a + 1, 4):
      c, rest = divmod(chips, a * b)
      if rest or c < b or c % 4:
        continue
      key = (a + b + c, c)
      if best is None or key < best[0]:
        best = (key, (a, b, c))
  if best is None:
    raise ValueError(chips)
  return best[1]


def _grid_2d(chips: int) -> tuple[int, int]:
  if chips not in _GRID_2D_CHIPS:
    raise ValueError(chips)
  a = 1
  while (2 * a) ** 2 <= chips:
    a *= 2
  return (a, chips // a)


def _chip_named(prefix: str) -> Chip:
  for chip in CHIPS.values():
    if prefix in (chip.name, chip.libtpu_name) + chip.aliases:
      return chip
  raise KeyError(prefix)


def parse_slice(name: str) -> Slice:
  """'v4-256' (Cloud accelerator type) or 'v4:4x4x8' (chip grid) -> Slice."""
  known = ", ".join(CHIPS)
  m = re.fullmatch(r"([a-z0-9]+)([-:])([0-9x]+)", name.strip().lower())
  if not m:
    raise UserError(f"--topology={name!r}: expected an accelerator type like v4-256 or "
                    f"v5litepod-16, or a chip grid like v4:4x4x8 (chips: {known})")
  prefix, sep, size = m.groups()
  try:
    chip = _chip_named(prefix)
  except KeyError:
    raise UserError(f"--topology={name!r}: unknown chip {prefix!r} (known: {known})") from None
  if sep == ":":
    grid = tuple(int(g) for g in size.split("x") if g)
    if len(grid) != chip.grid_dims or "xx" in size or not all(grid):
      raise UserError(f"--topology={name!r}: {chip.name} grids have {chip.grid_dims} "
                      f"positive dimensions, e.g. {'v4:4x4x8' if chip.grid_dims == 3 else 'v5e:4x8'}")
    return Slice(chip, grid)
  if not size.isdigit() or int(size) % chip.cores_per_chip_in_name:
    raise UserError(f"--topology={name!r}: the size after '-' must be a number of "
                    f"{'TensorCores (2 per chip)' if chip.cores_per_chip_in_name == 2 else 'chips'}")
  chips = int(size) // chip.cores_per_chip_in_name
  try:
    grid = _grid_3d(chips) if chip.grid_dims == 3 else _grid_2d(chips)
  except ValueError:
    raise UserError(f"--topology={name!r}: no standard {chip.name} slice has {chips} chips; "
                    f"give the grid instead, e.g. {chip.libtpu_name}:AxB"
                    f"{'xC' if chip.grid_dims == 3 else ''}") from None
  return Slice(chip, grid)
