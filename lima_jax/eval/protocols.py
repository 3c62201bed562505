"""What the judge is asked and how its reply is read, per protocol.

A protocol turns answers into `Job`s (one judge request each) and a reply into a verdict, or
None when the reply does not say one in the required form (then it is 'unparsed', never a
tie). A parser's name carries its version: changing how replies are read changes every
request's cache key, so old verdicts are not reused under new rules.
"""
import dataclasses
import hashlib
import json
import math
import pathlib
import re

from lima_jax.errors import UserError

# LIMA's annotator instructions (Appendix C), in our words.
LIMA_PAIRWISE_SYSTEM = (
    "You are helping to evaluate AI assistants. Imagine that you have a super-intelligent AI "
    "assistant at hand, and that you need its help with the question below. You will see two "
    "answers. Decide whether one of them is significantly better than the other for what you "
    "need.")
LIMA_PAIRWISE_USER = (
    "[Question]\n{question}\n\n[The Start of Answer A]\n{answer_a}\n[The End of Answer A]\n\n"
    "[The Start of Answer B]\n{answer_b}\n[The End of Answer B]\n\n"
    "Explain your comparison in a few sentences; the order of the answers must not matter. "
    "Then, on the last line, write exactly one of: \"[[A]]\" if Answer A is significantly "
    "better, \"[[B]]\" if Answer B is significantly better, \"[[C]]\" if neither is "
    "significantly better.")

# LIMA's 1-6 helpfulness scale (Appendix D), in our words.
LIMA_LIKERT_SYSTEM = "You are a careful grader of AI assistants' answers."
LIMA_LIKERT_USER = (
    "Rate how helpful the assistant's answer is to the user's question, from 1 to 6:\n"
    "1 - not helpful: off-topic, wrong, harmful, or no answer at all.\n"
    "2 - barely helpful: touches the question but misses its point or has serious errors.\n"
    "3 - somewhat helpful: answers part of the question, with clear gaps or errors.\n"
    "4 - helpful: answers the question adequately, with minor problems.\n"
    "5 - very helpful: complete, correct and clear.\n"
    "6 - excellent: what an expert would write; hard to improve.\n\n"
    "[Question]\n{question}\n\n[The Start of the Assistant's Answer]\n{answer}\n"
    "[The End of the Assistant's Answer]\n\n"
    "Explain your rating in a few sentences, then write it on the last line as \"[[N]]\".")

# After AlpacaEval's alpaca_eval_clf prompt: only the identifier, so that the first token's
# log-probabilities are the preference.
ALPACA_SYSTEM = ("You are a highly efficient assistant, who evaluates and selects the best "
                 "large language model based on the quality of their responses to a given "
                 "instruction.")
ALPACA_USER = (
    "Which of the two outputs answers the instruction better? Judge helpfulness and "
    "correctness; the order of the outputs must not matter.\n\n[Instruction]\n{question}\n\n"
    "[The Start of Answer A]\n{answer_a}\n[The End of Answer A]\n\n"
    "[The Start of Answer B]\n{answer_b}\n[The End of Answer B]\n\n"
    "Answer with the letter of the better output, A or B, and nothing else.")

MT_BENCH_REF_CATEGORIES = ("math", "reasoning", "coding")  # FastChat's NEED_REF_CATS.
PARSERS = {"lima_pairwise": "abc-v1", "lima_likert": "likert6-v1", "alpaca_eval": "ab-v1",
           "mt_single": "score10-v1", "mt_pairwise": "abc-v1"}


@dataclasses.dataclass(frozen=True)
class Job:
  protocol: str
  item: dict  # prompt, sample, order ('ab': the system is A), turn, answers' sha256.
  messages: list
  parser: str


def sha(text: str) -> str:
  return hashlib.sha256(text.encode()).hexdigest()


def template_sha256(protocol: str, config) -> str:
  """Hash of the exact judge prompts a protocol uses (recorded with every score)."""
  if protocol == "mt_bench":
    parts = [pathlib.Path(config.mt_bench.judge_prompts).read_bytes().decode()]
  else:
    parts = {"lima_pairwise": [LIMA_PAIRWISE_SYSTEM, LIMA_PAIRWISE_USER],
             "lima_likert": [LIMA_LIKERT_SYSTEM, LIMA_LIKERT_USER],
             "alpaca_eval": [ALPACA_SYSTEM, ALPACA_USER]}.get(protocol, [])
  return sha(json.dumps(parts + [PARSERS.get(protocol, "")]))


def _messages(system: str, user: str) -> list[dict]:
  return ([{"role": "system", "content": system}] if system else []) + [
      {"role": "user", "content": user}]


def _single_turn(a, protocol):
  if len(a.turns) != 1:
    raise UserError(f"{a.where}: {protocol} judges single-turn prompts ({len(a.turns)} turns "
                    "here); mt_bench judges two")


def pairwise_jobs(protocol: str, pairs) -> list[Job]:
  """Both orders of every (system, baseline) pair."""
  system, user = ((LIMA_PAIRWISE_SYSTEM, LIMA_PAIRWISE_USER) if protocol == "lima_pairwise"
                  else (ALPACA_SYSTEM, ALPACA_USER))
  jobs = []
  for a, b in pairs:
    _single_turn(a, protocol)
    item = {"prompt": a.key, "sample": a.sample, "a": sha(a.answer[0]), "b": sha(b.answer[0])}
    for order, (first, second) in (("ab", (a, b)), ("ba", (b, a))):
      text = user.format(question=a.turns[0], answer_a=first.answer[0],
                         answer_b=second.answer[0])
      jobs.append(Job(protocol, {**item, "order": order}, _messages(system, text),
                      PARSERS[protocol]))
  return jobs


