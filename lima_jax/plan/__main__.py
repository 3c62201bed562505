r"""Ahead-of-time planner: will a config fit a TPU slice, and how fast could it go?

  python -m lima_jax.plan --config=configs/lima.py:65b --topology=v4-256 [--mesh=1,-1,1]
  python -m lima_jax.plan --decode --config=configs/lima.py:65b --topology=v4-16 --mesh=1,1,8

Training: `lima_jax.plan.train`; decoding (--decode): `lima_jax.plan.decode`.
Exit status: 0 fits, 3 does not fit, 1 bad input (one line on stderr).
"""
import dataclasses
import sys

import jax
from absl import app, flags
from ml_collections import config_flags

from lima_jax import files
from lima_jax.errors import UserError, cli_main
from lima_jax.parallel import sharding
from lima_jax.parallel import tpu_specs
from lima_jax.plan import common
from lima_jax.plan import decode as plan_decode
from lima_jax.plan import train as plan_train
from lima_jax.train import base_model


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  # Compile-only TPU devices need no TPU backend; CPU serves for everything else.
  jax.config.update("jax_platforms", "cpu")
  f = flags.FLAGS
  config = f.config
  mesh = sharding.parse_mesh_shape(f.mesh) if f.mesh else None
  if f.decode:
    return _main_decode(config, f, mesh)
  p = plan_train.make_plan(config, f.topology, mesh)
  size = config.model.size or "(size from model.init)"
  print(plan_train.format_plan(p, f"lima_jax plan: {size}, batch {config.train.batch_size} x "
                    f"{config.data.max_len} tokens, step: train.build_train_step"))
  if f.out:
    files.write_json(f.out, dataclasses.asdict(p), indent=2)
  if not p.fits:
    sys.exit(3)


def _main_decode(config, f, mesh_shape) -> None:
  slice_ = tpu_specs.parse_slice(f.topology)
  mesh = common.topology_mesh(slice_, config.mesh.shape if mesh_shape is None else mesh_shape,
                       f.decode_batch)
  if f.decode_batch % sharding.batch_shards(mesh):
    raise UserError(f"--decode_batch={f.decode_batch} does not split over the "
                    f"{sharding.batch_shards(mesh)} batch shards of mesh {dict(mesh.shape)}")
  cfg = dataclasses.replace(base_model.planned_model_config(config), param_dtype=f.dtype)
  with jax.set_mesh(mesh):
    p = plan_decode.plan_decode(cfg, mesh, slice_, cfg.vocab_size, f.decode_batch,
                                f.prompt_len, f.prompts)
  size = config.model.size or "(size from model.init)"
  print(plan_decode.format_decode_plan(p, f"lima_jax plan --decode: {size}, LIMA's decoding"))
  if f.out:
    files.write_json(f.out, dataclasses.asdict(p), indent=2)
  if not p.fits:
    sys.exit(3)


def run():
  config_flags.DEFINE_config_file(
      "config", None, "Training config: configs/FILE.py[:VARIANT]; override fields with "
      "--config.a.b=value, as for lima_jax.main.", lock_config=True)
  flags.DEFINE_string("topology", None, "TPU slice: a Cloud accelerator type (v4-256, v5p-128, "
                      "v5litepod-16, v6e-64) or a chip grid (v4:4x4x8, v5e:4x4).")
  flags.DEFINE_string("mesh", None, "Mesh sizes data,fsdp,tensor (one may be -1: the rest of "
                      "the chips); default: the config's mesh.shape ((): the mesh training "
                      "would choose).")
  flags.DEFINE_string("out", None, "Also write the plan as JSON to this file.")
  flags.DEFINE_bool("decode", False, "Plan decoding (generate, select) instead of training: "
                    "memory of one batch, and a bandwidth-bound time estimate.")
  flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "--decode: parameter dtype "
                    "(as generate --dtype loads it).")
  flags.DEFINE_integer("decode_batch", 8, "--decode: prompts decoded together (generate "
                       "--batch_size).", lower_bound=1)
  flags.DEFINE_integer("prompt_len", 512, "--decode: longest prompt, in tokens (rounded up to a "
                       "power of two, as the decoder does).", lower_bound=1)
  flags.DEFINE_integer("prompts", 50, "--decode: prompts to estimate the time of (LIMA's dev "
                       "set: 50).", lower_bound=1)
  flags.mark_flags_as_required(["config", "topology"])
  app.run(cli_main(main))
if __name__ == "__main__":
  run()
