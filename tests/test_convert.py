"""Conversion: parity with transformers' LlamaForCausalLM, HF round trips, llama2.c import, CLI."""
import functools
import json
import os
import pathlib
import struct
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors import safe_open
from transformers import LlamaConfig, LlamaForCausalLM

from conftest import shared_file
from lima_jax import convert
from lima_jax.formats import hf_tokenizer_files as hf_tokenizer
from lima_jax.formats import llama2c
from lima_jax.model import transformer as M
from lima_jax.errors import UserError
from lima_jax.model.config import ModelConfig, get_size

REPO = pathlib.Path(__file__).resolve().parents[1]
STORY = "Once upon a time, there was a little girl named Lily"
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
               "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               # small, so that both the scaled and the interpolated bands fall in head_dim 8
               "original_max_position_embeddings": 16}
HF_CONFIGS = {
    "mha": dict(num_attention_heads=4, num_key_value_heads=4),
    "gqa": dict(num_attention_heads=6, num_key_value_heads=2),
    "tied": dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
    "llama3": dict(num_attention_heads=6, num_key_value_heads=3, rope_parameters=LLAMA3_ROPE),
    "bias": dict(num_attention_heads=4, num_key_value_heads=2, attention_bias=True,
                 mlp_bias=True),
}
VOCAB, T = 101, 24


def _hf_model(name: str, seed: int = 0) -> LlamaForCausalLM:
  torch.manual_seed(seed)
  heads = HF_CONFIGS[name]["num_attention_heads"]
  cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=8 * heads, intermediate_size=72,
                    num_hidden_layers=2, max_position_embeddings=64, rms_norm_eps=1e-5,
                    **HF_CONFIGS[name])
  model = LlamaForCausalLM(cfg).eval()
  with torch.no_grad():  # HF's 0.02-std init gives near-constant logits: a weak comparison
    for p in model.parameters():
      p.add_(torch.randn_like(p) * 0.2)
  return model


@functools.cache
def _saved(name: str, root: pathlib.Path) -> tuple[LlamaForCausalLM, pathlib.Path]:
  model = _hf_model(name)
  model.save_pretrained(root / name)
  return model, root / name


@pytest.fixture(scope="module")
def hf_root(tmp_path_factory):
  return tmp_path_factory.mktemp("hf")


def _tokens(shape=(2, T), seed=0):
  return np.random.RandomState(seed).randint(0, VOCAB, shape)


def _hf_logits(model, tokens, positions=None):
  with torch.no_grad():
    pos = None if positions is None else torch.tensor(positions)
    return model(torch.tensor(tokens), position_ids=pos).logits.float().numpy()


# --- parity with transformers -----------------------------------------------------------------

@pytest.mark.parametrize("scan", [True, False], ids=["scan", "unrolled"])
@pytest.mark.parametrize("name", list(HF_CONFIGS))
def test_logits_match_transformers(name, scan, hf_root):
  hf, path = _saved(name, hf_root)
  cfg, params = convert.load_hf(path)
  cfg = ModelConfig.from_dict({**cfg.to_dict(), "scan_layers": scan})
  tokens = _tokens()
  ours = jax.jit(lambda p, t: M.Transformer(cfg).apply({"params": p}, t))(params, tokens)
  ref = _hf_logits(hf, tokens)
  assert np.abs(ref).max() > 1.0  # a comparison of near-zero logits would prove little
  assert float(np.max(np.abs(np.asarray(ours) - ref))) <= 1e-4


