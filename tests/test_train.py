"""Training: sharding equivalence, end to end, exact resume, restore on another mesh, processes."""
import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config

REPO = pathlib.Path(__file__).resolve().parents[1]


def read_metrics(workdir):
  return [json.loads(l) for l in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def final_params(workdir):
  from lima_jax.formats import checkpoint
  steps = sorted(int(p.name) for p in (pathlib.Path(workdir) / "checkpoints").iterdir()
                 if p.name.isdigit())
  params, meta = checkpoint.load_numpy(pathlib.Path(workdir) / "checkpoints" / str(steps[-1]))
  return steps[-1], params, meta


def _one_step(mesh_shape):
  from lima_jax.parallel import sharding
  from lima_jax.train import step as step_lib
  from lima_jax.model.config import get_size
  from lima_jax.train.step import TrainState
  config = tiny_config()
  devices = jax.devices()[:int(np.prod(mesh_shape))]
  mesh = sharding.make_mesh(mesh_shape, devices)
  cfg = get_size("tiny", vocab_size=256, max_seq_len=64)
  rng = np.random.default_rng(0)
  tokens = rng.integers(3, 256, size=(8, 33), dtype=np.int32)
  batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
           "loss_mask": rng.random((8, 32)) < 0.6,
           "segment_ids": np.ones((8, 32), np.int32),
           "positions": np.tile(np.arange(32, dtype=np.int32), (8, 1))}
  with jax.set_mesh(mesh):
    config.unlock()
    config.data.max_len = 32
    # LIMA's own rate. Adam's first update is ~lr*sign(g), so a gradient entry near zero turns
    # reduction-order noise into a difference of up to 2*lr: the demo's 3e-3 would swamp 1e-5.
    config.train.learning_rate = 1e-5
    built = step_lib.build_train_step(config, mesh, cfg, total_steps=10)
    init = lambda r: jax.tree.map(lambda x: x, built.model.init(r, jnp.zeros((1, 8), jnp.int32)))
    import flax.linen as nn
    params = jax.jit(lambda r: nn.meta.unbox(init(r))["params"],
                     out_shardings=built.state_shardings.params)(jax.random.key(0))
    opt = jax.jit(built.tx.init, out_shardings=built.state_shardings.opt_state)(params)
    state = TrainState(jnp.int32(0), params, opt)
    state, metrics = built.train_step(state, sharding.put_batch(batch, mesh), jax.random.key(1))
    return float(metrics["loss"]), float(metrics["grad_norm"]), jax.tree.map(np.asarray,
                                                                              state.params)


def test_one_step_is_the_same_on_every_mesh():
  loss0, gnorm0, params0 = _one_step((1, 1, 1))
  for shape in [(8, 1, 1), (2, 4, 1), (2, 2, 2), (1, 8, 1)]:
    loss, gnorm, params = _one_step(shape)
    assert abs(loss - loss0) <= 1e-5, shape
    assert abs(gnorm - gnorm0) <= 1e-5 * gnorm0, shape
    diffs = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), params, params0)
    assert max(jax.tree.leaves(diffs)) <= 1e-5, (shape, diffs)


def test_end_to_end_writes_checkpoints_and_loss_falls(tmp_path):
  from lima_jax.train import loop as train
  config = tiny_config(**{"train.epochs": 3})
  last = train.train_and_evaluate(config, str(tmp_path))
  rows = read_metrics(tmp_path)
  for key in ("step", "epoch", "loss", "learning_rate", "grad_norm", "param_norm",
              "tokens_per_s", "examples_per_s"):
    assert key in rows[0], key
  assert [r["step"] for r in rows] == list(range(1, len(rows) + 1))
  first, final = np.mean([r["loss"] for r in rows[:3]]), np.mean([r["loss"] for r in rows[-3:]])
  assert final < first - 0.5, (first, final)
  assert "eval_loss" in last and np.isfinite(last["eval_loss"])
  ckpts = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  assert len(ckpts) == 3 and ckpts[-1] == rows[-1]["step"]
  metas = [json.loads((tmp_path / "checkpoints" / str(s) / "meta" / "metadata").read_text())
           for s in ckpts]
  assert [m["epoch"] for m in metas] == [1, 2, 3]
  assert json.loads((tmp_path / "config.json").read_text())["train"]["epochs"] == 3
  # LIMA's schedule: lr at step 0 exactly, end lr at the last step.
  assert rows[0]["learning_rate"] == pytest.approx(config.train.learning_rate)
  assert rows[-1]["learning_rate"] == pytest.approx(config.train.end_learning_rate)


def _run_main(workdir, *overrides, check=True):
  cmd = [sys.executable, "-m", "lima_jax.main", "--config=configs/lima.py:demo",
         f"--workdir={workdir}", "--config.model.size=tiny", "--config.data.max_len=64",
         "--config.data.subset_size=64", "--config.train.batch_size=8",
         "--config.train.epochs=2", "--config.sample_prompts=", "--config.model.dropout_top=0.1",
         "--config.checkpoint.keep_epochs=", *overrides]
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu",
         "PATH": "/usr/bin:/bin", "HOME": str(workdir)}
  import os
  env = dict(os.environ, **env)
  out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  if check:
    assert out.returncode == 0, out.stderr[-3000:]
  return out


