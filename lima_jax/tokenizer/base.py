"""The tokenizer contract every backend meets: LIMA's EOT after the base vocabulary, safe text.

LIMA ends every utterance with a new special token, EOT, distinct from the pretraining EOS
(README, "The recipe"). A base model's vocabulary is fixed, so EOT is appended after it: EOT =
the base vocabulary's size (added tokens included), the next free id. PAD is the model's own pad
token when it has one, else the id after EOT. Padding never needs a real embedding row to be
right (the loss mask is explicit), but the embedding must have a row for every id the data
holds, hence `vocab_size` counts the added ids.

Text is encoded without BOS/EOS and never parsed for special tokens: "<eot>" or "<s>" typed by a
user are ordinary characters, so data cannot forge a turn boundary.

The one loader is `lima_jax.tokenizer.load(path)` / `from_meta(meta)` (`loader.py`): it
returns the backend the file or meta names. Backends import this module, never the loader.
"""
from typing import Iterable, Sequence

from lima_jax.errors import UserError

_META_KEYS = ("bos_id", "eos_id", "eot_id", "pad_id", "vocab_size")
# The text of LIMA's EOT in a Hugging Face export (formats/hf_tokenizer_files): a private-use
# character inside the name, so that no ordinary text spells it. A tokenizer.json holding it is
# an export, and EOT is that token's id (not the id after it).
EXPORT_MARK = "\ue000"
EXPORTED_EOT = f"<eot{EXPORT_MARK}>"


class Tokenizer:
  """A base vocabulary plus EOT (and PAD when the model has none).

  A backend calls `__init__` with its base vocabulary's size and the model's BOS/EOS/PAD ids,
  and implements `encode`, `_decode_run`, `_base_piece` and `to_meta`. `_special` ({id: text}
  of the ids `decode` drops unless asked to render them) starts as BOS, EOS, EOT and PAD under
  LIMA's names; `_plain` holds added tokens that are text, which `decode` always writes.
  """

  def __init__(self, base_vocab_size: int, bos_id: int, eos_id: int,
               pad_id: int | None = None, where: str = ""):
    n = base_vocab_size
    for name, i in (("BOS", bos_id), ("EOS", eos_id), ("PAD", pad_id)):
      if i is not None and not 0 <= i < n and not (name == "EOS" and i == -1):
        raise UserError(f"{where}{name} id {i} is not in the vocabulary of {n}")
    self.base_vocab_size = n
    self.bos_id, self.eos_id = bos_id, eos_id  # EOS -1: a SentencePiece model without one
    self.eot_id = n  # the contract: the first id after the base vocabulary
    self.pad_id = pad_id if pad_id is not None else n + 1
    self.vocab_size = n + 1 if pad_id is not None else n + 2
    # Later names win where ids coincide (a model whose PAD is its EOS decodes it as <pad>).
    self._special = dict(((self.bos_id, "<s>"), (self.eos_id, "</s>"), (self.eot_id, "<eot>"),
                          (self.pad_id, "<pad>")))
    self._special.pop(-1, None)
    self._plain: dict[int, str] = {}

  @property
  def sp_vocab_size(self) -> int:
    """`base_vocab_size` under its older name (callers from SentencePiece-only days)."""
    return self.base_vocab_size

  def padded_vocab_size(self, multiple: int = 128) -> int:
    """`vocab_size` rounded up to a multiple, for the model's embedding rows."""
    return -(-self.vocab_size // multiple) * multiple

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`, without BOS/EOS; special-token spellings are plain text."""
    raise NotImplementedError

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    """`encode` over many texts at once (backends run them in parallel where they can)."""
    return [self.encode(t) for t in texts]

  def _decode_run(self, ids: list[int]) -> str:
    """Text of a run of ordinary base-vocabulary ids."""
    raise NotImplementedError

  def _base_piece(self, i: int) -> str:
    """The base vocabulary's own spelling of id i."""
    raise NotImplementedError

  def decode(self, ids: Iterable[int], render_special: bool = False) -> str:
    """Text of `ids`; special ids are dropped, or written out (<s>, <eot>, ...)."""
    parts, run = [], []
    for i in ids:
      i = int(i)
      if not 0 <= i < self.vocab_size:
        raise ValueError(f"token id {i} outside the vocabulary [0, {self.vocab_size})")
      text = self._special.get(i, self._plain.get(i))
      if text is None:
        run.append(i)
        continue
      if run:
        parts.append(self._decode_run(run))
        run = []
      if render_special or i not in self._special:
        parts.append(text)
    if run:
      parts.append(self._decode_run(run))
    return "".join(parts)

  def id_to_piece(self, i: int) -> str:
    """The piece of id i; special ids under their text (<eot>, <pad>, the model's own)."""
    for names in (self._special, self._plain):
      if i in names:
        return names[i]
    return self._base_piece(i)

  def own_piece(self, i: int) -> str:
    """The model's own spelling of id i (what a chat template writes for it)."""
    return self._plain.get(i) or self._base_piece(i)

  def special_ids(self) -> frozenset:
    """Ids of the model's own special (control) tokens."""
    return frozenset(i for i in (self.bos_id, self.eos_id) if i >= 0)

  def to_meta(self) -> dict:
    """JSON-safe description, everything needed to rebuild it, saved in every checkpoint."""
    raise NotImplementedError

  def check_meta_ids(self, meta: dict) -> "Tokenizer":
    """self, if its special ids and size are the ones `meta` saved."""
    for key in _META_KEYS:
      if meta.get(key) != getattr(self, key):
        # The ids are baked into a trained model; a silent shift would corrupt generation.
        raise UserError(f"tokenizer meta: {key}={meta.get(key)} but the model gives "
                        f"{getattr(self, key)}")
    return self