def test_packed_segments_match_transformers_run_per_segment(hf_root):
  hf, path = _saved("gqa", hf_root)
  cfg, params = convert.load_hf(path)
  # Row 0: segments of 9 and 11 tokens then 4 pads; row 1: 24 tokens whose positions start at 3.
  segments = np.array([[1] * 9 + [2] * 11 + [0] * 4, [1] * T])
  positions = np.array([list(range(9)) + list(range(11)) + [0] * 4, list(range(3, 3 + T))])
  tokens = _tokens()
  ours = np.asarray(jax.jit(lambda p, t, pos, seg: M.Transformer(cfg).apply(
      {"params": p}, t, positions=pos, segment_ids=seg))(params, tokens, positions, segments))
  for row, start, end in [(0, 0, 9), (0, 9, 20), (1, 0, T)]:
    ref = _hf_logits(hf, tokens[row:row + 1, start:end], positions[row:row + 1, start:end])
    assert float(np.max(np.abs(ours[row, start:end] - ref[0]))) <= 1e-4


# --- round trips ------------------------------------------------------------------------------

def _tensors(path: pathlib.Path) -> dict[str, np.ndarray]:
  out = {}
  for f in sorted(path.glob("*.safetensors")):
    with safe_open(f, framework="np") as st:
      out.update({k: st.get_tensor(k) for k in st.keys()})
  return out


_CONFIG_KEYS = ("model_type", "vocab_size", "hidden_size", "intermediate_size",
                "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
                "hidden_act", "max_position_embeddings", "rms_norm_eps", "rope_parameters",
                "tie_word_embeddings", "attention_bias", "mlp_bias", "dtype")


@pytest.mark.parametrize("name,dtype,shard_bytes", [
    ("gqa", torch.float32, 3000),  # tiny shards: many files and an index
    ("llama3", torch.bfloat16, 5 * 10**9),
    ("tied", torch.float32, 5 * 10**9),
    ("bias", torch.bfloat16, 20000),
])
def test_hf_round_trip_is_bit_identical(name, dtype, shard_bytes, tmp_path):
  hf = _hf_model(name).to(dtype)
  hf.save_pretrained(tmp_path / "src")
  cfg, params = convert.load_hf(tmp_path / "src")
  assert {x.dtype for x in jax.tree.leaves(params)} == {
      np.dtype(jnp.bfloat16 if dtype == torch.bfloat16 else np.float32)}
  convert.save_hf(cfg, params, tmp_path / "out", max_shard_bytes=shard_bytes)

  src, out = _tensors(tmp_path / "src"), _tensors(tmp_path / "out")
  assert sorted(src) == sorted(out)
  for k in src:
    assert src[k].dtype == out[k].dtype and src[k].shape == out[k].shape, k
    assert src[k].tobytes() == out[k].tobytes(), k
  shards = sorted((tmp_path / "out").glob("*.safetensors"))
  index = tmp_path / "out" / "model.safetensors.index.json"
  if shard_bytes < 10**6:
    assert len(shards) > 2 and index.exists()
    for f in shards:  # over the limit only when one tensor alone is bigger (+ the header)
      with safe_open(f, framework="np") as st:
        assert f.stat().st_size <= shard_bytes + 4096 or len(st.keys()) == 1, f
    assert set(json.loads(index.read_text())["weight_map"].values()) == {f.name for f in shards}
  else:
    assert [f.name for f in shards] == ["model.safetensors"] and not index.exists()
  a, b = (json.loads((tmp_path / d / "config.json").read_text()) for d in ("src", "out"))
  assert {k: a.get(k) for k in _CONFIG_KEYS} == {k: b.get(k) for k in _CONFIG_KEYS}
  # And transformers reads our files (index and hand-written safetensors) as its own.
  # (Both loaded from disk: `.to(bfloat16)` also rounds HF's in-memory RoPE buffer.)
  src_model, out_model = (LlamaForCausalLM.from_pretrained(tmp_path / d).eval()
                          for d in ("src", "out"))
  tokens = _tokens()
  np.testing.assert_array_equal(_hf_logits(out_model, tokens), _hf_logits(src_model, tokens))


