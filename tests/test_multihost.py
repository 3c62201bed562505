"""The multi-host path on simulated hosts: local processes talking through jax.distributed.

One process x 8 CPU devices against two processes x 4, for meshes whose 'tensor' groups span
both processes ((1,1,8), (1,2,4)) and ones that do not; which rows each host feeds, checked
against JAX's own sharding and on mock TPU v4 hosts; preemption on one host; resume that
refuses another recipe; hosts that disagree; training from a converted `model.init`.
"""
import dataclasses
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import shared_file, tiny_config

REPO = pathlib.Path(__file__).resolve().parents[1]


def read_metrics(workdir):
  return [json.loads(l) for l in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def final_params(workdir):
  from lima_jax.formats import checkpoint
  root = pathlib.Path(workdir) / "checkpoints"
  step = max(int(p.name) for p in root.iterdir() if p.name.isdigit())
  params, _ = checkpoint.load_numpy(root / str(step))
  return step, params


def max_diff(a, b) -> float:
  return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.max(np.abs(x - y))), a, b)))


def two_processes(**overrides):
  return dict(overrides, **{"distributed.local_processes": 2, "distributed.local_devices": 4})


# ----------------------------------------------------------------------------------------------
# Which rows a host feeds.
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(1, 1, 8), (1, 8, 1), (2, 2, 2), (1, 2, 4), (8, 1, 1),
                                   (2, 4, 1), (4, 1, 2)])
