"""The Ray executor: a study's steps on a Ray cluster, each as soon as the steps it follows are
done, as many at once as the cluster holds.

The steps (study.py), their identities and the manifest (manifest.py) and how a step is begun
and finished (local.py) are the local runner's; only who runs a step changes, and the driver
(this process) alone writes the manifest. A step gets one placement group (placement.py: one
bundle per process) and runs its command once per bundle. An attempt that loses a process to
the cluster (node gone, worker killed, process killed by a signal) is retried on a fresh group,
up to `retries` times, the command resuming from its checkpoints; an attempt whose processes
exit with an error of their own is not retried: the step is marked failed with its log's last
lines and the steps that follow it are not run, while every other arm goes on.
"""
import dataclasses
import os
import pathlib
import sys
import time

from lima_jax.errors import UserError
from lima_jax.experiment import local, placement, ray_cluster, ray_table, study
from lima_jax.experiment.manifest import Manifest, Step

# After one process of a step fails, how long the others may take to report a lost node.
LOST_GRACE_S = 15.0


@dataclasses.dataclass
class Attempt:
  step: Step
  place: placement.Placement
  number: int
  group: object  # the placement group (or ray.util.tpu's SlicePlacementGroup handle)
  started: float
  log: pathlib.Path
  refs: list = dataclasses.field(default_factory=list)
  results: dict = dataclasses.field(default_factory=dict)  # rank -> (code, tail) or exception
  where: str = ""
  nodes: tuple = ()  # the node ids of its bundles
  failing: float = 0.0  # when a process first failed
  ready: object = None  # the group's readiness (an object ref), asked for once