def test_exact_resume_after_kill_is_bit_identical(tmp_path):
  # Dropout on, so the per-step keys must line up too.
  _run_main(tmp_path / "straight")
  steps_per_epoch = read_metrics(tmp_path / "straight")[-1]["step"] // 2
  killed = _run_main(tmp_path / "resumed", f"--config.debug.crash_after_step={steps_per_epoch}",
                     check=False)
  assert killed.returncode == 3, killed.stderr[-2000:]
  assert not (tmp_path / "resumed" / "checkpoints" / str(2 * steps_per_epoch)).exists()
  resumed = _run_main(tmp_path / "resumed")
  assert "resumed from" in resumed.stdout
  step_a, params_a, _ = final_params(tmp_path / "straight")
  step_b, params_b, _ = final_params(tmp_path / "resumed")
  assert step_a == step_b
  same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), params_a, params_b)
  assert all(jax.tree.leaves(same)), same
  assert [r["loss"] for r in read_metrics(tmp_path / "straight")] == \
         [r["loss"] for r in read_metrics(tmp_path / "resumed")]


def test_checkpoint_restores_on_another_mesh(tmp_path):
  from lima_jax.train import loop as train
  train.train_and_evaluate(tiny_config(**{"train.epochs": 1, "mesh.shape": (1, 8, 1)}),
                           str(tmp_path))
  step, params, _ = final_params(tmp_path)
  # Continue the run for a second epoch on a (2, 2, 2) mesh: it must restore first (a longer
  # run is another recipe, so it must be allowed explicitly).
  last = train.train_and_evaluate(
      tiny_config(**{"train.epochs": 2, "mesh.shape": (2, 2, 2),
                     "checkpoint.allow_recipe_change": True}), str(tmp_path))
  assert last["step"] == 2 * step
  from lima_jax.formats import checkpoint
  from lima_jax.parallel import sharding
  from lima_jax.model import transformer as model_lib
  from lima_jax.model.config import ModelConfig
  mesh = sharding.make_mesh((2, 2, 2))
  meta = checkpoint.read_meta(tmp_path / "checkpoints" / str(step))
  cfg = ModelConfig.from_dict(meta["model_config"])
  restored, _ = checkpoint.load(tmp_path / "checkpoints" / str(step),
                                sharding.logical_shardings(model_lib.abstract_params(cfg), mesh))
  q = restored["layers"]["attn"]["q"]
  assert q.sharding.mesh.shape == mesh.shape
  same = jax.tree.map(lambda a, b: bool(np.array_equal(np.asarray(a), b)), restored, params)
  assert all(jax.tree.leaves(same))


@pytest.mark.parametrize("override, message", [
    ("--config.mesh.shape=(3,-1,1)", "mesh.shape"),
    ("--config.train.batch_size=6 --config.mesh.shape=(1,-1,1)", "batch shards"),
    ("--config.train.grad_accum_steps=3", "train.grad_accum_steps=3"),
    ("--config.checkpoint.on_preemption=later", "checkpoint.on_preemption='later'"),
    ("--config.model.init=/nonexistent/ckpt", "model.init"),
    ("--config.data.train_files=/nonexistent.jsonl", "nonexistent.jsonl"),
    ("--config.model.attention_impl=cudnn", "attention_impl='cudnn' needs NVIDIA GPUs"),
    ("--config.train.loss_chunk=-1", "train.loss_chunk=-1"),
])
def test_bad_config_gives_one_clear_line(tmp_path, override, message):
  out = _run_main(tmp_path, *override.split(), check=False)
  assert out.returncode != 0
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith("error:") and message in last, out.stderr[-2000:]
  assert "Traceback" not in out.stderr


def test_misspelled_override_fails_at_startup(tmp_path):
  out = _run_main(tmp_path, "--config.train.epochz=3", check=False)
  assert out.returncode == 1
  assert out.stderr.strip().splitlines()[-1].startswith("error: unknown config field epochz")
  assert "Traceback" not in out.stderr
  assert not (tmp_path / "checkpoints").exists()


def test_max_len_past_the_base_models_context_warns_with_both_numbers():
  import warnings
  from lima_jax.train import base_model
  from lima_jax.model.config import get_size
  from lima_jax.tokenizer import load as load_tokenizer
  tok = load_tokenizer(REPO / "data/demo/tokenizer.model")
  init = get_size("tiny", vocab_size=640)  # a context of 128 tokens
  longer = tiny_config(**{"model.size": "", "data.max_len": 256})
  with pytest.warns(UserWarning, match=r"data.max_len=256 is longer than model.init's context "
                    r"of 128 tokens: positions past 128 extend RoPE"):
    assert base_model.model_config(longer, init, tok).max_seq_len == 256
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # within the context: nothing to say
    base_model.model_config(tiny_config(**{"model.size": ""}), init, tok)
    base_model.model_config(tiny_config(**{"data.max_len": 256}), None, tok)  # random init


