"""Conversations -> shifted, masked, optionally packed rows -> per-process batches (numpy).

Worked example (ids made up; B = BOS, E = EOT; user "hi" -> [5], assistant "yo there" -> [7, 8];
the conversation format is `lima_jax.tokenizer.chat`'s):

  encode_conversation(["hi", "yo there"], tok, max_len=2048)
    tokens    = [B, 5, E, 7, 8, E]
    loss_mask = [0, 0, 0, 1, 1, 1]   # assistant tokens and the EOT ending their turn

  shifted for next-token prediction (per conversation, before packing):
    inputs    = [B, 5, E, 7, 8]
    targets   = [5, E, 7, 8, E]
    loss_mask = [0, 0, 1, 1, 1]      # the target is an assistant token or its EOT
    positions = [0, 1, 2, 3, 4]

A plain document (a `{"text": ...}` row, for pretraining) is BOS, its tokens and EOS, with
the loss on every token after BOS: `encode_text_ids([5, 6], tok, 2048)` -> tokens [B, 5, 6, S],
loss_mask [0, 1, 1, 1] (S = EOS, which ends a document as in the base model's pretraining).

Shifting each conversation on its own means a packed row never asks a conversation's last
token to predict the next conversation's BOS. A conversation is trimmed to `max_len` tokens
(LIMA: 2,048), so it fills at most `max_len - 1` positions of a `max_len`-long row.

Which examples an epoch trains on, which share a row, and the rows' arrays are
`lima_jax.data.packing`'s.

CLI (`python -m lima_jax.data stats|show ...`, console script `lima-data`): see
`lima_jax.data.__main__`.
"""
import dataclasses
import hashlib
from typing import Iterator, Sequence

import numpy as np
from tqdm import tqdm

# BATCH_KEYS, make_rows and subset_indices are re-exported: callers import them from here.
from lima_jax.data.packing import (BATCH_KEYS, epoch_order, fill_rows,  # noqa: F401
                                   held_out_split, make_rows, plan_rows, subset_indices)
from lima_jax.datasets.sources import Record, read_files
from lima_jax.errors import UserError
from lima_jax.tokenizer import chat
from lima_jax.tokenizer.base import Tokenizer

_MAX_PROBLEMS = 20  # skipped-row messages kept in the report (all are counted)


@dataclasses.dataclass(frozen=True)
class Encoded:
  """One tokenized conversation (unshifted)."""

  tokens: np.ndarray  # int32 [n]: BOS, then each utterance followed by EOT
  loss_mask: np.ndarray  # bool [n]: True on assistant tokens and their EOT
  n_trimmed_loss_tokens: int = 0  # loss tokens cut off by trimming to max_len
  trimmed: bool = False

  @property
  def n_loss_tokens(self) -> int:
    return int(self.loss_mask.sum())


def encode_conversation(turns: Sequence[str], tok: Tokenizer, max_len: int) -> Encoded:
  """Tokens and loss mask of one conversation (user, assistant, user, ...), trimmed to max_len.

  The result may have no loss token left (a long prompt trimmed away its reply); callers drop
  those (`n_loss_tokens == 0`).
  """
  return encode_turn_ids([tok.encode(t) for t in turns], tok, max_len)


def encode_turn_ids(turn_ids: Sequence[list[int]], tok: Tokenizer, max_len: int) -> Encoded:
  """`encode_conversation` for utterances already tokenized (`tok.encode` of each)."""
  if max_len < 2:
    raise ValueError(f"max_len must be at least 2, got {max_len}")
  tokens, mask = chat.encode_turn_ids(turn_ids, tok)
  if len(tokens) <= max_len:
    return Encoded(tokens, mask)
  return Encoded(tokens[:max_len], mask[:max_len], int(mask[max_len:].sum()), True)


def encode_text_ids(ids: Sequence[int], tok: Tokenizer, max_len: int) -> Encoded:
  """A plain document's tokens (`tok.encode` of its text): BOS, ids, EOS; loss on all but BOS."""
  if max_len < 2:
    raise ValueError(f"max_len must be at least 2, got {max_len}")
  tokens = np.array([tok.bos_id, *ids, tok.eos_id], np.int32)
  mask = np.arange(len(tokens)) > 0
  if len(tokens) <= max_len:
    return Encoded(tokens, mask)
  return Encoded(tokens[:max_len], mask[:max_len], int(mask[max_len:].sum()), True)


