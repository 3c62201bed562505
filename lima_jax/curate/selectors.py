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
              kmeans:  k-means with k = n (scikit-learn; the best of 3 restarts, so that
                       well separated clusters each get one: `_fit_kmeans`; centroids fit on
                       a sample of at most 20,000 records when the pool is larger), and from
                       each cluster the member nearest its centroid; score = cosine
                       similarity to the centroid.
            k-center covers outliers first, so filter before it; records whose embedding is
            zero (no usable word) are taken last.
  ifd       as published (Li et al. 2023): the n highest instruction-following difficulty
            scores among those at most `max_ifd` (`model_scores.ifd`; above 1 the prompt does
            not help predict the response: left out).
  loss      the n lowest answer losses L(response | prompt) (`model_scores.answer_loss`).
  consistency  the n lowest worst-token NLLs of the answer read as plain text
            (`model_scores.consistency`).
  influence the n most similar gradient features to a target set (`model_scores`).
"""
import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np
from sklearn.cluster import KMeans, kmeans_plusplus
from tqdm import tqdm

from lima_jax.curate import quality, text

SELECTORS = ("random", "longest", "quality", "diverse", "ifd", "loss", "consistency",
             "influence")
MODEL_SELECTORS = ("ifd", "loss", "consistency", "influence")  # they need config.scorer
DIVERSE_METHODS = ("kcenter", "kmeans")
KMEANS_SAMPLE = 20_000  # k-means centroids are fit on at most this many records
KMEANS_MAX_ITER = 100  # Lloyd iterations in all, shared by the restarts
KMEANS_RESTARTS = 3  # seeding + Lloyd runs; the one of least final inertia is kept...
KMEANS_LOCAL_TRIALS = 16  # ...each seeding trying this many candidates per centroid...
KMEANS_SEEDING_BUDGET = 5_000_000  # ...when n x records is at most this (else one run as
# scikit-learn seeds it: 2 + ln n candidates)


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


def _fit_kmeans(x: np.ndarray, n: int, seed: int) -> KMeans:
  """k-means with k = n on x: of KMEANS_RESTARTS greedy k-means++ seedings, each run through
  Lloyd's iterations, the one of least final inertia.

  Why this is needed: on unit rows, two records of one topic are often nearly orthogonal
  (LSA of 8 words drawn from a topic's 10), so a seed, being a single record, is barely
  nearer the rest of its topic than the records of another topic are. k-means++'s D^2
  sampling then gives a topic with no seed only ~30% of the mass when the other five of six
  have one, and scikit-learn's greedy seeding tries only 2 + ln n candidates per centroid
  (3 at n = 6): about 40% of seedings leave a topic out and Lloyd's iterations seldom
  repair it. The inertia of the seeding itself cannot tell a good seeding from a bad one
  (single records are far from everything), so choosing among seedings by it missed a topic
  at 4 of 20 seeds on six planted topics with duplicates, leaks and truncations filtered out.
  Two changes, measured on that pool (20 pools x 30 seeds) and on 4, 8 and 12 planted
  topics: 16 candidates per centroid, which makes a seeding with a topic left out rare (none
  at n <= 8; 4% at n = 12), and restarts judged after Lloyd, where a missed topic costs
  clearly more inertia (33.3 against 37.5 or more there): no topic missed in 1,500 runs.

  Cost: the restarts share the KMEANS_MAX_ITER Lloyd iterations of one run, so Lloyd is
  bounded as before by iterations x n x records distances; a seeding costs a candidate pass
  over the records per trial and centroid, KMEANS_LOCAL_TRIALS x n x records. Above
  KMEANS_SEEDING_BUDGET (n x records; at 1,000 picks from 12K) the fit is one run seeded as
  scikit-learn seeds it, as before: there a missed cluster is one of a thousand, not one of
  six, and the seedings would cost more than Lloyd does.
  """
  rng = np.random.default_rng(seed)
  small = n * len(x) <= KMEANS_SEEDING_BUDGET
  runs = KMEANS_RESTARTS if small else 1
  best = None
  for _ in range(runs):
    centres, _ = kmeans_plusplus(x, n, random_state=int(rng.integers(2**31 - 1)),
                                 n_local_trials=KMEANS_LOCAL_TRIALS if small else None)
    km = KMeans(n_clusters=n, init=centres, n_init=1, max_iter=KMEANS_MAX_ITER // runs,
                random_state=seed).fit(x)
    if best is None or km.inertia_ < best.inertia_:  # ties: the earlier run
      best = km
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
  km = _fit_kmeans(fit_on, n, seed)
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


def lowest_pick(parts: Sequence[Mapping[str, float]], n: int, key: str) -> list[Pick]:
  """Lowest parts[i][key] first among records where it is finite (maybe fewer than n)."""
  eligible = [i for i, p in enumerate(parts) if np.isfinite(p[key])]
  ranked = _ranked([-parts[i][key] for i in eligible], n)
  return [Pick(eligible[j], parts[eligible[j]][key], dict(parts[eligible[j]])) for j in ranked]


def influence_pick(similarity: np.ndarray, n: int) -> list[Pick]:
  return [Pick(int(i), float(similarity[i]), {"influence": float(similarity[i])})
          for i in _ranked(similarity, n)]
