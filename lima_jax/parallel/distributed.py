"""Processes of one job: start-up, simulated hosts, agreement between hosts, preemption.

A pod runs one process per host (`distributed.initialize`); on one machine the same code runs
as N local CPU processes talking through `jax.distributed` and gloo
(`distributed.local_processes`), which is how the multi-host path is tested
(tests/test_multihost.py).

Preemption goes through JAX's preemption sync point: SIGTERM on any subset of hosts, in any
order, is propagated by the coordination service, and every host learns the same step at which
to save. A per-host flag cannot do that: the host that stops first leaves the others blocked
in the next collective.
"""
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from lima_jax.errors import UserError

_ENV_RANK, _ENV_WORLD, _ENV_COORD = "LIMA_JAX_PROCESS_ID", "LIMA_JAX_NUM_PROCESSES", "LIMA_JAX_COORD"


def is_local_child() -> bool:
  return _ENV_RANK in os.environ


def run_local_processes(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Runs `train.train_and_evaluate(config, workdir)` as N local CPU processes; SIGTERM to this
  launcher is passed on to all of them (as a pod scheduler would send it to every host)."""
  child_config = config.to_dict()
  child_config["distributed"]["local_processes"] = 0
  code = ("import json,sys,ml_collections; from lima_jax import train; "
          "train.train_and_evaluate(ml_collections.ConfigDict(json.loads(sys.argv[1])), sys.argv[2])")
  launch_local([sys.executable, "-c", code, json.dumps(child_config), workdir],
               config.distributed.local_processes, config.distributed.local_devices)


def launch_local(command: list[str], processes: int, devices: int = 0) -> None:
  """Runs `command` as `processes` local CPU processes of one JAX job (`devices` CPU devices
  each, 0: JAX's default), each of which calls `initialize`; SIGTERM is passed on to all."""
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  procs = []
  for rank in range(processes):
    env = dict(os.environ, JAX_PLATFORMS="cpu", **{
        _ENV_RANK: str(rank), _ENV_WORLD: str(processes), _ENV_COORD: f"localhost:{port}"})
    if devices:
      env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count="
                          f"{devices}")
    procs.append(subprocess.Popen(command, env=env))
  previous = signal.signal(signal.SIGTERM, lambda *_: [p.send_signal(signal.SIGTERM)
                                                       for p in procs if p.poll() is None])
  try:
    codes = [p.wait() for p in procs]
  finally:
    signal.signal(signal.SIGTERM, previous)
  if any(codes):
    raise UserError(f"local processes exited with codes {codes} (see their output above)")


def initialize(config: ml_collections.ConfigDict | None = None, pod: bool = False) -> None:
  """`jax.distributed.initialize` for a pod (`distributed.initialize` in a training config, or
  `pod=True` from a CLI flag) or a local child of `launch_local`."""
  if jax.distributed.is_initialized():
    return
  if is_local_child():
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(os.environ[_ENV_COORD], int(os.environ[_ENV_WORLD]),
                               int(os.environ[_ENV_RANK]))
  elif pod or (config is not None and config.distributed.initialize):
    jax.distributed.initialize()


def define_flags() -> None:
  """Flags of the CLIs that run on a pod (generate, select)."""
  from absl import flags
  flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() first: one process "
                    "per host of a TPU pod slice, each started with the same flags (`launch/tpu.sh "
                    "--worker=all ssh -- ...`: docs/tpu.md). Process 0 writes the outputs.")
  flags.DEFINE_integer("local_processes", 0, "Testing: run as this many local CPU processes of "
                       "one JAX job, as simulated hosts (0: off).", lower_bound=0)
  flags.DEFINE_integer("local_devices", 0, "Testing: CPU devices per local process (0: JAX's "
                       "default).", lower_bound=0)


def start(f, module: str) -> bool:
  """For the CLI `python -m module` with `define_flags`: False when this process only launched
  the local processes (which did the work); True when it is to run, after `jax.distributed`
  is up where asked."""
  if f.local_processes and not is_local_child():
    launch_local([sys.executable, "-m", module, *sys.argv[1:]], f.local_processes,
                 f.local_devices)
    return False
  initialize(pod=f.distributed)
  return True


def digest(value) -> str:
  """sha256 of a JSON-able value (sorted keys), or of bytes."""
  raw = value if isinstance(value, bytes) else json.dumps(value, sort_keys=True).encode()
  return hashlib.sha256(raw).hexdigest()


def agree(values: dict[str, str]) -> None:
  """Every process must hold the same hex digests, else one line names the field and the
  processes that differ from process 0 (all processes raise it, so none is left waiting)."""
  names = sorted(values)
  mine = np.stack([np.frombuffer(bytes.fromhex(values[k])[:32], np.uint32) for k in names])
  every = np.asarray(multihost_utils.process_allgather(mine))  # [processes, fields, 8]
  if every.ndim == 2:
    every = every[None]
  wrong = []
  for i, name in enumerate(names):
    others = [p for p in range(every.shape[0]) if not np.array_equal(every[p, i], every[0, i])]
    if others:
      wrong.append(f"{name} (process{'es' if len(others) > 1 else ''} "
                   f"{', '.join(map(str, others))} differ{'' if len(others) > 1 else 's'} "
                   "from process 0)")
  if wrong:
    raise UserError("hosts disagree on " + "; ".join(wrong) + ": every host must read the "
                    "same data files and tokenizer (a stale copy on one worker?)")


class Preemption:
  """`reached(step)` is True on every host at the same step once any host got SIGTERM.

  One process: a SIGTERM handler sets a flag. Several: JAX's preemption sync point (its own
  SIGTERM handler notifies the coordination service; no Python handler may replace it).
  """

  def __init__(self):
    self._multi = jax.process_count() > 1
    self._signalled = False
    if not self._multi:
      signal.signal(signal.SIGTERM, self._on_sigterm)

  def _on_sigterm(self, *_):
    self._signalled = True

  def reached(self, step: int) -> bool:
    if self._multi:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._signalled