def likert_jobs(answers) -> list[Job]:
  jobs = []
  for a in answers:
    _single_turn(a, "lima_likert")
    text = LIMA_LIKERT_USER.format(question=a.turns[0], answer=a.answer[0])
    jobs.append(Job("lima_likert", {"prompt": a.key, "sample": a.sample,
                                    "a": sha(a.answer[0])},
                    _messages(LIMA_LIKERT_SYSTEM, text), PARSERS["lima_likert"]))
  return jobs


def _read_jsonl(path, what) -> list[dict]:
  try:
    return [json.loads(l) for l in pathlib.Path(path).read_text(encoding="utf-8").splitlines()
            if l.strip()]
  except (OSError, json.JSONDecodeError) as e:
    raise UserError(f"config mt_bench.{what}: {path}: cannot read ({e})") from None


def mt_bench_jobs(config, answers, pairs) -> list[Job]:
  """Per turn, FastChat's judge prompt for the category: reference-guided for math,
  reasoning and coding, turn 2 shown in the context of turn 1. pairs=None: single grading."""
  prompts = {p["name"]: p for p in _read_jsonl(config.mt_bench.judge_prompts, "judge_prompts")}
  refs = {}
  if config.mt_bench.references and pathlib.Path(config.mt_bench.references).exists():
    for r in _read_jsonl(config.mt_bench.references, "references"):
      refs[str(r["question_id"])] = r["choices"][0]["turns"]
  mode = "pair" if pairs is not None else "single"
  units = pairs if pairs is not None else [(a, None) for a in answers]
  jobs = []
  for a, b in units:
    if len(a.turns) != 2 or len(a.answer) != 2 or (b is not None and len(b.answer) != 2):
      raise UserError(f"{a.where}: mt_bench needs two turns and two answers")
    ref = refs.get(str(a.id)) if a.category in MT_BENCH_REF_CATEGORIES else None
    if a.category in MT_BENCH_REF_CATEGORIES and ref is None:
      raise UserError(f"{a.where}: category {a.category} is judged against a reference, and "
                      f"{config.mt_bench.references} has none for question {a.id}")
    q = {"question": a.turns[0], "question_1": a.turns[0], "question_2": a.turns[1]}
    if ref:
      q.update(ref_answer_1=ref[0], ref_answer_2=ref[1])
    for turn in (1, 2):
      name = f"{mode}-{'math-v1' if ref else ('v2' if mode == 'pair' else 'v1')}"
      name += "-multi-turn" if turn == 2 else ""
      p = prompts.get(name)
      if p is None:
        raise UserError(f"config mt_bench.judge_prompts: no prompt named {name!r}")
      base = {"prompt": a.key, "sample": a.sample, "turn": turn, "category": a.category,
              "a": sha(json.dumps(a.answer))}
      if b is None:
        text = p["prompt_template"].format(**q, answer=a.answer[0], answer_1=a.answer[0],
                                           answer_2=a.answer[1])
        jobs.append(Job("mt_bench", base, _messages(p["system_prompt"], text),
                        PARSERS["mt_single"]))
        continue
      base["b"] = sha(json.dumps(b.answer))
      for order, (x, y) in (("ab", (a, b)), ("ba", (b, a))):
        text = p["prompt_template"].format(**q, answer_a=x.answer[0], answer_b=y.answer[0],
                                           answer_a_1=x.answer[0], answer_a_2=x.answer[1],
                                           answer_b_1=y.answer[0], answer_b_2=y.answer[1])
        jobs.append(Job("mt_bench", {**base, "order": order},
                        _messages(p["system_prompt"], text), PARSERS["mt_pairwise"]))
  return jobs


# --- Reading replies ----------------------------------------------------------------------

def _last(pattern: str, text: str) -> str | None:
  # The last match: judges restate the instructions ("[[A]] if ...") before their verdict.
  found = re.findall(pattern, text)
  return found[-1] if found else None


def _ab_from_logprobs(logprobs) -> float | None:
  """P(A) / (P(A) + P(B)) at the first position whose top tokens name A or B."""
  for position in logprobs or []:
    p = {"A": 0.0, "B": 0.0}
    for token, lp in position["top"] or [[position["token"], position["logprob"]]]:
      t = token.strip().strip("[]").strip()
      if t in p:
        p[t] += math.exp(lp)
    if p["A"] + p["B"] > 0:
      return p["A"] / (p["A"] + p["B"])
  return None


def parse(parser: str, text: str, logprobs=None) -> dict | None:
  if parser == "abc-v1":
    label = _last(r"\[\[([ABC])\]\]", text)
    return None if label is None else {"label": label}
  if parser == "likert6-v1":
    score = _last(r"\[\[([1-6])\]\]", text)
    return None if score is None else {"score": int(score)}
  if parser == "score10-v1":  # FastChat's [[rating]], then its single-bracket fallback.
    score = _last(r"\[\[(\d+\.?\d*)\]\]", text) or _last(r"\[(\d+\.?\d*)\]", text)
    if score is None or not 1 <= float(score) <= 10:
      return None
    return {"score": float(score)}
  if parser == "ab-v1":
    p_a = _ab_from_logprobs(logprobs)
    label = re.fullmatch(r"\W*([AB])\W*", text.strip())
    label = label.group(1) if label else None
    if p_a is None and label is None:
      return None
    if p_a is None:
      p_a = 1.0 if label == "A" else 0.0
    return {"label": label or ("A" if p_a >= 0.5 else "B"), "p_a": p_a,
            "from_logprobs": logprobs is not None and _ab_from_logprobs(logprobs) is not None}
  raise ValueError(f"unknown parser {parser!r}")
