"""Selectors: choose n of the filtered records, each pick with a score and its components.

A selector returns `Pick`s in pick order (best or first chosen first). Ties always go to
the earlier record, so for a given seed the choice is fully deterministic.

  random    n records uniformly without replacement (score: the uniform draw).
  longest   the n longest responses in characters (LIMA favours long, complete answers).
  quality   the n best by the heuristic score of `quality` (every component reported).
  diverse   coverage of an embedding space (`embed`), by either
              kcenter: greedy k-center (Sener & Savarese 2018): start from the record nearest
                       the mean direction, then repeatedly take the record farthest (cosine
                       distance) from everything chosen so far; score = that distance (for
                       the first pick, its distance to the mean direction).
              kmeans:  k-means with k = n (scikit-learn; centroids fit on a sample of at
                       most 20,000 records when the pool is larger), and from each cluster the
                       member nearest its centroid; score = cosine similarity to the centroid.
            k-center covers outliers first, so filter before it; records whose embedding is
            zero (no usable word) are taken last.
  ifd       the n highest instruction-following difficulty scores at most `max_ifd`
            (`model_scores.ifd`; above 1 the prompt does not help: left out).
  influence the n most similar gradient features to a target set (`model_scores`).
"""
import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np
from sklearn.cluster import KMeans, kmeans_plusplus
from tqdm import tqdm

from lima_jax.curate import quality, text

SELECTORS = ("random", "longest", "quality", "diverse", "ifd", "influence")
DIVERSE_METHODS = ("kcenter", "kmeans")
KMEANS_SAMPLE = 20_000  # k-means centroids are fit on at most this many records
KMEANS_SEEDINGS = 3  # k-means++ seedings tried; the one of least inertia starts Lloyd...
KMEANS_SEEDING_BUDGET = 5_000_000  # ...when n x records is at most this (else one seeding)


@dataclasses.dataclass(frozen=True)
class Pick:
  index: int  # into the records given to the selector
  score: float
  scores: dict[str, float]


def _ranked(keys: Sequence[float], n: int) -> np.ndarray:
  """Indices of the n largest keys, largest first, earlier index first among equals."""
  return np.lexsort((np.arange(len(keys)), -np.asarray(keys, np.float64)))[:n]


def random_pick(records: Sequence[Any], n: int, *, seed: int) -> list[Pick]:
  draws = np.random.default_rng(seed).random(len(records))
  return [Pick(int(i), float(draws[i]), {"random_draw": float(draws[i])})
          for i in _ranked(draws, n)]


def longest(records: Sequence[Any], n: int) -> list[Pick]:
  lengths = [len(text.response(r)) for r in records]
  return [Pick(int(i), float(lengths[i]), {"response_chars": float(lengths[i])})
          for i in _ranked(lengths, n)]


def quality_pick(records: Sequence[Any], n: int, *, weights: Mapping[str, float],
                 target_chars: int = 1200, max_chars: int = 4096) -> list[Pick]:
  scored = quality.score_all(records, weights, target_chars=target_chars, max_chars=max_chars)
  return [Pick(int(i), scored[i][0], scored[i][1])
          for i in _ranked([s for s, _ in scored], n)]


def kcenter(embeddings: np.ndarray, n: int) -> list[Pick]:
  """Greedy k-center over unit (or zero) rows with cosine distance."""
  x = np.asarray(embeddings, np.float32)
  count = len(x)
  n = min(n, count)
  if n == 0:
    return []
  usable = np.linalg.norm(x, axis=1) > 0
  mean = x[usable].mean(0) if usable.any() else np.zeros(x.shape[1], np.float32)
  mean /= max(np.linalg.norm(mean), 1e-12)
  closeness = np.where(usable, x @ mean, -np.inf)
  first = int(np.argmax(closeness))
  # The first pick has nothing chosen before it: its distance is to the mean direction.
  start = float(1.0 - closeness[first])
  picks = [Pick(first, start, {"kcenter_distance": start})]
  # Distance of every record to its nearest chosen record; zero rows sit below every real
  # distance so that they come last, and chosen rows at -inf so they never come again.
  nearest = np.where(usable, np.maximum(1.0 - x @ x[first], 0.0), -1.0)
  nearest[first] = -np.inf
  for _ in tqdm(range(n - 1), desc="k-center", unit="pick", disable=n < 2000):
    j = int(np.argmax(nearest))
    distance = max(float(nearest[j]), 0.0)
    picks.append(Pick(j, distance, {"kcenter_distance": distance}))
    if usable[j]:
      nearest = np.minimum(nearest, np.maximum(1.0 - x @ x[j], 0.0))
    nearest[j] = -np.inf
  return picks


