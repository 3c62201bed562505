"""Hugging Face `tokenizers` backend of the tokenizer contract (`lima_jax.tokenizer.base`):
tokenizer.json (Llama-3, Qwen2.5, SmolLM2), with EOT.

EOT is the first id after the base vocabulary (added tokens included), PAD is the model's pad
token or the id after EOT, and text is never parsed for special tokens. `tokenizers` always
matches its added tokens in the input, so training encodes with a copy that has none: a user
typing "<|im_start|>" or "<|eot_id|>" gets ordinary byte-level pieces, and merges that would
spell a special token are dropped so BPE cannot rebuild one either. Added tokens are decoded
here, by id.

BOS is the model's own BOS token (SmolLM2: <|im_start|>; Llama-3: <|begin_of_text|>), even
where its tokenizer does not add one by itself. A model that names none (Qwen2.5) starts every
conversation with its EOS, the separator it saw between pretraining documents.
"""
import json
import os
import pathlib
from typing import Sequence

import tokenizers

from lima_jax.errors import UserError
from lima_jax.tokenizer import base

META_FORMAT = "hf-tokenizers+eot"


def _merge_pair(merge) -> tuple[str, str]:
  return tuple(merge.split(" ", 1)) if isinstance(merge, str) else tuple(merge)


def bare_spec(spec: dict) -> dict:
  """The tokenizer.json without added tokens, post-processor or padding, and without merges
  that produce a special token: what training encodes text with."""
  special = {t["content"] for t in spec.get("added_tokens") or [] if t.get("special")}
  model = dict(spec["model"])
  if "merges" in model:
    model["merges"] = [m for m in model["merges"] if "".join(_merge_pair(m)) not in special]
  return {**spec, "added_tokens": [], "post_processor": None, "truncation": None,
          "padding": None, "model": model}


def vocab_ids(model: dict) -> dict[str, int]:
  vocab = model.get("vocab") or {}
  if isinstance(vocab, list):  # Unigram: [[piece, score], ...]
    return {piece: i for i, (piece, _) in enumerate(vocab)}
  return dict(vocab)


