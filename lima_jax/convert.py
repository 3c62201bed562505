"""Checkpoint conversion: Hugging Face <-> lima_jax, and llama2.c (v0) import.

    python -m lima_jax.convert from-hf --hf_dir=D --out=CKPT
    python -m lima_jax.convert to-hf --checkpoint=CKPT --out=D
    python -m lima_jax.convert from-llama2c --model=F.bin --tokenizer=T.bin --out=CKPT
    python -m lima_jax.convert from-gguf --gguf=F.gguf --out=CKPT

from-hf reads model_type llama, mistral and qwen2 with tokenizer.model (SentencePiece) or
tokenizer.json (Hugging Face tokenizers); from-gguf is `lima_jax.gguf_file`.

The HF format itself lives in `lima_jax.hf` (re-exported here: load_hf, save_hf,
read_hf_config). llama2.c checkpoints rotate interleaved pairs; they are permuted to the
model's rotate_half layout on import.
"""
import math
import pathlib
import struct

import jax
import numpy as np

from lima_jax import layers
from lima_jax.errors import UserError
from lima_jax.hf import load_hf, read_hf_config, save_hf  # noqa: F401  (public API)
from lima_jax.model_config import ModelConfig

_LLAMA2C_MAGIC = 0x616B3432  # "ak42": llama2.c export formats v1 and v2.


def _llama2c_header(path: pathlib.Path) -> tuple[ModelConfig, int]:
  """(config, file size) from a llama2.c v0 header; rejects v1/v2 and inconsistent files."""
  try:
    size = path.stat().st_size
    with open(path, "rb") as f:
      head = f.read(28)
  except OSError as e:
    raise UserError(f"{path}: cannot read ({e.strerror or e})") from None
  if len(head) >= 4 and struct.unpack("<I", head[:4])[0] == _LLAMA2C_MAGIC:
    version = struct.unpack("<i", head[4:8])[0] if len(head) >= 8 else "?"
    raise UserError(f"{path}: llama2.c export version {version} ('ak42' magic) is not supported; "
                    "only the legacy v0 format is (llama2.c export.py --version 0)")
  if len(head) < 28:
    raise UserError(f"{path}: {size} bytes, shorter than the 28-byte llama2.c header")
  dim, hidden, n_layers, heads, kv_heads, vocab, seq_len = struct.unpack("<7i", head)
  if min(dim, hidden, n_layers, heads, kv_heads, abs(vocab), seq_len) <= 0 \
      or dim % heads or heads % kv_heads:
    raise UserError(f"{path}: bad llama2.c header (dim={dim}, hidden_dim={hidden}, "
                    f"n_layers={n_layers}, n_heads={heads}, n_kv_heads={kv_heads}, "
                    f"vocab_size={vocab}, seq_len={seq_len})")
  cfg = ModelConfig(
      vocab_size=abs(vocab), dim=dim, n_layers=n_layers, n_heads=heads, n_kv_heads=kv_heads,
      hidden_dim=hidden, max_seq_len=seq_len, norm_eps=1e-5, tie_embeddings=vocab > 0)
  return cfg, size


