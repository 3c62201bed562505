"""Hugging Face format, export: the param tree -> a directory transformers and vLLM load as is.

config.json, generation_config.json, streamed safetensors shards (one layer slice of one
parameter on the host at a time) and, for a LIMA-format model, its tokenizer files
(`hf_tokenizer_files`) and model card (`hf_card`). `python -m lima_jax.convert to-hf` runs it.
"""
import json
import math
import os
import pathlib
import shutil
import struct

import jax
import ml_dtypes
import numpy as np
from tqdm import tqdm

from lima_jax.errors import UserError
from lima_jax.formats.hf import HF_CLASS, hf_shape, tensor_plan, to_hf
from lima_jax.model import layers
from lima_jax.model.config import ModelConfig

_NP_TO_ST = {np.dtype(np.float32): "F32", np.dtype(ml_dtypes.bfloat16): "BF16"}
_WRITE_BLOCK_BYTES = 16 << 20


def _hf_config(cfg: ModelConfig, dtype: str, ids: dict) -> dict:
  rope = {"rope_theta": cfg.rope_theta, "rope_type": "llama3" if cfg.rope_scaling else "default",
          **(cfg.rope_scaling_dict or {})}
  if cfg.arch != "llama" and (cfg.attention_bias or cfg.mlp_bias or cfg.qkv_bias != (
      cfg.arch == "qwen2")):
    # Mistral has no biases and Qwen2 exactly q/k/v ones: anything else would load wrongly.
    raise UserError(f"model_config: arch={cfg.arch!r} cannot hold attention_bias="
                    f"{cfg.attention_bias}, qkv_bias={cfg.qkv_bias}, mlp_bias={cfg.mlp_bias}")
  if cfg.arch == "llama" and cfg.qkv_bias and not cfg.attention_bias:
    raise UserError("model_config: qkv_bias without o's bias is Qwen2's layout: set arch='qwen2'")
  extra = {"sliding_window": None, "use_sliding_window": False} if cfg.arch != "llama" else {}
  return {
      "architectures": [HF_CLASS[cfg.arch]], "model_type": cfg.arch, "dtype": dtype, **extra,
      "torch_dtype": dtype,  # what transformers 4 and vLLM read; transformers 5 reads dtype
      "vocab_size": cfg.vocab_size, "hidden_size": cfg.dim, "intermediate_size": cfg.hidden_dim,
      "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
      "num_key_value_heads": cfg.n_kv_heads, "head_dim": cfg.head_dim, "hidden_act": "silu",
      "max_position_embeddings": cfg.max_seq_len, "rms_norm_eps": cfg.norm_eps,
      "rope_parameters": rope,
      # Pre-5.0 readers (transformers 4, vLLM) look for these two instead.
      "rope_theta": cfg.rope_theta,
      "rope_scaling": {"rope_type": "llama3", **cfg.rope_scaling_dict} if cfg.rope_scaling
                      else None,
      "tie_word_embeddings": cfg.tie_embeddings, "attention_bias": cfg.attention_bias,
      "mlp_bias": cfg.mlp_bias, "attention_dropout": 0.0, "initializer_range": 0.02,
      "pretraining_tp": 1, "use_cache": True, "bos_token_id": ids["bos"],
      "eos_token_id": ids["eos"], "pad_token_id": ids.get("pad")}


def _tokenizer_files(meta: dict, cfg: ModelConfig) -> tuple[dict, dict]:
  """Token ids for the configs and HF tokenizer files {name: bytes} (see
  lima_jax.formats.hf_tokenizer_files: SentencePiece + EOT, tokenizing as training did, with
  LIMA's chat template)."""
  # Imported here: the tokenizer backends load only when an export holds a tokenizer.
  from lima_jax.formats import hf_tokenizer_files as hf_tokenizer
  return hf_tokenizer.tokenizer_files(meta, cfg.vocab_size, cfg.max_seq_len)


