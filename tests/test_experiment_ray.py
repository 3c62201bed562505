"""The Ray executor (python -m lima_jax.experiment run --executor=ray): placements read from the
config, the dry run without a cluster, bad input, and the tiny study on a real local Ray
cluster (a head and two worker nodes, each advertising two simulated hosts), with and without
a worker node killed mid-training, against the local executor's report."""
import contextlib
import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import pytest

from lima_jax.errors import UserError
from tests.test_experiment import ENV, REPO, _table, cli

TINY = "--config=configs/experiments.py:tiny"
# No step may import Ray in this interpreter: what a machine without Ray sees.
NO_RAY = ("import runpy, sys; sys.modules['ray'] = None; sys.argv = ['x', *sys.argv[1:]]; "
          "runpy.run_module('lima_jax.experiment', run_name='__main__')")


def cli_without_ray(*args):
  return subprocess.run([sys.executable, "-c", NO_RAY, *args], cwd=REPO, env=ENV,
                        capture_output=True, text=True, timeout=300)


def one_error_line(r) -> str:
  lines = r.stderr.strip().splitlines()
  assert r.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), r.stderr
  return lines[0]


# --- Placements, without a cluster -------------------------------------------------------------

def test_placements_from_their_config_strings():
  from lima_jax.experiment import placement
  p = placement.parse("hosts:2x4", "resources.train")
  assert (p.kind, p.processes, p.devices, p.resources) == ("hosts", 2, 4, {"lima_host": 1.0})
  assert p.env(1, "h:1") == {
      "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
      "LIMA_JAX_PROCESS_ID": "1", "LIMA_JAX_NUM_PROCESSES": "2", "LIMA_JAX_COORD": "h:1"}
  assert placement.parse("gpu:2", "f").resources == {"CPU": 1.0, "GPU": 2.0}
  tpu = placement.parse("v4-16", "f")  # 8 chips, 2 hosts of 4
  assert (tpu.processes, tpu.resources, tpu.strategy) == (2, {"TPU": 4.0}, "STRICT_SPREAD")
  assert placement.parse("v5litepod-8", "f").processes == 1
  for bad, says in [("gpu:0", "is not a placement"), ("hosts:2", "is not a placement"),
                    ("v4-12", "no standard v4 slice")]:
    with pytest.raises(UserError, match=f"config resources.train: .*{says}"):
      placement.parse(bad, "resources.train")


def test_what_no_cluster_can_hold_is_named():
  from lima_jax.experiment import placement
  head, worker = {"CPU": 2.0}, {"CPU": 1.0, "lima_host": 2.0}
  assert placement.missing(placement.parse("hosts:2x4", ""), [head, worker]) == ""
  assert "4 simulated hosts asked, the nodes advertise 2" in placement.missing(
      placement.parse("hosts:4x1", ""), [head, worker])
  assert placement.missing(placement.parse("gpu:1", ""), [head, worker]) == "no node has CPU 1, GPU 1"
  assert "TPU-v4-16-head" in placement.missing(placement.parse("v4-16", ""), [head])
  assert placement.missing(placement.parse("v4-16", ""), [{"TPU": 4, "TPU-v4-16-head": 1}]) == ""


def test_dry_run_places_every_step_of_dropout_epochs_on_v4_16_without_ray():
  r = cli_without_ray("run", "--config=configs/experiments.py:dropout_epochs",
                      "--workdir=/tmp/unused-ray-plan", "--executor=ray", "--dry_run",
                      "--config.resources.train=v4-16", "--config.resources.answer=v4-8")
  assert r.returncode == 0, r.stderr
  lines = r.stdout.split("placements (--executor=ray):\n")[1].splitlines()
  by_key = {line.split()[0]: line for line in lines}
  arms = [f"dropout_{p}" for p in (0, 10, 20, 30)]
  assert set(by_key) == ({f"{a}/seed0/train" for a in arms}
                         | {f"{a}/seedS/eE/answer" for a in arms}
                         | {f"{a}/seedS/eE/lima_pairwise" for a in arms[1:]})  # not the baseline's
  for a in arms:
    train = by_key[f"{a}/seed0/train"]
    assert "v4-16: TPU v4 slice 2x2x2" in train and "2 bundles {TPU: 4} (STRICT_SPREAD)" in train
    assert "TPU-v4-16-head" in train and "coordinator on bundle 0" in train
    assert "1 bundle {TPU: 4}, head resource TPU-v4-8-head" in by_key[f"{a}/seedS/eE/answer"]
  assert "cpu: 1 bundle {CPU: 1}" in by_key["dropout_30/seedS/eE/lima_pairwise"]
  assert not pathlib.Path("/tmp/unused-ray-plan").exists()


