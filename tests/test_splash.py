"""Splash attention (Pallas, interpreted on CPU) against the blocked XLA attention, through the
whole model: logits, every parameter's gradient and one training step, on packed rows (three
segments of uneven length, then padding), grouped-query heads (6 on 2), a length that is not a
multiple of the kernel's 128-token block, float32 and bfloat16, on one device and on the
8-device mesh with 'tensor'=2. Also which attention 'auto' picks, and bad settings."""
import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from lima_jax.errors import UserError
from lima_jax.model import splash
from lima_jax.model import transformer as M
from lima_jax.model.config import ModelConfig, get_size
from lima_jax.parallel import sharding
from lima_jax.train import step as step_lib

# 6 query heads on 2 KV heads; T = 160 is padded to 256 (two 128-token blocks).
CFG = get_size("tiny", dim=96, n_heads=6, n_kv_heads=2, head_dim=16, n_layers=2,
               hidden_dim=128, max_seq_len=256, remat_policy="elementwise")
B, T = 4, 160
# Segment lengths per row (the rest is padding, segment id 0).
ROWS = ((50, 70, 30), (20, 90, 41), (7, 100, 33), (60, 61, 39))
# Largest |splash - xla| allowed, relative to the largest |xla| of the same tensor. float32:
# the two differ only in summation order; bfloat16: also in where they round to bfloat16
# (splash scales the queries before its matmul, xla the scores after). Measured: float32 at most
# 7e-7; bfloat16 at most 2.1e-2, where either one in bfloat16 is up to 3.3e-2 off float32.
RTOL = {"float32": 5e-6, "bfloat16": 3e-2}


def _batch():
  rng = np.random.default_rng(0)
  seg, pos = np.zeros((B, T), np.int32), np.zeros((B, T), np.int32)
  for b, lens in enumerate(ROWS):
    start = 0
    for i, n in enumerate(lens):
      seg[b, start:start + n], pos[b, start:start + n] = i + 1, np.arange(n)
      start += n
  tokens = rng.integers(1, CFG.vocab_size, (B, T + 1)).astype(np.int32)
  return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "segment_ids": seg,
          "positions": pos, "loss_mask": seg > 0}


@functools.cache
def _params():
  boxed = jax.eval_shape(lambda: M.Transformer(CFG).init(
      jax.random.key(0), jnp.zeros((1, 8), jnp.int32)))["params"]
  rng = np.random.default_rng(1)
  return jax.tree.map(lambda s: jnp.asarray(rng.normal(0, 0.2, s.shape), jnp.float32),
                      nn.meta.unbox(boxed))


def _cfg(impl, dtype):
  return dataclasses.replace(CFG, attention_impl=impl, dtype=dtype)


def _logits_and_grads(impl, dtype, mesh=None):
  model = M.Transformer(_cfg(impl, dtype))
  batch = {k: jnp.asarray(v) for k, v in _batch().items()}

  def loss(p, b):
    nll, count = step_lib.loss_sums(model, p, b, None, True)
    return nll / count

  def run(p, b):
    with nn.logical_axis_rules(sharding.RULES):
      logits = model.apply({"params": p}, b["inputs"], positions=b["positions"],
                           segment_ids=b["segment_ids"])
    return logits, jax.grad(loss)(p, b)

  if mesh is None:
    return jax.jit(run)(_params(), batch)
  shardings = sharding.logical_shardings(M.abstract_params(CFG), mesh)
  with jax.set_mesh(mesh):
    p = jax.device_put(_params(), shardings)
    b = jax.device_put(batch, sharding.batch_sharding(mesh))
    return jax.jit(run)(p, b)


def _assert_close(got, want, rtol, what):
  got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
  scale = float(np.max(np.abs(want)))
  assert scale > 0, what
  err = float(np.max(np.abs(got - want)))
  assert err <= rtol * scale, f"{what}: max |splash - xla| {err:.3g} > {rtol} x {scale:.3g}"


