"""GGUF import (llama.cpp's single-file format), read with ggml's own `gguf` package.

    python -m lima_jax.convert from-gguf --gguf=F.gguf --out=CKPT    (or model.init=F.gguf)

The architecture (llama, mistral, qwen2) and the tokenizer come from the file's metadata:
byte-level BPE ('gpt2') is rebuilt as a `tokenizers` JSON with the pre-tokenizer llama.cpp
uses for `tokenizer.ggml.pre`, SentencePiece ('llama') as a model proto. Every tensor type
`gguf` can dequantize is read (F32, F16, BF16, Q4_0 ... Q8_0, the K- and IQ-quants) into
float32. llama.cpp's converter permutes the q/k rows of llama-architecture models for RoPE
on adjacent pairs; that is undone (Qwen2 files are stored unpermuted). Everything is read
and checked before anything is written.
"""
import json
import pathlib

import numpy as np

from lima_jax.formats import hf, llama2c
from lima_jax.model import layers
from lima_jax.errors import UserError
from lima_jax.model.config import ARCHS, ModelConfig

_PERMUTED = ("llama", "mistral")  # archs whose q/k rows llama.cpp interleaves
_TOP = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight"}
_LAYER = {"input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight":
          "ffn_norm.weight", "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight":
          "ffn_up.weight", "mlp.down_proj.weight": "ffn_down.weight",
          **{f"self_attn.{n}_proj.{kind}": f"attn_{g}.{kind}" for n, g in
             (("q", "q"), ("k", "k"), ("v", "v"), ("o", "output")) for kind in ("weight", "bias")}}
# llama.cpp's pre-tokenizer regexes (llama-vocab.cpp), as `tokenizers` pre-tokenizers.
_GPT2 = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def _split_then_bytes(regex):
  return {"type": "Sequence", "pretokenizers": [
      {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False},
      {**_GPT2, "use_regex": False}]}


_DIGITS_THEN_GPT2 = {"type": "Sequence", "pretokenizers": [
    {"type": "Digits", "individual_digits": True}, _GPT2]}
_PRE = {"gpt2": _GPT2, "default": _GPT2, "smollm": _DIGITS_THEN_GPT2,
        "starcoder": _DIGITS_THEN_GPT2, "llama-bpe": _split_then_bytes(_LLAMA3_SPLIT),
        "llama3": _split_then_bytes(_LLAMA3_SPLIT), "qwen2": _split_then_bytes(_QWEN2_SPLIT)}


def open_reader(path):
  """The file parsed by ggml's `gguf` package; read_config and read_tokenizer_meta can share
  one."""
  import gguf  # ggml's package, only for GGUF files
  try:
    return gguf.GGUFReader(str(path))
  except FileNotFoundError:
    raise UserError(f"{path}: not found") from None
  except (ValueError, OSError, KeyError) as e:
    raise UserError(f"{path}: not a readable GGUF file ({e})") from None


def _fields(reader) -> dict:
  """Scalar and array metadata as Python values."""
  return {k: f.contents() for k, f in reader.fields.items()}


def _f32(x) -> float:
  """A float32 metadata value as the decimal it was written from (9.9999997e-06 -> 1e-05)."""
  return float(str(np.float32(x)))


