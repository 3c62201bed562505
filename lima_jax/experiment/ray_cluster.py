"""Reaching a study's Ray cluster: Ray itself (an optional stack), the cluster at an address or
one started here for the run, and a check before anything starts that its nodes can hold every
placement the study asks for."""
import socket

from lima_jax.errors import UserError
from lima_jax.experiment import placement

REQUIREMENTS = "requirements-ray.txt"


def import_ray():
  try:
    import ray
  except ImportError:
    raise UserError(f"--executor=ray needs Ray: pip install -r {REQUIREMENTS}") from None
  return ray


def connect(address: str | None, hosts: int):
  """ray.init on the cluster at `address` (or 'auto'), or a Ray started here for the run that
  advertises `hosts` simulated hosts. Returns the dashboard's URL ('' when it has none)."""
  ray = import_ray()
  import logging
  if address and address != "auto":
    _reachable(address)
  kwargs = dict(log_to_driver=False, logging_level=logging.WARNING, configure_logging=True)
  try:
    if address:
      ctx = ray.init(address=address, **kwargs)
    else:
      ctx = ray.init(resources={placement.HOST_RESOURCE: hosts} if hosts else None, **kwargs)
  except (ConnectionError, RuntimeError, ValueError) as e:
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    where = f"--ray_address={address}: cannot reach a Ray cluster there" if address else (
        "--executor=ray: cannot start a Ray here")
    raise UserError(f"{where} ({reason})") from None
  import ray.cloudpickle
  from lima_jax.experiment import ray_tasks
  ray.cloudpickle.register_pickle_by_value(ray_tasks)
  url = getattr(ctx, "dashboard_url", "") or ""
  return url if not url or url.startswith("http") else f"http://{url}"


def _reachable(address: str) -> None:
  """ray.init retries an address that does not answer for minutes: ask it once first."""
  host, _, port = address.removeprefix("ray://").rpartition(":")
  try:
    socket.create_connection((host, int(port)), timeout=5).close()
  except (OSError, ValueError) as e:
    raise UserError(f"--ray_address={address}: cannot reach a Ray cluster there "
                    f"({getattr(e, 'strerror', None) or e}; expected HOST:PORT of its head, or "
                    "auto)") from None


def check_cluster(c, arms: list[str], address: str | None) -> None:
  """Before anything starts: every placement the study asks for fits the cluster's nodes."""
  import ray
  nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
  for kind in ("train", "answer"):
    p, field = placement.for_step(c, kind)
    why = placement.missing(p, nodes)
    if why and arms:
      where = f"the cluster at {address}" if address else "the Ray started here"
      raise UserError(f"config {field}={p.spec!r}: {where} cannot hold it: {why}")
  if placement.missing(placement.parse("cpu", ""), nodes):
    raise UserError("the Ray cluster has no node with a CPU for curate, judge and prepare steps")