@pytest.mark.parametrize("args, message", [
    (["--config.resources.train=tpu-16"], "config resources.train: 'tpu-16' is not a placement"),
    (["--config.resources.answer=hosts:2x4"], "config resources.answer: 'hosts:2x4' is 2 "
     "processes; an answer step runs as one"),
    (["--ray_address=auto"], "--ray_address: only with --executor=ray"),
])
def test_bad_placement_is_one_line_at_plan_time(args, message, tmp_path):
  executor = [] if "--ray_address=auto" in args else ["--executor=ray"]
  r = cli_without_ray("run", TINY, f"--workdir={tmp_path}", *executor, *args)
  assert message in one_error_line(r)
  assert not (tmp_path / "manifest.json").exists()


def test_without_ray_installed_is_one_line_naming_the_requirements(tmp_path):
  r = cli_without_ray("run", TINY, f"--workdir={tmp_path}", "--executor=ray")
  assert one_error_line(r) == ("error: --executor=ray needs Ray: pip install -r "
                               "requirements-ray.txt")


def test_an_unreachable_cluster_is_one_line_with_its_address(tmp_path):
  pytest.importorskip("ray")
  with socket.socket() as s:  # a port nothing listens on
    s.bind(("127.0.0.1", 0))
    address = f"127.0.0.1:{s.getsockname()[1]}"
  r = cli("run", TINY, f"--workdir={tmp_path}", "--executor=ray", f"--ray_address={address}",
          timeout=300)
  assert one_error_line(r).startswith(f"error: --ray_address={address}: cannot reach a Ray "
                                      "cluster there")
  assert not (tmp_path / "manifest.json").exists()


# --- A real local cluster ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster():
  """A head (2 CPUs, no simulated hosts), two worker nodes of two simulated hosts each and a
  simulated TPU slice, as real Ray processes on this machine, torn down whatever the tests do. The nodes run steps in
  the environment the local executor's steps get (tests/test_experiment.py's ENV)."""
  ray = pytest.importorskip("ray")
  from ray import cluster_utils
  saved = dict(os.environ)
  os.environ.update(JAX_PLATFORMS="cpu", XLA_FLAGS="", RAY_AUTH_MODE="disabled")
  small = dict(include_dashboard=False, object_store_memory=80 * 2**20)
  c = None
  try:
    c = cluster_utils.Cluster(initialize_head=True, head_node_args=dict(num_cpus=2, **small))
    workers = [c.add_node(num_cpus=1, resources={"lima_host": 2}, **small) for _ in range(2)]
    # A v4-16 slice as Ray sees one: two hosts of 4 chips, labelled as one slice, TPU_NAME as
    # GKE sets it (ray.util.tpu reads the slice's name on worker 0 with a one-CPU task).
    os.environ["TPU_NAME"] = "slice-a"
    tpu = [c.add_node(num_cpus=1, resources={"TPU": 4, **({"TPU-v4-16-head": 1} if w == 0 else {})},
                      labels={"ray.io/tpu-slice-name": "slice-a", "ray.io/tpu-worker-id": str(w),
                              "ray.io/tpu-pod-type": "v4-16", "ray.io/accelerator-type": "TPU-V4"},
                      **small) for w in range(2)]
    del os.environ["TPU_NAME"]
    c.wait_for_nodes()
    yield c, workers, tpu
  finally:
    if c is not None:
      c.shutdown()
    os.environ.clear()
    os.environ.update(saved)
    assert ray.is_initialized() is False


def _ray_cli(cluster_, workdir, out, *args):
  """The command against the cluster, its output (stdout and stderr) to the file `out`."""
  c = cluster_[0]
  return subprocess.Popen(
      [sys.executable, "-m", "lima_jax.experiment", "run", TINY, f"--workdir={workdir}",
       "--executor=ray", f"--ray_address={c.address}", *args],
      cwd=REPO, env={**ENV, "RAY_AUTH_MODE": "disabled"}, stdout=out, stderr=subprocess.STDOUT)