def read_config(path, reader=None) -> ModelConfig:
  """The ModelConfig of a GGUF file, from its metadata and tensor names."""
  reader = reader or open_reader(path)
  meta = _fields(reader)
  arch = meta.get("general.architecture")
  if arch not in ARCHS:
    raise UserError(f"{path}: architecture {arch!r} is not supported (one of {list(ARCHS)})")
  names = {t.name for t in reader.tensors}

  def get(key, default=...):
    value = meta.get(f"{arch}.{key}", default)
    if value is ...:
      raise UserError(f"{path}: missing metadata {arch}.{key}")
    return value

  heads, dim = int(get("attention.head_count")), int(get("embedding_length"))
  head_dim = int(get("attention.key_length", dim // heads))
  if int(get("rope.dimension_count", head_dim)) != head_dim:
    raise UserError(f"{path}: partial rotary embeddings are not supported")
  scaling = get("rope.scaling.type", "none")
  if scaling not in ("none", None):
    raise UserError(f"{path}: rope scaling {scaling!r} is not supported")
  if "rope_freqs.weight" in names:
    raise UserError(f"{path}: RoPE frequency factors (rope_freqs.weight, Llama-3.1 scaling) "
                    "are not supported in GGUF files: convert the Hugging Face checkpoint")
  window = get("attention.sliding_window", None)
  ctx = int(get("context_length", 2048))
  if window is not None and int(window) < ctx:
    raise UserError(f"{path}: sliding_window={window} attention is not supported")
  vocab = get("vocab_size", None) or len(meta.get("tokenizer.ggml.tokens") or []) or None
  if vocab is None:
    raise UserError(f"{path}: missing metadata {arch}.vocab_size")
  try:
    return ModelConfig(
        vocab_size=int(vocab), dim=dim, n_layers=int(get("block_count")), n_heads=heads,
        n_kv_heads=int(get("attention.head_count_kv", heads)),
        hidden_dim=int(get("feed_forward_length")), head_dim=head_dim, max_seq_len=ctx,
        norm_eps=_f32(get("attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=_f32(get("rope.freq_base", 10000.0)),
        tie_embeddings="output.weight" not in names, qkv_bias="blk.0.attn_q.bias" in names,
        attention_bias="blk.0.attn_output.bias" in names, arch=arch)
  except UserError as e:
    raise UserError(f"{path}: {e}") from None


def _dequantize(path, t) -> np.ndarray:
  import gguf
  try:
    x = gguf.quants.dequantize(t.data, t.tensor_type)
  except NotImplementedError:
    raise UserError(f"{path}: tensor {t.name!r} has type {t.tensor_type.name}, which gguf "
                    f"{_gguf_version()} cannot dequantize") from None
  return np.asarray(x, np.float32).reshape(tuple(int(n) for n in reversed(t.shape)))


def _gguf_version() -> str:
  from importlib import metadata
  return metadata.version("gguf")


def load_gguf(path, param_dtype: str = "float32"):
  """(ModelConfig, params) of a GGUF file: numpy arrays, dequantized to float32 (or cast to
  param_dtype)."""
  path = pathlib.Path(path)
  reader = open_reader(path)
  cfg = read_config(path, reader)
  tensors = {t.name: t for t in reader.tensors}

  def get(hf_name):
    name = _TOP.get(hf_name)
    if name is None:  # model.layers.{i}.{rest}
      _, _, layer, rest = hf_name.split(".", 3)
      name = f"blk.{layer}.{_LAYER[rest]}"
    t = tensors.get(name)
    if t is None:
      raise UserError(f"{path}: missing tensor {name!r}")
    shape = tuple(int(n) for n in reversed(t.shape))

    def read():
      x = _dequantize(path, t)
      if cfg.arch in _PERMUTED and name.split(".")[-2] in ("attn_q", "attn_k"):
        heads = cfg.n_heads if name.split(".")[-2] == "attn_q" else cfg.n_kv_heads
        x = llama2c.interleaved_to_rotate_half(x if x.ndim == 2 else x[:, None], heads)
        x = x.reshape(shape)
      return x
    return f"{path}", shape, read

  dtype = np.dtype(layers.as_dtype(param_dtype))
  params = hf.params_from_tensors(cfg, get, dtype, "load_gguf")
  cfg = ModelConfig.from_dict(
      {**cfg.to_dict(), "param_dtype": param_dtype, "dtype": param_dtype})
  return cfg, params


def _byte_level_json(meta: dict, where: str) -> str:
  """tokenizer.json for a 'gpt2' (byte-level BPE) vocabulary; control and user-defined tokens
  become added tokens (special and not), as llama.cpp matches them."""
  pre = meta.get("tokenizer.ggml.pre", "default")
  if pre not in _PRE:
    raise UserError(f"{where}tokenizer.ggml.pre {pre!r} is not supported (one of {sorted(_PRE)})")
  tokens = list(meta["tokenizer.ggml.tokens"])
  types = list(meta.get("tokenizer.ggml.token_type") or [1] * len(tokens))
  added = [{"id": i, "content": tok, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": False, "special": kind == 3}
           for i, (tok, kind) in enumerate(zip(tokens, types)) if kind in (3, 4)]
  spec = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
          "normalizer": {"type": "NFC"} if pre == "qwen2" else None,
          "pre_tokenizer": _PRE[pre], "post_processor": None,
          "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                      "use_regex": True},
          "model": {"type": "BPE", "dropout": None, "unk_token": None,
                    "continuing_subword_prefix": None, "end_of_word_suffix": None,
                    "fuse_unk": False, "byte_fallback": False,
                    "ignore_merges": pre in ("llama-bpe", "llama3"),
                    "vocab": {tok: i for i, tok in enumerate(tokens)},
                    "merges": [m.split(" ", 1) for m in meta.get("tokenizer.ggml.merges") or []]}}
  return json.dumps(spec, ensure_ascii=False)


def _sentencepiece_proto(meta: dict) -> bytes:
  """A SentencePiece BPE proto for a 'llama' vocabulary (GGUF token types are SentencePiece's
  piece types)."""
  from sentencepiece import sentencepiece_model_pb2 as sp_pb2
  proto = sp_pb2.ModelProto()
  tokens = meta["tokenizer.ggml.tokens"]
  scores = meta.get("tokenizer.ggml.scores") or [0.0] * len(tokens)
  types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
  for tok, score, kind in zip(tokens, scores, types):
    piece = proto.pieces.add()
    piece.piece, piece.score, piece.type = tok, float(score), int(kind)
  spec = proto.trainer_spec
  spec.model_type = sp_pb2.TrainerSpec.BPE
  spec.vocab_size = len(tokens)
  spec.byte_fallback = any(int(k) == 6 for k in types)
  spec.unk_id = int(meta.get("tokenizer.ggml.unknown_token_id", 0))
  spec.bos_id = int(meta.get("tokenizer.ggml.bos_token_id", -1))
  spec.eos_id = int(meta.get("tokenizer.ggml.eos_token_id", -1))
  spec.pad_id = int(meta.get("tokenizer.ggml.padding_token_id", -1))
  norm = proto.normalizer_spec
  norm.name = "identity"
  norm.add_dummy_prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
  norm.remove_extra_whitespaces = False
  norm.escape_whitespaces = True
  return proto.SerializeToString()


def read_tokenizer_meta(path, reader=None) -> dict:
  """The lima_jax tokenizer meta (with EOT) of a GGUF file's vocabulary."""
  from lima_jax.tokenizer.sentencepiece import SentencePieceTokenizer
  from lima_jax.tokenizer import tokenizer_json as tokenizer_hf
  reader = reader or open_reader(path)
  meta = {k: f.contents() for k, f in reader.fields.items() if k.startswith("tokenizer.")}
  kind = meta.get("tokenizer.ggml.model")
  where = f"{path}: "
  if "tokenizer.ggml.tokens" not in meta:
    raise UserError(f"{where}holds no tokenizer (tokenizer.ggml.tokens)")
  if kind == "gpt2":
    ids = {k: meta.get(f"tokenizer.ggml.{k}_token_id") for k in ("bos", "eos", "padding")}
    if ids["eos"] is None:
      raise UserError(f"{where}missing metadata tokenizer.ggml.eos_token_id")
    return tokenizer_hf.HFTokenizer(_byte_level_json(meta, where), ids["bos"], int(ids["eos"]),
                                    ids["padding"], where).to_meta()
  if kind == "llama":
    return SentencePieceTokenizer(_sentencepiece_proto(meta)).to_meta()
  raise UserError(f"{where}tokenizer.ggml.model {kind!r} is not supported ('gpt2' or 'llama')")


def read_chat_template(path, reader=None) -> str | None:
  """The GGUF file's `tokenizer.chat_template` (the model's own Jinja template), if any."""
  field = (reader or open_reader(path)).fields.get("tokenizer.chat_template")
  value = field.contents() if field is not None else None
  return value if isinstance(value, str) and value.strip() else None