def _llama2c_arrays(cfg: ModelConfig):
  """(name, shape) of the float32 arrays of a v0 file, in file order."""
  L, D, F, V, K = cfg.n_layers, cfg.dim, cfg.hidden_dim, cfg.vocab_size, cfg.head_dim
  kv = cfg.n_kv_heads * K
  arrays = [("emb", (V, D)), ("att_norm", (L, D)), ("wq", (L, D, D)), ("wk", (L, kv, D)),
            ("wv", (L, kv, D)), ("wo", (L, D, D)), ("ffn_norm", (L, D)), ("w1", (L, F, D)),
            ("w2", (L, D, F)), ("w3", (L, F, D)), ("final_norm", (D,)),
            ("rope_tables", (2, cfg.max_seq_len, K // 2))]
  return arrays + ([] if cfg.tie_embeddings else [("cls", (V, D))])


def read_llama2c_config(path) -> ModelConfig:
  """The ModelConfig of a llama2.c v0 file (reads and checks the header only)."""
  path = pathlib.Path(path)
  cfg, size = _llama2c_header(path)
  want = 28 + 4 * sum(math.prod(s) for _, s in _llama2c_arrays(cfg))
  if size != want:
    raise UserError(f"{path}: {size} bytes, but its header implies {want} (truncated, or not "
                    "a llama2.c v0 checkpoint)")
  return cfg


def load_llama2c(path):
  """(ModelConfig, float32 params) of a llama2.c v0 checkpoint.

  llama2.c rotates adjacent pairs (2i, 2i+1) of each head; the model uses rotate_half pairs
  (i, i + K/2), so the rows of wq and wk are permuted within each head, as HF's converter does.
  """
  path = pathlib.Path(path)
  cfg = read_llama2c_config(path)
  raw, offset = {}, 28
  for name, shape in _llama2c_arrays(cfg):
    raw[name] = np.fromfile(path, np.dtype("<f4"), math.prod(shape), offset=offset).reshape(shape)
    offset += 4 * math.prod(shape)
  L, D, K = cfg.n_layers, cfg.dim, cfg.head_dim

  q = layers.interleaved_to_rotate_half(raw["wq"], cfg.n_heads)
  k = layers.interleaved_to_rotate_half(raw["wk"], cfg.n_kv_heads)
  params = {
      "embed": {"embedding": raw["emb"]},
      "layers": {
          "attn_norm": {"scale": raw["att_norm"]},
          "attn": {"q": q.transpose(0, 2, 1).reshape(L, D, cfg.n_heads, K),
                   "k": k.transpose(0, 2, 1).reshape(L, D, cfg.n_kv_heads, K),
                   "v": raw["wv"].transpose(0, 2, 1).reshape(L, D, cfg.n_kv_heads, K),
                   "o": raw["wo"].transpose(0, 2, 1).reshape(L, cfg.n_heads, K, D)},
          "mlp_norm": {"scale": raw["ffn_norm"]},
          "mlp": {"gate": raw["w1"].transpose(0, 2, 1), "up": raw["w3"].transpose(0, 2, 1),
                  "down": raw["w2"].transpose(0, 2, 1)}},
      "final_norm": {"scale": raw["final_norm"]}}
  if not cfg.tie_embeddings:
    params["lm_head"] = {"kernel": raw["cls"].T}
  params = jax.tree.map(lambda x: np.ascontiguousarray(x, np.float32), params)
  return cfg, params


def _meta_config(ckpt: pathlib.Path, meta: dict) -> ModelConfig:
  if "model_config" not in meta:
    raise UserError(f"{ckpt}: checkpoint meta has no 'model_config'")
  try:
    return ModelConfig.from_dict(meta["model_config"])
  except (UserError, TypeError) as e:
    raise UserError(f"{ckpt}: {e}") from None


def _cmd_from_hf(hf_dir: str, out: str, dtype: str | None, tokenizer: str | None) -> None:
  from lima_jax import checkpoint, tokenizer as tokenizer_lib
  hf = pathlib.Path(hf_dir)
  tok_meta = None
  if tokenizer or (hf / "tokenizer.model").exists() or (hf / "tokenizer.json").exists():
    tok_meta = tokenizer_lib.Tokenizer.load(tokenizer or hf).to_meta()
  cfg, params = load_hf(hf, dtype)
  checkpoint.save(out, params, _meta(cfg, tok_meta))


def _cmd_from_llama2c(model_path: str, out: str, dtype: str | None, tokenizer: str | None) -> None:
  from lima_jax import checkpoint, tokenizer as tokenizer_lib
  cfg, params = load_llama2c(model_path)
  tok_meta = tokenizer_lib.Tokenizer.load(tokenizer).to_meta() if tokenizer else None
  if dtype and dtype != cfg.param_dtype:
    params = jax.tree.map(lambda x: x.astype(layers.as_dtype(dtype)), params)
    cfg = ModelConfig.from_dict({**cfg.to_dict(), "param_dtype": dtype, "dtype": dtype})
  checkpoint.save(out, params, _meta(cfg, tok_meta))


def _cmd_from_gguf(path: str, out: str, dtype: str | None) -> None:
  from lima_jax import checkpoint, gguf_file
  tok_meta = gguf_file.read_tokenizer_meta(path)  # first: a bad vocabulary fails fast
  cfg, params = gguf_file.load_gguf(path, dtype or "float32")
  checkpoint.save(out, params, _meta(cfg, tok_meta))


def _meta(cfg, tok_meta):
  return {"model_config": cfg.to_dict(), "tokenizer": tok_meta, "step": 0, "epoch": 0}


def _cmd_to_hf(ckpt: str, out: str, dtype: str | None, max_shard_mb: int) -> None:
  from lima_jax import checkpoint
  if "://" in out:
    raise UserError(f"--out={out}: to-hf writes a local directory (copy it to the bucket after)")
  # TensorStore reads the checkpoint wherever it is (gs:// as training prints it) and one layer
  # slice of one stacked parameter at a time: host memory stays near the largest such slice.
  meta, params = checkpoint.read_stored(ckpt)
  cfg = _meta_config(ckpt, meta)
  try:
    save_hf(cfg, params, out, meta.get("tokenizer"), dtype or "bfloat16", max_shard_mb * 10**6)
  except UserError as e:
    raise UserError(f"{ckpt}: {e}") from None


def main(argv) -> None:
  from absl import flags, logging
  f = flags.FLAGS
  if not f["verbosity"].present:  # orbax logs every step; errors reach the user as UserError
    logging.set_verbosity(logging.ERROR)
  commands = ("from-hf", "to-hf", "from-llama2c", "from-gguf")
  if len(argv) != 2 or argv[1] not in commands:
    raise UserError(f"usage: python -m lima_jax.convert {{{'|'.join(commands)}}} --flags "
                    f"(got {' '.join(argv[1:]) or 'no command'})")
  required = {"from-hf": ("hf_dir", "out"), "to-hf": ("checkpoint", "out"),
              "from-llama2c": ("model", "out"), "from-gguf": ("gguf", "out")}[argv[1]]
  missing = [name for name in required if not f[name].value]
  if missing:
    raise UserError(f"{argv[1]}: missing --{', --'.join(missing)}")
  if pathlib.Path(f.out).exists():
    raise UserError(f"{f.out}: already exists; refusing to overwrite")
  if argv[1] == "from-hf":
    _cmd_from_hf(f.hf_dir, f.out, f.dtype, f.tokenizer)
  elif argv[1] == "from-llama2c":
    _cmd_from_llama2c(f.model, f.out, f.dtype, f.tokenizer)
  elif argv[1] == "from-gguf":
    _cmd_from_gguf(f.gguf, f.out, f.dtype)
  else:
    _cmd_to_hf(f.checkpoint, f.out, f.dtype, f.max_shard_mb)
  print(f"wrote {f.out}")


def _define_flags() -> None:
  from absl import flags
  flags.DEFINE_string("hf_dir", None, "from-hf: Hugging Face Llama directory (config.json and "
                      "model.safetensors or model.safetensors.index.json + shards).")
  flags.DEFINE_string("checkpoint", None, "to-hf: lima_jax checkpoint to export: a directory or "
                      "any URL TensorStore reads (gs://BUCKET/run/checkpoints/STEP, file://...).")
  flags.DEFINE_string("model", None, "from-llama2c: llama2.c checkpoint (legacy v0 .bin).")
  flags.DEFINE_string("gguf", None, "from-gguf: a llama.cpp GGUF file (llama, mistral or qwen2; "
                      "any tensor type the gguf package dequantizes); its tokenizer is stored.")
  flags.DEFINE_string("tokenizer", None, "from-llama2c: llama2.c tokenizer .bin (or a "
                      "SentencePiece .model) stored in the checkpoint; from-hf: a SentencePiece "
                      ".model or a tokenizer.json, default HF_DIR's tokenizer.model, else its "
                      "tokenizer.json.")
  flags.DEFINE_string("out", None, "Output directory: a lima_jax checkpoint (from-hf, "
                      "from-llama2c) or a Hugging Face directory (to-hf). Must not exist.")
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
