"""GGUF import: parity with transformers' own GGUF loader on files written by ggml's `gguf`
package (quantized, llama.cpp's q/k permutation), the tokenizer from metadata, and refusals."""
import json
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as Q  # noqa: E402
from transformers import (AutoModelForCausalLM, AutoTokenizer, LlamaConfig,  # noqa: E402
                          LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM)
from transformers.convert_slow_tokenizer import bytes_to_unicode  # noqa: E402

from lima_jax.formats import gguf as gguf_file  # noqa: E402
from lima_jax.model import transformer as M  # noqa: E402
from lima_jax.errors import UserError  # noqa: E402
from lima_jax.tokenizer import load as load_tokenizer, from_meta as tokenizer_from_meta

ALPHABET = list(bytes_to_unicode().values())
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "Ġt he", "Ġ a", "i n"]
TOKENS = SPECIALS + ALPHABET + ["Ġt", "he", "Ġthe", "Ġa", "in"]
VOCAB = len(TOKENS)
# llama.cpp's GGUF names for HF's (convert_hf_to_gguf.py's tensor map).
NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight":
         "output_norm.weight", "lm_head.weight": "output.weight",
         "input_layernorm.weight": "attn_norm.weight",
         "post_attention_layernorm.weight": "ffn_norm.weight",
         "self_attn.o_proj.weight": "attn_output.weight",
         **{f"self_attn.{n}_proj.{k}": f"attn_{n}.{k}" for n in "qkv" for k in ("weight", "bias")},
         **{f"mlp.{n}_proj.weight": f"ffn_{n}.weight" for n in ("gate", "up", "down")}}


def _hf_model(arch, tied):
  torch.manual_seed(0)
  cls, config_cls = (Qwen2ForCausalLM, Qwen2Config) if arch == "qwen2" else (
      LlamaForCausalLM, LlamaConfig)
  model = cls(config_cls(vocab_size=VOCAB, hidden_size=64, intermediate_size=96,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=64, rms_norm_eps=1e-5,
                         tie_word_embeddings=tied)).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(torch.randn_like(p) * 0.2)
  return model


def _llama_cpp_permute(w, heads):
  """convert_hf_to_gguf.py's LlamaModel.permute: rotate_half rows -> adjacent pairs."""
  return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(
      w.shape)