@pytest.mark.parametrize("accum", [1, 2])
def test_device_rows_are_jax_sharding(shape, accum):
  from lima_jax.parallel import sharding
  mesh = sharding.make_mesh(shape)
  batch = 16
  global_shape = (accum, batch // accum, 5) if accum > 1 else (batch, 5)
  index_map = sharding.batch_sharding(mesh, accum).devices_indices_map(global_shape)
  rows = sharding.device_rows(mesh.devices, batch, accum)
  m = batch // accum
  for device, index in index_map.items():
    if accum > 1:
      want = (np.arange(accum)[index[0]][:, None] * m + np.arange(m)[index[1]][None, :]).ravel()
    else:
      want = np.arange(batch)[index[0]]
    assert np.array_equal(np.sort(rows[device]), np.sort(want)), (shape, accum, device)


@dataclasses.dataclass(frozen=True)
class MockTpu:
  """What jax's mesh_utils reads from a TPU device: kind, coordinates and host."""
  id: int
  coords: tuple
  process_index: int
  device_kind: str
  platform: str = "tpu"
  core_on_chip: int = 0
  slice_index: int = 0


def mock_slice(name):
  from lima_jax.parallel import tpu_specs
  s = tpu_specs.parse_slice(name)
  grid = s.grid + (1,) * (3 - len(s.grid))
  bounds = s.host_bounds
  hosts_along = [g // min(g, b) for g, b in zip(grid, bounds)]
  kind = {"v4": "TPU v4", "v5p": "TPU v5p", "v5e": "TPU v5 lite", "v6e": "TPU v6 lite"}[s.chip.name]
  devices = []
  for i, (z, y, x) in enumerate(np.ndindex(grid[2], grid[1], grid[0])):
    h = [x // bounds[0], y // bounds[1], z // bounds[2]]
    host = h[0] + hosts_along[0] * (h[1] + hosts_along[1] * h[2])
    coords = (x, y, z) if len(s.grid) == 3 else (x, y, 0)
    devices.append(MockTpu(i, coords, host, kind))
  return s, devices


# Every mesh docs/tpu.md, configs/lima.py and the planner recommend (and the one
# the issue found broken: v4-256 (1,32,4), whose 4-way 'tensor' lies along the 4-chip x axis
# while a v4 host holds 2x2x1 chips).
RECOMMENDED = [("v4-64", (1, 32, 1), 32, False), ("v4-128", (1, 32, 2), 32, False),
               ("v4-256", (1, 32, 4), 32, True), ("v4-256", (1, 32, 4), 64, True), ("v4-8", (1, 4, 1), 64, False),
               ("v4-16", (1, 8, 1), 64, False), ("v5p-64", (1, 32, 1), 32, False),
               ("v5p-128", (1, 32, 2), 32, False), ("v5litepod-16", (1, 16, 1), 64, False)]


@pytest.mark.parametrize("name, shape, batch, crosses", RECOMMENDED)
def test_mock_tpu_hosts_feed_what_their_chips_hold(name, shape, batch, crosses):
  slice_, devices = mock_slice(name)
  assert len({d.process_index for d in devices}) == slice_.hosts
  for accum in (1, 2):
    if batch // accum % (shape[0] * shape[1]) == 0:
      _check_hosts(slice_, devices, shape, batch, accum, crosses)


def _check_hosts(slice_, devices, shape, batch, accum, crosses):
  from lima_jax.parallel import sharding
  grid = sharding.device_grid(shape, devices)
  assert sharding.tensor_groups_cross_hosts(grid) == crosses
  per_device = sharding.device_rows(grid, batch, accum)
  fed = {p: set(sharding.process_rows(grid, batch, accum, p).tolist())
         for p in range(slice_.hosts)}
  for device, rows in per_device.items():
    assert set(rows.tolist()) <= fed[device.process_index]  # a host can serve each chip
  for p, rows in fed.items():  # and feeds nothing its chips do not hold
    assert rows == set(np.concatenate([r for d, r in per_device.items()
                                       if d.process_index == p]).tolist())
  assert set().union(*fed.values()) == set(range(batch))
  # Hosts that share a tensor group feed the same rows; the old contiguous split
  # (host p: rows [p*b, (p+1)*b)) gave them different rows whenever a group crossed hosts.
  contiguous = {p: set(range(p * batch // slice_.hosts, (p + 1) * batch // slice_.hosts))
                for p in fed}
  assert (fed != contiguous) or not crosses
  # The mesh chosen without mesh.shape keeps every tensor group inside a host.
  auto = sharding.auto_mesh_shape(len(devices), len(devices) // slice_.hosts, batch // accum)
  auto_grid = sharding.device_grid(auto, devices)
  if sharding.tensor_groups_cross_hosts(auto_grid):
    auto_grid = sharding.host_major_grid(auto, devices)
  assert not sharding.tensor_groups_cross_hosts(auto_grid)


@pytest.mark.parametrize("chips, per_host, micro, want", [
    (8, 8, 8, (1, 8, 1)), (8, 4, 4, (1, 4, 2)), (128, 4, 32, (1, 32, 4)), (64, 4, 32, (1, 32, 2)),
    (16, 4, 64, (1, 16, 1)), (4, 4, 6, (1, 2, 2))])
def test_auto_mesh_shape(chips, per_host, micro, want):
  from lima_jax.parallel import sharding
  assert sharding.auto_mesh_shape(chips, per_host, micro) == want


def test_auto_mesh_refuses_tensor_across_hosts():
  from lima_jax.parallel import sharding
  from lima_jax.errors import UserError
  with pytest.raises(UserError, match=r"mesh.shape=\(\).*micro-batch of 16.*inside a host of 4"):
    sharding.auto_mesh_shape(256, 4, 16)


# ----------------------------------------------------------------------------------------------
# One process against two: the same run.
# ----------------------------------------------------------------------------------------------

EQUIV = {"train.epochs": 2, "train.batch_size": 16, "train.grad_accum_steps": 2,
         "model.dropout_top": 0.1, "data.pack": True, "data.eval_fraction": 0.1,
         # LIMA's rates: Adam's update is ~lr*sign(g), so for a gradient entry near zero a
         # different reduction order moves a parameter by up to 2*lr.
         "train.learning_rate": 1e-5, "train.end_learning_rate": 1e-6}


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(1, 1, 8), (1, 8, 1), (2, 2, 2), (1, 2, 4)])
def test_two_processes_train_exactly_what_one_does(tmp_path, shape):
  from lima_jax.train import loop as train
  one = train.train_and_evaluate(tiny_config(**EQUIV, **{"mesh.shape": shape}),
                                 str(tmp_path / "one"))
  train.train_and_evaluate(tiny_config(**two_processes(**EQUIV, **{"mesh.shape": shape})),
                           str(tmp_path / "two"))
  a, b = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two")
  assert [r["step"] for r in a] == [r["step"] for r in b] and len(a) >= 4
  assert [r["examples"] for r in a] == [r["examples"] for r in b]
  assert a[0]["examples"] > 16  # packed rows: several conversations each
  np.testing.assert_allclose([r["loss"] for r in a], [r["loss"] for r in b], rtol=2e-6)
  np.testing.assert_allclose(a[-1]["eval_loss"], b[-1]["eval_loss"], rtol=2e-6)
  assert one["eval_loss"] == pytest.approx(b[-1]["eval_loss"], rel=2e-6)
  (sa, pa), (sb, pb) = final_params(tmp_path / "one"), final_params(tmp_path / "two")
  assert sa == sb
  assert max_diff(pa, pb) <= 1e-6


@pytest.mark.slow
def test_gradient_accumulation_is_exact(tmp_path):
  from lima_jax.train import loop as train
  runs = {}
  for accum in (1, 2, 4):
    overrides = {"train.epochs": 1, "train.batch_size": 16, "train.grad_accum_steps": accum,
                 "mesh.shape": (2, 2, 2), "data.pack": True, "train.learning_rate": 1e-4}
    train.train_and_evaluate(tiny_config(**overrides), str(tmp_path / str(accum)))
    runs[accum] = (read_metrics(tmp_path / str(accum)), final_params(tmp_path / str(accum))[1])
  for accum in (2, 4):
    np.testing.assert_allclose([r["loss"] for r in runs[accum][0]],
                               [r["loss"] for r in runs[1][0]], rtol=1e-5)
    assert [r["examples"] for r in runs[accum][0]] == [r["examples"] for r in runs[1][0]]
    assert max_diff(runs[accum][1], runs[1][1]) <= 1e-5


# ----------------------------------------------------------------------------------------------
# The command line: preemption, recipe changes, hosts that disagree.
# ----------------------------------------------------------------------------------------------

def main_cmd(workdir, *overrides):
  return [sys.executable, "-m", "lima_jax.main", "--config=configs/lima.py:demo",
          f"--workdir={workdir}", "--config.model.size=tiny", "--config.data.max_len=64",
          "--config.data.subset_size=64", "--config.train.batch_size=8",
          "--config.sample_prompts=", "--config.model.dropout_top=0.1",
          "--config.checkpoint.keep_epochs=", "--config.checkpoint.async_save=False",
          *overrides]


def cpu_env(devices=4, **extra):
  return dict(os.environ, JAX_PLATFORMS="cpu",
              XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", **extra)


def run_main(workdir, *overrides, timeout=600):
  return subprocess.run(main_cmd(workdir, *overrides), cwd=REPO, env=cpu_env(),
                        capture_output=True, text=True, timeout=timeout)


def _children(pid):
  path = pathlib.Path(f"/proc/{pid}/task/{pid}/children")
  return [int(c) for c in path.read_text().split()] if path.exists() else []


def _rank(pid):
  env = pathlib.Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
  return next(int(e.split(b"=")[1]) for e in env if e.startswith(b"LIMA_JAX_PROCESS_ID="))


LONG = ["--config.train.epochs=6", "--config.distributed.local_processes=2",
        "--config.distributed.local_devices=4", "--config.mesh.shape=(1,2,4)"]


@pytest.mark.slow
def test_sigterm_to_one_of_two_processes_saves_the_same_step_and_resumes_exactly(tmp_path):
  straight = run_main(tmp_path / "straight", *LONG)
  assert straight.returncode == 0, straight.stderr[-3000:]
  total = read_metrics(tmp_path / "straight")[-1]["step"]

  work = tmp_path / "preempted"
  proc = subprocess.Popen(main_cmd(work, *LONG), cwd=REPO, env=cpu_env(), text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  deadline = time.time() + 300
  while not (work / "checkpoints").exists() or not any(
      p.name.isdigit() for p in (work / "checkpoints").iterdir()):
    assert proc.poll() is None and time.time() < deadline, "no checkpoint appeared"
    time.sleep(0.2)
  victim = next(c for c in _children(proc.pid) if _rank(c) == 1)
  os.kill(victim, signal.SIGTERM)  # only process 1 gets the notice
  sent = time.time()
  out, _ = proc.communicate(timeout=120)
  assert time.time() - sent < 60, out[-3000:]
  assert proc.returncode == 0, out[-3000:]
  # Two processes share the pipe: one's line may run into the other's, so match anywhere.
  saved = {p: int(s) for p, s in re.findall(r"(process \d+): SIGTERM: saved step (\d+)", out)}
  assert set(saved) == {"process 0", "process 1"}, out[-3000:]
  assert len(set(saved.values())) == 1
  step = saved["process 0"]
  assert 0 < step < total
  assert (work / "checkpoints" / str(step)).exists()

  resumed = run_main(work, *LONG)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"resumed from {work / 'checkpoints' / str(step)}" in resumed.stdout
  (sa, pa), (sb, pb) = final_params(tmp_path / "straight"), final_params(work)
  assert sa == sb == total
  assert all(jax.tree.leaves(jax.tree.map(np.array_equal, pa, pb)))
  assert [r["loss"] for r in read_metrics(tmp_path / "straight")] == \
         [r["loss"] for r in read_metrics(work)]


@pytest.mark.slow
def test_preemption_can_save_params_only(tmp_path):
  from lima_jax.formats import checkpoint
  args = ["--config.train.epochs=40", "--config.checkpoint.on_preemption=params",
          "--config.checkpoint.every_steps=3"]
  proc = subprocess.Popen(main_cmd(tmp_path, *args), cwd=REPO, env=cpu_env(), text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  deadline = time.time() + 300
  while not (tmp_path / "checkpoints" / "3").exists():
    assert proc.poll() is None and time.time() < deadline, "no checkpoint appeared"
    time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, out[-3000:]
  line = next(l for l in out.splitlines() if "SIGTERM: saved the params of step" in l)
  step = int(line.split("step ")[1].split()[0])
  params, meta = checkpoint.load_numpy(tmp_path / "preempted" / str(step))
  assert meta["step"] == step and "fingerprint" in meta
  assert not (tmp_path / "preempted" / str(step) / "opt_state").exists()
  periodic = max(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  assert periodic <= step and f"resumes from step {periodic}" in line
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


@pytest.mark.slow
def test_rerun_with_another_recipe_is_refused_and_keeps_every_checkpoint(tmp_path):
  first = run_main(tmp_path, "--config.train.epochs=2")
  assert first.returncode == 0, first.stderr[-3000:]
  before = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
  assert len([b for b in before if b.isdigit()]) == 2
  for override, field in (("--config.train.epochs=1", "train.epochs: 2 -> 1"),
                          ("--config.train.batch_size=4", "train.batch_size: 8 -> 4")):
    out = run_main(tmp_path, "--config.train.epochs=2", override)
    assert out.returncode == 1, out.stderr[-3000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "trained with another recipe" in last
    assert field in last and "allow_recipe_change" in last and "Traceback" not in out.stderr
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == before
  history = (tmp_path / "config_history.jsonl").read_text().splitlines()
  assert len(history) == 1 and json.loads(history[0])["config"]["train"]["epochs"] == 2
  # Allowed explicitly, the rerun goes on and the other recipe's epoch checkpoints stay.
  longer = run_main(tmp_path, "--config.train.epochs=3", "--config.checkpoint.allow_recipe_change=True")
  assert longer.returncode == 0, longer.stderr[-3000:]
  assert "continuing under a changed recipe" in longer.stdout
  after = {p.name for p in (tmp_path / "checkpoints").iterdir()}
  assert set(before) <= after
  assert [json.loads(h)["config"]["train"]["epochs"]
          for h in (tmp_path / "config_history.jsonl").read_text().splitlines()] == [2, 3]


@pytest.mark.slow
def test_hosts_with_different_data_refuse_with_one_line(tmp_path):
  lines = (REPO / "data/demo/train.jsonl").read_text().splitlines()
  stale = tmp_path / "stale.jsonl"
  row = json.loads(lines[0])
  row["conversations"][-1] += " (edited)"
  stale.write_text("\n".join([json.dumps(row)] + lines[1:]) + "\n")
  with socket.socket() as sock:  # a free port for the coordinator
    sock.bind(("localhost", 0))
    port = sock.getsockname()[1]
  procs = []
  for rank, data_file in enumerate([REPO / "data/demo/train.jsonl", stale]):
    env = cpu_env(LIMA_JAX_PROCESS_ID=str(rank), LIMA_JAX_NUM_PROCESSES="2",
                  LIMA_JAX_COORD=f"localhost:{port}")
    procs.append(subprocess.Popen(
        main_cmd(tmp_path / "run", f"--config.data.train_files={data_file}",
                 "--config.data.subset_size=0"),
        cwd=REPO, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
  outs = [p.communicate(timeout=180) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 1, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: hosts disagree on data (process 1 differs from process 0)")
    assert "recipe (process 1 differs" in last and "Traceback" not in err
  assert not (tmp_path / "run" / "checkpoints").exists()


# ----------------------------------------------------------------------------------------------
# Starting weights: a converted checkpoint and a llama2.c file, on one and on two processes.
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stories(tmp_path_factory):
  from lima_jax.formats import checkpoint, llama2c
  from lima_jax import tokenizer
  model = shared_file("llama2c/stories260K/stories260K.bin")
  tok = shared_file("llama2c/stories260K/tok512.bin")
  out = tmp_path_factory.mktemp("stories") / "ckpt"
  cfg, params = llama2c.load_llama2c(model)
  checkpoint.save(out, params, {"model_config": cfg.to_dict(), "step": 0, "epoch": 0,
                                "tokenizer": tokenizer.load(tok).to_meta()})
  return model, tok, out


@pytest.mark.slow
@pytest.mark.parametrize("kind, shape", [("lima", (1, 2, 4)), ("llama2c", (2, 2, 2))])
def test_training_from_model_init_on_two_processes(tmp_path, stories, kind, shape):
  from lima_jax.train import loop as train
  model, tok, ckpt = stories
  init = {"model.size": "", "model.init": str(ckpt if kind == "lima" else model),
          "data.tokenizer": "" if kind == "lima" else str(tok), "train.epochs": 1,
          "mesh.shape": shape, "train.learning_rate": 1e-5, "train.end_learning_rate": 1e-6,
          "model.dropout_top": 0.1}
  train.train_and_evaluate(tiny_config(**init), str(tmp_path / "one"))
  train.train_and_evaluate(tiny_config(**two_processes(**init)), str(tmp_path / "two"))
  a, b = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two")
  np.testing.assert_allclose([r["loss"] for r in a], [r["loss"] for r in b], rtol=2e-6)
  assert a[0]["loss"] < 6.0  # pretrained: far below log(640) = 6.46 of random weights
  (_, pa), (_, pb) = final_params(tmp_path / "one"), final_params(tmp_path / "two")
  assert pa["embed"]["embedding"].shape == (640, 64)  # 512 pieces + EOT + PAD, padded to 128
  # Half the learning rate: Adam moves a parameter whose gradient is ~0 by up to 2*lr when the
  # reduction order (1 vs 2 processes) flips its sign; seen: 1.5e-5 at lr 1e-4.
  assert max_diff(pa, pb) <= 5e-6


def test_init_and_tokenizer_must_belong_together(tmp_path, stories):
  from lima_jax.train import loop as train
  from lima_jax.errors import UserError
  _, _, ckpt = stories
  wrong = {"model.size": "", "model.init": str(ckpt), "train.epochs": 1}  # demo's tokenizer
  with pytest.raises(UserError, match=r"data.tokenizer=.*tokenizer.model is not the tokenizer "
                     r"stored with model.init=.*allow_tokenizer_mismatch=True"):
    train.train_and_evaluate(tiny_config(**wrong), str(tmp_path))
  assert not (tmp_path / "checkpoints").exists()


# ----------------------------------------------------------------------------------------------
# NaN on a step that is not logged.
# ----------------------------------------------------------------------------------------------

def test_nonfinite_loss_between_logged_steps_never_reaches_a_checkpoint(tmp_path):
  from lima_jax.formats import checkpoint
  from lima_jax.train import loop as train
  from lima_jax.errors import UserError
  blowup = {"train.learning_rate": 1e30, "train.end_learning_rate": 1e30, "train.grad_clip": 0.0,
            "train.log_every": 1000, "checkpoint.every_steps": 1, "train.epochs": 1}
  with pytest.raises(UserError, match=r"step (\d+): the loss or gradient is not finite") as e:
    train.train_and_evaluate(tiny_config(**blowup), str(tmp_path))
  bad = int(str(e.value).split()[1].rstrip(":"))
  saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  assert saved == list(range(1, bad)), (saved, bad)
  assert f"last good checkpoint is {tmp_path / 'checkpoints' / str(bad - 1)}" in str(e.value)
  params, _ = checkpoint.load_numpy(tmp_path / "checkpoints" / str(bad - 1))
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))