@contextlib.contextmanager
def _study(cluster_, workdir, out_path, *args):
  """`_ray_cli` running, its output to `out_path`; killed (and reaped) if still running when
  the block ends, so a failed test leaves no driver behind."""
  with open(out_path, "w") as out_file:
    proc = _ray_cli(cluster_, workdir, out_file, *args)
    try:
      yield proc
    finally:
      if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_a_placement_no_node_has_is_one_line_before_anything_starts(cluster, tmp_path):
  c = cluster[0]
  for override, says in [("resources.train=gpu:1", "no node has CPU 1, GPU 1"),
                         ("resources.train=hosts:5x1", "5 simulated hosts asked, the nodes "
                          "advertise 4 (lima_host resources)")]:
    r = subprocess.run(
        [sys.executable, "-m", "lima_jax.experiment", "run", TINY, f"--workdir={tmp_path}",
         "--executor=ray", f"--ray_address={c.address}", f"--config.{override}"],
        cwd=REPO, env={**ENV, "RAY_AUTH_MODE": "disabled"}, capture_output=True, text=True,
        timeout=300)
    field, value = override.split("=")
    assert one_error_line(r) == (f"error: config {field}={value!r}: the cluster at {c.address} "
                                 f"cannot hold it: {says}")
    assert not (tmp_path / "manifest.json").exists()


@pytest.fixture(scope="module")
def local_table(tmp_path_factory):
  """The local executor's report of the tiny study."""
  workdir = tmp_path_factory.mktemp("local")
  r = cli("run", TINY, f"--workdir={workdir}")
  assert r.returncode == 0, r.stderr[-3000:]
  assert cli("report", f"--workdir={workdir}").returncode == 0
  return _table(workdir)


def _wait_for(what, check, limit=600):
  deadline = time.monotonic() + limit
  while time.monotonic() < deadline:
    got = check()
    if got:
      return got
    time.sleep(0.2)
  pytest.fail(f"never happened: {what}")


def _steps(workdir):
  try:
    return json.loads((workdir / "manifest.json").read_text())["steps"]
  except (OSError, ValueError, KeyError):
    return {}


@pytest.mark.slow
def test_tiny_study_on_a_cluster_trains_two_arms_at_once_and_survives_a_killed_node(
    cluster, local_table, tmp_path):
  """Both arms train at once, each as two jax.distributed processes packed on one worker node;
  once the baseline arm has written its first epoch's checkpoint its node is SIGKILLed; the
  step is retried on the other node (once that node's arm is done), resumes from that
  checkpoint, and the study ends with the local executor's report."""
  c, workers, _ = cluster
  workdir = tmp_path / "study"
  with _study(cluster, workdir, tmp_path / "out.txt",
              "--config.resources.train=hosts:2x4") as proc:
    def both_running():
      steps = _steps(workdir)
      recs = [steps.get(f"{a}/seed0/train", {}) for a in ("all", "random100")]
      return all(r.get("status") == "running" and r.get("nodes") for r in recs) and recs
    recs = _wait_for("both arms training", both_running)
    # Each arm packs its two simulated hosts on one worker: two arms, two workers.
    assert [len(set(r["nodes"])) for r in recs] == [1, 1]
    assert recs[0]["nodes"] != recs[1]["nodes"]
    victim_key = "all/seed0/train"
    ckpt = workdir / "arms" / "all" / "seed0" / "train" / "checkpoints" / "8"  # epoch 1 of 2
    _wait_for("the first epoch's checkpoint", ckpt.exists)
    assert _steps(workdir)[victim_key]["status"] == "running", "trained too fast to kill"
    victim_node = _steps(workdir)[victim_key]["nodes"][0]
    c.remove_node(next(w for w in workers if w.node_id == victim_node), allow_graceful=False)
    proc.wait(timeout=900)
  out = (tmp_path / "out.txt").read_text()
  assert proc.returncode == 0, out[-3000:]
  steps = _steps(workdir)
  assert {s["status"] for s in steps.values()} == {"done"} and len(steps) == 6
  rec = steps[victim_key]
  assert rec["attempts"] == 2 and len(rec["lost"]) == 1 and victim_node not in rec["nodes"]
  assert "NodeDiedError" in rec["lost"][0]
  assert steps["random100/seed0/train"]["attempts"] == 1
  log = (workdir / "logs" / "all__seed0__train.log").read_text()
  assert f"resumed from {ckpt}" in log, log[-2000:]
  for key in ("all__seed0__train", "random100__seed0__train"):  # two processes each
    assert "on 2 process(es)" in (workdir / "logs" / f"{key}.log").read_text()
    assert (workdir / "logs" / f"{key}.p1.log").exists()
  assert f"{victim_key}: attempt 1 lost" in out and "attempt  elapsed" in out
  assert cli("report", f"--workdir={workdir}").returncode == 0
  assert _table(workdir) == local_table
  # The same identities as the local executor's: it finds every step done.
  r = cli("run", TINY, f"--workdir={workdir}")
  assert r.returncode == 0 and r.stdout.count(": done") == 6 and "running" not in r.stdout
  # Nothing of the study outlives it, on the killed node or elsewhere.
  left = subprocess.run(["pgrep", "-f", "--", f"--workdir={workdir}"], capture_output=True, text=True)
  assert left.stdout.strip() == "", left.stdout


