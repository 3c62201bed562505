"""A transparent heuristic quality score: five components in [0, 1] and their weighted mean.

Every component is reported per chosen example, so a reader can see why one was preferred:

  length      log-scaled response length: 1.0 from `target_chars` (LIMA's 1,200) up to
              `max_chars` (LIMA's 4,096), falling as max_chars/chars above it.
  structure   0.6 x paragraphs (1 paragraph: 0, 4 or more: 1) + 0.4 if the answer has a list,
              a heading, bold lead-ins or a code block.
  formatting  share of five checks passed: no leftover HTML tag, no raw URL, complete
              (`filters.truncation_reason` with closing punctuation required), starts with a
              capital (or markup), and no paragraph over 1,500 characters (a wall of text).
  relevance   share of the prompt's content words (3+ letters, no stop words, compared on
              their first 5 letters) that the response uses; 0.5 when the prompt has none.
  voice       LIMA's "helpful AI assistant" voice: 1.0, minus 0.5 for first person and 0.5 for
              references to other answers (the regexes of `filters.lima_rules`).
"""
import math
import re
from typing import Any, Mapping, Sequence

from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

from lima_jax.curate import filters, text

COMPONENTS = ("length", "structure", "formatting", "relevance", "voice")

_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
_LIST_ITEM = re.compile(r"^[ \t]*(?:[-*+•]|\d+[.)])[ \t]+\S", re.M)
_HEADING = re.compile(r"^[ \t]*(?:#{1,6}[ \t]|\*\*[^*\n]+\*\*)", re.M)
_HTML_TAG = re.compile(r"</?(?:a|b|br|div|i|img|li|ol|p|span|strong|ul|em|table)\b[^>]*>", re.I)
_URL = re.compile(r"\bhttps?://\S+")


def _length(chars: int, target_chars: int, max_chars: int) -> float:
  if chars > max_chars:
    return max_chars / chars
  return min(1.0, math.log1p(chars) / math.log1p(target_chars))


def _structure(reply: str) -> float:
  paragraphs = [p for p in _PARAGRAPH_BREAK.split(reply) if p.strip()]
  organised = (len(_LIST_ITEM.findall(reply)) >= 2 or bool(_HEADING.search(reply))
               or "```" in reply)
  return 0.6 * min(1.0, max(len(paragraphs) - 1, 0) / 3) + 0.4 * organised


def _formatting(reply: str, writing: str) -> float:
  paragraphs = _PARAGRAPH_BREAK.split(reply)
  stripped = reply.lstrip()
  checks = (
      not _HTML_TAG.search(writing),
      not _URL.search(writing),
      not filters.truncation_reason(reply, require_end_punctuation=True),
      bool(stripped) and not stripped[0].islower(),
      max(len(p) for p in paragraphs) <= 1500,
  )
  return sum(checks) / len(checks)


def _content_stems(passage: str) -> set[str]:
  distinct = set(map(str.lower, text.words(passage)))  # dedupe before the per-word work
  return {w[:5] for w in distinct if len(w) >= 3 and w not in ENGLISH_STOP_WORDS}


def _relevance(ask: str, reply: str) -> float:
  wanted = _content_stems(ask)
  if not wanted:
    return 0.5
  return len(wanted & _content_stems(reply)) / len(wanted)


def _voice(writing: str) -> float:
  return (1.0 - 0.5 * bool(filters.FIRST_PERSON.search(writing))
          - 0.5 * bool(filters.find_reference(writing)))


def components(record: Any, *, target_chars: int = 1200,
               max_chars: int = 4096) -> dict[str, float]:
  """The five component values of one record (see the module docstring)."""
  reply = text.response(record)
  writing = text.prose(reply)
  return {
      "length": _length(len(reply), target_chars, max_chars),
      "structure": _structure(reply),
      "formatting": _formatting(reply, writing),
      "relevance": _relevance(text.prompt(record), reply),
      "voice": _voice(writing),
  }


def score(parts: Mapping[str, float], weights: Mapping[str, float]) -> float:
  """Weighted mean of the components; components with weight 0 do not count."""
  unknown = set(weights) - set(COMPONENTS)
  if unknown:
    raise ValueError(f"unknown quality components {sorted(unknown)}; known: {COMPONENTS}")
  total = sum(weights.values())
  if total <= 0 or min(weights.values()) < 0:
    raise ValueError(f"quality weights must be >= 0 with a positive sum, got {dict(weights)}")
  return sum(w * parts[name] for name, w in weights.items()) / total


def score_all(records: Sequence[Any], weights: Mapping[str, float], *, target_chars: int = 1200,
              max_chars: int = 4096) -> list[tuple[float, dict[str, float]]]:
  """(score, components) for each record."""
  out = []
  for record in records:
    parts = components(record, target_chars=target_chars, max_chars=max_chars)
    out.append((score(parts, weights), parts))
  return out
