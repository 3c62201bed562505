"""The curation pipeline: pool -> filters (in config order) -> selector (within quotas).

`curate(records, config, test_prompts)` is pure (no files): it returns a `Curation` with
every stage's per-source counts and removal reasons, the candidates that passed, the picks
and, when computed, the candidates' embeddings. `lima_jax.curate.io` reads pools and writes
results; `report` turns a Curation into figures.
"""
import collections
import dataclasses
import time
from typing import Any, Callable, Sequence

from absl import logging
import ml_collections
import numpy as np

from lima_jax.curate import dedup, embed, filters, plain_text, quotas, selectors, text
from lima_jax.curate.filters import FilterResult
from lima_jax.curate.selectors import Pick
from lima_jax.errors import UserError


def _test_overlap(records, config, test_prompts):
  return dedup.test_overlap(records, test_prompts, **config.test_overlap)


FILTERS: dict[str, Callable[[Sequence[Any], ml_collections.ConfigDict, Any], FilterResult]] = {
    "clean_markup": lambda records, config, _: filters.clean_markup(records),
    "exact_dedup": lambda records, config, _: dedup.exact_dedup(records, **config.exact_dedup),
    "near_dedup": lambda records, config, _: dedup.near_dedup(records, **config.near_dedup),
    "test_overlap": _test_overlap,
    "truncated": lambda records, config, _: filters.truncated(records, **config.truncated),
    "sanity": lambda records, config, _: filters.sanity(records, **config.sanity),
    "lima_rules": lambda records, config, _: filters.lima_rules(records, **config.lima_rules),
}


@dataclasses.dataclass
class Stage:
  """One step of the pipeline, as the report shows it."""

  name: str
  before: dict[str, int]  # records per source going in
  after: dict[str, int]  # records per source coming out
  reasons: dict[str, int]  # removal reason (without its details) -> count
  changed: int = 0  # records rewritten (clean_markup)
  seconds: float = 0.0
  note: str = ""


@dataclasses.dataclass
class Curation:
  pool: list[Any]
  stages: list[Stage]
  removed: list[tuple[Any, str, str]]  # (record, stage, reason)
  candidates: list[Any]  # the records that passed every filter
  chosen: list[tuple[int, Pick]]  # (index into candidates, pick), in pick order
  embeddings: np.ndarray | None = None  # of the candidates, when computed
  model_scores: Any = None  # per-candidate IFD / loss / consistency parts or similarities
  # Every record a model selector scored, with its score (the one Pick.score holds), those a
  # threshold then removed (consistency.max_nll) included; empty for the other selectors.
  scored: list[tuple[Any, float]] = dataclasses.field(default_factory=list)


def per_source(records: Sequence[Any]) -> dict[str, int]:
  return dict(sorted(collections.Counter(r.source for r in records).items()))


def reason_kind(reason: str) -> str:
  """'response too short (812 < 1200 chars)' -> 'response too short'.

  Every filter words its reasons as "KIND (details)".
  """
  return reason.split(" (", 1)[0].strip()


