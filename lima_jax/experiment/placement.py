"""Where a study's step runs under the Ray executor: the resources it asks for, read from the
study config, and whether a cluster has them. Nothing here imports Ray, so a dry run needs
no cluster.

A step's placement is one of (config `resources.train`, `resources.answer`; every other step
is `cpu`):

  cpu        one process holding one CPU of any node
  gpu:N      one process holding N GPUs of one node
  hosts:PxD  P processes of one JAX job, each a simulated host of D CPU devices holding one
             `lima_host` of a node (nodes advertise them: `ray start --resources=
             '{"lima_host": 2}'`); how multi-host steps are tested on one machine
  v4-16 ...  a TPU slice (lima_jax.parallel.tpu_specs names): one process per host of the slice,
             reserved whole by ray.util.tpu.slice_placement_group

A step of several processes is one placement group with one bundle per process; every process
gets the jax.distributed coordinator (bundle 0's node) through lima_jax.parallel.distributed's
environment variables, so the step's command (and so its identity) is the local executor's.
"""
import dataclasses
import pathlib
import re

from lima_jax.errors import UserError
from lima_jax.experiment import study
from lima_jax.parallel import distributed, tpu_specs

# The custom Ray resource of one simulated host (hosts:PxD).
HOST_RESOURCE = "lima_host"
KINDS = "cpu, gpu:N, hosts:PxD or a TPU slice such as v4-16"
_GPU = re.compile(r"gpu:([1-9][0-9]*)\Z")
_HOSTS = re.compile(r"hosts:([1-9][0-9]*)x([1-9][0-9]*)\Z")


@dataclasses.dataclass(frozen=True)
class Placement:
  spec: str
  kind: str  # cpu | gpu | hosts | tpu
  processes: int  # one per bundle of its placement group
  bundle: tuple[tuple[str, float], ...]  # Ray resources of each bundle
  devices: int = 0  # hosts: CPU devices a process
  slice: tpu_specs.Slice | None = None

  @property
  def resources(self) -> dict[str, float]:
    return dict(self.bundle)

  @property
  def strategy(self) -> str:
    # A TPU slice's hosts are distinct VMs; simulated hosts may share a node.
    return "STRICT_SPREAD" if self.kind == "tpu" and self.processes > 1 else "PACK"

  def describe(self) -> str:
    each = ", ".join(f"{k}: {v:g}" for k, v in self.bundle)
    group = (f"{self.processes} bundles {{{each}}} ({self.strategy}), one process each, "
             "jax.distributed coordinator on bundle 0" if self.processes > 1
             else f"1 bundle {{{each}}}")
    if self.kind == "tpu":
      s = self.slice
      return (f"{self.spec}: TPU {s.chip.name} slice {'x'.join(map(str, s.grid))}, "
              f"slice_placement_group of {group}, head resource TPU-{s.accelerator_type}-head")
    return f"{self.spec}: {group}"

  def env(self, rank: int, coordinator: str) -> dict[str, str]:
    """Environment of process `rank`: what makes it one process of a JAX job."""
    out = {}
    if self.kind == "hosts":
      out["JAX_PLATFORMS"] = "cpu"
      out["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={self.devices}"
    if self.processes > 1:
      # What distributed.initialize reads in a process that launch_local started.
      out.update({distributed._ENV_RANK: str(rank), distributed._ENV_WORLD: str(self.processes),
                  distributed._ENV_COORD: coordinator})
    return out


def parse(spec: str, field: str) -> Placement:
  """A placement from its config string; a bad one is an error naming `field`."""
  text = (spec or "").strip()
  if text == "cpu":
    return Placement(text, "cpu", 1, (("CPU", 1.0),))
  if m := _GPU.match(text):
    return Placement(text, "gpu", 1, (("CPU", 1.0), ("GPU", float(m.group(1)))))
  if m := _HOSTS.match(text):
    p, d = int(m.group(1)), int(m.group(2))
    return Placement(text, "hosts", p, ((HOST_RESOURCE, 1.0),), devices=d)
  if re.match(r"v[0-9]", text):
    try:
      s = tpu_specs.parse_slice(text)
    except UserError as e:
      raise UserError(f"config {field}: {e}") from None
    chips_per_host = s.chips // s.hosts
    return Placement(text, "tpu", s.hosts, (("TPU", float(chips_per_host)),), slice=s)
  raise UserError(f"config {field}: {spec!r} is not a placement ({KINDS})")


def for_step(c, kind: str) -> tuple[Placement, str]:
  """The placement of a step of this kind, and the config field it came from."""
  if kind not in ("train", "answer"):
    return parse("cpu", ""), ""
  field = f"resources.{kind}"
  p = parse(c.resources[kind], field)
  if kind == "answer" and p.processes > 1:
    raise UserError(f"config {field}: {p.spec!r} is {p.processes} processes; an answer step "
                    "runs as one (lima_jax.eval): cpu, gpu:N or a one-host TPU slice")
  return p, field


def missing(p: Placement, nodes: list[dict[str, float]]) -> str:
  """Why no set of these nodes (each its total resources) can ever hold `p`, or ''."""
  def fits(node):
    return all(node.get(k, 0) >= v for k, v in p.bundle)
  if p.kind == "tpu":
    head = f"TPU-{p.slice.accelerator_type}-head"
    if not any(n.get(head, 0) >= 1 for n in nodes):
      return f"no node has {head} (a {p.slice.accelerator_type} slice's worker 0)"
    return ""
  if p.kind == "hosts":
    total = sum(int(n.get(HOST_RESOURCE, 0)) for n in nodes)
    if total < p.processes:
      return (f"{p.processes} simulated hosts asked, the nodes advertise {total} "
              f"({HOST_RESOURCE} resources)")
    return ""
  if not any(fits(n) for n in nodes):
    want = ", ".join(f"{k} {v:g}" for k, v in p.bundle)
    return f"no node has {want}"
  return ""


def plan(c, workdir: pathlib.Path, arms: list[str], prepare) -> list[str]:
  """Each step's placement, as --executor=ray would ask the cluster for it; needs no
  cluster (answer and judge steps exist once training has written its checkpoints)."""
  answer, _ = for_step(c, "answer")
  cpu = parse("cpu", "")
  out = [f"{s.key:<40} {cpu.describe()}" for s in prepare]
  pending = frozenset(s.key for s in prepare)
  for arm in arms:
    for s in study.before_training(c, workdir, arm, pending=pending):
      out.append(f"{s.key:<40} {for_step(c, s.kind)[0].describe()}")
    if study.is_model_arm(c, arm):  # its answer and judge steps are listed above
      continue
    judged = [p for p in c.protocols if p != "judge_free"
              and not (p in study.PAIRWISE and arm == c.baseline_arm)]
    out.append(f"{arm + '/seedS/eE/answer':<40} {answer.describe()} (per answered epoch: "
               f"{c.epochs or 'the last'})")
    if judged:
      out.append(f"{arm + '/seedS/eE/' + '|'.join(judged):<40} {cpu.describe()}")
  return out
