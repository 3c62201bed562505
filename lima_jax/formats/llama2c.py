"""llama2.c (legacy v0 `.bin`) checkpoints: header -> ModelConfig, arrays -> the param tree.

llama2.c, like llama.cpp (GGUF), rotates adjacent pairs (2i, 2i+1) of each head; the model keeps
Hugging Face's rotate_half layout, so q and k rows are permuted on import
(`interleaved_to_rotate_half`, which `lima_jax.formats.gguf` uses too).
"""
import math
import pathlib
import struct

import jax
import numpy as np

from lima_jax.errors import UserError
from lima_jax.model.config import ModelConfig

_MAGIC = 0x616B3432  # "ak42": llama2.c export formats v1 and v2.
_HEADER_BYTES = 28


def interleaved_to_rotate_half(w: np.ndarray, heads: int) -> np.ndarray:
  """Rows [..., heads * K, in] of a q or k projection written for RoPE on adjacent pairs
  (2i, 2i+1), as llama2.c and llama.cpp (GGUF) rotate, reordered for rotate_half's pairs
  (i, i + K/2): HF's own permutation undone."""
  *lead, rows, cols = w.shape
  return w.reshape(*lead, heads, rows // heads // 2, 2, cols).swapaxes(-3, -2).reshape(w.shape)


def _header(path: pathlib.Path) -> tuple[ModelConfig, int]:
  """(config, file size) from a llama2.c v0 header; rejects v1/v2 and inconsistent files."""
  try:
    size = path.stat().st_size
    with open(path, "rb") as f:
      head = f.read(_HEADER_BYTES)
  except OSError as e:
    raise UserError(f"{path}: cannot read ({e.strerror or e})") from None
  if len(head) >= 4 and struct.unpack("<I", head[:4])[0] == _MAGIC:
    version = struct.unpack("<i", head[4:8])[0] if len(head) >= 8 else "?"
    raise UserError(f"{path}: llama2.c export version {version} ('ak42' magic) is not supported; "
                    "only the legacy v0 format is (llama2.c export.py --version 0)")
  if len(head) < _HEADER_BYTES:
    raise UserError(f"{path}: {size} bytes, shorter than the 28-byte llama2.c header")
  dim, hidden, n_layers, heads, kv_heads, vocab, seq_len = struct.unpack("<7i", head)
  if min(dim, hidden, n_layers, heads, kv_heads, abs(vocab), seq_len) <= 0 \
      or dim % heads or heads % kv_heads:
    raise UserError(f"{path}: bad llama2.c header (dim={dim}, hidden_dim={hidden}, "
                    f"n_layers={n_layers}, n_heads={heads}, n_kv_heads={kv_heads}, "
                    f"vocab_size={vocab}, seq_len={seq_len})")
  # A negative vocab_size is how llama2.c says the classifier is stored apart (untied).
  cfg = ModelConfig(
      vocab_size=abs(vocab), dim=dim, n_layers=n_layers, n_heads=heads, n_kv_heads=kv_heads,
      hidden_dim=hidden, max_seq_len=seq_len, norm_eps=1e-5, tie_embeddings=vocab > 0)
  return cfg, size


def _arrays(cfg: ModelConfig):
  """(name, shape) of the float32 arrays of a v0 file, in file order."""
  L, D, F, V, K = cfg.n_layers, cfg.dim, cfg.hidden_dim, cfg.vocab_size, cfg.head_dim
  kv = cfg.n_kv_heads * K
  arrays = [("emb", (V, D)), ("att_norm", (L, D)), ("wq", (L, D, D)), ("wk", (L, kv, D)),
            ("wv", (L, kv, D)), ("wo", (L, D, D)), ("ffn_norm", (L, D)), ("w1", (L, F, D)),
            ("w2", (L, D, F)), ("w3", (L, F, D)), ("final_norm", (D,)),
            ("rope_tables", (2, cfg.max_seq_len, K // 2))]
  return arrays + ([] if cfg.tie_embeddings else [("cls", (V, D))])


def read_config(path) -> ModelConfig:
  """The ModelConfig of a llama2.c v0 file (reads and checks the header and the file size)."""
  path = pathlib.Path(path)
  cfg, size = _header(path)
  want = _HEADER_BYTES + 4 * sum(math.prod(s) for _, s in _arrays(cfg))
  if size != want:
    raise UserError(f"{path}: {size} bytes, but its header implies {want} (truncated, or not "
                    "a llama2.c v0 checkpoint)")
  return cfg


def load_llama2c(path):
  """(ModelConfig, float32 numpy params) of a llama2.c v0 checkpoint.

  The rows of wq and wk are permuted within each head to rotate_half pairs, as HF's converter
  does.
  """
  path = pathlib.Path(path)
  cfg = read_config(path)
  raw, offset = {}, _HEADER_BYTES
  for name, shape in _arrays(cfg):
    raw[name] = np.fromfile(path, np.dtype("<f4"), math.prod(shape), offset=offset).reshape(shape)
    offset += 4 * math.prod(shape)
  L, D, K = cfg.n_layers, cfg.dim, cfg.head_dim

  q = interleaved_to_rotate_half(raw["wq"], cfg.n_heads)
  k = interleaved_to_rotate_half(raw["wk"], cfg.n_kv_heads)
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
