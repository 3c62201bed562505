"""Cheap checks on any answers file, no judge: what to look at before paying for one."""
import math
import re

from lima_jax.eval import stats

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
  return fig