class SFTDataset:
  """Shuffled (per seed and epoch), padded or packed batches; step N's batch is a pure
  function of (seed, N), so a resumed run sees exactly the data it would have seen.

  `global_batch` counts rows (conversations when not packing). `batch(step, rows)` builds only
  the global rows asked for: on a pod each process asks for the rows its devices hold
  (`sharding.process_rows`), so no host builds the whole batch and hosts that hold replicas of
  a row build the same row. With packing, conversations are shuffled and then packed afresh
  each epoch, so the number of rows, and of steps, may differ a little between epochs.
  `epoch_examples` M > 0 trains each epoch on M of the examples (`epoch_order`), so that a
  large set takes the steps of a small one; M >= the number of examples is the same as 0.
  """

  def __init__(self, encoded: Sequence[Encoded], *, global_batch: int, row_len: int, pack: bool,
               seed: int, drop_remainder: bool = False, epoch_examples: int = 0):
    if global_batch <= 0:
      raise ValueError(f"global_batch {global_batch} must be positive")
    if epoch_examples < 0:
      raise ValueError(f"epoch_examples {epoch_examples} must be >= 0")
    if not encoded:
      raise ValueError("no examples")
    self.encoded = list(encoded)
    lengths = np.array([len(e.tokens) - 1 for e in self.encoded])
    if lengths.max() > row_len:
      raise ValueError(f"an example fills {lengths.max()} positions > row_len {row_len}")
    if any(e.n_loss_tokens == 0 for e in self.encoded):
      raise ValueError("every example must have a loss token (drop the others first)")
    self._lengths = lengths
    self.global_batch, self.row_len, self.pack, self.seed = global_batch, row_len, pack, seed
    self.drop_remainder = drop_remainder
    self.epoch_examples = epoch_examples if epoch_examples < len(self.encoded) else 0
    # Row counts of every epoch seen, but the rows themselves only for the latest epoch: a
    # large set over many epochs would otherwise hold every epoch's plan in memory.
    self._rows_in_epoch: dict[int, int] = {}
    self._plan_epoch, self._plan_cache = -1, []
    if self.steps_in_epoch(0) == 0:
      raise UserError(f"global batch {global_batch} is larger than the {len(self._plan(0))} rows "
                      "of an epoch and drop_remainder is set: no step to run")

  @property
  def num_examples(self) -> int:
    return len(self.encoded)

  @property
  def examples_per_epoch(self) -> int:
    return self.epoch_examples or self.num_examples

  @property
  def num_loss_tokens(self) -> int:
    return sum(e.n_loss_tokens for e in self.encoded)

  def _plan(self, epoch: int) -> list[list[int]]:
    if epoch != self._plan_epoch:
      order = epoch_order(len(self.encoded), self.seed, epoch, self.epoch_examples)
      self._plan_cache = plan_rows(order, self._lengths, self.row_len, self.pack)
      self._plan_epoch = epoch
      self._rows_in_epoch[epoch] = len(self._plan_cache)
    return self._plan_cache

  def steps_in_epoch(self, epoch: int) -> int:
    if epoch not in self._rows_in_epoch:
      self._rows_in_epoch[epoch] = (len(self._plan(epoch)) if self.pack
                                    else self.examples_per_epoch)
    rows = self._rows_in_epoch[epoch]
    return rows // self.global_batch if self.drop_remainder else -(-rows // self.global_batch)

  def total_steps(self, num_epochs: int) -> int:
    return sum(self.steps_in_epoch(e) for e in range(num_epochs))

  def locate(self, step: int) -> tuple[int, int]:
    """(epoch, step within that epoch) of a global step."""
    if step < 0:
      raise ValueError(f"step must be >= 0, got {step}")
    epoch = 0
    while step >= (n := self.steps_in_epoch(epoch)):
      step -= n
      epoch += 1
    return epoch, step

  def _rows(self, plan: list[list[int]], rows) -> dict[str, np.ndarray]:
    """Global rows `rows` (default: all) of a batch planned as `plan`, padded to the global
    batch first with all-padding rows (mask False)."""
    plan = plan + [[]] * (self.global_batch - len(plan))
    rows = range(self.global_batch) if rows is None else rows
    return fill_rows(self.encoded, [plan[int(r)] for r in rows], self.row_len)

  def batch(self, step: int, rows=None) -> dict[str, np.ndarray]:
    """Arrays [len(rows), row_len]: rows `rows` of the global batch of `step` (default all)."""
    epoch, k = self.locate(step)
    g = self.global_batch
    return self._rows(self._plan(epoch)[k * g:(k + 1) * g], rows)

  def eval_batches(self, rows=None) -> Iterator[dict[str, np.ndarray]]:
    """Every example once, in the given order (packed if `pack`), in padded global batches
    (rows `rows` of each, as for `batch`)."""
    plan = plan_rows(range(len(self.encoded)), self._lengths, self.row_len, self.pack)
    for k in range(0, len(plan), self.global_batch):
      yield self._rows(plan[k:k + self.global_batch], rows)

  def fingerprint(self) -> str:
    """sha256 of every encoded example and the epoch-0 plan: hosts with the same data, tokenizer
    and settings agree on it, a stale copy of a file on one host does not."""
    draw = f",{self.epoch_examples}" if self.epoch_examples else ""  # (as before when off)
    h = hashlib.sha256(f"{self.global_batch},{self.row_len},{self.pack},{self.seed}{draw}".encode())
    for e in self.encoded:
      h.update(e.tokens.tobytes())
      h.update(np.packbits(e.loss_mask).tobytes())
    h.update(np.asarray([i for row in self._plan(0) for i in row + [-1]], np.int64).tobytes())
    return h.hexdigest()