def _compare(dtype, mesh=None):
  real = _batch()["segment_ids"] > 0  # padding logits are garbage in both; not compared
  xla_logits, xla_grads = _logits_and_grads("xla", dtype, mesh)
  sp_logits, sp_grads = _logits_and_grads("splash", dtype, mesh)
  _assert_close(np.asarray(sp_logits)[real], np.asarray(xla_logits)[real], RTOL[dtype], "logits")
  flat_xla = dict(jax.tree_util.tree_leaves_with_path(xla_grads))
  for path, g in jax.tree_util.tree_leaves_with_path(sp_grads):
    _assert_close(g, flat_xla[path], RTOL[dtype], jax.tree_util.keystr(path))
  assert len(flat_xla) == len(jax.tree.leaves(sp_grads)) == 12  # every parameter compared


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_splash_matches_xla_logits_and_every_gradient_on_one_device(dtype):
  _compare(dtype)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_splash_matches_xla_on_the_mesh_with_heads_over_tensor(dtype):
  _compare(dtype, sharding.make_mesh((1, 4, 2)))


def test_kv_heads_that_do_not_split_over_tensor_are_repeated_per_query_head():
  """8 query heads on 2 KV heads over tensor=4: each device gets 2 query heads and copies of
  their KV head; the logits still match the XLA path."""
  cfg = dataclasses.replace(CFG, n_heads=8, head_dim=12)
  boxed = M.abstract_params(cfg)
  rng = np.random.default_rng(2)
  params = jax.tree.map(lambda s: jnp.asarray(rng.normal(0, 0.2, s.shape), jnp.float32),
                        nn.meta.unbox(boxed))
  mesh = sharding.make_mesh((1, 2, 4))
  b = _batch()
  p = jax.device_put(params, sharding.logical_shardings(boxed, mesh))
  x = jax.device_put({k: jnp.asarray(v) for k, v in b.items()}, sharding.batch_sharding(mesh))
  out = {}
  for impl in ("xla", "splash"):
    model = M.Transformer(dataclasses.replace(cfg, attention_impl=impl))
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
      out[impl] = jax.jit(lambda p, x: model.apply(
          {"params": p}, x["inputs"], positions=x["positions"], segment_ids=x["segment_ids"]))(
              p, x)
  real = b["segment_ids"] > 0
  _assert_close(np.asarray(out["splash"])[real], np.asarray(out["xla"])[real], RTOL["float32"],
                "logits")


def test_on_the_mesh_the_kernel_runs_per_shard_with_its_share_of_heads():
  """shard_map hands each device its batch rows and 3 of the 6 query heads (1 of 2 KV heads)."""
  mesh = sharding.make_mesh((1, 4, 2))
  seen = []
  real = splash._kernel

  def spy(heads, length, block, interpret):
    seen.append((heads, length, block, interpret))
    return real(heads, length, block, interpret)

  model = M.Transformer(_cfg("splash", "float32"))
  boxed = M.abstract_params(CFG)
  params = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        nn.meta.unbox(boxed), sharding.logical_shardings(boxed, mesh))
  tokens = jax.ShapeDtypeStruct((B, T), jnp.int32, sharding=sharding.batch_sharding(mesh))
  with pytest.MonkeyPatch.context() as mp, jax.set_mesh(mesh), \
      nn.logical_axis_rules(sharding.RULES):
    mp.setattr(splash, "_kernel", spy)
    jax.jit(lambda p, t: model.apply({"params": p}, t, segment_ids=t)).lower(params, tokens)
  assert seen and set(seen) == {(3, 256, 256, True)}  # traced more than once by nn.scan