class Runner:
  """One run of a study on Ray: the known steps, their states and the running attempts."""

  def __init__(self, c, workdir: pathlib.Path, arms: list[str], prepare, retries: int,
               judge_node: str = ""):
    self.c, self.workdir, self.retries = c, workdir, retries
    self.manifest = Manifest(workdir, c.name)
    self.judge_node = judge_node  # a scripted judge listens on the driver's node only
    self.steps: dict[str, Step] = {}
    self.state: dict[str, str] = {}  # waiting | placing | running | done | failed | blocked
    self.tries: dict[str, int] = {}
    self.running: dict[str, Attempt] = {}
    self.table = ray_table.Table()
    self.cwd = os.getcwd()
    pending = frozenset(s.key for s in prepare)
    self._add(prepare)
    for arm in arms:
      self._add(study.before_training(c, workdir, arm, pending=pending))

  def _add(self, steps) -> None:
    for s in steps:
      if s.key not in self.steps:
        self.steps[s.key], self.state[s.key] = s, "waiting"
        self.table.set(s.key, "waiting")

  def _ready(self, step: Step) -> str:
    """'yes', 'no' or 'blocked' (a step it follows failed or will never run)."""
    states = [self.state.get(k) for k in step.after]
    if any(s in ("failed", "blocked") for s in states):
      return "blocked"
    return "yes" if all(s == "done" for s in states) else "no"

  def _done(self, step: Step) -> None:
    self.state[step.key] = "done"
    if step.kind == "train":
      self._add(study.after_training(self.c, self.workdir, step.arm, step.seed))

  def _start(self, step: Step) -> None:
    from ray.util import placement_group
    log = local.begin(step, self.manifest, self.workdir, "[ray]")
    if log is None:
      self.table.set(step.key, "done")
      self._done(step)
      return
    p = placement.for_step(self.c, step.kind)[0]
    if step.kind == "judge" and self.judge_node:
      p = dataclasses.replace(p, bundle=p.bundle + ((f"node:{self.judge_node}", 0.001),))
    if p.kind == "tpu":
      from ray.util import tpu
      # Blocks until the slice's worker 0 is reserved (Ray's two-step gang scheduling).
      try:
        group = tpu.slice_placement_group(
            "x".join(map(str, p.slice.grid)), p.slice.chip.name.replace("v5e", "v5litepod"),
            strategy=p.strategy)
      except (RuntimeError, TimeoutError, ValueError) as e:
        raise UserError(f"{step.key}: cannot reserve a {p.spec} slice: "
                        f"{str(e).splitlines()[0]}") from None
    else:
      group = placement_group([p.resources] * p.processes, strategy=p.strategy)
    number = self.tries.get(step.key, 0) + 1
    self.tries[step.key] = number
    self.state[step.key] = "placing"
    self.running[step.key] = Attempt(step, p, number, group, time.monotonic(), log)
    self.table.set(step.key, "placing", attempt=number)

  def _group(self, a: Attempt):
    return a.group.placement_group if a.place.kind == "tpu" else a.group

  def _launch(self, a: Attempt) -> None:
    """The group is ready: one process per bundle, the coordinator on bundle 0."""
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
    from lima_jax.experiment import ray_tasks
    pg = self._group(a)
    a.nodes, a.where = ray_table.bundle_nodes(pg)

    def on(i, fn):
      r = a.place.resources
      return ray.remote(fn).options(
          num_cpus=r.get("CPU", 0), num_gpus=r.get("GPU", 0), max_retries=0,
          resources={k: v for k, v in r.items() if k not in ("CPU", "GPU")},
          scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=i))
    coordinator = ray.get(on(0, ray_tasks.coordinator).remote()) if a.place.processes > 1 else ""
    for rank in range(a.place.processes):
      log = a.log if rank == 0 else a.log.with_name(f"{a.log.stem}.p{rank}.log")
      a.refs.append(on(rank, ray_tasks.run_process).remote(
          a.step.command, a.place.env(rank, coordinator), self.cwd, str(log)))
    self.state[a.step.key] = "running"
    # Where and when each attempt ran: what a lost node, or a slow step, is traced by.
    self.manifest.set(a.step.key, attempts=a.number, where=a.where, nodes=list(a.nodes),
                      started=round(time.time(), 1))
    self.table.set(a.step.key, "running", where=a.where, attempt=a.number)

  def _end(self, a: Attempt) -> None:
    """Every process has answered (or one failed and the others were stopped)."""
    from ray.util import remove_placement_group
    del self.running[a.step.key]
    a.group.shutdown() if a.place.kind == "tpu" else remove_placement_group(a.group)
    seconds = round(time.monotonic() - a.started, 1)
    lost = [r for r in a.results.values() if isinstance(r, BaseException) or r[0] < 0]
    gone = ray_table.dead_nodes(a.nodes)
    if gone and not lost:
      lost = [f"node {gone[0][:8]} died"]
    codes = [r[0] for r in a.results.values() if not isinstance(r, BaseException)]
    step, key = a.step, a.step.key
    if lost:
      why = ray_table.reason(lost[0])
      rec = self.manifest.steps.get(key, {})
      self.manifest.set(key, attempts=a.number, lost=[*rec.get("lost", []), why])
      if a.number <= self.retries:
        print(f"[ray] {key}: attempt {a.number} lost ({why}); retrying on a fresh "
              "placement, resuming from its checkpoints", flush=True)
        self.state[key] = "waiting"
        self.table.set(key, "waiting", attempt=a.number)
        return
      code = next((c for c in codes if c), -1)
      tail = [f"{a.number} attempts lost to the cluster; the last: {why}"]
    else:
      code = next((c for c in codes if c), 0)
      tail = next((r[1] for r in a.results.values() if r[0]), [])
    local.finish(step, self.manifest, code, seconds, attempts=a.number,
                 ended=round(time.time(), 1),
                 **({"log_tail": tail} if code else {}))
    if code:
      self.state[key] = "failed"
      self.table.set(key, "failed", attempt=a.number)
      print(f"[ray] {key}: failed (exit {code}) after {seconds} s; log: {a.log}", flush=True)
      print("\n".join("    " + line for line in tail), file=sys.stderr, flush=True)
    else:
      self.table.set(key, "done", attempt=a.number)
      print(f"[ray] {key}: done in {seconds} s on {a.where}", flush=True)
      self._done(step)

  def _poll(self) -> None:
    import ray
    for a in list(self.running.values()):
      if not a.refs:
        a.ready = a.ready or self._group(a).ready()
        if ray.wait([a.ready], timeout=0)[0]:
          self._launch(a)
        continue
      pending = [r for i, r in enumerate(a.refs) if i not in a.results]
      for ref in ray.wait(pending, num_returns=len(pending), timeout=0)[0]:
        try:
          a.results[a.refs.index(ref)] = ray.get(ref)
        except ray.exceptions.RayError as e:
          a.results[a.refs.index(ref)] = e
      if len(a.results) == len(a.refs):
        self._end(a)
      elif any(isinstance(r, BaseException) or r[0] for r in a.results.values()):
        # The others would wait on it in a collective. A peer's error may come before the
        # cluster reports the lost process behind it: wait a little for that news.
        a.failing = a.failing or time.monotonic()
        if time.monotonic() - a.failing > LOST_GRACE_S:
          for rank, ref in enumerate(a.refs):
            if rank not in a.results:
              ray.cancel(ref, force=True)
          self._end(a)

  def run(self) -> list[str]:
    """Runs until nothing more can run; returns the keys of failed and blocked steps."""
    while True:
      for key, state in list(self.state.items()):
        if state != "waiting":
          continue
        ready = self._ready(self.steps[key])
        if ready == "blocked":
          self.state[key] = "blocked"
          self.table.set(key, "blocked")
        elif ready == "yes":
          self._start(self.steps[key])
      self._poll()
      self.table.show(self.running)
      if not self.running and not any(self._ready(self.steps[k]) == "yes"
                                      for k, s in self.state.items() if s == "waiting"):
        if not any(s == "waiting" and self._ready(self.steps[k]) == "blocked"
                   for k, s in self.state.items()):
          break
        continue
      time.sleep(0.5)
    self.table.show(self.running, final=True)
    return [k for k, s in self.state.items() if s in ("failed", "blocked", "waiting")]

  def cancel(self) -> None:
    """Ctrl-C: every running process is killed and its group released; the manifest says
    so (a rerun resumes them)."""
    import ray
    from ray.util import remove_placement_group
    for key, a in list(self.running.items()):
      for ref in a.refs:
        if ref is not None:
          ray.cancel(ref, force=True)
      a.group.shutdown() if a.place.kind == "tpu" else remove_placement_group(a.group)
      self.manifest.set(key, status="cancelled", attempts=a.number)
    self.running.clear()


