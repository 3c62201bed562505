"""The one tokenizer loader: a file, a directory or checkpoint meta -> the backend it names."""
import os
import pathlib

from lima_jax.errors import UserError
from lima_jax.tokenizer import base, sentencepiece, tokenizer_json

_BACKENDS = {sentencepiece.META_FORMAT: sentencepiece.SentencePieceTokenizer,
             tokenizer_json.META_FORMAT: tokenizer_json.HFTokenizer}


def from_meta(meta: dict) -> base.Tokenizer:
  """The tokenizer a checkpoint's meta describes; its ids must come out as they were saved."""
  backend = _BACKENDS.get(meta.get("format")) if isinstance(meta, dict) else None
  if backend is None:
    raise UserError(f"tokenizer meta: expected format {sentencepiece.META_FORMAT!r} or "
                    f"{tokenizer_json.META_FORMAT!r}")
  return backend.read_meta(meta).check_meta_ids(meta)


def load(path: str | os.PathLike) -> base.Tokenizer:
  """A SentencePiece `.model` or llama2.c `.bin` (told apart by content), a tokenizer.json (BOS,
  EOS and PAD from the tokenizer_config.json beside it), a GGUF file's tokenizer, or a
  directory's tokenizer.model, else its tokenizer.json."""
  p = pathlib.Path(path)
  if p.is_dir():
    p = p / "tokenizer.model" if (p / "tokenizer.model").exists() else p / "tokenizer.json"
  if p.suffix == ".json":
    return tokenizer_json.HFTokenizer.read(p)
  if p.suffix == ".gguf":
    from lima_jax.formats import gguf  # numpy and the gguf package only for a GGUF file
    return from_meta(gguf.read_tokenizer_meta(p))
  return sentencepiece.SentencePieceTokenizer(p)