def _trim(tokens: np.ndarray, mask: np.ndarray, max_len: int) -> Encoded:
  if len(tokens) <= max_len:
    return Encoded(tokens, mask)
  return Encoded(tokens[:max_len], mask[:max_len], int(mask[max_len:].sum()), True)


def encode_records(records: Sequence[Record], tok: Tokenizer, max_len: int,
                   desc: str = "encoding", renderer=None) -> list[Encoded]:
  """`encode_conversation` (or `encode_text_ids` for a plain document) over records, batching
  SentencePiece calls, with a progress bar. renderer: a chat template
  (`lima_jax.tokenizer.chat.renderer`) that renders each record's messages instead of LIMA's
  format; a row it refuses stops the run with one line naming the row."""
  if renderer is not None and not isinstance(renderer, chat.Lima):
    return [encode_text_ids(tok.encode(r.conversations[0]), tok, max_len) if r.text
            else _trim(*renderer.encode(r.messages or chat.as_messages(r.conversations),
                                        r.origin), max_len)
            for r in tqdm(records, desc=desc, unit="conv", disable=None, leave=False)]
  out, chunk = [], 256
  with tqdm(total=len(records), desc=desc, unit="conv", disable=None, leave=False) as bar:
    for start in range(0, len(records), chunk):
      part = records[start:start + chunk]
      flat = tok.encode_batch([t for r in part for t in r.conversations])
      for r in part:
        n = len(r.conversations)
        out.append(encode_text_ids(flat[0], tok, max_len) if r.text
                   else encode_turn_ids(flat[:n], tok, max_len))
        flat = flat[n:]
      bar.update(len(part))
  return out


def _as_list(files: str | Sequence[str]) -> list[str]:
  if isinstance(files, str):
    files = files.split(",")
  return [str(f).strip() for f in files if str(f).strip()]


def _load(files: list[str], tok: Tokenizer, max_len: int, on_error: str,
          report: dict, renderer=None) -> tuple[list[Record], list[Encoded]]:
  """Reads and encodes files, dropping conversations with no loss token; counts in report."""
  records, problems = read_files(files, on_error=on_error)
  report["skipped_rows"] += len(problems)
  report["problems"] += problems[:_MAX_PROBLEMS - len(report["problems"])]
  report["dropped_trailing_turns"] += sum(r.dropped_turns for r in records)
  if not records:
    raise UserError(f"{', '.join(files)}: no conversation could be read "
                    f"({len(problems)} bad rows skipped)")
  encoded = encode_records(records, tok, max_len, renderer=renderer)
  keep = [i for i, e in enumerate(encoded) if e.n_loss_tokens > 0]
  report["dropped_no_loss"] += len(records) - len(keep)
  if not keep:
    raise UserError(f"{', '.join(files)}: no usable conversation (none left with an "
                    f"assistant token after trimming to max_len={max_len})")
  return [records[i] for i in keep], [encoded[i] for i in keep]


