"""Files in and out of curation: pools and test sets in, chosen/removed/scores JSONL out.

Pools and test sets are read with `lima_jax.datasets.read_records` (the project's one
reader). Outputs are written to a temporary file beside the target and renamed over it, so
an interrupted or failed run never leaves a half-written file where a good one was.
"""
import json
import math
import os
from typing import Any, Iterable, Sequence

from absl import logging

from lima_jax.curate.selectors import Pick
from lima_jax.datasets import read_records
from lima_jax.errors import UserError
from lima_jax.files import write_atomic  # noqa: F401  (curate's writer: the shared one)


def split_paths(spec: str, field: str) -> list[str]:
  paths = [p.strip() for p in spec.split(",") if p.strip()]
  for path in paths:
    if not os.path.isfile(path):
      raise UserError(f"config {field}: {path}: no such file")
  return paths


def read_pool(paths: Sequence[str], *, on_error: str = "raise") -> tuple[list[Any], list[str]]:
  """All records of the pool files, in file order, and the problems of skipped rows."""
  if on_error not in ("raise", "skip"):
    raise UserError(f"config pool_on_error: {on_error!r} is not 'raise' or 'skip'")
  records, problems = [], []
  for path in paths:
    try:
      got, bad = read_records(path, on_error=on_error)
    except UserError as e:
      if on_error == "skip":  # the file as a whole is unreadable: no hint helps
        raise
      raise UserError(f"{e} (--config.pool_on_error=skip leaves such rows out and lists "
                      "them in the report)") from None
    records.extend(got)
    problems.extend(bad)
    logging.info("%s: %d records%s", path, len(got), f", {len(bad)} skipped" if bad else "")
  return records, problems


def read_test_prompts(paths: Sequence[str]) -> list[tuple[str, str]]:
  """(origin, prompt) for every user turn of the test files (prompt-only rows allowed)."""
  prompts = []
  for path in paths:
    records, _ = read_records(path, keep_trailing_user=True)
    for record in records:
      prompts.extend((record.origin, turn) for turn in record.conversations[0::2])
  return prompts


def chosen_jsonl(picks: Iterable[tuple[Any, Pick]]) -> str:
  """LIMA-format JSONL: conversations, source, origin, score and its components."""
  lines = []
  for record, pick in picks:
    lines.append(json.dumps({
        "conversations": list(record.conversations), "source": record.source,
        "origin": record.origin, "score": round(pick.score, 6),
        "scores": {k: round(v, 6) for k, v in pick.scores.items()},
    }, ensure_ascii=False))
  return "".join(line + "\n" for line in lines)


def removed_jsonl(removed: Iterable[tuple[Any, str, str]]) -> str:
  """One line per removed record: where it came from, which stage removed it and why."""
  return "".join(json.dumps({"origin": r.origin, "source": r.source, "stage": stage,
                             "reason": why}, ensure_ascii=False) + "\n"
                 for r, stage, why in removed)


def scores_jsonl(curation: Any) -> str:
  """One line per pool record, in pool order: origin, source, the selector's score (null
  where it gave none: a row a filter removed before scoring, and for random and diverse a
  row not chosen), chosen, and the stage and reason that removed it (null when none did).

  Records are matched by origin, unique per pool row unless one file is given twice.
  """
  removed = {r.origin: (stage, why) for r, stage, why in curation.removed}
  scored = {r.origin: score for r, score in curation.scored}
  chosen = {curation.candidates[i].origin: pick.score for i, pick in curation.chosen}
  lines = []
  for r in curation.pool:
    score = scored.get(r.origin, chosen.get(r.origin))
    stage, why = removed.get(r.origin, (None, None))
    lines.append(json.dumps({
        "origin": r.origin, "source": r.source,
        "score": None if score is None or not math.isfinite(score) else round(score, 6),
        "chosen": r.origin in chosen, "stage": stage, "reason": why}, ensure_ascii=False))
  return "".join(line + "\n" for line in lines)
