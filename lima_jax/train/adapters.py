"""LoRA runs (`train.lora.rank` > 0): the spec from the config, the frozen base, the state.

The base is `model.init` (or the seed's random init), grown for EOT as full fine-tuning grows it,
cast to its storage dtype or quantized to int8, and placed straight into its shardings; it is
never saved: checkpoints hold the adapters and their optimizer state, and their meta's `lora`
names the base (path, kind, `fingerprint.base_identity`) that `formats/lora_checkpoint` merges
them into at load.
"""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from lima_jax.model import lora
from lima_jax.model import transformer as model_lib
from lima_jax.train import base_model
from lima_jax.train.step import Built, TrainState


def base_config(cfg):
  """The plain model the base is: no adapters (stored as cfg.param_dtype; int8 comes after)."""
  return dataclasses.replace(cfg, lora=None)


def load_frozen(config, built: Built, cfg, init_kind: str, mesh):
  """The frozen base in its shardings: model.init (or the seed's init), int8 where asked."""
  plain = base_config(cfg)
  float_sh = jax.tree.map(lambda s: s, built.state_shardings.frozen)
  for name in cfg.lora.targets if cfg.lora.base_dtype == "int8" else ():
    float_sh["layers"][lora.MODULE[name]].pop(f"{name}_scale")
  if init_kind:
    params = base_model.load_init_params(config, init_kind, plain, float_sh, mesh)
  else:
    init = lambda rng: nn.meta.unbox(model_lib.Transformer(plain).init(
        rng, jnp.zeros((1, 8), jnp.int32))["params"])
    params = jax.jit(init, out_shardings=float_sh)(jax.random.key(config.seed))
  if cfg.lora.base_dtype == "int8":
    params = jax.jit(lambda p: lora.quantize(p, cfg.lora),
                     out_shardings=built.state_shardings.frozen)(params)
  return params


def initial_state(config, built: Built, cfg, init_kind: str, mesh) -> TrainState:
  frozen = load_frozen(config, built, cfg, init_kind, mesh)
  init = lambda rng: lora.split(nn.meta.unbox(built.model.init(
      rng, jnp.zeros((1, 8), jnp.int32))["params"]))[1]  # the base's half is never computed
  params = jax.jit(init, out_shardings=built.state_shardings.params)(jax.random.key(config.seed))
  opt_state = jax.jit(built.tx.init, out_shardings=built.state_shardings.opt_state)(params)
  return TrainState(jax.device_put(jnp.int32(0), built.state_shardings.step), params, opt_state,
                    frozen)


def meta(config, init_kind: str, fingerprint: dict) -> dict:
  """What a LoRA checkpoint's meta says of its base: where it was and what it is."""
  return {"lora": {"base": {"path": config.model.init, "kind": init_kind,
                            "identity": fingerprint["model.init"], "seed": config.seed,
                            "vocab_multiple": config.model.vocab_multiple}}}


def describe(built: Built, cfg) -> str:
  trained = lora.count(built.abstract_state.params)
  frozen = lora.count(built.abstract_state.frozen)
  return (f"LoRA rank {cfg.lora.rank} on {','.join(cfg.lora.targets)}: {trained:,} trained "
          f"parameters, {frozen:,} frozen ({cfg.lora.base_dtype or cfg.param_dtype} base)")