def _summary(records: Sequence[Record], encoded: Sequence[Encoded]) -> dict:
  sources: dict[str, int] = {}
  for r in records:
    sources[r.source] = sources.get(r.source, 0) + 1
  return {"examples": len(encoded), "sources": sources,
          "tokens": int(sum(len(e.tokens) for e in encoded)),
          "loss_tokens": int(sum(e.n_loss_tokens for e in encoded)),
          "trimmed": sum(e.trimmed for e in encoded),
          "trimmed_loss_tokens": int(sum(e.n_trimmed_loss_tokens for e in encoded))}


def load_sft_data(files: str | Sequence[str], tok: Tokenizer, *, max_len: int, pack: bool,
                  global_batch: int, seed: int, subset_size: int = 0,
                  eval_files: str | Sequence[str] = (), eval_fraction: float = 0.0,
                  on_error: str = "raise", renderer=None, epoch_examples: int = 0
                  ) -> tuple[SFTDataset, SFTDataset | None, dict]:
  """Reads, encodes, splits and wraps conversation files; rows are `max_len` long.

  The held-out split (`eval_fraction`) is drawn before the subset (`subset_size`), both from
  `seed`, so the eval set does not move when the training set size is ablated; each epoch
  then trains on `epoch_examples` of that set (0: all; `SFTDataset`). Conversations
  left without a loss token by trimming are dropped and counted. Returns (train, eval or
  None, report), the report being JSON-safe counts for the run's log (with at most
  20 of the skipped rows' messages). renderer: as for `encode_records` (None: LIMA's format).
  """
  files, eval_files = _as_list(files), _as_list(eval_files)
  if not files:
    raise UserError("no training files given")
  if eval_files and eval_fraction:
    raise UserError("give eval files or an eval fraction, not both")
  if not 0.0 <= eval_fraction < 1.0:
    raise UserError(f"eval fraction must be in [0, 1), got {eval_fraction}")
  if epoch_examples < 0:
    raise UserError(f"data.epoch_examples={epoch_examples}: must be 0 (every example every "
                    "epoch) or the number of examples each epoch draws")
  report = {"files": files, "eval_files": eval_files, "skipped_rows": 0, "problems": [],
            "dropped_trailing_turns": 0, "dropped_no_loss": 0}
  records, encoded = _load(files, tok, max_len, on_error, report, renderer)

  idx, eval_idx = np.arange(len(records)), None
  if eval_fraction:
    n_eval = max(1, round(eval_fraction * len(records)))
    if n_eval >= len(records):
      raise UserError(f"eval fraction {eval_fraction} leaves no training example of "
                      f"{len(records)}")
    eval_idx, idx = held_out_split(len(records), seed, n_eval)
  if subset_size:
    idx = idx[subset_indices(len(idx), seed, subset_size)]

  common = dict(global_batch=global_batch, row_len=max_len, pack=pack, seed=seed)
  train = SFTDataset([encoded[i] for i in idx], **common, epoch_examples=epoch_examples)
  report["train"] = dict(_summary([records[i] for i in idx], train.encoded),
                         steps_in_epoch_0=train.steps_in_epoch(0))
  if train.epoch_examples:
    report["train"]["epoch_examples"] = train.epoch_examples
  if eval_idx is not None:
    eval_records, eval_encoded = [records[i] for i in eval_idx], [encoded[i] for i in eval_idx]
  elif eval_files:
    eval_records, eval_encoded = _load(eval_files, tok, max_len, on_error, report, renderer)
  else:
    report["eval"] = None
    return train, None, report
  report["eval"] = _summary(eval_records, eval_encoded)
  return train, SFTDataset(eval_encoded, **common), report