def test_one_training_step_on_the_mesh_agrees():
  """The real train step (AdamW, the elementwise remat policy) with splash and with XLA: the
  same loss and gradient norm, and the same updated parameters."""
  mesh = sharding.make_mesh((1, 4, 2))
  config = tiny_config(**{"train.batch_size": B, "data.max_len": T})
  out = {}
  for impl in ("xla", "splash"):
    with jax.set_mesh(mesh):
      built = step_lib.build_train_step(config, mesh, _cfg(impl, "float32"), total_steps=10)
      # From host copies: the step donates its state, and _params() is shared between tests.
      params = jax.device_put(jax.tree.map(np.asarray, _params()), built.state_shardings.params)
      state = step_lib.TrainState(jnp.zeros((), jnp.int32), params, built.tx.init(params))
      state = jax.device_put(state, built.state_shardings)
      batch = jax.device_put({k: jnp.asarray(v) for k, v in _batch().items()},
                             sharding.batch_sharding(mesh))
      out[impl] = built.train_step(state, batch, jax.random.key(0))
  (xs, xm), (ss, sm) = out["xla"], out["splash"]
  assert float(sm["loss"]) == pytest.approx(float(xm["loss"]), rel=1e-6)
  assert float(sm["grad_norm"]) == pytest.approx(float(xm["grad_norm"]), rel=1e-5)
  # Adam's first step moves a weight by about lr * g / (|g| + eps): by the learning rate where
  # |g| >> eps, so the updates must agree to a small fraction of it; where |g| is near eps
  # the step amplifies the gradients' float32 differences, hence the looser bound on the max.
  lr = config.train.learning_rate
  start = _params()
  for path, new in jax.tree_util.tree_leaves_with_path(ss.params):
    old, ref = (dict(jax.tree_util.tree_leaves_with_path(t))[path] for t in (start, xs.params))
    moved, want = np.asarray(new) - np.asarray(old), np.asarray(ref) - np.asarray(old)
    what = jax.tree_util.keystr(path)
    assert np.linalg.norm(moved - want) <= 1e-3 * np.linalg.norm(want), what
    assert np.max(np.abs(moved - want)) <= 0.05 * lr, what


def test_auto_picks_splash_on_tpu_cudnn_on_gpu_in_bfloat16_and_xla_elsewhere():
  assert splash.resolve_impl("auto", "float32", "tpu") == "splash"
  assert splash.resolve_impl("auto", "bfloat16", "gpu") == "cudnn"
  assert splash.resolve_impl("auto", "float32", "gpu") == "xla"
  assert splash.resolve_impl("auto", "bfloat16", "cpu") == "xla"
  assert splash.resolve_impl("splash", "float32", "cpu") == "splash"
  assert splash.describe("auto", "float32", "cpu").startswith("attention: xla (")
  assert "interpreted" in splash.describe("splash", "float32", "cpu")
  assert "interpreted" not in splash.describe("auto", "bfloat16", "tpu")


@pytest.mark.parametrize("impl, dtype, platform, message", [
    ("splash", "bfloat16", "gpu", "model.attention_impl='splash' is a TPU kernel"),
    ("cudnn", "float32", "gpu", "model.attention_impl='cudnn' needs NVIDIA GPUs"),
    ("cudnn", "bfloat16", "tpu", "model.attention_impl='cudnn' needs NVIDIA GPUs"),
    ("flash", "bfloat16", "tpu", "model.attention_impl='flash' is not one of"),
])
def test_an_attention_that_cannot_run_is_one_line(impl, dtype, platform, message):
  with pytest.raises(UserError, match=message):
    splash.check_impl(impl, dtype, platform)


def test_block_sizes_per_generation_override_and_short_sequences():
  assert splash.block_size(2048, 0, "TPU v4") == 512
  assert splash.block_size(2048, 0, "TPU v6 lite") == 1024
  assert splash.block_size(2048, 256, "TPU v6 lite") == 256
  assert splash.block_size(160, 0, "TPU v5 lite") == 256  # never past T rounded up to 128
  with pytest.raises(UserError, match="splash_block=100 is not a multiple of 128"):
    get_size("tiny", splash_block=100)


def test_configs_written_before_splash_still_load():
  """A checkpoint's model_config from before 'auto' and splash_block: same model, its
  attention_impl kept."""
  old = get_size("tiny", attention_impl="xla").to_dict()
  del old["splash_block"]
  cfg = ModelConfig.from_dict(old)
  assert cfg.attention_impl == "xla" and cfg.splash_block == 0
  assert ModelConfig().attention_impl == "auto"


def test_the_runs_first_line_says_which_attention(tmp_path):
  """Printed before anything is read: here the data file is missing, so the run stops next."""
  import pathlib
  import subprocess
  import sys
  repo = pathlib.Path(__file__).resolve().parents[1]
  proc = subprocess.run(
      [sys.executable, "-m", "lima_jax.main", "--config=configs/lima.py:demo",
       f"--workdir={tmp_path}", "--config.model.size=tiny",
       f"--config.data.train_files={tmp_path}/missing.jsonl"],
      cwd=repo, capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0 and "missing.jsonl" in proc.stderr.strip().splitlines()[-1]
  assert proc.stdout.splitlines()[0] == (
      "attention: xla (blocked XLA attention; model.attention_impl='auto' on cpu)")