@pytest.mark.slow
def test_a_step_failing_on_its_own_is_not_retried_and_the_other_arm_goes_on(cluster, tmp_path):
  workdir = tmp_path / "study"
  with _study(cluster, workdir, tmp_path / "out.txt",
              "--config.arms.random100.overrides=('train.no_such_field=1',)") as proc:
    proc.wait(timeout=600)
  out = (tmp_path / "out.txt").read_text()
  assert proc.returncode == 1, out[-3000:]
  assert out.strip().splitlines()[-1].startswith(
      "error: 1 step(s) failed (random100/seed0/train)"), out[-3000:]
  steps = _steps(workdir)
  bad = steps["random100/seed0/train"]
  assert bad["status"] == "failed" and bad["attempts"] == 1 and "lost" not in bad
  assert any("no_such_field" in line for line in bad["log_tail"]), bad["log_tail"]
  assert any("no_such_field" in line for line in out.splitlines() if line.startswith("    "))
  assert {k: v["status"] for k, v in steps.items() if k.startswith("all/")} == {
      "all/seed0/train": "done", "all/seed0/e2/answer": "done"}


def test_ctrl_c_stops_every_process_of_the_study_and_a_rerun_would_resume(cluster, tmp_path):
  import signal
  workdir = tmp_path / "study"
  with _study(cluster, workdir, tmp_path / "out.txt",
              "--config.resources.train=hosts:2x4") as proc:
    _wait_for("the first arm training", lambda: _steps(workdir).get(
        "all/seed0/train", {}).get("nodes"))
    def training():
      found = subprocess.run(["pgrep", "-f", "--", f"--workdir={workdir}/arms/all"],
                             capture_output=True, text=True).stdout.split()
      return len(found) == 2 and found
    _wait_for("its two processes", training, limit=120)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
  out = (tmp_path / "out.txt").read_text()
  assert proc.returncode == 1 and out.strip().splitlines()[-1] == (
      "error: cancelled (Ctrl-C): running steps stopped and their placements released; rerun "
      "the same command to resume"), out[-2000:]
  assert _steps(workdir)["all/seed0/train"]["status"] == "cancelled"
  time.sleep(1)  # a killed worker's children die with it (PR_SET_PDEATHSIG)
  left = subprocess.run(["pgrep", "-f", "--", f"--workdir={workdir}"], capture_output=True,
                        text=True)
  assert left.stdout.strip() == ""
  r = cli("run", TINY, f"--workdir={workdir}", "--dry_run")
  assert r.returncode == 0 and "all/seed0/train                          cancelled" in r.stdout


@pytest.mark.slow
def test_a_train_step_on_a_tpu_slice_runs_one_process_on_each_host_of_the_slice(cluster,
                                                                                 tmp_path):
  _, _, slice_nodes = cluster
  workdir = tmp_path / "study"
  with _study(cluster, workdir, tmp_path / "out.txt", "--config.resources.train=v4-16",
              "--only=all", "--config.protocols=('judge_free',)",
              "--config.baseline_arm=") as proc:
    proc.wait(timeout=600)
  out = (tmp_path / "out.txt").read_text()
  assert proc.returncode == 0, out[-3000:]
  rec = _steps(workdir)["all/seed0/train"]
  assert rec["status"] == "done" and sorted(rec["nodes"]) == sorted(n.node_id for n in slice_nodes)
  log = (workdir / "logs" / "all__seed0__train.log").read_text()
  assert "on 2 process(es)" in log  # one a host (each with one CPU device: no real chips here)
  assert _steps(workdir)["all/seed0/e2/answer"]["status"] == "done"
