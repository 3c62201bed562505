"""The ahead-of-time planner: slice names, and (with libtpu) real compiles for TPU slices."""
import importlib.util
import json
import pathlib
import subprocess
import sys

import pytest

from lima_jax.parallel import tpu_specs
from lima_jax.errors import UserError
from lima_jax.model.config import get_size

REPO = pathlib.Path(__file__).resolve().parents[1]
HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None
needs_libtpu = pytest.mark.skipif(
    not HAS_LIBTPU, reason="libtpu not installed (pip install -r requirements-tpu.txt); "
    "the planner compiles with libtpu's compiler")
TINY = ["--config=configs/lima.py:demo", "--config.model.size=tiny",
        "--config.data.max_len=64", "--config.train.batch_size=8", "--mesh=1,-1,1"]


def plan_cli(*args):
  return subprocess.run([sys.executable, "-m", "lima_jax.plan", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=600)


# Grids and host counts from Cloud's tables (cloud.google.com/tpu/docs/v4, /v5p, /v5e, /v6e).
@pytest.mark.parametrize("name, topology, chips, hosts", [
    ("v4-8", "v4:2x2x1", 4, 1),
    ("v4-32", "v4:2x2x4", 16, 4),
    ("v4-256", "v4:4x4x8", 128, 32),
    ("v4-1024", "v4:8x8x8", 512, 128),
    ("v5p-128", "v5:4x4x4", 64, 16),
    ("v5p-12288", "v5:16x16x24", 6144, 1536),
    ("v5litepod-8", "v5e:2x4", 8, 1),
    ("v5litepod-16", "v5e:4x4", 16, 4),
    ("v6e-256", "v6e:16x16", 256, 64),
    ("v4:4x4x8", "v4:4x4x8", 128, 32),
])
def test_slice_names(name, topology, chips, hosts):
  s = tpu_specs.parse_slice(name)
  assert (s.topology, s.chips, s.hosts) == (topology, chips, hosts)
  assert tpu_specs.parse_slice(s.accelerator_type).topology == topology


@pytest.mark.parametrize("name", ["v3-8", "v4-6", "v4-100", "v5e-12", "v4:4x4", "v4"])
def test_bad_slice_names_say_what_is_accepted(name):
  with pytest.raises(UserError, match="--topology"):
    tpu_specs.parse_slice(name)


@pytest.mark.skipif(HAS_LIBTPU, reason="libtpu is installed here")
def test_without_libtpu_one_line_says_how_to_install():
  proc = plan_cli(*TINY, "--topology=v4-8")
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines() == [
      "error: libtpu is not installed; the planner needs its compiler (not a TPU): "
      "pip install -r requirements-tpu.txt"]


@pytest.fixture(scope="module")
def tiny_plan(tmp_path_factory):
  out = tmp_path_factory.mktemp("plan") / "plan.json"
  proc = plan_cli(*TINY, "--topology=v4:2x2x1", f"--out={out}")
  assert proc.returncode == 0, proc.stderr
  return proc.stdout, json.loads(out.read_text())


@needs_libtpu
def test_tiny_plan_bytes_per_chip(tiny_plan):
  _, p = tiny_plan
  assert (p["chips"], p["mesh"]) == (4, {"data": 1, "fsdp": 4, "tensor": 1})
  m = get_size("tiny")
  D, L, F = m.dim, m.n_layers, m.hidden_dim
  V = -(-(m.vocab_size + 1) // 128) * 128  # EOT added, rows padded to model.vocab_multiple.
  per_layer = D * m.n_heads * m.head_dim * 2 + D * m.n_kv_heads * m.head_dim * 2 + 3 * D * F
  norms = 2 * L * D + D
  matrices = 2 * V * D + L * per_layer  # Embedding and untied lm_head, then the layers.
  # float32; every matrix is split 4 ways along its embedding dimension, norm scales replicated.
  assert p["param_bytes"] == 4 * (matrices // 4 + norms)
  # Adam: two moments shaped and sharded like the parameters, plus int32 step counts (Adam's
  # and the learning-rate schedule's).
  assert p["opt_state_bytes"] == 2 * p["param_bytes"] + 8
  # inputs, targets, segment_ids, positions int32; loss_mask bool.
  assert p["batch_bytes"] == 8 * 64 * (4 * 4 + 1) // 4
  # What XLA reserves for the arguments covers that (plus step and rng, and tile padding).
  assert p["argument_bytes"] >= p["param_bytes"] + p["opt_state_bytes"] + p["batch_bytes"]
  assert p["argument_bytes"] < 4 * (p["param_bytes"] + p["opt_state_bytes"] + p["batch_bytes"])
  assert p["argument_bytes"] <= p["peak_bytes"] < p["usable_hbm_bytes"]


@needs_libtpu
def test_tiny_plan_table(tiny_plan):
  text, p = tiny_plan
  assert p["fits"] and "fits" in text and "DOES NOT FIT" not in text
  assert "v4-8 (v4:2x2x1): 4 chips on 1 hosts" in text
  assert "at 40% MFU" in text and "at 60% MFU" in text
  # Step time at 40% MFU: model FLOPs per chip over 40% of a v4 chip's 275 TFLOP/s.
  assert p["step_seconds"]["40%"] == pytest.approx(p["model_flops"] / (0.4 * 275e12))
  assert p["tokens_per_step"] == 8 * 64


@needs_libtpu
def test_tiny_plan_reads_flops_bytes_and_roofline_off_the_compiled_step(tiny_plan):
  """'auto' compiles splash for TPU (its kernels are in the program); the FLOPs run are the
  loop-weighted HLO count plus the kernel's; the roofline is the larger of compute at peak and
  traffic at full bandwidth; the implied MFU is the model count over it. XLA's cost analysis
  stays beside it, labelled; 40%/60% stay, labelled as guesses."""
  text, p = tiny_plan
  assert p["attention"] == "splash" and "attention: splash" in text
  assert p["kernels_in_program"] >= 3  # forward, dq and dkv kernels (in the scanned layer)
  # tiny: 4 heads of 16, 2 layers; batch 8 x 64 padded to one 128-token block; the elementwise
  # policy keeps the kernel's output, so it runs forward (2 matmuls), dq (3) and dkv (4) once.
  assert p["kernel_flops"] == 9 * 2 * 16 * 128 * 128 * 4 * 2 * 8 / 4
  # The matmuls the compiled step runs are the model count's 6N per token (the policy keeps
  # matmul outputs: no recompute) without its attention term, 12 L H K T per token: the layer
  # scan counted twice over, not once as XLA's cost analysis counts it.
  attention = 12 * 2 * 4 * 16 * 64 * (8 * 64 / 4)
  assert p["hlo_flops"] == pytest.approx(p["model_flops"] - attention, rel=1e-9)
  assert p["xla_flops_loop_bodies_once"] < 0.8 * p["hlo_flops"]
  flops = p["hlo_flops"] + p["kernel_flops"]
  bytes_ = p["hlo_bytes"] + p["kernel_bytes"]
  assert p["kernel_bytes"] > 0
  v4 = (275e12, 1200e9)
  assert p["roofline"]["seconds"] == pytest.approx(max(flops / v4[0], bytes_ / v4[1]))
  assert p["roofline_mfu"] == pytest.approx(p["model_flops"] / (p["roofline"]["seconds"] * v4[0]))
  assert "(each loop body once" in text and "every loop body x its trip count" in text
  assert "a lower bound" in text
  # The loss's chunk loop runs as many chunks as the batch's longest target needs: data, not a
  # constant, so it is counted once and named, and the figures are labelled lower bounds.
  assert p["unknown_loops"] == ["jit(train_step)/jvp()/while"]
  assert "LOWER BOUNDS: 1 loop(s) of unknown trip count counted once" in text
  assert "(assumed MFU, a guess)" in text


@needs_libtpu
def test_xla_attention_compiles_no_kernel_and_counts_none():
  proc = plan_cli(*TINY, "--topology=v4:2x2x1", "--config.model.attention_impl=xla")
  assert proc.returncode == 0, proc.stderr
  assert "attention: xla (0 Pallas kernel calls in the program)" in proc.stdout
  assert "+ splash kernel" not in proc.stdout


SCANNED = """
import dataclasses, json, sys
import jax
jax.config.update("jax_platforms", "cpu")
sys.path.insert(0, "tests")
from conftest import tiny_config
from lima_jax.parallel import tpu_specs
from lima_jax.plan import common, hlo_count, roofline
from lima_jax.train import base_model, step as step_lib
config = tiny_config(**{"data.max_len": 128, "train.batch_size": 8})
mesh = common.topology_mesh(tpu_specs.parse_slice("v4-8"), (1, -1, 1), 8)
cfg = base_model.planned_model_config(config)
def counts(scan):
  with jax.set_mesh(mesh):
    b = step_lib.build_train_step(config, mesh, dataclasses.replace(
        cfg, n_layers=4, scan_layers=scan), total_steps=10)
    c = b.train_step.lower(
        b.abstract_state, b.abstract_batch, jax.eval_shape(lambda: jax.random.key(0))).compile()
  return [dataclasses.asdict(hlo_count.count(c.as_text())), dataclasses.asdict(roofline.cost_of(c))]
print(json.dumps([counts(True), counts(False)]))
"""


@needs_libtpu
def test_loop_weighted_count_of_the_scanned_step_matches_the_unrolled_step():
  """libtpu's text carries no trip counts: the layer scan's is found by running its counter.
  A 4-layer step under nn.scan then counts what the same step with its layers unrolled counts,
  and that program (no layer loop) agrees with XLA's own cost analysis: FLOPs a few percent
  under it (XLA adds elementwise work), bytes within a quarter (tiles, fused operands)."""
  proc = subprocess.run([sys.executable, "-c", SCANNED], cwd=REPO, capture_output=True,
                        text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-2000:]
  (scanned, scanned_xla), (unrolled, unrolled_xla) = json.loads(
      proc.stdout.strip().splitlines()[-1])
  assert scanned["flops"] == unrolled["flops"] > 0
  assert scanned["loops"] == unrolled["loops"] + 2  # the forward and backward layer scans
  assert scanned_xla["flops"] < 0.5 * scanned["flops"]  # XLA: one layer of the four
  assert 0.9 * unrolled_xla["flops"] < unrolled["flops"] <= unrolled_xla["flops"]
  assert unrolled["bytes"] == pytest.approx(unrolled_xla["bytes"], rel=0.25)


def test_splash_bytes_follow_the_kernels_block_passes():
  """llama1-7b (32 heads of 128, 32 layers); two 128-token blocks (T = 200 padded to 256),
  causal: 3 visited block pairs. Per head:
  forward q, o 256 rows once, k, v 3 tiles of 128; dq q, dO once, k, v per pair, dq written;
  dkv k, v once, q, dO per pair, dk, dv written; 4-byte lse/delta and segment ids as read."""
  from lima_jax.plan import roofline
  cfg = get_size("llama1-7b")
  row, tile = 256 * 128 * 2, 128 * 128 * 2  # bfloat16
  seg = 4 * 256 + 4 * 3 * 128
  forward = 2 * row + 2 * 3 * tile + 4 * 256 + seg
  dq = 3 * row + 2 * 3 * tile + 2 * 4 * 256 + seg
  dkv = 4 * row + 2 * 3 * tile + 2 * 4 * 3 * 128 + seg
  per_head = forward + dq + dkv
  assert roofline.splash_bytes(cfg, 5, 200, 128, "elementwise") == 5 * 32 * 32 * per_head
  # Full remat reruns the forward kernel in the backward.
  assert roofline.splash_bytes(cfg, 5, 200, 128, "full") == 5 * 32 * 32 * (per_head + forward)


def test_splash_flops_count_the_blocks_the_causal_kernel_visits():
  from lima_jax.plan import roofline
  cfg = get_size("llama1-7b")  # 32 heads of 128, 32 layers
  # 2,048 tokens in 512-blocks: 4 x 4 tiles, 10 on or below the diagonal; 1,000 tokens pad to
  # 1,024: 2 x 2 tiles, 3 visited.
  per_pass = 2 * 128 * 32 * 32  # 2K FLOPs per (query, key) pair, every head and layer
  assert roofline.splash_flops(cfg, 1, 2048, 512, "elementwise") == 9 * per_pass * 10 * 512**2
  assert roofline.splash_flops(cfg, 1, 1000, 512, "none") == 9 * per_pass * 3 * 512**2
  # Full remat reruns the forward (two more passes) in the backward.
  assert roofline.splash_flops(cfg, 2, 2048, 512, "full") == 2 * 11 * per_pass * 10 * 512**2


@needs_libtpu
def test_a_config_that_does_not_fit_says_so():
  proc = plan_cli("--config=configs/lima.py:demo", "--config.model.size=demo",
                  "--config.data.max_len=2048", "--config.train.batch_size=512",
                  "--config.model.remat_policy=none", "--topology=v5e:2x2", "--mesh=2,1,2")
  assert proc.returncode == 3, proc.stderr
  assert "DOES NOT FIT: libtpu says: Ran out of memory" in proc.stdout
  assert "to fit:" in proc.stdout
  for fix in ["--mesh=1,2,2", "--config.model.remat_policy=full",
              "--config.train.grad_accum_steps=2"]:
    assert fix in proc.stdout


@needs_libtpu
@pytest.mark.parametrize("args, message", [
    (["--topology=v9-8"], "unknown chip"),
    (["--topology=v4-8", "--mesh=1,3,-1"], "mesh.shape"),
    (["--topology=v4-8", "--mesh=1,-1,1", "--config.train.batch_size=6"],
     "put the other chips on 'tensor', "
     "e.g. --mesh=1,2,2"),
    (["--topology=v4-8", "--mesh=a,b"], "--mesh"),
])
def test_bad_input_is_one_line(args, message):
  proc = plan_cli(*TINY[:-1], *args)
  assert proc.returncode == 1
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], proc.stderr


@needs_libtpu
def test_tensor_across_hosts_is_stated_and_the_chosen_mesh_avoids_it():
  # v4 hosts hold 2x2x1 chips; JAX lays a 4-way 'tensor' along the 4-chip x axis of v4-256.
  base = [*TINY[:-1], "--config.train.batch_size=32", "--topology=v4-256"]
  explicit = plan_cli(*base, "--mesh=1,32,4")
  assert explicit.returncode == 0, explicit.stderr
  assert "note: each 'tensor' group of 4 chips spans several hosts" in explicit.stdout
  chosen = plan_cli(*base)  # mesh.shape=(): the mesh training would choose
  assert chosen.returncode == 0, chosen.stderr
  assert "mesh data=1 fsdp=32 tensor=4" in chosen.stdout and "note:" not in chosen.stdout


@needs_libtpu
def test_decode_plan_compiles_the_decoder_and_counts_weights_and_cache(tmp_path):
  """`--decode`: bfloat16 weights are half of float32's; the KV cache is what the model's
  shapes give (K and V, every layer, the prompt bucket plus LIMA's answer room)."""
  plans = {}
  for dtype in ("float32", "bfloat16"):
    out = tmp_path / f"{dtype}.json"
    proc = plan_cli("--decode", "--config=configs/lima.py:demo", "--topology=v4-8",
                    "--mesh=1,1,4", f"--dtype={dtype}", "--decode_batch=4", "--prompt_len=100",
                    f"--out={out}")
    assert proc.returncode == 0, proc.stderr
    assert "fits" in proc.stdout and "not a measurement" in proc.stdout
    plans[dtype] = json.loads(out.read_text())
  f32, bf16 = plans["float32"], plans["bfloat16"]
  assert f32["param_bytes"] == 2 * bf16["param_bytes"]
  demo = get_size("demo")  # 4 layers, 4 KV heads of 32: one head per chip
  rows, length = 4, 128 + (demo.max_seq_len - 1)  # prompt bucket 128, answer room 511
  assert bf16["cache_bytes"] == 2 * demo.n_layers * rows * length * 1 * demo.head_dim * 4
  assert bf16["peak_bytes"] >= bf16["param_bytes"] + bf16["cache_bytes"]
  assert bf16["new_tokens"] == demo.max_seq_len - 1


@needs_libtpu
def test_decode_batch_must_split_over_the_batch_shards():
  proc = plan_cli("--decode", "--config=configs/lima.py:demo", "--topology=v4-8",
                  "--mesh=1,4,1", "--decode_batch=6")
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines() == [
      "error: --decode_batch=6 does not split over the 4 batch shards of mesh "
      "{'data': 1, 'fsdp': 4, 'tensor': 1}"]


@pytest.mark.parametrize("variant, billions", [("7b", 6.74), ("65b", 65.29)])
def test_the_big_configs_lower_on_cpu(variant, billions):
  """Without libtpu: the real train step of configs/lima.py:7b and :65b traces and lowers for
  the 8 fake CPU devices from abstract shapes (no weights), so the big configs cannot rot;
  the parameter count is LLaMA-1's published one (vocabulary grown by EOT, padded)."""
  import importlib.util
  import jax
  from lima_jax.train import base_model
  from lima_jax.parallel import sharding
  from lima_jax.train import step as step_lib
  spec = importlib.util.spec_from_file_location("lima_config", REPO / "configs" / "lima.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(variant)
  micro = config.train.batch_size // config.train.grad_accum_steps
  mesh = sharding.choose_mesh(config.mesh.shape, jax.devices(), micro)
  with jax.set_mesh(mesh):
    built = step_lib.build_train_step(config, mesh, base_model.planned_model_config(config),
                                   total_steps=1000)
    lowered = built.train_step.lower(built.abstract_state, built.abstract_batch,
                                     jax.eval_shape(lambda: jax.random.key(0)))
  n = sum(x.size for x in jax.tree.leaves(built.abstract_state.params))
  assert n / 1e9 == pytest.approx(billions, rel=2e-3)
  assert "stablehlo" in lowered.as_text()[:20000]
