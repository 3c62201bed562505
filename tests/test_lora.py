"""LoRA and QLoRA (train.lora): adapters' gradients against the full model's, B = 0 is the base,
merging changes nothing, int8 error bounds, a run from a base checkpoint that merges at load,
exports to transformers (merged) and PEFT (adapter + base), exact resume, 2 processes = 1."""
import dataclasses
import json
import os
import pathlib
import shutil
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config

REPO = pathlib.Path(__file__).resolve().parents[1]


def _cfgs(base_dtype="", rank=3, targets=("q", "k", "v", "o", "gate", "up", "down")):
  from lima_jax.model import lora
  from lima_jax.model.config import get_size
  plain = get_size("tiny")
  return plain, dataclasses.replace(plain, lora=lora.LoraSpec(rank, 6.0, 0.0, targets, base_dtype))


def _random(cfg, seed, scale=0.3):
  from lima_jax.model import transformer as M
  rng = np.random.RandomState(seed)
  return jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s.shape) * scale, s.dtype)
                      if s.dtype != jnp.int8 else jnp.zeros(s.shape, s.dtype),
                      nn.meta.unbox(M.abstract_params(cfg)))


def _setup(base_dtype="", b_zero=False):
  """(plain cfg, LoRA cfg, base params as the run holds them, random adapters)."""
  from lima_jax.model import lora
  plain, cfg = _cfgs(base_dtype)
  base = _random(plain, 0)
  held = lora.quantize(base, cfg.lora) if base_dtype == "int8" else base
  adapters = lora.split(_random(cfg, 1, 0.5))[1]
  if b_zero:
    adapters = jax.tree_util.tree_map_with_path(
        lambda p, x: jnp.zeros_like(x) if p[-1].key.endswith("_lora_b") else x, adapters)
  return plain, cfg, base, held, adapters


TOKENS = jax.random.randint(jax.random.key(7), (2, 24), 0, 256)


def _logits(cfg, params):
  from lima_jax.model import Transformer
  return np.asarray(Transformer(cfg).apply({"params": params}, TOKENS))


def test_rank_r_with_b_zero_gives_the_base_logits_exactly():
  from lima_jax.model import lora
  plain, cfg, base, held, adapters = _setup(b_zero=True)
  assert "lora" not in plain.to_dict()  # full fine-tuning's meta and tree are unchanged
  assert not lora.split(_random(plain, 0))[1]
  np.testing.assert_array_equal(_logits(cfg, lora.join(held, adapters)), _logits(plain, base))


def test_merge_equals_the_unmerged_model_on_an_int8_base():
  # (a float base: test_to_hf_merges_and_to_peft_loads_in_peft_with_the_same_logits)
  from lima_jax.model import lora
  plain, cfg, base, held, adapters = _setup("int8")
  unmerged = _logits(cfg, lora.join(held, adapters))
  merged = _logits(plain, lora.merge(lora.join(held, adapters), cfg.lora))
  assert np.max(np.abs(unmerged - _logits(plain, base))) > 0.1  # the adapters do something
  np.testing.assert_allclose(merged, unmerged, rtol=1e-4, atol=1e-4)


def test_int8_base_is_within_half_a_step_of_the_float_weights():
  from lima_jax.model import lora
  plain, cfg, base, held, _ = _setup("int8")
  q = held["layers"]["attn"]["o"]
  assert q.dtype == jnp.int8 and held["layers"]["attn"]["o_scale"].shape == (2, 64)
  back = lora.dequantize(held, cfg.lora)["layers"]["attn"]["o"]
  step = held["layers"]["attn"]["o_scale"][:, None, None, :]
  err = np.abs(np.asarray(back) - np.asarray(base["layers"]["attn"]["o"]))
  assert np.all(err <= step / 2 * (1 + 1e-5))
  assert int(np.max(np.abs(np.asarray(q)))) == 127  # absmax uses the whole range