def test_warmup_then_cosine_schedule_follows_its_closed_form():
  import math
  from lima_jax.train import step as step_lib
  c = tiny_config(**{"train.schedule": "cosine", "train.warmup_steps": 4,
                     "train.learning_rate": 1e-3, "train.end_learning_rate": 1e-4})
  schedule = step_lib.make_schedule(c.train, total_steps=20)
  decay = 20 - 1 - 4  # LIMA's convention: the end lr is reached at the last step (19)
  for step in range(20):
    if step < 4:
      want = 1e-3 * step / 4
    else:
      j = step - 4
      want = 1e-4 + (1e-3 - 1e-4) * 0.5 * (1 + math.cos(math.pi * j / decay))
    assert float(schedule(step)) == pytest.approx(want, rel=1e-5, abs=1e-9), step
  assert float(schedule(19)) == pytest.approx(1e-4)


def test_epoch_examples_sets_the_steps_and_is_part_of_the_recipe():
  # tiny_config trains on 96 demo conversations (subset_size) at batch 8; unpacked here, so
  # an epoch of M examples is ceil(M / 8) steps, and the schedule's total is their sum.
  from lima_jax.errors import UserError
  from lima_jax.tokenizer import load as load_tokenizer
  from lima_jax.train import base_model, fingerprint as fp, loop as train
  tok = load_tokenizer(REPO / "data/demo/tokenizer.model")
  config = lambda m: tiny_config(**{"data.pack": False, "data.epoch_examples": m})
  off, _, _ = train.load_data(config(0), tok)
  on, evals, report = train.load_data(config(20), tok)
  assert off.steps_in_epoch(0) == 12 and off.total_steps(16) == 16 * 12
  assert on.num_examples == 96 and report["train"]["epoch_examples"] == 20
  assert [on.steps_in_epoch(e) for e in range(16)] == [3] * 16 and on.total_steps(16) == 48
  assert evals.num_examples == train.load_data(config(0), tok)[1].num_examples
  recipe = lambda c: fp.fingerprint(c, base_model.model_config(c, None, tok), tok)
  assert "data.epoch_examples" not in recipe(config(0))  # earlier runs' fingerprints stay
  with pytest.raises(UserError, match=r"data.epoch_examples: null -> 20"):
    fp.check_resume({"fingerprint": recipe(config(0))}, recipe(config(20)), False, "CKPT")
  with pytest.raises(UserError, match=r"^data.epoch_examples=-3: must be 0"):
    train.load_data(config(-3), tok)


def test_keep_epochs_and_every_steps_prune_to_the_kept_epochs_and_the_newest(tmp_path):
  from lima_jax.train import loop as train
  train.train_and_evaluate(tiny_config(**{"train.epochs": 3, "checkpoint.keep_epochs": "2",
                                          "checkpoint.every_steps": 3}), str(tmp_path))
  rows = read_metrics(tmp_path)
  per_epoch = rows[-1]["step"] // 3
  assert per_epoch > 3  # so every_steps=3 saved mid-epoch checkpoints that had to go
  kept = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  assert kept == [2 * per_epoch, 3 * per_epoch]  # epoch 2's end, and the newest (for resume)
  assert [r["step"] for r in rows] == list(range(1, 3 * per_epoch + 1))


def test_metrics_on_resume_drop_the_rows_past_the_restored_step(tmp_path):
  from etils import epath
  from lima_jax.train import metrics_log
  (tmp_path / "metrics.jsonl").write_text("".join(
      json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 11)))
  log = metrics_log.MetricsLog(epath.Path(tmp_path), resume_step=6)
  assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4, 5, 6]  # at once
  log.add({"step": 7, "loss": 0.5})
  log.close()
  assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4, 5, 6, 7]


def test_a_preemption_notice_at_a_step_just_saved_does_not_save_it_twice(tmp_path):
  """The notice met an epoch end (seen on CI: orbax's StepAlreadyExistsError on both hosts):
  the step's checkpoint exists already, so the preemption save only waits for it."""
  import types
  from etils import epath
  from lima_jax.train import saving

  class Manager:
    def __init__(self):
      self.saved = []
    def prune(self, keep, deletable=None):
      pass
    def save(self, step, params, opt_state, meta):
      if step in self.saved:
        raise AssertionError(f"step {step} saved twice")
      self.saved.append(step)
    def wait(self):
      pass
    def step_dir(self, step):
      return tmp_path / str(step)
    def latest_step(self):
      return self.saved[-1] if self.saved else None

  manager = Manager()
  ckpts = saving.Checkpoints(tiny_config(), manager, [4, 8], {}, epath.Path(tmp_path))
  state = types.SimpleNamespace(params={}, opt_state={})
  ckpts.save(state, {"step": 8})
  assert ckpts.save_preempted(state, {"step": 8}).startswith("saved step 8")
  ckpts.save_preempted(state, {"step": 9})  # a step not saved yet is saved
  assert manager.saved == [8, 9]