def test_save_hf_exports_the_tokenizer_with_eot(tmp_path):
  from transformers import AutoTokenizer
  from lima_jax.tokenizer import load as load_tokenizer
  tok = load_tokenizer(shared_file("llama2c/stories260K/tok512.bin"))
  cfg = get_size("tiny", vocab_size=tok.vocab_size)  # rows for EOT and PAD too
  shapes = jax.eval_shape(lambda: M.Transformer(cfg).init(jax.random.key(0),
                                                          jnp.zeros((1, 1), jnp.int32)))
  params = jax.tree.map(lambda b: np.zeros(b.value.shape, b.value.dtype), shapes["params"],
                        is_leaf=lambda b: hasattr(b, "value"))
  convert.save_hf(cfg, params, tmp_path / "hf", tokenizer_meta=tok.to_meta())
  config = json.loads((tmp_path / "hf" / "config.json").read_text())
  generation = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
  assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (
      tok.bos_id, tok.eos_id, tok.pad_id)
  assert generation["eos_token_id"] == [tok.eos_id, tok.eot_id]  # generation stops at EOT
  hf_tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
  assert hf_tok.convert_tokens_to_ids([hf_tokenizer.EOT_TEXT, hf_tokenizer.special_text("<pad>")]
                                      ) == [tok.eot_id, tok.pad_id]
  text = "Once upon a time, Lily saw a big red ball."
  assert hf_tok(text).input_ids == [tok.bos_id] + tok.encode(text)
  # The export's tokenizer.json read back: EOT is the exported token (512), not one after it.
  back = load_tokenizer(tmp_path / "hf" / "tokenizer.json")
  assert (back.bos_id, back.eos_id, back.eot_id, back.pad_id, back.vocab_size) == (
      tok.bos_id, tok.eos_id, tok.eot_id, tok.pad_id, tok.vocab_size) == (1, 2, 512, 513, 514)
  assert back.encode(text) == tok.encode(text)


def test_save_hf_refuses_mismatched_params_and_leaves_nothing(tmp_path, hf_root):
  cfg, params = convert.load_hf(_saved("gqa", hf_root)[1])
  params["layers"]["mlp"]["up"] = params["layers"]["mlp"]["up"][:, :, :-1]
  with pytest.raises(UserError, match="layers/mlp/up has shape"):
    convert.save_hf(cfg, params, tmp_path / "out")
  assert list(tmp_path.iterdir()) == []