def _best_seeding(x: np.ndarray, n: int, seed: int) -> np.ndarray:
  """The best of KMEANS_SEEDINGS k-means++ seedings by their own inertia, for one Lloyd run.

  One seeding (sklearn's n_init=1) can put two seeds in one of a few well separated
  clusters and none in another, which Lloyd's iterations then never repair: on 40 planted
  pools of 6 disjoint topics, n=6 missed a topic 5-6 times. The best of 3 missed none, at
  the cost of seedings rather than of 3 full k-means runs (n_init=3). A k-means++ seeding
  costs about n log n distance passes over the records, so at 1,000 picks from 12K it
  costs as much as Lloyd's iterations: there (n x records over KMEANS_SEEDING_BUDGET) one
  seeding is kept, and a missed cluster is one of a thousand rather than one of six.
  """
  rng = np.random.default_rng(seed)
  sq = np.einsum("nd,nd->n", x, x)
  best, best_cost = None, np.inf
  tries = KMEANS_SEEDINGS if n * len(x) <= KMEANS_SEEDING_BUDGET else 1
  for _ in range(tries):
    centres, _ = kmeans_plusplus(x, n, random_state=int(rng.integers(2**31 - 1)))
    c_sq, cost = np.einsum("kd,kd->k", centres, centres), 0.0
    for i in range(0, len(x), 4096):  # squared distance to the nearest seed, in blocks
      d = sq[i:i + 4096, None] - 2.0 * x[i:i + 4096] @ centres.T + c_sq[None]
      cost += float(np.maximum(d.min(axis=1), 0.0).sum())
    if cost < best_cost:
      best, best_cost = centres, cost
  return best


def kmeans_pick(embeddings: np.ndarray, n: int, *, seed: int) -> list[Pick]:
  """One record per k-means cluster (k = n): the member nearest its centroid."""
  x = np.asarray(embeddings, np.float32)
  n = min(n, len(x))
  if n == 0:
    return []
  if n == len(x):
    return [Pick(i, 1.0, {"cluster": float(i), "cluster_size": 1.0, "centroid_similarity": 1.0})
            for i in range(n)]
  fit_on = x
  if len(x) > KMEANS_SAMPLE:  # centroids from a sample; every record is still assigned
    rng = np.random.default_rng(seed)
    fit_on = x[np.sort(rng.choice(len(x), size=max(KMEANS_SAMPLE, 2 * n), replace=False))]
  km = KMeans(n_clusters=n, init=_best_seeding(fit_on, n, seed), n_init=1, max_iter=100,
              random_state=seed).fit(fit_on)
  labels = km.predict(x)
  centroids = km.cluster_centers_ / np.maximum(
      np.linalg.norm(km.cluster_centers_, axis=1, keepdims=True), 1e-12)
  similarity = np.einsum("nd,nd->n", x, centroids[labels])
  sizes = np.bincount(labels, minlength=n)
  picks = []
  for c in _ranked(sizes, n):  # largest clusters first
    members = np.flatnonzero(labels == c)
    if not len(members):
      continue
    best = int(members[_ranked(similarity[members], 1)[0]])
    picks.append(Pick(best, float(similarity[best]), {
        "cluster": float(c), "cluster_size": float(sizes[c]),
        "centroid_similarity": float(similarity[best])}))
  return picks


def diverse(embeddings: np.ndarray, n: int, *, method: str = "kcenter",
            seed: int = 0) -> list[Pick]:
  if method == "kcenter":
    return kcenter(embeddings, n)
  if method == "kmeans":
    return kmeans_pick(embeddings, n, seed=seed)
  raise ValueError(f"diverse method must be one of {DIVERSE_METHODS}, got {method!r}")


def ifd_pick(parts: Sequence[Mapping[str, float]], n: int, *,
             max_ifd: float = 1.0) -> list[Pick]:
  """Highest IFD first among records with a finite IFD <= max_ifd (maybe fewer than n)."""
  eligible = [i for i, p in enumerate(parts) if np.isfinite(p["ifd"]) and p["ifd"] <= max_ifd]
  ranked = _ranked([parts[i]["ifd"] for i in eligible], n)
  return [Pick(eligible[j], parts[eligible[j]]["ifd"], dict(parts[eligible[j]]))
          for j in ranked]


def influence_pick(similarity: np.ndarray, n: int) -> list[Pick]:
  return [Pick(int(i), float(similarity[i]), {"influence": float(similarity[i])})
          for i in _ranked(similarity, n)]
