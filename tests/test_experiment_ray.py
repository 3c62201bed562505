"""The Ray executor (python -m lima_jax.experiment run --executor=ray): placements read from the
config, the dry run without a cluster, bad input, and the tiny study on a real local Ray
cluster (a head and two worker nodes, each advertising two simulated hosts), with and without
a worker node killed mid-training, against the local executor's report."""
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