def run_ray(c, workdir: pathlib.Path, arms: list[str], prepare, address: str | None,
            retries: int) -> None:
  """Runs the study on the Ray cluster at `address` (None: a Ray started here for the run)."""
  ray_cluster.import_ray()
  hosts = max((placement.for_step(c, k)[0].processes for k in ("train", "answer")
               if placement.for_step(c, k)[0].kind == "hosts"), default=0)
  dashboard = ray_cluster.connect(address, hosts)
  import ray
  try:
    ray_cluster.check_cluster(c, arms, address)
    print(f"ray: {'cluster at ' + address if address else 'started here for the run'}; "
          f"dashboard: {dashboard or 'none (pip install ray[default] for one)'}", flush=True)
    with local.judge_for_run(c) as c:
      scripted = c.judge.scripted and any(p != "judge_free" for p in c.protocols)
      runner = Runner(c, workdir, arms, prepare, retries,
                      judge_node=ray.util.get_node_ip_address() if scripted else "")
      try:
        unfinished = runner.run()
      except KeyboardInterrupt:
        runner.cancel()
        raise UserError("cancelled (Ctrl-C): running steps stopped and their placements "
                        "released; rerun the same command to resume") from None
      except BaseException:
        runner.cancel()  # nothing of the study outlives the driver
        raise
  finally:
    ray.shutdown()
  if unfinished:
    failed = [k for k in unfinished if runner.state[k] == "failed"]
    raise UserError(f"{len(failed)} step(s) failed ({', '.join(failed)}) and "
                    f"{len(unfinished) - len(failed)} that follow them did not run; the rest "
                    "is done. Fix them and rerun: finished steps are kept")