def _write_safetensors(path: pathlib.Path, entries, fetch, bar) -> None:
  """Writes one safetensors file, tensor by tensor: entries = [(name, shape, dtype, item)]."""
  header, offset = {"__metadata__": {"format": "pt"}}, 0
  for name, shape, dtype, _ in entries:
    size = math.prod(shape) * np.dtype(dtype).itemsize
    header[name] = {"dtype": _NP_TO_ST[np.dtype(dtype)], "shape": list(shape),
                    "data_offsets": [offset, offset + size]}
    offset += size
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)  # the format aligns the data to 8 bytes
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(blob)) + blob)
    for _, _, dtype, item in entries:
      x = fetch(item)  # often a transposed view: cast and lay out a block of rows at a time
      step = max(1, _WRITE_BLOCK_BYTES // max(1, x[:1].size * np.dtype(dtype).itemsize))
      for i in range(0, max(1, x.shape[0]), step):
        f.write(np.ascontiguousarray(x[i:i + step], dtype=dtype).view(np.uint8).data)
      del x  # else it pins the previous parameter while the next one loads
      bar.update(1)


def save_hf(cfg: ModelConfig, params, out_dir, tokenizer_meta: dict | None = None,
            dtype: str | None = None, max_shard_bytes: int = 5 * 10**9,
            chat_template: str | None = None) -> None:
  """Writes a HF Llama directory: config.json, generation_config.json, safetensors shards
  (+ model.safetensors.index.json when more than one), and tokenizer files if given.

  params: the parameter tree (boxed or not, on any device). A leaf may also be a function
  returning the array, called once when the export reaches it, so a caller can load one
  parameter at a time. One layer slice of one parameter is on the host at a time. dtype
  defaults to cfg.param_dtype ('float32' or 'bfloat16'; never float16). Everything goes
  into a temporary directory renamed to out_dir at the end; out_dir must not exist.
  chat_template: the model's own template (a chat-template checkpoint): the tokenizer files
  are the model's with it (`hf_tokenizer_files.template_tokenizer_files`).
  """
  out_dir = pathlib.Path(out_dir)
  if out_dir.exists():
    raise UserError(f"{out_dir}: already exists; refusing to overwrite")
  dtype = dtype or cfg.param_dtype
  np_dtype = np.dtype(layers.as_dtype(dtype))
  params = jax.tree.map(lambda x: x.unbox() if hasattr(x, "unbox") else x, params,
                        is_leaf=lambda x: hasattr(x, "unbox"))
  plan = tensor_plan(cfg)

  def leaf(path):
    node = params
    for i, key in enumerate(path):
      if not isinstance(node, dict) or key not in node:
        raise UserError(f"params: missing {'/'.join(path[:i + 1])}")
      node = node[key]
    return node

  for path, layer, _, _, shape in plan:  # cheap checks before any byte is written
    want = shape if layer is None else (cfg.n_layers,) + shape
    got = getattr(leaf(path), "shape", want)
    if tuple(got) != want:
      raise UserError(f"params: {'/'.join(path)} has shape {tuple(got)}, "
                      f"model_config implies {want}")
  loaded = {}

  def fetch(item):
    path, layer, layout, shape = item
    if path not in loaded:  # the plan is parameter-major: drop the previous parameter
      loaded.clear()
      value = leaf(path)
      loaded[path] = value() if callable(value) else value
    x = loaded[path] if layer is None else loaded[path][layer]
    x = np.asarray(jax.device_get(x))  # a view of host arrays; one slice of device arrays
    if x.shape != shape:
      raise UserError(f"params: {'/'.join(path)}[{layer}] has shape {x.shape}, "
                      f"model_config implies {shape}")
    return to_hf(x, layout)

  entries = [(name, hf_shape(shape, layout), np_dtype, (path, layer, layout, shape))
             for path, layer, name, layout, shape in plan]
  shards, size = [[]], 0
  for e in entries:
    nbytes = math.prod(e[1]) * np_dtype.itemsize
    if shards[-1] and size + nbytes > max_shard_bytes:
      shards.append([])
      size = 0
    shards[-1].append(e)
    size += nbytes
  n = len(shards)
  names = ["model.safetensors"] if n == 1 else [
      f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]

  ids = {"bos": 1, "eos": 2}
  files = {}
  if tokenizer_meta is not None and chat_template:
    from lima_jax.formats import hf_tokenizer_files as hf_tokenizer
    ids, files = hf_tokenizer.template_tokenizer_files(tokenizer_meta, chat_template,
                                                       cfg.max_seq_len)
  elif tokenizer_meta is not None:
    ids, files = _tokenizer_files(tokenizer_meta, cfg)
  files["config.json"] = json.dumps(_hf_config(cfg, dtype, ids), indent=2).encode()
  eos = list(dict.fromkeys([ids["eos"]] + [ids[k] for k in ("eot", "end_of_turn") if k in ids]))
  generation = {"bos_token_id": ids["bos"], "eos_token_id": eos if len(eos) > 1 else eos[0],
                "pad_token_id": ids.get("pad")}
  if "eot" in ids:  # a LIMA-format model: LIMA's decoding by default
    from lima_jax.formats import hf_card
    from lima_jax.decode.sampling import LIMA
    # No repetition penalty: transformers and vLLM would apply it to the prompt's tokens too,
    # which LIMA's does not (README.md, written beside the weights, says how to get LIMA's).
    generation.update(do_sample=True, temperature=LIMA.temperature, top_p=LIMA.top_p,
                      repetition_penalty=1.0, max_new_tokens=LIMA.max_new_tokens)
    files["README.md"] = hf_card.model_card(cfg, dtype).encode()
  # As lima_jax decodes (decoding.banned_ids, sampling.allowed): BOS and PAD are never an
  # answer's token, nor are embedding rows past the tokenizer (sharding padding).
  never = sorted({ids[k] for k in ("bos", "pad") if ids.get(k) is not None} - set(eos))
  if tokenizer_meta is not None:
    never += list(range(ids["n_tokens"], cfg.vocab_size))
  if never:
    generation["suppress_tokens"] = never
  files["generation_config.json"] = json.dumps(generation, indent=2).encode()
  if n > 1:
    weight_map = {e[0]: fname for fname, shard in zip(names, shards) for e in shard}
    total = sum(math.prod(e[1]) for e in entries) * np_dtype.itemsize
    files["model.safetensors.index.json"] = json.dumps(
        {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))},
        indent=2).encode()

  tmp = out_dir.with_name(f".{out_dir.name}.tmp{os.getpid()}")
  tmp.mkdir(parents=True)
  try:
    with tqdm(total=len(entries), desc="save_hf", leave=False, disable=None) as bar:
      for fname, shard in zip(names, shards):
        _write_safetensors(tmp / fname, shard, fetch, bar)
    for fname, data in files.items():
      (tmp / fname).write_bytes(data)
    os.rename(tmp, out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def export_checkpoint(ckpt, out_dir, dtype: str = "bfloat16",
                      max_shard_bytes: int = 5 * 10**9) -> None:
  """`save_hf` of a lima_jax checkpoint with its tokenizer, read one layer slice at a time."""
  from lima_jax.formats import checkpoint
  if "://" in str(out_dir):
    raise UserError(f"--out={out_dir}: to-hf writes a local directory (copy it to the bucket "
                    "after)")
  # TensorStore reads the checkpoint wherever it is (gs:// as training prints it) and one layer
  # slice of one stacked parameter at a time: host memory stays near the largest such slice.
  meta, params = checkpoint.read_stored(ckpt)
  if "model_config" not in meta:
    raise UserError(f"{ckpt}: checkpoint meta has no 'model_config'")
  try:
    cfg = ModelConfig.from_dict(meta["model_config"])
    save_hf(cfg, params, out_dir, meta.get("tokenizer"), dtype, max_shard_bytes,
            meta.get("chat_template") if meta.get("format", "chat_template") == "chat_template"
            else None)
  except (UserError, TypeError) as e:
    raise UserError(f"{ckpt}: {e}") from None
