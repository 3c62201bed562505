"""Duplicate and test-set overlap filters.

Exact duplicates match on `text.normalise`d text. Near duplicates are found with MinHash
signatures over word n-grams and LSH buckets (datasketch): LSH proposes candidates, and a
pair counts when its estimated Jaccard similarity reaches the threshold. The first record
of a group (in input order) is kept, so the result is deterministic and does not depend on
the seed.
"""
from typing import Any, Iterable, Sequence
import zlib

from datasketch import MinHash, MinHashLSH
import numpy as np
from tqdm import tqdm

from lima_jax.curate import text
from lima_jax.curate.filters import FilterResult

FIELDS = ("conversation", "prompt", "response")


def field_text(record, field: str) -> str:
  if field == "prompt":
    return text.prompt(record)
  if field == "response":
    return text.response(record)
  if field == "conversation":
    return "\n\n".join(record.conversations)
  raise ValueError(f"field must be one of {FIELDS}, got {field!r}")


def exact_dedup(records: Sequence[Any], *, field: str = "conversation") -> FilterResult:
  """Keeps the first of each group of records whose normalised `field` text is equal."""
  first: dict[str, Any] = {}
  kept, removed = [], []
  for record in records:
    key = text.normalise(field_text(record, field))
    if key in first:
      removed.append((record, f"exact duplicate (of {first[key].origin})"))
    else:
      first[key] = record
      kept.append(record)
  return FilterResult(kept, removed)


def _identity(value: int) -> int:
  return value


class _Signer:
  """MinHash signatures of word n-grams, with the n-gram hashes computed in numpy.

  Hashing each n-gram string in Python dominated the cost (100K records: minutes), so each
  distinct word is hashed once (crc32: stable across processes, unlike Python's salted
  `hash`), and n-gram hashes are combined from word hashes as a polynomial, vectorised.
  datasketch then applies its permutations to these 32-bit values.
  """

  def __init__(self, ngram: int, num_perm: int):
    self.ngram = ngram
    template = MinHash(num_perm=num_perm)
    self.permutations, self.scheme = template.permutations, template.scheme
    self.num_perm = num_perm
    self.word_hash: dict[str, int] = {}

  def __call__(self, passage: str) -> MinHash | None:
    words = text.normalise(passage).split()
    if not words:
      return None
    cache = self.word_hash
    ids = np.array([cache[w] if w in cache else cache.setdefault(w, zlib.crc32(w.encode()))
                    for w in words], np.uint64)
    n = min(self.ngram, len(ids))
    grams = ids[:len(ids) - n + 1].copy()
    for k in range(1, n):
      grams = grams * np.uint64(1_000_003) + ids[k:len(ids) - n + 1 + k]  # wraps mod 2^64
    grams = np.unique(grams & np.uint64(0xFFFFFFFF))
    sig = MinHash(num_perm=self.num_perm, hashfunc=_identity, permutations=self.permutations,
                  scheme=self.scheme)
    sig.update_batch(grams.tolist())
    return sig


def minhashes(texts: Iterable[str], *, ngram: int, num_perm: int) -> list[MinHash | None]:
  """One MinHash per text (None for a text without a word), over its word n-grams.

  A text shorter than n words is one n-gram of all its words.
  """
  texts = list(texts)
  signer = _Signer(ngram, num_perm)
  return [signer(t) for t in tqdm(texts, desc="minhash", unit="text",
                                  disable=len(texts) < 20_000)]


def near_dedup(records: Sequence[Any], *, threshold: float = 0.8, num_perm: int = 128,
               ngram: int = 3, field: str = "conversation") -> FilterResult:
  """Removes records whose `field` text is a near copy (Jaccard >= threshold) of an earlier one.

  Only kept records are indexed, so in a chain A~B~C where B is dropped for A, C is judged
  against A alone.
  """
  if not 0.0 < threshold <= 1.0:
    raise ValueError(f"threshold must be in (0, 1], got {threshold}")
  signatures = minhashes((field_text(r, field) for r in records), ngram=ngram,
                         num_perm=num_perm)
  lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
  kept, removed = [], []
  for i, (record, sig) in enumerate(zip(records, signatures)):
    if sig is None:
      kept.append(record)
      continue
    hits = [(sig.jaccard(signatures[j]), -j) for j in lsh.query(sig)]
    hits = [h for h in hits if h[0] >= threshold]
    if hits:
      similarity, neg_j = max(hits)  # the most similar; the earliest among equals
      removed.append((record, f"near duplicate (of {records[-neg_j].origin}, "
                              f"Jaccard ~{similarity:.2f})"))
    else:
      lsh.insert(i, sig)
      kept.append(record)
  return FilterResult(kept, removed)


def test_overlap(records: Sequence[Any], test_prompts: Sequence[tuple[str, str]], *,
                 threshold: float = 0.7, num_perm: int = 128, ngram: int = 3) -> FilterResult:
  """Removes records any of whose user turns is, or nearly is, a test prompt.

  Args:
    records: the pool.
    test_prompts: (origin, prompt text) pairs, e.g. from LIMA's test.jsonl.
    threshold: Jaccard similarity of word n-grams from which a prompt counts as near.
    num_perm: MinHash permutations.
    ngram: shingle length in words.
  """
  if not 0.0 < threshold <= 1.0:
    raise ValueError(f"threshold must be in (0, 1], got {threshold}")
  exact = {}
  for origin, prompt in test_prompts:
    exact.setdefault(text.normalise(prompt), origin)
  test_sigs = minhashes((p for _, p in test_prompts), ngram=ngram, num_perm=num_perm)
  lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
  for k, sig in enumerate(test_sigs):
    if sig is not None:
      lsh.insert(k, sig)

  # Every user turn of every record, signed in one batch.
  owners, turns = [], []
  for i, record in enumerate(records):
    for turn in record.conversations[0::2]:
      owners.append(i)
      turns.append(turn)
  reasons = [""] * len(records)
  for i, turn, sig in zip(owners, turns, minhashes(turns, ngram=ngram, num_perm=num_perm)):
    if reasons[i]:
      continue
    key = text.normalise(turn)
    if key in exact:
      reasons[i] = f"test prompt overlap (exact: {exact[key]})"
      continue
    hits = [] if sig is None else [(sig.jaccard(test_sigs[k]), -k) for k in lsh.query(sig)]
    hits = [h for h in hits if h[0] >= threshold]
    if hits:
      similarity, neg_k = max(hits)
      reasons[i] = (f"test prompt overlap (near {test_prompts[-neg_k][0]}, "
                    f"Jaccard ~{similarity:.2f})")
  kept = [r for r, why in zip(records, reasons) if not why]
  removed = [(r, why) for r, why in zip(records, reasons) if why]
  return FilterResult(kept, removed)
