"""What a run starts from: the architecture, tokenizer and weights named by `model.init`.

`model.init` is a lima_jax checkpoint (restored straight into its shardings), a Hugging Face
directory, a GGUF file (dequantized to float32) or a llama2.c `.bin` (read on every host, then
each host places only its own devices' shards). The vocabulary grows by EOT, padded to
`model.vocab_multiple`, and new rows start at the mean embedding (`model.resize_vocab`).
"""
import dataclasses
import warnings
from typing import Optional

import jax
import numpy as np
from etils import epath

from lima_jax import checkpoint, sharding
from lima_jax import model as model_lib
from lima_jax import tokenizer as tokenizer_lib
from lima_jax.errors import UserError
from lima_jax.model_config import ModelConfig, get_size

_ARCH_FIELDS = ("dim", "n_layers", "n_heads", "n_kv_heads", "hidden_dim", "head_dim")


def read_init(path: str) -> tuple[Optional[ModelConfig], Optional[dict], str]:
  """(architecture, tokenizer meta, kind) of `model.init` without loading any array."""
  if not path:
    return None, None, ""
  p = epath.Path(path)
  if (p / "meta").exists():
    meta = checkpoint.read_meta(p)
    return ModelConfig.from_dict(meta["model_config"]), meta.get("tokenizer"), "lima"
  from lima_jax import convert  # Imports safetensors/HF helpers only when needed.
  if (p / "config.json").exists():
    return convert.read_hf_config(p), None, "hf"
  if p.is_file() and p.suffix == ".gguf":
    from lima_jax import gguf_file
    return gguf_file.read_config(p), gguf_file.read_tokenizer_meta(p), "gguf"
  if p.is_file():
    return convert.read_llama2c_config(p), None, "llama2c"
  raise UserError(f"model.init: {path}: not a lima_jax checkpoint, a Hugging Face directory, "
                  "a .gguf file or a llama2.c .bin file")


def model_config(config, init_cfg: Optional[ModelConfig],
                 tok: tokenizer_lib.Tokenizer) -> ModelConfig:
  """The architecture from `init` (or `model.size`), the training knobs from the config, and
  the vocabulary grown to hold EOT (padded to `model.vocab_multiple`)."""
  m = config.model
  if m.size:
    sized = get_size(m.size)
    if init_cfg is not None:
      wrong = [f"{f}: config {getattr(sized, f)} vs init {getattr(init_cfg, f)}"
               for f in _ARCH_FIELDS if getattr(sized, f) != getattr(init_cfg, f)]
      if wrong:
        raise UserError(f"model.size={m.size!r} does not match model.init={m.init}: "
                        + "; ".join(wrong))
  base = init_cfg if init_cfg is not None else get_size(m.size) if m.size else None
  if base is None:
    raise UserError("model: set model.size (random init) or model.init (weights to start from)")
  vocab = base.vocab_size
  if init_cfg is None or tok.vocab_size > vocab:
    if init_cfg is not None and tok.eot_id > vocab:
      raise UserError(f"data.tokenizer has {tok.eot_id} pieces but model.init has only {vocab} "
                      "embedding rows: the tokenizer does not belong to these weights")
    vocab = tok.padded_vocab_size(m.vocab_multiple)
  if init_cfg is not None and config.data.max_len > init_cfg.max_seq_len:
    warnings.warn(f"data.max_len={config.data.max_len} is longer than model.init's context of "
                  f"{init_cfg.max_seq_len} tokens: positions past {init_cfg.max_seq_len} extend "
                  "RoPE beyond what the weights were trained on", stacklevel=2)
  return dataclasses.replace(
      base, vocab_size=vocab, dropout_top=m.dropout_top, dropout_schedule=m.dropout_schedule,
      dtype=m.dtype, param_dtype=m.param_dtype, scan_layers=m.scan_layers,
      remat_policy=m.remat_policy, attention_block=m.attention_block,
      attention_impl=m.attention_impl, max_seq_len=max(base.max_seq_len, config.data.max_len))


def planned_model_config(config) -> ModelConfig:
  """The model a run of `config` would train, from `model.size` alone (for the planner): the
  named size's vocabulary plus EOT, padded, and the config's training knobs."""
  if not config.model.size:
    raise UserError("model.size: the planner needs a named size (it does not read model.init)")
  base = get_size(config.model.size)
  if config.model.attention_impl == "cudnn":
    raise UserError("model.attention_impl='cudnn' is for NVIDIA GPUs; the planner compiles for "
                    "TPU: use 'xla'")
  return model_config(config, None, _PlannedTokenizer(base.vocab_size + 1, base.vocab_size))


class _PlannedTokenizer(tokenizer_lib.Tokenizer):
  """What the planner knows of a tokenizer: its size with EOT (no model file to load)."""

  def __init__(self, vocab_size: int, eot_id: int):  # noqa: the base's proto is not needed
    self.vocab_size, self.eot_id = vocab_size, eot_id


def load_tokenizer(config, init_tok_meta: Optional[dict], init_kind: str
                   ) -> tokenizer_lib.Tokenizer:
  """`data.tokenizer`, else the one stored with `model.init`. When both exist they must be the
  same model: other pieces under the same ids would train on garbage with a finite loss."""
  path, init = config.data.tokenizer, config.model.init
  if init_kind == "hf" and any((epath.Path(init) / f).exists()
                               for f in ("tokenizer.model", "tokenizer.json")):
    init_tok_meta = tokenizer_lib.Tokenizer.load(init).to_meta()
  if not path:
    if init_tok_meta:
      return tokenizer_lib.Tokenizer.from_meta(init_tok_meta)
    raise UserError("data.tokenizer: required (model.init holds no tokenizer)")
  tok = tokenizer_lib.Tokenizer.load(path)
  if (init_tok_meta and init_tok_meta != tok.to_meta()
      and not config.model.allow_tokenizer_mismatch):
    raise UserError(f"data.tokenizer={path} is not the tokenizer stored with model.init={init}: "
                    "drop data.tokenizer to use the stored one, or set "
                    "--config.model.allow_tokenizer_mismatch=True if the ids really agree")
  return tok


def _place(host_tree, shardings):
  """Host (numpy) arrays -> global arrays: each process puts only its own devices' shards."""
  return jax.tree.map(lambda x, s: jax.make_array_from_callback(x.shape, s, lambda i: x[i]),
                      host_tree, shardings)


def load_init_params(config, kind: str, cfg: ModelConfig, param_sh, mesh):
  """Starting weights placed straight into their shardings (resized for EOT if needed)."""
  path = config.model.init
  if kind == "lima":
    stored = checkpoint.params_metadata(path)
    stored_cfg = dataclasses.replace(cfg, vocab_size=stored["embed"]["embedding"].shape[0])
    boxed = model_lib.abstract_params(stored_cfg)
    params, _ = checkpoint.load(path, sharding.logical_shardings(boxed, mesh))
    params = jax.tree.map(lambda x: x.astype(cfg.param_dtype), params)
    return jax.jit(lambda p: model_lib.resize_vocab(p, cfg.vocab_size), out_shardings=param_sh)(
        params)
  from lima_jax import convert  # A Hugging Face, GGUF or llama2.c file: read on every host.
  if kind == "gguf":
    from lima_jax import gguf_file
    _, params = gguf_file.load_gguf(path)
  else:
    _, params = convert.load_hf(path) if kind == "hf" else convert.load_llama2c(path)
  params = model_lib.resize_vocab(jax.tree.map(lambda x: x.astype(cfg.param_dtype), params),
                                  cfg.vocab_size)
  return _place(jax.tree.map(np.asarray, params), param_sh)