class HFTokenizer(base.Tokenizer):
  """A `tokenizers` JSON plus the model's BOS/EOS/PAD ids, EOT (and PAD) appended."""

  def __init__(self, tokenizer_json: str, bos_id: int | None, eos_id: int,
               pad_id: int | None = None, where: str = ""):
    try:
      spec = json.loads(tokenizer_json)
      self._tk = tokenizers.Tokenizer.from_str(json.dumps(bare_spec(spec)))
    except Exception as e:  # tokenizers raises plain Exceptions for bad JSON
      raise UserError(f"{where}not a usable tokenizer.json ({str(e)[:200]})") from None
    self._json = tokenizer_json
    added = {int(t["id"]): t for t in spec.get("added_tokens") or []}
    vocab = vocab_ids(spec["model"])
    n = max([len(vocab)] + [i + 1 for i in vocab.values()] + [i + 1 for i in added])
    exported = [i for i, t in added.items() if t["content"] == base.EXPORTED_EOT]
    if exported:  # our own export: EOT (and PAD after it) are already in the file
      n = exported[0]
      pad_id = pad_id if pad_id is not None and pad_id < n else None
      added = {i: t for i, t in added.items() if i < n}
    if eos_id is None or not 0 <= eos_id < n:
      raise UserError(f"{where}EOS id {eos_id} is not in the vocabulary of {n}")
    super().__init__(n, eos_id if bos_id is None else bos_id, eos_id, pad_id, where)
    self._spec = spec
    self._full = None  # the tokenizer with its added tokens, for rendered chat templates
    # Added tokens keep their text; the special ones, BOS, EOS and EOT (and PAD when it is
    # not the model's own) are dropped by decode unless rendered.
    self._plain = {i: t["content"] for i, t in added.items()}
    special = {i: t["content"] for i, t in added.items() if t.get("special")}
    self._own_special = frozenset(special) | super().special_ids()
    self.exported = bool(exported)  # our LIMA export: its template is LIMA's format
    if exported:
      self._own_special |= {self.eot_id}
    for i in (self.bos_id, self.eos_id):
      special.setdefault(i, self._plain[i] if i in self._plain else self._base_piece(i))
    special[self.eot_id] = "<eot>"
    if self.pad_id >= n:
      special[self.pad_id] = "<pad>"
    self._special = special

  @property
  def spec(self) -> dict:
    """The tokenizer.json as the model ships it."""
    return json.loads(self._json)

  def encode(self, text: str) -> list[int]:
    return self._tk.encode(text, add_special_tokens=False).ids

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return [e.ids for e in self._tk.encode_batch(list(texts), add_special_tokens=False)]

  def encode_rendered(self, text: str, offsets: bool = False):
    """Ids of a rendered chat template, as transformers tokenizes it (add_special_tokens=False):
    the model's added tokens are matched in the text, nothing is prepended. offsets: (ids,
    [(start, end)] character spans)."""
    if self._full is None:
      self._full = tokenizers.Tokenizer.from_str(json.dumps(
          {**self._spec, "post_processor": None, "truncation": None, "padding": None}))
    e = self._full.encode(text, add_special_tokens=False)
    return (e.ids, e.offsets) if offsets else e.ids

  def special_ids(self) -> frozenset:
    return self._own_special

  def _decode_run(self, ids: list[int]) -> str:
    return self._tk.decode(ids, skip_special_tokens=False)

  def _base_piece(self, i: int) -> str:
    return self._tk.id_to_token(i) or ""

  def to_meta(self) -> dict:
    return {"format": META_FORMAT, "tokenizer_json": self._json, "bos_id": self.bos_id,
            "eos_id": self.eos_id, "eot_id": self.eot_id, "pad_id": self.pad_id,
            "vocab_size": self.vocab_size}

  @classmethod
  def read_meta(cls, meta: dict) -> "HFTokenizer":
    """Inverse of `to_meta` (the loader checks the saved ids)."""
    try:
      n_pad = meta["pad_id"] if meta["pad_id"] < meta["eot_id"] else None
      return cls(meta["tokenizer_json"], meta["bos_id"], meta["eos_id"], n_pad,
                 "tokenizer meta: ")
    except (KeyError, TypeError) as e:
      raise UserError(f"tokenizer meta: bad or missing field {e}") from None

  @classmethod
  def read(cls, path: str | os.PathLike) -> "HFTokenizer":
    """A tokenizer.json (or a directory holding one); BOS, EOS and PAD are read from the
    tokenizer_config.json beside it when there is one."""
    path = pathlib.Path(path)
    if path.is_dir():
      path = path / "tokenizer.json"
    try:
      text = path.read_text(encoding="utf-8")
    except OSError as e:
      raise UserError(f"{path}: cannot read ({e.strerror or e})") from None
    config_path = path.with_name("tokenizer_config.json")
    config = {}
    if config_path.exists():
      try:
        config = json.loads(config_path.read_text())
      except json.JSONDecodeError as e:
        raise UserError(f"{config_path}:{e.lineno}: invalid JSON ({e.msg})") from None
    try:
      spec = json.loads(text)
      ids = {t["content"]: int(t["id"]) for t in spec.get("added_tokens") or []}
      ids = {**vocab_ids(spec["model"]), **ids}
    except (ValueError, KeyError, TypeError) as e:
      raise UserError(f"{path}: not a usable tokenizer.json ({str(e)[:200]})") from None

    if config.get("eos_token") == base.EXPORTED_EOT and config.get("additional_special_tokens"):
      # Our LIMA export names EOT its eos_token; the model's own EOS is the first extra one.
      config = {**config, "eos_token": config["additional_special_tokens"][0]}

    def token_id(key):
      value = config.get(key)
      value = value.get("content") if isinstance(value, dict) else value
      if value is None:
        return None
      if value not in ids:
        raise UserError(f"{config_path}: {key} {value!r} is not in {path.name}")
      return ids[value]

    eos = token_id("eos_token")
    if eos is None:
      raise UserError(f"{config_path}: needs eos_token (the model's end of text)")
    return cls(text, token_id("bos_token"), eos, token_id("pad_token"), f"{path}: ")
