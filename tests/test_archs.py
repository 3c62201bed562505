"""Qwen2, Mistral and Llama-3.x: parity with transformers, HF round trips, published sizes."""
import json

import jax
import numpy as np
import pytest
import torch
from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM,
                          Qwen2Config, Qwen2ForCausalLM)

from lima_jax import convert
from lima_jax.model import transformer as M
from lima_jax.errors import UserError
from lima_jax.model.config import ModelConfig, SIZES

VOCAB, T = 97, 20
_COMMON = dict(vocab_size=VOCAB, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
               num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64)
LLAMA32_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
                "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16}
ARCHS = {
    "qwen2": (Qwen2ForCausalLM, Qwen2Config, dict(rms_norm_eps=1e-6, tie_word_embeddings=True,
                                                  rope_parameters={"rope_type": "default",
                                                                   "rope_theta": 1e6})),
    "qwen2-untied": (Qwen2ForCausalLM, Qwen2Config, dict(tie_word_embeddings=False)),
    "mistral": (MistralForCausalLM, MistralConfig, dict(sliding_window=None, head_dim=16,
                                                        rope_parameters={"rope_type": "default",
                                                                         "rope_theta": 1e6})),
    "llama3.2": (LlamaForCausalLM, LlamaConfig, dict(tie_word_embeddings=True,
                                                     rope_parameters=LLAMA32_ROPE)),
}


def _hf_model(name, seed=0):
  cls, config_cls, extra = ARCHS[name]
  torch.manual_seed(seed)
  model = cls(config_cls(**_COMMON, **extra)).eval()
  with torch.no_grad():  # HF's 0.02-std init gives near-constant logits: a weak comparison
    for p in model.parameters():
      p.add_(torch.randn_like(p) * 0.2)
  return model


def _logits(model, tokens):
  with torch.no_grad():
    return model(torch.tensor(tokens)).logits.float().numpy()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  root, out = tmp_path_factory.mktemp("archs"), {}
  for name in ARCHS:
    model = _hf_model(name)
    model.save_pretrained(root / name)
    out[name] = (model, root / name)
  return out


@pytest.mark.parametrize("scan", [True, False], ids=["scan", "unrolled"])
@pytest.mark.parametrize("name", list(ARCHS))
def test_logits_match_transformers(name, scan, saved):
  hf, path = saved[name]
  cfg, params = convert.load_hf(path)
  assert cfg.arch == {"qwen2-untied": "qwen2", "llama3.2": "llama"}.get(name, name)
  cfg = ModelConfig.from_dict({**cfg.to_dict(), "scan_layers": scan})
  tokens = np.random.RandomState(1).randint(0, VOCAB, (2, T))
  ours = jax.jit(lambda p, t: M.Transformer(cfg).apply({"params": p}, t))(params, tokens)
  ref = _logits(hf, tokens)
  assert np.abs(ref).max() > 1.0
  assert float(np.max(np.abs(np.asarray(ours) - ref))) <= 1e-4


def test_qwen2_has_biases_on_qkv_only(saved):
  cfg, params = convert.load_hf(saved["qwen2"][1])
  assert cfg.qkv_bias and not cfg.attention_bias and cfg.tie_embeddings
  assert sorted(k for k in params["layers"]["attn"] if k.endswith("_bias")) == [
      "k_bias", "q_bias", "v_bias"]
  assert "lm_head" not in params


@pytest.mark.parametrize("name", ["qwen2-untied", "mistral"])
def test_to_hf_writes_the_model_type_back(name, saved, tmp_path):
  hf, path = saved[name]
  cfg, params = convert.load_hf(path)
  convert.save_hf(cfg, params, tmp_path / "out")
  config = json.loads((tmp_path / "out" / "config.json").read_text())
  assert config["model_type"] == name.split("-")[0]
  assert config["architectures"] == [type(hf).__name__]
  back = type(hf).from_pretrained(tmp_path / "out").eval()
  tokens = np.random.RandomState(2).randint(0, VOCAB, (1, T))
  np.testing.assert_array_equal(_logits(back, tokens), _logits(hf, tokens))


def test_sliding_window_and_unknown_types_are_refused(saved, tmp_path):
  path = saved["mistral"][1]
  config = json.loads((path / "config.json").read_text())
  for change, message in [({"sliding_window": 16}, "sliding_window=16 attention is not "),
                          ({"model_type": "gemma"}, "model_type 'gemma' is not supported")]:
    (tmp_path / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(UserError, match=message):
      convert.read_hf_config(tmp_path)
  # A window no shorter than the context changes nothing: accepted.
  (tmp_path / "config.json").write_text(json.dumps({**config, "sliding_window": 64}))
  assert convert.read_hf_config(tmp_path).arch == "mistral"


# Parameter counts as published (the safetensors totals on each model's Hugging Face page).
@pytest.mark.parametrize("name,count", [
    ("llama3.1-8b", 8_030_261_248), ("llama3.1-70b", 70_553_706_496),
    ("llama3.2-1b", 1_235_814_400), ("llama3.2-3b", 3_212_749_824),
    ("qwen2.5-0.5b", 494_032_768), ("qwen2.5-7b", 7_615_616_512),
    ("qwen2.5-72b", 72_706_203_648), ("mistral-7b-v0.3", 7_248_023_552),
    ("smollm2-135m", 134_515_008), ("smollm2-360m", 361_821_120),
    ("smollm2-1.7b", 1_711_376_384),
])
def test_param_counts_match_published(name, count):
  assert M.param_count(SIZES[name]) == count