def test_adapter_gradients_are_the_full_gradient_projected_onto_them():
  """dL/dA = s G B^T and dL/dB = s A^T G, G = dL/dW of the plain model at W + s A B: the LoRA
  model's own autodiff against the full model's weight gradient (an independent computation)."""
  from lima_jax.model import Transformer, lora
  plain, cfg, _, held, adapters = _setup()
  targets = jax.random.randint(jax.random.key(8), TOKENS.shape, 0, 256)

  def loss(model_cfg, params):
    logits = Transformer(model_cfg).apply({"params": params}, TOKENS)
    return jnp.mean(-jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1))

  got = jax.grad(lambda a: loss(cfg, lora.join(held, a)))(adapters)
  full = jax.grad(lambda p: loss(plain, p))(lora.merge(lora.join(held, adapters), cfg.lora))
  s = cfg.lora.scale
  for name in cfg.lora.targets:
    mod = lora.MODULE[name]
    g = np.asarray(full["layers"][mod][name], np.float64)
    a = np.asarray(adapters["layers"][mod][name + "_lora_a"], np.float64)
    b = np.asarray(adapters["layers"][mod][name + "_lora_b"], np.float64)
    L, r = a.shape[0], a.shape[-1]
    g2, a2, b2 = g.reshape(L, a[0].size // r, -1), a.reshape(L, -1, r), b.reshape(L, r, -1)
    want_a = s * np.einsum("lio,lro->lir", g2, b2).reshape(a.shape)
    want_b = s * np.einsum("lir,lio->lro", a2, g2).reshape(b.shape)
    for got_x, want in ((got["layers"][mod][name + "_lora_a"], want_a),
                        (got["layers"][mod][name + "_lora_b"], want_b)):
      scale = np.max(np.abs(want))
      assert scale > 1e-4, name
      np.testing.assert_allclose(np.asarray(got_x), want, atol=2e-4 * scale, err_msg=name)


def test_bad_lora_settings_name_their_field():
  from lima_jax.errors import UserError
  from lima_jax.train import base_model
  for key, value, field in (("train.lora.targets", "q,x", "train.lora.targets"),
                            ("train.lora.base_dtype", "int4", "train.lora.base_dtype"),
                            ("train.lora.dropout", 1.0, "train.lora.dropout")):
    with pytest.raises(UserError, match=field):
      base_model.lora_spec(tiny_config(**{"train.lora.rank": 4, key: value}))
  assert base_model.lora_spec(tiny_config()) is None  # rank 0: full fine-tuning


def test_fingerprint_holds_lora_and_the_base_only_when_on(tmp_path):
  from lima_jax.errors import UserError
  from lima_jax.tokenizer import load as load_tokenizer
  from lima_jax.train import base_model, fingerprint as fp
  tok = load_tokenizer(REPO / "data/demo/tokenizer.model")
  make = lambda **kw: (lambda c: fp.fingerprint(c, base_model.model_config(c, None, tok), tok))(
      tiny_config(**kw))
  off = make()
  assert not [k for k in off if "lora" in k or k == "model.init"]  # full fine-tuning: as before
  on = make(**{"train.lora.rank": 4})
  assert on["train.lora"]["rank"] == 4 and on["model.init"] == "random init, seed 0"
  with pytest.raises(UserError, match="train.lora"):
    fp.check_resume({"fingerprint": on}, make(**{"train.lora.rank": 8}), False, "CKPT")
  (tmp_path / "a.bin").write_bytes(b"x" * 3_000_000)
  first = fp.base_identity(tmp_path)
  (tmp_path / "a.bin").write_bytes(b"x" * 2_999_999 + b"y")  # the last byte of 3 MB
  assert fp.base_identity(tmp_path) != first


# ----------------------------------------------------------------------------------------------
# A LoRA run from a base checkpoint: merge at load, exports, 2 processes = 1.
# ----------------------------------------------------------------------------------------------

RUN = {"model.size": "", "data.tokenizer": "", "train.epochs": 1, "mesh.shape": (1, 2, 4),
       "train.lora.rank": 4, "train.lora.alpha": 8.0, "train.lora.dropout": 0.1,
       "train.lora.base_dtype": "int8",
       "model.dropout_top": 0.1, "train.learning_rate": 1e-3, "train.end_learning_rate": 1e-4}


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
  """A tiny base (vocab 512: EOT grows it to 640) as a lima_jax checkpoint, and a one-epoch
  QLoRA run from it on mesh (1, 2, 4), dropout on (residual and LoRA's)."""
  from lima_jax.formats import checkpoint
  from lima_jax.model.config import get_size
  from lima_jax.tokenizer import load as load_tokenizer
  from lima_jax.train import loop
  root = tmp_path_factory.mktemp("lora")
  cfg = get_size("tiny", vocab_size=512)
  tok = load_tokenizer(REPO / "data/demo/tokenizer.model")
  checkpoint.save(root / "base", _random(cfg, 3, 0.1),
                  {"model_config": cfg.to_dict(), "tokenizer": tok.to_meta(), "step": 0,
                   "epoch": 0})
  config = tiny_config(**RUN, **{"model.init": str(root / "base")})
  loop.train_and_evaluate(config, str(root / "one"))
  step = max(int(p.name) for p in (root / "one/checkpoints").iterdir() if p.name.isdigit())
  return root, config, root / "one/checkpoints" / str(step)


def _unmerged_logits(ckpt, tokens):
  """What the run's own model (base + adapters, not merged) computes."""
  from lima_jax.formats import checkpoint, lora_checkpoint, model_file
  from lima_jax.model import Transformer, lora
  meta = checkpoint.read_meta(ckpt)
  cfg = lora_checkpoint.trained_config(ckpt, meta)
  adapters, _ = checkpoint.load(ckpt)
  params = lora.join(lora_checkpoint.base_params(ckpt, meta, cfg, model_file.open), adapters)
  return np.asarray(Transformer(cfg).apply({"params": params}, tokens)), meta


def test_a_lora_checkpoint_holds_adapters_names_its_base_and_merges_at_load(lora_run):
  from lima_jax.errors import UserError
  from lima_jax.formats import checkpoint, model_file
  from lima_jax.model import Transformer, lora
  root, _, ckpt = lora_run
  stored = checkpoint.params_metadata(ckpt)
  names = [p[-1].key for p, _ in jax.tree_util.tree_flatten_with_path(stored)[0]]
  assert names and all(lora.is_adapter(n) for n in names)  # no base weight in the checkpoint
  tokens = jnp.asarray([[1, 5, 9, 200, 300, 512, 7, 3]])
  want, meta = _unmerged_logits(ckpt, tokens)
  assert meta["lora"]["base"]["path"] == str(root / "base")
  assert meta["fingerprint"]["train.lora"]["rank"] == 4 and meta["fingerprint"]["model.init"]
  m = model_file.open(ckpt)
  assert m.config.lora is None and m.config.vocab_size == 640
  np.testing.assert_allclose(np.asarray(Transformer(m.config).apply({"params": m.params},
                                                                    tokens)), want, atol=2e-5)
  from lima_jax.parallel import sharding
  # As serve and generate open it: onto a mesh, cast.
  on_mesh = model_file.open(ckpt, mesh=sharding.make_mesh((1, -1, 1)), dtype="bfloat16")
  same = jax.tree.map(lambda x, y: bool(np.array_equal(np.asarray(x), np.asarray(y, x.dtype))),
                      on_mesh.params, m.params)
  assert all(jax.tree.leaves(same)) and on_mesh.config.param_dtype == "bfloat16"
  from lima_jax.formats import peft
  with pytest.raises(UserError, match="not a LoRA checkpoint"):
    peft.export(root / "base", root / "not_written")
  assert not (root / "not_written").exists()
  shutil.copytree(root / "base", root / "moved")
  shutil.rmtree(root / "base")
  try:
    with pytest.raises(UserError, match=r"\(meta lora.base.path\) does not exist"):
      model_file.open(ckpt)
    cfg = model_file.read(root / "moved").config
    checkpoint.save(root / "base", _random(cfg, 4, 0.1), checkpoint.read_meta(root / "moved"))
    with pytest.raises(UserError, match="is not the base these adapters were trained on"):
      model_file.open(ckpt)
  finally:
    shutil.rmtree(root / "base", ignore_errors=True)
    shutil.copytree(root / "moved", root / "base")


def test_to_hf_merges_and_to_peft_loads_in_peft_with_the_same_logits(lora_run, tmp_path):
  import peft  # requirements-test.txt pins it
  import torch
  from transformers import AutoModelForCausalLM
  _, _, ckpt = lora_run
  tokens = np.asarray([[1, 5, 9, 200, 300, 512, 7, 3]])
  want, _ = _unmerged_logits(ckpt, jnp.asarray(tokens))
  for command, out in (("to-hf", "hf"), ("to-peft", "peft")):
    done = subprocess.run([sys.executable, "-m", "lima_jax.convert", command,
                           f"--checkpoint={ckpt}", f"--out={tmp_path / out}", "--dtype=float32"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
  with torch.no_grad():
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    got = merged(torch.tensor(tokens)).logits.numpy()
    np.testing.assert_allclose(got, want, atol=2e-4)
    config = json.loads((tmp_path / "peft/adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8.0
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "peft/base").eval()
    plain = base(torch.tensor(tokens)).logits.numpy()
    model = peft.PeftModel.from_pretrained(base, tmp_path / "peft").eval()
    got = model(torch.tensor(tokens)).logits.numpy()
  assert np.max(np.abs(plain - want)) > 1e-3  # the adapters moved the logits
  np.testing.assert_allclose(got, want, atol=2e-4)


@pytest.mark.slow
def test_two_processes_train_the_adapters_exactly_as_one(lora_run, tmp_path):
  from lima_jax.formats import checkpoint
  from lima_jax.train import loop
  root, config, ckpt = lora_run
  two = tiny_config(**RUN, **{"model.init": str(root / "base"),
                              "distributed.local_processes": 2, "distributed.local_devices": 4})
  loop.train_and_evaluate(two, str(tmp_path / "two"))
  rows = lambda w: [json.loads(l) for l in (w / "metrics.jsonl").read_text().splitlines()]
  a, b = rows(root / "one"), rows(tmp_path / "two")
  assert len(a) == len(b) >= 4
  np.testing.assert_allclose([r["loss"] for r in a], [r["loss"] for r in b], rtol=2e-6)
  pa, _ = checkpoint.load_numpy(ckpt)
  pb, _ = checkpoint.load_numpy(tmp_path / "two/checkpoints" / ckpt.name)
  diff = max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.max(np.abs(x - y))), pa, pb)))
  assert diff <= 2e-6, diff


