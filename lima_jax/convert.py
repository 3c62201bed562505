"""Checkpoint conversion: Hugging Face <-> lima_jax, and llama2.c (v0) and GGUF import.

    python -m lima_jax.convert from-hf --hf_dir=D --out=CKPT
    python -m lima_jax.convert to-hf --checkpoint=CKPT --out=D
    python -m lima_jax.convert from-llama2c --model=F.bin --tokenizer=T.bin --out=CKPT
    python -m lima_jax.convert from-gguf --gguf=F.gguf --out=CKPT
    python -m lima_jax.convert to-peft --checkpoint=CKPT --out=D     (a LoRA run's adapter)

from-hf reads model_type llama, mistral and qwen2 with tokenizer.model (SentencePiece) or
tokenizer.json (Hugging Face tokenizers). The formats live in `lima_jax.formats` (`model_file`
opens any of them; `hf`, `hf_export`, `gguf`, `llama2c`); load_hf, read_hf_config and save_hf
are re-exported here, as DESIGN §5 promises.
"""
import pathlib

from lima_jax.errors import UserError
from lima_jax.formats.hf import load_hf, read_hf_config
from lima_jax.formats.hf_export import save_hf

__all__ = ["load_hf", "read_hf_config", "save_hf"]  # the Python contract (DESIGN §5)


def main(argv) -> None:
  from absl import flags, logging
  f = flags.FLAGS
  if not f["verbosity"].present:  # orbax logs every step; errors reach the user as UserError
    logging.set_verbosity(logging.ERROR)
  commands = ("from-hf", "to-hf", "from-llama2c", "from-gguf", "to-peft")
  if len(argv) != 2 or argv[1] not in commands:
    raise UserError(f"usage: python -m lima_jax.convert {{{'|'.join(commands)}}} --flags "
                    f"(got {' '.join(argv[1:]) or 'no command'})")
  required = {"from-hf": ("hf_dir", "out"), "to-hf": ("checkpoint", "out"),
              "to-peft": ("checkpoint", "out"),
              "from-llama2c": ("model", "out"), "from-gguf": ("gguf", "out")}[argv[1]]
  missing = [name for name in required if not f[name].value]
  if missing:
    raise UserError(f"{argv[1]}: missing --{', --'.join(missing)}")
  if pathlib.Path(f.out).exists():
    raise UserError(f"{f.out}: already exists; refusing to overwrite")
  from lima_jax.formats import checkpoint, hf_export, lora_checkpoint, model_file
  if argv[1] == "to-peft":
    from lima_jax.formats import peft
    peft.export(f.checkpoint, f.out, f.dtype or "float32", f.max_shard_mb * 10**6)
  elif argv[1] == "to-hf" and lora_checkpoint.is_lora(checkpoint.read_stored_meta(f.checkpoint)):
    m = model_file.open(f.checkpoint, on_host=True)  # merged into full weights (docs/lora.md)
    hf_export.save_hf(m.config, m.params, f.out, m.tokenizer_meta, f.dtype or "bfloat16",
                      f.max_shard_mb * 10**6)
  elif argv[1] == "to-hf":
    hf_export.export_checkpoint(f.checkpoint, f.out, f.dtype or "bfloat16",
                                f.max_shard_mb * 10**6)
  else:
    kind, source = {"from-hf": ("hf", f.hf_dir), "from-llama2c": ("llama2c", f.model),
                    "from-gguf": ("gguf", f.gguf)}[argv[1]]
    model_file.to_checkpoint(source, f.out, kind=kind, dtype=f.dtype,
                             tokenizer=f.tokenizer if kind != "gguf" else "")
  print(f"wrote {f.out}")


def _define_flags() -> None:
  from absl import flags
  flags.DEFINE_string("hf_dir", None, "from-hf: Hugging Face Llama directory (config.json and "
                      "model.safetensors or model.safetensors.index.json + shards).")
  flags.DEFINE_string("checkpoint", None, "to-hf: lima_jax checkpoint to export: a directory or "
                      "any URL TensorStore reads (gs://BUCKET/run/checkpoints/STEP, file://...); "
                      "a LoRA run's is merged into full weights. to-peft: a LoRA run's checkpoint.")
  flags.DEFINE_string("model", None, "from-llama2c: llama2.c checkpoint (legacy v0 .bin).")
  flags.DEFINE_string("gguf", None, "from-gguf: a llama.cpp GGUF file (llama, mistral or qwen2; "
                      "any tensor type the gguf package dequantizes); its tokenizer is stored.")
  flags.DEFINE_string("tokenizer", None, "from-llama2c: llama2.c tokenizer .bin (or a "
                      "SentencePiece .model) stored in the checkpoint; from-hf: a SentencePiece "
                      ".model or a tokenizer.json, default HF_DIR's tokenizer.model, else its "
                      "tokenizer.json.")
  flags.DEFINE_string("out", None, "Output directory: a lima_jax checkpoint (from-hf, "
                      "from-llama2c), a Hugging Face directory (to-hf) or a PEFT adapter with its "
                      "base (to-peft). Must not exist.")
  flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "Parameter dtype to store. Default: "
                    "to-hf bfloat16; from-gguf float32; from-hf and from-llama2c as the source "
                    "(float16 HF weights become float32).")
  flags.DEFINE_integer("max_shard_mb", 5000, "to-hf: largest safetensors shard, in MB (10^6 "
                       "bytes).", lower_bound=1)


def run() -> None:
  """Console-script entry point (lima-convert)."""
  from absl import app
  from lima_jax.errors import cli_main
  _define_flags()
  app.run(cli_main(main))


if __name__ == "__main__":
  run()