def write_gguf(path, model, arch="llama", qtype=Q.Q8_0, v_type=None, tokenizer=True):
  """The model as llama.cpp's converter writes it: 2-D weights in `qtype`, the rest F32."""
  c = model.config
  w = gguf.GGUFWriter(str(path), arch)
  w.add_block_count(c.num_hidden_layers)
  w.add_context_length(c.max_position_embeddings)
  w.add_embedding_length(c.hidden_size)
  w.add_feed_forward_length(c.intermediate_size)
  w.add_head_count(c.num_attention_heads)
  w.add_head_count_kv(c.num_key_value_heads)
  w.add_rope_freq_base(float(c.rope_parameters["rope_theta"]))
  w.add_layer_norm_rms_eps(c.rms_norm_eps)
  w.add_vocab_size(VOCAB)
  if tokenizer:
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(TOKENS)
    w.add_token_types([3] * len(SPECIALS) + [1] * (VOCAB - len(SPECIALS)))
    w.add_token_merges(MERGES)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
  for hf_name, t in model.state_dict().items():
    if hf_name == "lm_head.weight" and c.tie_word_embeddings:
      continue
    rest = hf_name.split(".", 3)[-1] if hf_name.startswith("model.layers.") else hf_name
    name = NAMES[rest] if rest == hf_name else f"blk.{hf_name.split('.')[2]}.{NAMES[rest]}"
    x = t.float().numpy()
    kind = name.split(".")[-2]
    if arch == "llama" and kind in ("attn_q", "attn_k"):
      x = _llama_cpp_permute(x, c.num_attention_heads if kind == "attn_q"
                             else c.num_key_value_heads)
    q = Q.F32 if x.ndim == 1 else v_type if v_type and kind == "attn_v" else qtype
    if q in (Q.F32, Q.F16):
      w.add_tensor(name, gguf.quants.quantize(x, q))
    elif q == Q.Q8_1:  # gguf cannot produce it: raw blocks of the right size
      block, size = gguf.GGML_QUANT_SIZES[q]
      w.add_tensor(name, np.zeros((x.shape[0], x.shape[1] // block * size), np.uint8),
                   raw_dtype=q)
    else:
      w.add_tensor(name, gguf.quants.quantize(x, q), raw_dtype=q)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return path


def _reference(path):
  return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                              dtype=torch.float32).eval()


@pytest.mark.parametrize("arch,tied,qtype", [
    ("llama", True, Q.Q8_0), ("llama", False, Q.Q4_1), ("llama", False, Q.F16),
    ("qwen2", True, Q.BF16), ("qwen2", False, Q.Q5_0)])
def test_logits_match_transformers_gguf_loader(arch, tied, qtype, tmp_path):
  path = write_gguf(tmp_path / "m.gguf", _hf_model(arch, tied), arch, qtype)
  cfg, params = gguf_file.load_gguf(path)
  assert (cfg.arch, cfg.tie_embeddings, cfg.qkv_bias) == (arch, tied, arch == "qwen2")
  tokens = np.random.RandomState(0).randint(0, VOCAB, (2, 16))
  ours = np.asarray(jax.jit(lambda p, t: M.Transformer(cfg).apply({"params": p}, t))(
      params, tokens))
  with torch.no_grad():
    ref = _reference(path)(torch.tensor(tokens)).logits.float().numpy()
  assert np.abs(ref).max() > 1.0
  assert float(np.max(np.abs(ours - ref))) <= 1e-4


def test_tokenizer_from_metadata_matches_transformers_and_never_parses_specials(tmp_path):
  path = write_gguf(tmp_path / "m.gguf", _hf_model("llama", True))
  tok = load_tokenizer(path)
  assert (tok.bos_id, tok.eos_id, tok.eot_id, tok.vocab_size) == (1, 2, VOCAB, VOCAB + 2)
  ref = AutoTokenizer.from_pretrained(tmp_path, gguf_file="m.gguf")
  for text in ["the cat in the hat", "  the\n\nthe  a", "é ü 1 22 in"]:
    assert tok.encode(text) == ref(text, add_special_tokens=False).input_ids, text
    assert tok.decode(tok.encode(text)) == text
  forged = tok.encode("<|im_start|>the<|endoftext|> <eot>")
  assert not {0, 1, 2, tok.eot_id} & set(forged)
  assert tok.decode(forged) == "<|im_start|>the<|endoftext|> <eot>"
  assert tokenizer_from_meta(tok.to_meta()).encode("the in") == tok.encode("the in")


def _one_line_failure(args, out):
  run = subprocess.run([sys.executable, "-m", "lima_jax.convert", *args, f"--out={out}"],
                       capture_output=True, text=True, timeout=120)
  assert run.returncode != 0 and not out.exists()
  lines = run.stderr.strip().splitlines()
  assert len(lines) == 1, run.stderr
  return lines[0]


def test_unknown_architecture_and_tensor_type_are_one_line_and_write_nothing(tmp_path):
  model = _hf_model("llama", True)
  bad_arch = write_gguf(tmp_path / "gemma.gguf", model, arch="gemma")
  with pytest.raises(UserError, match="architecture 'gemma' is not supported"):
    gguf_file.read_config(bad_arch)
  bad_type = write_gguf(tmp_path / "q8_1.gguf", model, qtype=Q.F32, v_type=Q.Q8_1)
  line = _one_line_failure(["from-gguf", f"--gguf={bad_type}"], tmp_path / "ckpt")
  assert "'blk.0.attn_v.weight' has type Q8_1, which gguf" in line
  assert "cannot dequantize" in line
  no_tok = write_gguf(tmp_path / "notok.gguf", model, tokenizer=False)
  with pytest.raises(UserError, match="holds no tokenizer"):
    gguf_file.read_tokenizer_meta(no_tok)


def test_from_gguf_cli_stores_the_architecture_and_tokenizer(tmp_path):
  from lima_jax.formats import checkpoint
  path = write_gguf(tmp_path / "m.gguf", _hf_model("qwen2", False), "qwen2", Q.F32)
  run = subprocess.run([sys.executable, "-m", "lima_jax.convert", "from-gguf", f"--gguf={path}",
                        f"--out={tmp_path / 'ckpt'}"], capture_output=True, text=True,
                       timeout=120)
  assert run.returncode == 0, run.stderr
  meta = checkpoint.read_meta(tmp_path / "ckpt")
  assert meta["model_config"]["arch"] == "qwen2" and meta["model_config"]["qkv_bias"]
  assert json.dumps(meta["tokenizer"]) == json.dumps(load_tokenizer(path).to_meta())
