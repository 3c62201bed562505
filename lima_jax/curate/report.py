"""The figures of a curation run, as one JSON-safe dict (rendered to HTML by `report_html`).

Diversity is measured in the run's embedding space (config.embed) on the candidates (the
records that passed the filters), for the chosen set and for a uniform random sample of the
same size drawn with its own seed stream:

  mean_pairwise_distance   mean cosine distance over all pairs (higher: more spread out);
  mean_nearest_distance    mean over candidates of the distance to the nearest member of the
                           set (lower: the set covers the pool better); max_nearest_distance
                           is the k-center radius;
  cluster_coverage         share of k-means clusters of the candidates (k = report.clusters)
                           that hold at least one member of the set. The clusters are fit on
                           a sample of at most 20,000 candidates (k-means on all of a 100K
                           pool takes minutes), then every candidate is assigned to one.
Candidates whose embedding is zero (no usable word) are left out of the nearest-distance
figures: they are equally far from everything.
"""
import dataclasses
import json
import statistics
from typing import Any, Sequence

import ml_collections
import numpy as np
from sklearn.cluster import KMeans

from lima_jax.curate import pipeline, text

# Response length bins in characters; the last is open-ended. 1,200 and 4,096 are LIMA's
# bounds for Stack Exchange answers.
LENGTH_EDGES = (0, 50, 100, 200, 400, 800, 1200, 1600, 2400, 3200, 4096, 8192)
_EXCERPT = 600
_KMEANS_SAMPLE = 20_000


def length_histogram(lengths: np.ndarray) -> list[int]:
  bins = np.searchsorted(np.asarray(LENGTH_EDGES), lengths, side="right") - 1
  return np.bincount(bins, minlength=len(LENGTH_EDGES)).tolist()


def _set_distances(emb: np.ndarray, ids: np.ndarray) -> dict[str, float]:
  members = emb[ids]
  gram = members @ members.T
  n = len(ids)
  pairwise = 1.0 - (gram.sum() - np.trace(gram)) / max(n * (n - 1), 1)
  usable = emb[np.linalg.norm(emb, axis=1) > 0]
  nearest = np.zeros(max(len(usable), 1), np.float32)
  for start in range(0, len(usable), 4096):  # bounded memory for large pools
    nearest[start:start + 4096] = 1.0 - (usable[start:start + 4096] @ members.T).max(1)
  nearest = np.maximum(nearest, 0.0)
  return {"mean_pairwise_distance": float(pairwise),
          "mean_nearest_distance": float(nearest.mean()),
          "max_nearest_distance": float(nearest.max())}


def diversity(embeddings: np.ndarray, chosen: Sequence[int], *, seed: int,
              clusters: int) -> dict[str, Any]:
  """Diversity of the chosen rows vs a random sample of the same size (module docstring)."""
  emb = np.asarray(embeddings, np.float32)
  chosen = np.asarray(chosen, np.int64)
  rng = np.random.default_rng([seed, 1])  # a stream of its own: not the random selector's
  baseline = np.sort(rng.choice(len(emb), size=len(chosen), replace=False))
  k = clusters or len(chosen)
  fit_on = emb if len(emb) <= _KMEANS_SAMPLE else emb[
      np.sort(rng.choice(len(emb), size=_KMEANS_SAMPLE, replace=False))]
  k = min(k, len(fit_on))
  labels = KMeans(n_clusters=k, n_init=1, max_iter=50, random_state=seed).fit(fit_on).predict(
      emb)
  out = {"embedding_dims": int(emb.shape[1]), "candidates": len(emb), "clusters": k}
  for name, ids in (("chosen", chosen), ("random", baseline)):
    out[name] = _set_distances(emb, ids)
    out[name]["cluster_coverage"] = len(np.unique(labels[ids])) / k
  return out


def _example(record: Any, pick) -> dict[str, Any]:
  reply = text.response(record)
  return {"origin": record.origin, "source": record.source, "score": pick.score,
          "scores": pick.scores, "response_chars": len(reply),
          "prompt": text.prompt(record)[:_EXCERPT], "response": reply[:_EXCERPT]}


def figures(curation: pipeline.Curation, config: ml_collections.ConfigDict, *, command: str,
            problems: Sequence[str] = ()) -> dict[str, Any]:
  """Everything the report shows, JSON-safe."""
  cands = curation.candidates
  chosen = [(cands[i], pick) for i, pick in curation.chosen]
  lengths = {
      "pool": pipeline.response_chars(curation.pool),
      "candidates": pipeline.response_chars(cands),
      "chosen": pipeline.response_chars([r for r, _ in chosen]),
  }
  by_score = sorted(chosen, key=lambda rp: -rp[1].score)
  k = config.report.examples
  dedup_stages = ("exact_dedup", "near_dedup", "test_overlap")
  removed_by_stage = {s.name: sum(s.before.values()) - sum(s.after.values())
                      for s in curation.stages}
  fig = {
      "command": command,
      "config": config.to_dict(),
      "pool": {"records": len(curation.pool), "per_source": pipeline.per_source(curation.pool),
               "skipped_rows": list(problems)[:100], "skipped_count": len(problems)},
      "stages": [dataclasses.asdict(s) for s in curation.stages],
      "duplicates": {
          **{name: removed_by_stage.get(name, 0) for name in dedup_stages},
          "examples": [{"origin": r.origin, "stage": stage, "reason": why}
                       for r, stage, why in curation.removed if stage in dedup_stages][:20],
      },
      "lengths": {
          "edges": list(LENGTH_EDGES),
          **{name: length_histogram(v) for name, v in lengths.items()},
          "mean": {name: float(v.mean()) if len(v) else 0.0 for name, v in lengths.items()},
          "median": {name: float(np.median(v)) if len(v) else 0.0
                     for name, v in lengths.items()},
      },
      "chosen": {
          "n": len(chosen), "per_source": pipeline.per_source([r for r, _ in chosen]),
          "mean_response_chars": float(lengths["chosen"].mean()) if chosen else 0.0,
          "mean_score": statistics.fmean(p.score for _, p in chosen) if chosen else 0.0,
      },
      "diversity": None,
      "examples": {"top": [_example(r, p) for r, p in by_score[:k]],
                   "bottom": [_example(r, p) for r, p in by_score[::-1][:k]]},
  }
  if curation.embeddings is not None and chosen:
    fig["diversity"] = {"embedder": config.embed.name, "field": config.embed.field,
                        **diversity(curation.embeddings, [i for i, _ in curation.chosen],
                                    seed=config.seed, clusters=config.report.clusters)}
  return fig


def to_json(fig: dict[str, Any]) -> str:
  return json.dumps(fig, indent=1, ensure_ascii=False, allow_nan=False) + "\n"
