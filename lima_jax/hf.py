"""Hugging Face format: config.json <-> ModelConfig, safetensors <-> the param tree.

model_type llama, mistral (v0.2+: no sliding window) and qwen2 (q/k/v biases) share one
layout; `ModelConfig.arch` remembers which one to write back.

The model keeps HF's rotate_half RoPE layout, so conversion is renaming, transposing and
stacking layers. Tensors move one at a time (safetensors `safe_open` in; a streaming
safetensors writer out), so host memory stays near one tensor beyond what the caller holds.
`lima_jax.convert` is the command line around this module.
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
from safetensors import SafetensorError, safe_open
from tqdm import tqdm

from lima_jax import layers
from lima_jax import model as model_lib
from lima_jax.errors import UserError
from lima_jax.model_config import ModelConfig

_ST_DTYPES = {"F32": np.float32, "BF16": ml_dtypes.bfloat16, "F16": np.float16}
_NP_TO_ST = {np.dtype(np.float32): "F32", np.dtype(ml_dtypes.bfloat16): "BF16"}
_WRITE_BLOCK_BYTES = 16 << 20

# (params path, HF name, layout). Layouts: 'same'; 'flat' (bias, heads merged); ('T', s): ours
# reshaped to [prod(shape[:s]), rest] and transposed is HF's nn.Linear weight [out, in].
_TOP = [(("embed", "embedding"), "model.embed_tokens.weight", "same"),
        (("final_norm", "scale"), "model.norm.weight", "same"),
        (("lm_head", "kernel"), "lm_head.weight", ("T", 1))]
_LAYER = [(("attn_norm", "scale"), "input_layernorm.weight", "same"),
          (("attn", "q"), "self_attn.q_proj.weight", ("T", 1)),
          (("attn", "k"), "self_attn.k_proj.weight", ("T", 1)),
          (("attn", "v"), "self_attn.v_proj.weight", ("T", 1)),
          (("attn", "o"), "self_attn.o_proj.weight", ("T", 2)),
          (("mlp_norm", "scale"), "post_attention_layernorm.weight", "same"),
          (("mlp", "gate"), "mlp.gate_proj.weight", ("T", 1)),
          (("mlp", "up"), "mlp.up_proj.weight", ("T", 1)),
          (("mlp", "down"), "mlp.down_proj.weight", ("T", 1))]
_ATTN_BIAS = [(("attn", f"{n}_bias"), f"self_attn.{n}_proj.bias", "flat") for n in "qkvo"]
_HF_CLASS = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
             "qwen2": "Qwen2ForCausalLM"}
_MLP_BIAS = [(("mlp", f"{n}_bias"), f"mlp.{n}_proj.bias", "flat") for n in ("gate", "up", "down")]


def _to_hf(x, layout):
  if layout == "same":
    return x
  if layout == "flat":
    return x.reshape(-1)
  return x.reshape(math.prod(x.shape[:layout[1]]), -1).T


def _from_hf(y, layout, shape):
  return (y.T if isinstance(layout, tuple) else y).reshape(shape)


def _tensor_plan(cfg: ModelConfig):
  """[(params path, layer or None, HF name, layout, our shape)] in parameter-major order."""
  shapes = model_lib.abstract_params(cfg)
  shape = lambda path: tuple(shapes[path[0]][path[1]].value.shape) if len(path) == 2 else \
      tuple(shapes["layers"][path[1]][path[2]].value.shape[1:])
  plan = [(p, None, n, lay, shape(p)) for p, n, lay in _TOP
          if not (cfg.tie_embeddings and p[0] == "lm_head")]
  attn_bias = _ATTN_BIAS if cfg.attention_bias else _ATTN_BIAS[:3] if cfg.qkv_bias else []
  specs = _LAYER + attn_bias + (_MLP_BIAS if cfg.mlp_bias else [])
  for p, n, lay in specs:
    path = ("layers",) + p
    plan += [(path, i, f"model.layers.{i}.{n}", lay, shape(path)) for i in range(cfg.n_layers)]
  return plan


def _hf_shape(shape, layout):
  return tuple(_to_hf(np.empty(shape, np.uint8), layout).shape)


def _read_json(path: pathlib.Path) -> dict:
  try:
    return json.loads(path.read_text())
  except FileNotFoundError:
    raise UserError(f"{path}: not found") from None
  except json.JSONDecodeError as e:
    raise UserError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None


def read_hf_config(hf_dir) -> ModelConfig:
  """The ModelConfig of a Hugging Face llama, mistral or qwen2 directory (reads config.json)."""
  path = pathlib.Path(hf_dir) / "config.json"
  c = _read_json(path)
  arch = c.get("model_type")
  if arch not in _HF_CLASS:
    raise UserError(f"{path}: model_type {arch!r} is not supported (one of {list(_HF_CLASS)})")
  window = c.get("sliding_window") if arch == "mistral" or c.get("use_sliding_window") else None
  if window is not None and window < c.get("max_position_embeddings", 2048):
    raise UserError(f"{path}: sliding_window={window} attention is not supported (Mistral v0.1; "
                    "v0.2 and later have none)")
  if c.get("hidden_act", "silu") != "silu":
    raise UserError(f"{path}: hidden_act {c['hidden_act']!r} is not supported (only 'silu')")
  rope = dict(c.get("rope_parameters") or c.get("rope_scaling") or {})  # transformers 5 / 4
  rope_type = rope.pop("rope_type", rope.pop("type", "default"))
  theta = rope.pop("rope_theta", c.get("rope_theta", 10000.0))
  if rope_type not in ("default", "llama3") or rope.pop("partial_rotary_factor", 1.0) != 1.0:
    raise UserError(f"{path}: rope {c.get('rope_parameters') or c.get('rope_scaling')} is not "
                    "supported (rope_type 'default' or 'llama3', full rotary dim)")
  try:
    heads = c["num_attention_heads"]
    return ModelConfig(
        vocab_size=c["vocab_size"], dim=c["hidden_size"], n_layers=c["num_hidden_layers"],
        n_heads=heads, n_kv_heads=c.get("num_key_value_heads") or heads,
        hidden_dim=c["intermediate_size"], head_dim=c.get("head_dim"),
        max_seq_len=c.get("max_position_embeddings", 2048), norm_eps=c.get("rms_norm_eps", 1e-6),
        rope_theta=float(theta),
        rope_scaling=rope if rope_type == "llama3" else None,
        tie_embeddings=bool(c.get("tie_word_embeddings", False)),
        attention_bias=arch == "llama" and bool(c.get("attention_bias", False)),
        qkv_bias=arch == "qwen2", mlp_bias=arch == "llama" and bool(c.get("mlp_bias", False)),
        arch=arch)
  except KeyError as e:
    raise UserError(f"{path}: missing field {e.args[0]!r}") from None
  except UserError as e:
    raise UserError(f"{path}: {e}") from None


def params_from_tensors(cfg: ModelConfig, get, dtype, desc: str) -> dict:
  """The param tree from tensors in HF's layout, one at a time: get(HF name) -> (where, shape,
  read() -> array). Shapes are checked against `cfg` before each read."""
  params = {}
  for path, layer, name, layout, shape in tqdm(_tensor_plan(cfg), desc=desc, leave=False,
                                               disable=None):
    where, got, read = get(name)
    want = _hf_shape(shape, layout)
    if tuple(got) != want:
      raise UserError(f"{where}: tensor {name!r} has shape {tuple(got)}, the config implies "
                      f"{want}")
    value = _from_hf(read(), layout, shape).astype(dtype)
    node = params
    for key in path[:-1]:
      node = node.setdefault(key, {})
    if layer is None:
      node[path[-1]] = value
    else:
      node.setdefault(path[-1], np.empty((cfg.n_layers,) + shape, dtype))[layer] = value
  return params


def load_hf(hf_dir, param_dtype: str | None = None):
  """(ModelConfig, params) of a HF Llama directory; params are unboxed numpy arrays.

  Reads model.safetensors or the shards listed in model.safetensors.index.json, one tensor at
  a time. param_dtype defaults to the stored dtype, except float16 which becomes float32
  (lossless; the model never computes in float16).
  """
  hf_dir = pathlib.Path(hf_dir)
  cfg = read_hf_config(hf_dir)
  index = hf_dir / "model.safetensors.index.json"
  if index.exists():
    weight_map = _read_json(index).get("weight_map")
    if not isinstance(weight_map, dict):
      raise UserError(f"{index}: missing field 'weight_map'")
    source = index
  elif (hf_dir / "model.safetensors").exists():
    source, weight_map = hf_dir / "model.safetensors", None
  else:
    raise UserError(f"{hf_dir}: no model.safetensors or model.safetensors.index.json "
                    "(PyTorch .bin weights are not read: they are pickles)")
  plan = _tensor_plan(cfg)
  handles = {}

  def open_tensor(name):
    fname = weight_map.get(name) if weight_map is not None else "model.safetensors"
    if fname is None:
      raise UserError(f"{source}: missing tensor {name!r}")
    if fname not in handles:
      try:
        handles[fname] = safe_open(hf_dir / fname, framework="np")
      except (OSError, SafetensorError) as e:
        raise UserError(f"{hf_dir / fname}: cannot read safetensors ({e})") from None
    if name not in handles[fname].keys():
      raise UserError(f"{hf_dir / fname}: missing tensor {name!r}")
    return hf_dir / fname, handles[fname].get_slice(name)

  stored = open_tensor(plan[0][2])[1].get_dtype()
  if stored not in _ST_DTYPES:
    raise UserError(f"{source}: dtype {stored} is not supported (F32, BF16 or F16)")
  param_dtype = param_dtype or ("bfloat16" if stored == "BF16" else "float32")
  dtype = np.dtype(layers.as_dtype(param_dtype))
  def get(name):
    fpath, tensor = open_tensor(name)
    return fpath, tuple(tensor.get_shape()), lambda: tensor[:]

  params = params_from_tensors(cfg, get, dtype, "load_hf")
  cfg = ModelConfig.from_dict(
      {**cfg.to_dict(), "param_dtype": param_dtype, "dtype": param_dtype})
  return cfg, params


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
      "architectures": [_HF_CLASS[cfg.arch]], "model_type": cfg.arch, "dtype": dtype, **extra,
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
  """Token ids for the configs and HF tokenizer files {name: bytes} (see lima_jax.hf_tokenizer:
  SentencePiece + EOT, tokenizing as training did, with LIMA's chat template)."""
  from lima_jax import hf_tokenizer  # sentencepiece only when exporting one
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
            dtype: str | None = None, max_shard_bytes: int = 5 * 10**9) -> None:
  """Writes a HF Llama directory: config.json, generation_config.json, safetensors shards
  (+ model.safetensors.index.json when more than one), and tokenizer files if given.

  params: the parameter tree (boxed or not, on any device). A leaf may also be a function
  returning the array, called once when the export reaches it, so a caller can load one
  parameter at a time. One layer slice of one parameter is on the host at a time. dtype
  defaults to cfg.param_dtype ('float32' or 'bfloat16'; never float16). Everything goes
  into a temporary directory renamed to out_dir at the end; out_dir must not exist.
  """
  out_dir = pathlib.Path(out_dir)
  if out_dir.exists():
    raise UserError(f"{out_dir}: already exists; refusing to overwrite")
  dtype = dtype or cfg.param_dtype
  np_dtype = np.dtype(layers.as_dtype(dtype))
  params = jax.tree.map(lambda x: x.unbox() if hasattr(x, "unbox") else x, params,
                        is_leaf=lambda x: hasattr(x, "unbox"))
  plan = _tensor_plan(cfg)

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
    return _to_hf(x, layout)

  entries = [(name, _hf_shape(shape, layout), np_dtype, (path, layer, layout, shape))
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
  if tokenizer_meta is not None:
    ids, files = _tokenizer_files(tokenizer_meta, cfg)
  files["config.json"] = json.dumps(_hf_config(cfg, dtype, ids), indent=2).encode()
  eos = [ids["eos"]] + ([ids["eot"]] if "eot" in ids else [])
  generation = {"bos_token_id": ids["bos"], "eos_token_id": eos if len(eos) > 1 else eos[0],
                "pad_token_id": ids.get("pad")}
  if "eot" in ids:  # a LIMA-format model: LIMA's decoding by default
    from lima_jax import hf_card
    from lima_jax.sampling import LIMA
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
