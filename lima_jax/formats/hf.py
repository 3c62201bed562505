"""Hugging Face format, reading: config.json -> ModelConfig, safetensors -> the param tree.

model_type llama, mistral (v0.2+: no sliding window) and qwen2 (q/k/v biases) share one
layout; `ModelConfig.arch` remembers which one to write back (`lima_jax.formats.hf_export`).

The model keeps HF's rotate_half RoPE layout, so conversion is renaming, transposing and
stacking layers. Tensors are read one at a time (safetensors `safe_open`), so host memory stays
near one tensor beyond the params. The layout tables here serve the export and GGUF too.
"""
import json
import math
import pathlib

import numpy as np
import ml_dtypes
from safetensors import SafetensorError, safe_open
from tqdm import tqdm

from lima_jax.model import layers
from lima_jax.model import transformer as model_lib
from lima_jax.errors import UserError
from lima_jax.model.config import ModelConfig

_ST_DTYPES = {"F32": np.float32, "BF16": ml_dtypes.bfloat16, "F16": np.float16}

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
HF_CLASS = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
             "qwen2": "Qwen2ForCausalLM"}
_MLP_BIAS = [(("mlp", f"{n}_bias"), f"mlp.{n}_proj.bias", "flat") for n in ("gate", "up", "down")]


def to_hf(x, layout):
  if layout == "same":
    return x
  if layout == "flat":
    return x.reshape(-1)
  return x.reshape(math.prod(x.shape[:layout[1]]), -1).T


def _from_hf(y, layout, shape):
  return (y.T if isinstance(layout, tuple) else y).reshape(shape)


def tensor_plan(cfg: ModelConfig):
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


def hf_shape(shape, layout):
  return tuple(to_hf(np.empty(shape, np.uint8), layout).shape)


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
  if arch not in HF_CLASS:
    raise UserError(f"{path}: model_type {arch!r} is not supported (one of {list(HF_CLASS)})")
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
  for path, layer, name, layout, shape in tqdm(tensor_plan(cfg), desc=desc, leave=False,
                                               disable=None):
    where, got, read = get(name)
    want = hf_shape(shape, layout)
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
  plan = tensor_plan(cfg)
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
