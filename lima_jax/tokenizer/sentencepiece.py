"""SentencePiece backend of the tokenizer contract (`lima_jax.tokenizer.base`), and llama2.c
tokenizer import.

A SentencePiece `.model` or a llama2.c `.bin` (told apart by content; llama2.c files become an
equivalent SentencePiece BPE model). EOT is the SentencePiece vocabulary size; PAD is the
model's pad piece when it has one, else the id after EOT. Special ids are written as <s>, </s>,
<eot>, <pad> whatever the model calls them (the export's token names depend on it).
"""
import base64
import io
import os
import pathlib
import struct
from typing import Iterable, Sequence

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as sp_pb2

from lima_jax.errors import UserError
from lima_jax.tokenizer import base

META_FORMAT = "sentencepiece+eot"


class SentencePieceTokenizer(base.Tokenizer):
  """A SentencePiece model plus EOT (and PAD when the model has none)."""

  def __init__(self, model: bytes | str | os.PathLike):
    """Builds from a model's bytes or path: a SentencePiece `.model` or a llama2.c `.bin`."""
    where = ""
    if not isinstance(model, (bytes, bytearray)):
      where = f"{model}: "
      try:
        model = pathlib.Path(model).read_bytes()
      except OSError as e:
        raise UserError(f"{where}cannot read ({e.strerror or e})") from None
    tokens = parse_llama2c_tokenizer(model)
    self._proto = llama2c_to_sentencepiece(tokens) if tokens is not None else bytes(model)
    try:
      self._sp = spm.SentencePieceProcessor(model_proto=self._proto)
    except (RuntimeError, OSError, TypeError):
      raise UserError(f"{where}neither a SentencePiece model nor a llama2.c tokenizer") from None
    if self._sp.bos_id() < 0:
      raise UserError(f"{where}the SentencePiece model has no BOS piece; every conversation "
                      "starts with BOS")
    pad = self._sp.pad_id()
    super().__init__(self._sp.vocab_size(), self._sp.bos_id(), self._sp.eos_id(),
                     pad if pad >= 0 else None, where)

  def encode(self, text: str) -> list[int]:
    return self._sp.encode(text, out_type=int)

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return self._sp.encode(list(texts), out_type=int)  # on SentencePiece's own threads

  def _decode_run(self, ids: list[int]) -> str:
    return self._sp.decode(ids)

  def _base_piece(self, i: int) -> str:
    return self._sp.id_to_piece(i)

  @property
  def model_proto(self) -> bytes:
    """The serialized SentencePiece model (a llama2.c file's converted one)."""
    return self._proto

  def to_meta(self) -> dict:
    return {"format": META_FORMAT, "model": base64.b64encode(self._proto).decode("ascii"),
            "bos_id": self.bos_id, "eos_id": self.eos_id, "eot_id": self.eot_id,
            "pad_id": self.pad_id, "vocab_size": self.vocab_size}

  @classmethod
  def read_meta(cls, meta: dict) -> "SentencePieceTokenizer":
    """Inverse of `to_meta` (the loader checks the saved ids)."""
    try:
      return cls(base64.b64decode(meta["model"], validate=True))
    except (KeyError, ValueError, UserError) as e:
      raise UserError(f"tokenizer meta: bad or missing field 'model' ({e})") from None



def parse_llama2c_tokenizer(raw: bytes) -> list[tuple[float, bytes]] | None:
  """(score, piece bytes) per id of a llama2.c tokenizer file, or None if `raw` is not one.

  Layout (shared/data/SOURCES.md): uint32 max_token_length, then per id a float32 score, an
  int32 length and that many bytes. The whole file must parse, and ids 3..258 must be the
  byte pieces, so a SentencePiece protobuf is never mistaken for one.
  """
  if len(raw) < 4:
    return None
  (max_len,) = struct.unpack_from("<I", raw, 0)
  if not 0 < max_len <= 1024:
    return None
  tokens, offset = [], 4
  while offset < len(raw):
    if offset + 8 > len(raw):
      return None
    score, n = struct.unpack_from("<fi", raw, offset)
    offset += 8
    if not 0 <= n <= max_len or offset + n > len(raw):
      return None
    tokens.append((score, raw[offset:offset + n]))
    offset += n
  if len(tokens) < 259 or any(tokens[3 + b][1] != b"<0x%02X>" % b for b in range(256)):
    return None
  return tokens


def llama2c_to_sentencepiece(tokens: Sequence[tuple[float, bytes]]) -> bytes:
  """Serialized SentencePiece BPE model equivalent to a llama2.c vocabulary.

  llama2.c encodes by prepending a space, starting from code points (bytes for unknown ones)
  and merging the best-scoring adjacent pair until none is a piece: that is SentencePiece
  BPE with a dummy prefix, identity normalisation and byte fallback, so the same pieces and
  scores give the same ids.
  """
  model = sp_pb2.ModelProto()
  Piece = sp_pb2.ModelProto.SentencePiece
  for i, (score, raw) in enumerate(tokens):
    piece = model.pieces.add()
    if i < 3:
      piece.piece, piece.type = (("<unk>", Piece.UNKNOWN), ("<s>", Piece.CONTROL),
                                 ("</s>", Piece.CONTROL))[i]
    elif i < 259:
      piece.piece, piece.type = raw.decode("ascii"), Piece.BYTE
    else:
      try:
        text = raw.decode("utf-8")
      except UnicodeDecodeError:
        raise UserError(f"llama2.c tokenizer: piece {i} is not valid UTF-8") from None
      piece.piece, piece.type, piece.score = text.replace(" ", "\u2581"), Piece.NORMAL, score
  spec = model.trainer_spec
  spec.model_type = sp_pb2.TrainerSpec.BPE
  spec.vocab_size = len(tokens)
  spec.byte_fallback = True
  spec.unk_id, spec.bos_id, spec.eos_id, spec.pad_id = 0, 1, 2, -1
  norm = model.normalizer_spec
  norm.name = "identity"
  norm.add_dummy_prefix = True
  norm.remove_extra_whitespaces = False
  norm.escape_whitespaces = True
  return model.SerializeToString()


def train_sentencepiece(texts: Iterable[str], vocab_size: int,
                        out_path: str | os.PathLike) -> SentencePieceTokenizer:
  """Trains a small LLaMA-style BPE model (for the demo) and writes it to `out_path`.

  Settings follow LLaMA's tokenizer (BPE, byte fallback, identity normalisation, split
  digits) and are deterministic: one thread, no sampling or shuffling of the input. Texts are
  split into lines as LLaMA's training sentences were, so a newline is a byte-fallback piece.
  """
  lines = [line for text in texts for line in text.split("\n") if line.strip()]
  if not lines:
    raise UserError(f"{out_path}: no text to train a tokenizer on")
  buffer = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=buffer, model_type="bpe",
        vocab_size=vocab_size, byte_fallback=True, character_coverage=0.9995,
        normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=True, split_digits=True, allow_whitespace_only_pieces=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, shuffle_input_sentence=False,
        input_sentence_size=0, max_sentence_length=1 << 16, minloglevel=2)
  except RuntimeError as e:
    raise UserError(f"{out_path}: SentencePiece training failed ({e})") from None
  proto = buffer.getvalue()
  out_path = pathlib.Path(out_path)
  tmp = out_path.with_name(out_path.name + ".tmp")
  tmp.write_bytes(proto)
  os.replace(tmp, out_path)  # never leave a half-written model where a good one was
  return SentencePieceTokenizer(proto)