def test_load_hf_reports_bad_configs(tmp_path, hf_root):
  _, path = _saved("mha", hf_root)
  config = json.loads((path / "config.json").read_text())
  for change, message in [({"model_type": "gemma"}, "model_type 'gemma' is not supported"),
                          ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4}},
                           "rope .*'yarn'.* is not supported"),
                          ({"hidden_size": 40}, "has shape")]:
    bad = tmp_path / "bad"
    bad.mkdir(exist_ok=True)
    (bad / "model.safetensors").write_bytes((path / "model.safetensors").read_bytes())
    (bad / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(UserError, match=message):
      convert.load_hf(bad)
  (bad / "config.json").write_text("{\n  oops")
  with pytest.raises(UserError, match=r"config.json:2: invalid JSON"):
    convert.load_hf(bad)


# --- llama2.c ---------------------------------------------------------------------------------

def test_stories260k_greedy_decoding_from_bos_tells_the_story():
  from lima_jax.tokenizer import load as load_tokenizer
  cfg, params = llama2c.load_llama2c(shared_file("llama2c/stories260K/stories260K.bin"))
  tok = load_tokenizer(shared_file("llama2c/stories260K/tok512.bin"))
  assert (cfg.dim, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.vocab_size) == (64, 5, 8, 4, 512)
  step = jax.jit(lambda p, t, c, i: M.Transformer(cfg).apply({"params": p}, t, cache=c,
                                                              cache_index=i))
  cache, ids = M.init_cache(cfg, 1, 32), [1]
  for i in range(20):
    logits, cache = step(params, np.array([[ids[-1]]]), cache, i)
    ids.append(int(jnp.argmax(logits[0, -1])))
  assert tok.decode(ids).startswith(STORY)


def _llama2c_header(dim=64, hidden=172, layers=5, heads=8, kv=4, vocab=512, seq=512):
  return struct.pack("<7i", dim, hidden, layers, heads, kv, vocab, seq)


def test_llama2c_header_errors(tmp_path):
  cases = {
      "v1.bin": (struct.pack("<Ii", 0x616B3432, 1) + bytes(248), "version 1 .* not supported"),
      "short.bin": (b"\x01\x02", "shorter than the 28-byte"),
      "heads.bin": (_llama2c_header(heads=6), "bad llama2.c header"),
      "truncated.bin": (_llama2c_header() + bytes(4000), "header implies 1056540"),
  }
  for fname, (data, message) in cases.items():
    (tmp_path / fname).write_bytes(data)
    with pytest.raises(UserError, match=f"{fname}: .*{message}"):
      llama2c.load_llama2c(tmp_path / fname)


# --- command line -----------------------------------------------------------------------------

def _cli(*args):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
  return subprocess.run([sys.executable, "-m", "lima_jax.convert", *map(str, args)], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=300)


def _assert_one_line_error(result, path, out):
  assert result.returncode == 1, result.stderr
  assert result.stderr.strip().splitlines() == [result.stderr.strip()], result.stderr
  assert result.stderr.startswith(f"error: {path}"), result.stderr
  assert not out.exists() and not list(out.parent.glob(f".{out.name}*"))


def test_cli_bad_llama2c_header(tmp_path):
  bad = tmp_path / "v2.bin"
  bad.write_bytes(struct.pack("<Ii", 0x616B3432, 2) + bytes(248))
  result = _cli("from-llama2c", f"--model={bad}", f"--out={tmp_path / 'ckpt'}")
  _assert_one_line_error(result, bad, tmp_path / "ckpt")
  assert "version 2" in result.stderr


def test_cli_missing_tensor(tmp_path, hf_root):
  _, path = _saved("gqa", hf_root)
  with safe_open(path / "model.safetensors", framework="pt") as f:
    tensors = {k: f.get_tensor(k) for k in f.keys() if k != "model.layers.1.mlp.up_proj.weight"}
  from safetensors.torch import save_file
  src = tmp_path / "hf"
  src.mkdir()
  save_file(tensors, src / "model.safetensors", metadata={"format": "pt"})
  (src / "config.json").write_bytes((path / "config.json").read_bytes())
  result = _cli("from-hf", f"--hf_dir={src}", f"--out={tmp_path / 'ckpt'}")
  _assert_one_line_error(result, src / "model.safetensors", tmp_path / "ckpt")
  assert "missing tensor 'model.layers.1.mlp.up_proj.weight'" in result.stderr


def test_cli_llama2c_to_lima_to_hf_tells_the_story(tmp_path):
  model = shared_file("llama2c/stories260K/stories260K.bin")
  tokenizer = shared_file("llama2c/stories260K/tok512.bin")
  ckpt, hf_dir = tmp_path / "ckpt", tmp_path / "hf"
  result = _cli("from-llama2c", f"--model={model}", f"--tokenizer={tokenizer}", f"--out={ckpt}")
  assert result.returncode == 0, result.stderr
  result = _cli("to-hf", f"--checkpoint={ckpt}", f"--out={hf_dir}", "--max_shard_mb=1",
                "--dtype=float32")
  assert result.returncode == 0, result.stderr
  assert (hf_dir / "model.safetensors.index.json").exists()
  from transformers import AutoTokenizer
  hf = LlamaForCausalLM.from_pretrained(hf_dir).eval()
  with torch.no_grad():
    ids = hf.generate(torch.tensor([[1]]), max_new_tokens=20, do_sample=False)[0]
  assert AutoTokenizer.from_pretrained(hf_dir).decode(ids, skip_special_tokens=True) \
      .startswith(STORY)
  # Refuses to overwrite what is there.
  again = _cli("to-hf", f"--checkpoint={ckpt}", f"--out={hf_dir}")
  assert again.returncode == 1 and "already exists" in again.stderr