def filter_names(config: ml_collections.ConfigDict) -> list[str]:
  names = [n.strip() for n in config.filters.split(",") if n.strip()]
  unknown = [n for n in names if n not in FILTERS]
  if unknown:
    raise UserError(f"config filters: unknown filter(s) {', '.join(unknown)}; known: "
                    f"{', '.join(FILTERS)}")
  return names


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks the fields a run depends on before any work is done."""
  filter_names(config)
  if config.selector not in selectors.SELECTORS:
    raise UserError(f"config selector: {config.selector!r} is not one of "
                    f"{selectors.SELECTORS}")
  if config.diverse.method not in selectors.DIVERSE_METHODS:
    raise UserError(f"config diverse.method: {config.diverse.method!r} is not one of "
                    f"{selectors.DIVERSE_METHODS}")
  if config.embed.name not in embed.EMBEDDERS:
    raise UserError(f"config embed.name: {config.embed.name!r} is not one of "
                    f"{embed.EMBEDDERS}")
  if config.embed.field not in dedup.FIELDS:
    raise UserError(f"config embed.field: {config.embed.field!r} is not one of {dedup.FIELDS}")
  for name in ("exact_dedup", "near_dedup"):
    if config[name].field not in dedup.FIELDS:
      raise UserError(f"config {name}.field: {config[name].field!r} is not one of "
                      f"{dedup.FIELDS}")
  for name in ("near_dedup", "test_overlap"):
    if not 0.0 < config[name].threshold <= 1.0:
      raise UserError(f"config {name}.threshold must be in (0, 1], got "
                      f"{config[name].threshold}")
  if config.n <= 0 and not config.quotas:
    raise UserError(f"config n must be positive, got {config.n}")
  weights = dict(config.quality.weights)
  if min(weights.values()) < 0 or sum(weights.values()) <= 0:
    raise UserError(f"config quality.weights must be >= 0 with a positive sum, got {weights}")
  if config.selector in selectors.MODEL_SELECTORS and not config.scorer:
    raise UserError(f"config scorer: the {config.selector} selector needs a model (a lima_jax "
                    "checkpoint, a Hugging Face directory, a GGUF or llama2.c file)")
  if config.consistency.end not in plain_text.ENDS:
    raise UserError(f"config consistency.end: {config.consistency.end!r} is not one of "
                    f"{plain_text.ENDS}")
  if config.consistency.skip_first < 0 or config.consistency.max_nll < 0:
    raise UserError("config consistency.skip_first and max_nll must be >= 0, got "
                    f"{config.consistency.skip_first} and {config.consistency.max_nll}")
  if config.selector == "influence" and not config.influence.target:
    raise UserError("config influence.target: the influence selector needs a target set "
                    "(a conversation file of examples like the ones wanted)")
  quotas.parse_quotas(config.quotas)
  if config.quota_shortfall not in quotas.SHORTFALLS:
    raise UserError(f"config quota_shortfall: {config.quota_shortfall!r} is not one of "
                    f"{quotas.SHORTFALLS}")


def embed_records(records: Sequence[Any], config: ml_collections.ConfigDict) -> np.ndarray:
  field = config.embed.field
  texts = [dedup.field_text(r, field) for r in records]
  return embed.embed(texts, name=config.embed.name, dim=config.embed.dim, seed=config.seed,
                     batch_size=config.embed.batch_size, max_tokens=config.embed.max_tokens)


def run_filters(records: Sequence[Any], config: ml_collections.ConfigDict,
                test_prompts: Sequence[tuple[str, str]] = ()):
  """Applies config.filters in order; returns (kept, stages, removed)."""
  stages, removed, kept = [], [], list(records)
  for name in filter_names(config):
    before = per_source(kept)
    if name == "test_overlap" and not test_prompts:
      stages.append(Stage(name, before, before, {}, note="skipped: no test_sets given"))
      continue
    start = time.perf_counter()
    result = FILTERS[name](kept, config, test_prompts)
    seconds = time.perf_counter() - start
    reasons = collections.Counter(reason_kind(why) for _, why in result.removed)
    removed.extend((record, name, why) for record, why in result.removed)
    kept = result.kept
    stages.append(Stage(name, before, per_source(kept), dict(reasons.most_common()),
                        result.changed, seconds))
    logging.info("filter %s: %d -> %d records (%d removed, %d rewritten) in %.1fs", name,
                 sum(before.values()), len(kept), len(result.removed), result.changed, seconds)
  return kept, stages, removed


def model_scores(candidates: Sequence[Any], config: ml_collections.ConfigDict,
                 target: Sequence[Any] = ()) -> Any:
  """Per-candidate IFD, loss or consistency parts, or similarities to the target set
  (influence)."""
  from lima_jax.curate import model_scores as scores_lib  # pylint: disable=g-import-not-at-top
  m = config.model
  scorer = scores_lib.load_scorer(config.scorer, tokenizer=m.tokenizer, max_len=m.max_len,
                                  vocab_multiple=m.vocab_multiple)
  if config.selector == "ifd":
    return scores_lib.ifd(scorer, candidates, batch_size=m.batch_size)
  if config.selector == "loss":
    return [{"loss": float(x)} for x in
            scores_lib.answer_loss(scorer, candidates, batch_size=m.batch_size)]
  if config.selector == "consistency":
    return scores_lib.consistency(scorer, candidates, batch_size=m.batch_size,
                                  skip_first=config.consistency.skip_first,
                                  end=config.consistency.end)
  if not target:
    raise UserError("config influence.target: the influence selector needs a target set "
                    "(a conversation file of examples like the ones wanted)")
  features = [scores_lib.gradient_features(scorer, records, dim=config.influence.dim,
                                           seed=config.seed,
                                           batch_size=config.influence.batch_size)
              for records in (candidates, target)]
  return scores_lib.influence(*features)


def select(candidates: Sequence[Any], config: ml_collections.ConfigDict,
           embeddings: np.ndarray | None, scores: Any = None) -> list[tuple[int, Pick]]:
  """Runs the configured selector, within quotas when they are given."""

  def run(ids: list[int], n: int) -> list[Pick]:
    picks = pick(ids, n)
    if len(picks) < n and not config.allow_fewer:
      raise UserError(f"config selector: {config.selector} found only {len(picks)} of the "
                      f"{n} records asked for (see its docs in configs/curate.py); set "
                      "--config.allow_fewer=True to take them")
    return picks

  def pick(ids: list[int], n: int) -> list[Pick]:
    subset = [candidates[i] for i in ids]
    if config.selector == "ifd":
      return selectors.ifd_pick([scores[i] for i in ids], n, max_ifd=config.ifd.max_ifd)
    if config.selector in ("loss", "consistency"):
      return selectors.lowest_pick([scores[i] for i in ids], n, config.selector)
    if config.selector == "influence":
      return selectors.influence_pick(np.asarray(scores)[ids], n)
    if config.selector == "random":
      return selectors.random_pick(subset, n, seed=config.seed)
    if config.selector == "longest":
      return selectors.longest(subset, n)
    if config.selector == "quality":
      return selectors.quality_pick(subset, n, weights=dict(config.quality.weights),
                                    target_chars=config.quality.target_chars,
                                    max_chars=config.quality.max_chars)
    return selectors.diverse(embeddings[ids], n, method=config.diverse.method,
                             seed=config.seed)

  wanted = quotas.parse_quotas(config.quotas)
  if wanted:
    return quotas.apply_quotas(candidates, wanted, run, shortfall=config.quota_shortfall)
  n = config.n
  if len(candidates) < n:
    if not config.allow_fewer:
      raise UserError(f"config n: only {len(candidates)} records pass the filters, fewer "
                      f"than n={n}; lower n, loosen the filters or set "
                      "--config.allow_fewer=True")
    n = len(candidates)
  return [(pick.index, pick) for pick in run(list(range(len(candidates))), n)]


def curate(records: Sequence[Any], config: ml_collections.ConfigDict,
           test_prompts: Sequence[tuple[str, str]] = (),
           target: Sequence[Any] = ()) -> Curation:
  """Filters, then selects (see the module docstring); deterministic for config.seed.

  `target` is the influence selector's target set (records).
  """
  validate(config)
  candidates, stages, removed = run_filters(records, config, test_prompts)
  embeddings = None
  needs_embeddings = config.selector == "diverse" or config.report.diversity
  if needs_embeddings and candidates:
    start = time.perf_counter()
    embeddings = embed_records(candidates, config)
    logging.info("embedded %d candidates (%s) in %.1fs", len(candidates), config.embed.name,
                 time.perf_counter() - start)
  scores, scored = None, []
  if config.selector in selectors.MODEL_SELECTORS and candidates:
    start = time.perf_counter()
    scores = model_scores(candidates, config, target)
    seconds = time.perf_counter() - start
    logging.info("%s scores of %d candidates in %.1fs", config.selector, len(candidates),
                 seconds)
    scored = [(r, float(s if config.selector == "influence" else s[config.selector]))
              for r, s in zip(candidates, scores)]
    if config.selector == "consistency" and config.consistency.max_nll > 0:
      keep = _consistency_threshold(candidates, scores, config, stages, removed, seconds)
      candidates = [r for r, k in zip(candidates, keep) if k]
      scores = [s for s, k in zip(scores, keep) if k]
      if embeddings is not None:
        embeddings = embeddings[keep]
  start = time.perf_counter()
  chosen = select(candidates, config, embeddings, scores)
  chosen_records = [candidates[i] for i, _ in chosen]
  stages.append(Stage(f"select:{config.selector}", per_source(candidates),
                      per_source(chosen_records), {}, seconds=time.perf_counter() - start,
                      note=f"quotas {config.quotas}" if config.quotas else f"n={config.n}"))
  return Curation(list(records), stages, removed, candidates, chosen, embeddings, scores,
                  scored)


def _consistency_threshold(candidates, scores, config, stages, removed, seconds):
  """consistency.max_nll as a filter: lists the rows whose worst token is more surprising
  than it as removed, with a stage of its own; returns the mask of the rows kept."""
  limit = config.consistency.max_nll
  before = per_source(candidates)
  keep = [not s["consistency"] > limit for s in scores]  # NaN (nothing judged): kept
  for r, s, k in zip(candidates, scores, keep):
    if not k:
      removed.append((r, "consistency", f"surprising token (worst NLL {s['consistency']:.2f} > "
                                        f"{limit:g} at judged token {int(s['worst_token'])})"))
  after = per_source([r for r, k in zip(candidates, keep) if k])
  stages.append(Stage("consistency", before, after,
                      {"surprising token": len(keep) - sum(keep)} if not all(keep) else {},
                      seconds=seconds, note=f"max_nll {limit:g}"))
  return np.array(keep, bool)


def response_chars(records: Sequence[Any]) -> np.ndarray:
  return np.array([len(text.response(r)) for r in records], np.int64)
