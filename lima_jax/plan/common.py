"""What both planners share: the compile-only mesh of a TPU slice (through libtpu's compiler,
no TPU needed), bytes per chip and the out-of-memory message of a program that does not fit,
and how figures print."""
import contextlib
import importlib.util
import math
import os
import re
import sys
import tempfile
import time

import jax
import jax.numpy as jnp

from lima_jax.errors import UserError
from lima_jax.parallel import sharding
from lima_jax.parallel import tpu_specs


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


def bytes_per_chip(tree) -> int:
  return sum(math.prod(x.sharding.shard_shape(x.shape)) * jnp.dtype(x.dtype).itemsize
             for x in jax.tree.leaves(tree))


OOM = re.compile(r"RESOURCE_EXHAUSTED: (.*?)(?:\n|$)")


def compile_for_slice(compile_) -> tuple[object, str, float]:
  """(`compile_()`'s program or None, libtpu's out-of-memory message or '', seconds): a program
  that does not fit is a plan's answer, not an error."""
  start = time.perf_counter()
  try:
    compiled, oom = compile_(), ""
  except jax.errors.JaxRuntimeError as e:
    m = OOM.search(str(e))
    if not m:
      raise
    compiled, oom = None, m.group(1).strip()
  return compiled, oom, time.perf_counter() - start


def size(b: int) -> str:
  for unit, scale in (("GiB", 2**30), ("MiB", 2**20)):
    if b >= scale:
      return f"{b / scale:9.2f} {unit}"
  return f"{b / 2**10:9.2f} KiB"


def seconds(s: float) -> str:
  for unit, scale in (("s ", 1.0), ("ms", 1e-3)):
    if s >= scale:
      return f"{s / scale:9.2f} {unit} "
  return f"{s / 1e-6:9.2f} us "