@pytest.mark.slow
def test_kill_and_resume_is_bit_identical(lora_run, tmp_path):
  """Killed after step 2's checkpoint (os._exit in a child), then resumed here: the last
  checkpoint's adapters and moments are the uninterrupted fixture run's, bit for bit."""
  from lima_jax.formats import checkpoint
  from lima_jax.train import loop
  root, _, ckpt = lora_run
  run = dict(RUN, **{"model.init": str(root / "base"), "checkpoint.every_steps": 2})
  code = ("import ast, sys; sys.path.insert(0, 'tests'); from conftest import tiny_config; "
          "from lima_jax.train import loop; "
          "loop.train_and_evaluate(tiny_config(**ast.literal_eval(sys.argv[1])), sys.argv[2])")
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  killed = subprocess.run([sys.executable, "-c", code, repr(dict(run, **{
      "debug.crash_after_step": 2})), str(tmp_path)], cwd=REPO, env=env, capture_output=True,
      text=True, timeout=600)
  assert killed.returncode == 3, killed.stderr[-2000:]
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == ["2"]
  loop.train_and_evaluate(tiny_config(**run), str(tmp_path))
  for item in ("params", "opt_state"):  # adapters and their moments, bit for bit
    a, b = (_opt_state(c) if item == "opt_state" else checkpoint.load_numpy(c)[0]
            for c in (ckpt, tmp_path / "checkpoints" / ckpt.name))
    same = jax.tree.map(lambda x, y: bool(np.array_equal(x, y)), a, b)
    assert jax.tree.leaves(same) and all(jax.tree.leaves(same)), (item, same)
  rows = lambda w: [json.loads(l)["loss"] for l in (w / "metrics.jsonl").read_text().splitlines()]
  assert rows(root / "one") == rows(tmp_path)


def _opt_state(ckpt):
  import orbax.checkpoint as ocp
  with ocp.StandardCheckpointer() as c:
    return jax.tree.map(np.asarray, c.restore(pathlib.Path(ckpt) / "opt_state"))
