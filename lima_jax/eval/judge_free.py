"""Cheap checks on any answers file, no judge: what to look at before paying for one.

When answers carry `expected` (the exact answer), also exact match: an answer is exact when
its text equals `expected` with whitespace runs collapsed and the ends stripped. k samples
of a prompt are a cluster, as for every rate here. `exact_rate:TAG` is the same over the
answers whose prompt has TAG in its `tags`.
"""
import math
import re

from lima_jax.eval import stats
from lima_jax.eval.answers import normalized

# Openings of a refusal; a heuristic, reported as such.
_REFUSAL = re.compile(
    r"^\W*(i'?m sorry|i am sorry|sorry, (but )?i|i cannot|i can'?t|i'?m (not able|unable)|"
    r"i am (not able|unable)|as an ai\b|i (won'?t|will not) (be able to )?(help|provide))",
    re.IGNORECASE)


def repetition(text: str, n: int = 4) -> float:
  """Share of word n-grams that repeat an earlier one (0: none; near 1: a loop)."""
  words = text.split()
  grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
  return 1 - len(set(grams)) / len(grams) if grams else 0.0


def _english(text: str, min_ascii: float) -> bool:
  letters = [ch for ch in text if ch.isalpha()]
  return not letters or sum(ch.isascii() for ch in letters) / len(letters) >= min_ascii


def exact(a) -> bool:
  """The answer (its turns joined) equals `expected` up to whitespace."""
  return normalized("\n".join(a.answer)) == normalized(a.expected)


def per_prompt_exact(answers) -> tuple[dict, dict]:
  """({prompt: mean exact over its samples}, {prompt: [tags]}), prompts with `expected`."""
  scores, tags = {}, {}
  for a in answers:
    if a.expected is None:
      continue
    scores.setdefault(a.key, []).append(float(exact(a)))
    tags.setdefault(a.key, {}).update(dict.fromkeys(a.tags))
  return ({k: sum(v) / len(v) for k, v in scores.items()},
          {k: list(v) for k, v in tags.items()})


def figures(answers, config) -> dict:
  """Rates with Wilson intervals (clustered over prompts when there are k samples)."""
  b, per = config.bootstrap, {}
  for a in answers:
    per.setdefault(a.key, []).append(a)
  groups = list(per.values())

  def rate(test, among=lambda a: True):
    vals = [[float(test(a)) for a in g if among(a)] for g in groups]
    n = sum(map(len, vals))
    ci, _ = stats.rate_ci(vals, b.rounds, b.seed)
    return (sum(map(sum, vals)) / n if n else math.nan), ci

  text = lambda a: "\n".join(a.answer)
  fig = {"n": len(answers), "n_prompts": len(groups),
         "samples_per_prompt": max(len(g) for g in groups)}
  for name, fn in (("chars", lambda a: len(text(a))), ("words", lambda a: len(text(a).split())),
                   ("repetition", lambda a: repetition(text(a)))):
    vals = [[fn(a) for a in g] for g in groups]
    fig[f"mean_{name}"] = sum(map(sum, vals)) / len(answers)
    fig[f"mean_{name}_ci95"] = stats.cluster_bootstrap(vals, b.rounds, b.seed)
  known = [a for a in answers if a.stopped is not None]
  fig["stopped_known"] = len(known)
  fig["stopped_rate"], fig["stopped_rate_ci95"] = rate(lambda a: a.stopped,
                                                       lambda a: a.stopped is not None)
  fig["empty_rate"], fig["empty_rate_ci95"] = rate(lambda a: not text(a).strip())
  fig["refusal_rate"], fig["refusal_rate_ci95"] = rate(
      lambda a: bool(_REFUSAL.match(a.answer[0])))
  fig["looping_rate"], fig["looping_rate_ci95"] = rate(lambda a: repetition(text(a)) > 0.5)
  min_ascii = config.judge_free.min_ascii_letters
  fig["non_english_rate"], fig["non_english_rate_ci95"] = rate(
      lambda a: not _english(text(a), min_ascii))
  scored = [a for a in answers if a.expected is not None]
  if scored:
    fig["exact_n"] = len(scored)
    fig["exact_n_prompts"] = len({a.key for a in scored})
    fig["exact_rate"], fig["exact_rate_ci95"] = rate(exact, lambda a: a.expected is not None)
    tags = sorted({t for a in scored for t in a.tags})
    fig["exact_tags"] = tags
    for tag in tags:
      among = lambda a, tag=tag: a.expected is not None and tag in a.tags
      fig[f"exact_n:{tag}"] = sum(map(among, answers))
      fig[f"exact_rate:{tag}"], fig[f"exact_rate:{tag}_ci95"] = rate(exact, among)
  return fig
