"""A conversation read as a base model read its pretraining documents, for `consistency`.

The text is the turns joined by single spaces (prompt + " " + answer for one turn), encoded
as lima_jax encodes a plain `{"text": ...}` row for pretraining (`data.encode_text_ids`:
BOS, the text's tokens, EOS), with no chat markup, so that the base's surprise measures what
the answer states rather than a format the base never saw. Judged (loss-masked) are the
assistant turns' tokens and the end token: a fact the base knows otherwise is one surprising
token, an answer cut off mid-sentence a surprising end.

The text is tokenized whole, as pretraining tokenized it (a turn tokenized alone may split
differently at its start). Where each turn begins is found from the tokens of the text before
it: the first token where those and the whole text's tokens differ. A token that spans the
space between two turns therefore counts as the later turn's.
"""
from typing import Any

import numpy as np

from lima_jax.data import batches as data
from lima_jax.errors import UserError
from lima_jax.tokenizer import Tokenizer

ENDS = ("eos", "bos", "none")


def _common_prefix(a: list[int], b: list[int]) -> int:
  n = min(len(a), len(b))
  diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
  return int(diff[0]) if len(diff) else n


def end_id(tok: Tokenizer, end: str) -> int | None:
  if end not in ENDS:
    raise UserError(f"config consistency.end: {end!r} is not one of {ENDS}")
  if end == "none":
    return None
  i = tok.eos_id if end == "eos" else tok.bos_id
  if i < 0:
    raise UserError(f"config consistency.end: the tokenizer has no {end.upper()}; set "
                    "consistency.end to 'bos' or 'none'")
  return i


def encode(record: Any, tok: Tokenizer, max_len: int, *, skip_first: int = 0,
           end: str = "eos") -> data.Encoded:
  """BOS, the turns' text, the end token; loss on the assistant tokens (less the first
  `skip_first` of each turn) and on the end token; trimmed to max_len."""
  turns = list(record.conversations)
  full = tok.encode(" ".join(turns))
  # starts[k]: the first token of turn k in `full`.
  starts = [0] + [_common_prefix(tok.encode(" ".join(turns[:k])), full)
                  for k in range(1, len(turns))] + [len(full)]
  # The same document pretraining saw (encode_text_ids: BOS, text, EOS), then its end token
  # swapped for the one this base ends documents with.
  tokens = data.encode_text_ids(full, tok, len(full) + 2).tokens
  mask = np.zeros(len(tokens), bool)
  for k in range(1, len(turns), 2):  # assistant turns; +1: the BOS before the text
    mask[1 + min(starts[k] + skip_first, starts[k + 1]):1 + starts[k + 1]] = True
  last = end_id(tok, end)
  if last is None:
    tokens, mask = tokens[:-1], mask[:-1]
  else:
    tokens[-1], mask[-1] = last, True
  if len(tokens) <= max_len:
    return data.Encoded(tokens, mask)
  return data.Encoded(tokens[:max_len], mask[:max_len], int(mask[max_len:].sum()), True)
