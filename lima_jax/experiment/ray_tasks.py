"""What runs on a Ray node for a study step: one process of its command, and where bundle 0
is (the jax.distributed coordinator's address).

The Ray executor ships these functions by value (nodes need not have lima_jax on their Python
path, only the checkout at the driver's path, which the step's command runs from).
"""
import ctypes
import os
import pathlib
import signal
import socket
import subprocess
import sys

_PR_SET_PDEATHSIG = 1


def _die_with_parent():
  # Ray cancels a step by killing its worker; the command it started must not outlive it.
  ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def coordinator() -> str:
  """HOST:PORT for jax.distributed on this node: its Ray address and a free port."""
  import ray
  with socket.socket() as s:
    s.bind(("", 0))
    port = s.getsockname()[1]
  return f"{ray.util.get_node_ip_address()}:{port}"


def run_process(command: list[str], env: dict[str, str], cwd: str, log: str,
                tail: int = 15) -> tuple[int, list[str]]:
  """Runs `command` from `cwd` with this node's environment plus `env`, appending its output
  to `log`; returns its exit status (negative: the signal that killed it) and the log's last
  lines."""
  sys.path.insert(0, cwd)
  from lima_jax.experiment import local  # the checkout's, as the command's own
  os.makedirs(os.path.dirname(log), exist_ok=True)
  with open(log, "ab") as out:
    proc = subprocess.Popen(command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                            env=local.step_env({**os.environ, **env}),
                            preexec_fn=_die_with_parent if sys.platform.startswith("linux")
                            else None)
    try:
      code = proc.wait()
    except BaseException:  # cancelled: a forced cancel kills us; a soft one lands here
      proc.kill()
      raise
  return code, local.log_tail(pathlib.Path(log), tail)
