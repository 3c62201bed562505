"""Rows from encoded examples: which examples an epoch trains on and in what order (seeded
draws), which share a row (one each, or greedy first-fit packing), and the shifted, masked
arrays of those rows (`make_rows` shows one worked).

`lima_jax.data.batches` orders each epoch with `epoch_order`, plans its rows with `plan_rows`
and fills only the rows a process asks for with `fill_rows`; `make_rows` is both of the last
at once, for a list in order.
"""
from typing import Sequence

import numpy as np

from lima_jax.errors import UserError

BATCH_KEYS = ("inputs", "targets", "loss_mask", "segment_ids", "positions")
_SHUFFLE, _SPLIT, _SUBSET, _PASS = 0, 1, 2, 3  # separate random streams, so e.g. a subset
                                               # ablation does not change the held-out set


def held_out_split(n: int, seed: int, n_eval: int) -> tuple[np.ndarray, np.ndarray]:
  """(held-out, training) positions, each sorted, of n examples (`data.eval_fraction`)."""
  perm = np.random.default_rng((seed, _SPLIT)).permutation(n)
  return np.sort(perm[:n_eval]), np.sort(perm[n_eval:])


def subset_indices(n: int, seed: int, subset_size: int) -> np.ndarray:
  """The positions (sorted) of the `subset_size` of n usable training examples that
  `data.subset_size` trains on; analyses use it to count what a run actually saw."""
  if subset_size > n:
    raise UserError(f"subset size {subset_size} > the {n} usable training examples")
  return np.sort(np.random.default_rng((seed, _SUBSET)).permutation(n)[:subset_size])


def epoch_order(n: int, seed: int, epoch: int, epoch_examples: int = 0) -> np.ndarray:
  """The positions of the n training examples that epoch `epoch` trains on, in its order.

  epoch_examples 0 or >= n: all n, shuffled afresh each epoch. 0 < M < n
  (`data.epoch_examples`): M distinct examples, drawn without replacement across epochs:
  epoch e of a pass (n // M epochs) takes the e-th M of that pass's random permutation of all
  n, then a new pass starts; no example comes back until a pass ends (the n mod M it leaves
  over wait for a later pass). Analyses use it to count what a run saw.
  """
  if not 0 < epoch_examples < n:
    return np.random.default_rng((seed, _SHUFFLE, epoch)).permutation(n)
  p, k = divmod(epoch, n // epoch_examples)
  perm = np.random.default_rng((seed, _PASS, p)).permutation(n)
  return perm[k * epoch_examples:(k + 1) * epoch_examples]


def plan_rows(order: Sequence[int], lengths: np.ndarray, row_len: int,
              pack: bool) -> list[list[int]]:
  """Examples per row: one each, or greedy first-fit (the first row with room, else a new
  row) when packing. lengths[i]: the positions example i fills (its tokens less one)."""
  if not pack:
    return [[int(i)] for i in order]
  rows: list[list[int]] = []
  room = np.zeros(len(order), np.int64)  # free positions per row; at most one row per example
  for i in order:
    need = lengths[i]
    fits = np.flatnonzero(room[:len(rows)] >= need)
    r = fits[0] if len(fits) else len(rows)
    if r == len(rows):
      rows.append([])
      room[r] = row_len
    rows[r].append(int(i))
    room[r] -= need
  return rows


def fill_rows(encoded: Sequence, plan: Sequence[Sequence[int]], row_len: int
              ) -> dict[str, np.ndarray]:
  """Arrays [len(plan), row_len]; row r holds the shifted examples plan[r] (indices into
  `encoded`, each with `tokens` and `loss_mask`) back to back."""
  out = {k: np.zeros((len(plan), row_len), np.int32) for k in BATCH_KEYS}
  out["loss_mask"] = np.zeros((len(plan), row_len), bool)
  for r, members in enumerate(plan):
    start = 0
    for seg, i in enumerate(members, start=1):
      t, m = encoded[i].tokens, encoded[i].loss_mask
      n = len(t) - 1
      if start + n > row_len:
        raise ValueError(f"row {r}: {start + n} positions do not fit in row_len {row_len}")
      span = slice(start, start + n)
      out["inputs"][r, span], out["targets"][r, span] = t[:-1], t[1:]
      out["loss_mask"][r, span] = m[1:]
      out["segment_ids"][r, span], out["positions"][r, span] = seg, np.arange(n)
      start += n
  return out


def make_rows(encoded_list: Sequence, row_len: int, pack: bool) -> dict[str, np.ndarray]:
  """Shifted rows [R, row_len] for `encoded_list`, in order; padding is 0 with segment id 0.

  pack=False: one conversation per row. pack=True: greedy first-fit of whole conversations.
  Worked example, row_len=10, pack=True, a = [B,5,E,7,8,E] (as in `lima_jax.data.batches`'s
  docstring) and b = [B,6,E,9,E] (mask [0,0,0,1,1]) -> one row:

    inputs      [B 5 E 7 8 B 6 E 9 0]
    targets     [5 E 7 8 E 6 E 9 E 0]
    loss_mask   [0 0 1 1 1 0 0 1 1 0]
    segment_ids [1 1 1 1 1 2 2 2 2 0]
    positions   [0 1 2 3 4 0 1 2 3 0]
  """
  lengths = np.array([len(e.tokens) - 1 for e in encoded_list])
  return fill_rows(encoded_list, plan_rows(range(len(lengths)), lengths, row_len, pack), row_len)
