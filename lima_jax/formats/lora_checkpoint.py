"""A LoRA checkpoint opened as a plain model: its base found and checked, the adapters merged.

A LoRA run's checkpoint holds only adapters (params/) and names its base in meta['lora']['base']
(path, kind, identity: lima_jax.train.fingerprint.base_identity). `model_file.open` comes here
for one, so answering, selecting, serving, judging and `convert to-hf` see an ordinary model:
merged once at load, there is one decode path and no per-token adapter cost.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from lima_jax.errors import UserError
from lima_jax.formats import checkpoint
from lima_jax.model import lora
from lima_jax.model import transformer as model_lib
from lima_jax.model.config import ModelConfig


def is_lora(meta: dict) -> bool:
  return bool(meta.get("lora"))


def trained_config(path, meta: dict) -> ModelConfig:
  """The model the run trained (adapters included)."""
  try:
    cfg = ModelConfig.from_dict(meta["model_config"])
  except (KeyError, TypeError, UserError) as e:
    raise UserError(f"{path}: bad or missing model_config in meta ({e})") from None
  if cfg.lora is None:
    raise UserError(f"{path}: meta names a LoRA base but model_config has no 'lora'")
  return cfg


def merged_config(cfg: ModelConfig) -> ModelConfig:
  """What a LoRA model is once merged: the plain model, float32 unless its base was bfloat16."""
  return dataclasses.replace(cfg, lora=None)


def base_params(path, meta: dict, cfg: ModelConfig, open_model) -> dict:
  """The frozen base exactly as the run held it (grown for EOT, cast, int8 where it was), on
  the host; one clear line if it is missing or not the one the adapters were trained on.
  open_model: `model_file.open` (passed in: model_file comes here for LoRA checkpoints)."""
  from lima_jax.train import fingerprint
  base = meta["lora"]["base"]
  plain = merged_config(cfg)
  if not base.get("path"):  # a random-init base: the seed's init, as the run made it
    init = jax.jit(lambda k: model_lib.Transformer(plain).init(k, jnp.zeros((1, 8), jnp.int32)))
    params = jax.tree.map(np.asarray, _unbox(init(jax.random.key(base["seed"]))["params"]))
  else:
    where = base["path"]
    try:
      identity = fingerprint.base_identity(where)
    except UserError:
      raise UserError(f"{path}: its LoRA base {where} (meta lora.base.path) does not exist; "
                      "put the base model there") from None
    if identity != base["identity"]:
      raise UserError(f"{path}: {where} is not the base these adapters were trained on (its "
                      f"identity {identity[:12]} is not {base['identity'][:12]}, meta "
                      "lora.base.identity)")
    m = open_model(where, kind=base["kind"], need_tokenizer=False, check_vocab=False,
                        on_host=True)
    params = jax.tree.map(lambda x: np.asarray(x).astype(jnp.dtype(plain.param_dtype)),
                          m.params)
    params = jax.tree.map(np.asarray, model_lib.resize_vocab(params, cfg.vocab_size))
  if cfg.lora.base_dtype == "int8":
    params = jax.tree.map(np.asarray, lora.quantize(params, cfg.lora))
  return params


def _unbox(tree):
  return jax.tree.map(lambda x: x.unbox() if hasattr(x, "unbox") else x, tree,
                      is_leaf=lambda x: hasattr(x, "unbox"))


def load_merged(path, meta: dict, dtype: str | None, open_model) -> tuple[ModelConfig, dict]:
  """(plain config, merged params as host arrays) of the LoRA checkpoint at `path`."""
  cfg = trained_config(path, meta)
  base = base_params(path, meta, cfg, open_model)
  try:
    adapters, _ = checkpoint.load(path)
  except (ValueError, KeyError, OSError) as e:
    raise UserError(f"{path}: cannot restore the adapters ({type(e).__name__}: {e})") from None
  out_dtype = dtype or merged_config(cfg).param_dtype
  merged = lora.merge(lora.join(base, jax.tree.map(np.asarray, adapters)), cfg.lora,
                      jnp.dtype(out_dtype))
  plain = dataclasses.replace(merged_config(cfg), param_dtype=out_dtype)
  return plain, jax.tree.map(lambda x: np.asarray(x).astype(jnp.dtype(out_dtype)), merged)
