"""Answer files in, matched pairs out; and the answers of a checkpoint, when asked for.

Formats: lima_jax.generate's JSONL (the prompt row plus `answer`; the prompt as
`conversations` or `prompt`, its `id` when the prompts had one, `sample` for k answers a
prompt), MT-Bench rows (`question_id`, `turns`, `answers` or FastChat's `choices[0].turns`),
and AlpacaEval-style JSON lists (`instruction`, `output`, `generator`). A prompt is known by
its id when every row of both files has one, else by its text (whitespace collapsed).

Any row may carry `expected` (a string: the exact answer, scored by judge_free's
`exact_rate`) and `tags` (a list of strings naming groups, e.g. "set=test"); a prompts file's
rows carry them through generation into the answers.
"""
import dataclasses
import hashlib
import json
import pathlib
import re

from lima_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Answer:
  key: str  # The prompt's id, or its text when the files carry no ids.
  id: str | None
  turns: tuple[str, ...]  # The user's utterances (one, or two for MT-Bench).
  answer: tuple[str, ...]  # The assistant's answer to each user turn.
  sample: int
  where: str  # FILE:ROW, for messages.
  stopped: bool | None = None  # Ended at EOT (None: the file does not say).
  category: str = ""  # MT-Bench's category (reference-guided judging for some).
  expected: str | None = None  # The exact answer (judge_free's exact_rate), when known.
  tags: tuple[str, ...] = ()  # Groups the prompt belongs to ('set=test'): exact_rate:TAG.


def file_sha256(path) -> str:
  return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def _text(s: str) -> str:
  return re.sub(r"\s+", " ", s).strip()


def normalized(s: str) -> str:
  """What exact match compares: whitespace runs collapsed to one space, ends stripped."""
  return _text(s)


def labels(where: str, row: dict) -> tuple[str | None, tuple[str, ...]]:
  """(expected, tags) of a prompt or answer row; a wrongly typed one is an error at WHERE."""
  expected = row.get("expected")
  if "expected" in row and not isinstance(expected, str):
    raise UserError(f"{where}: 'expected' must be a string (the exact answer), got "
                    f"{type(expected).__name__}")
  tags = row.get("tags", [])
  if not isinstance(tags, list) or not all(isinstance(t, str) and t.strip() for t in tags):
    raise UserError(f"{where}: 'tags' must be a list of non-empty strings, got {tags!r:.80}")
  return expected, tuple(dict.fromkeys(tags))


def _rows(path: pathlib.Path):
  try:
    text = path.read_text(encoding="utf-8")
  except (OSError, UnicodeDecodeError) as e:
    raise UserError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from None
  if text.lstrip().startswith("["):  # An AlpacaEval-style JSON list.
    try:
      rows = json.loads(text)
    except json.JSONDecodeError as e:
      raise UserError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    yield from ((f"{path}:[{i}]", r) for i, r in enumerate(rows))
    return
  for n, line in enumerate(text.splitlines(), 1):
    if not line.strip():
      continue
    try:
      yield f"{path}:{n}", json.loads(line)
    except json.JSONDecodeError as e:
      raise UserError(f"{path}:{n}: invalid JSON ({e.msg})") from None


def _parse(where: str, row) -> Answer:
  if not isinstance(row, dict):
    raise UserError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
  ident = row.get("id", row.get("question_id", row.get("idx")))
  sample = row.get("sample", 0)
  if not isinstance(sample, int) or isinstance(sample, bool) or sample < 0:
    raise UserError(f"{where}: 'sample' must be a non-negative integer, got {sample!r}")
  if "instruction" in row and ("output" in row or "answer" in row):  # AlpacaEval.
    turns = [row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")]
    answer = [row.get("output", row.get("answer"))]
  else:
    turns = row.get("conversations", row.get("turns"))
    if turns is None and isinstance(row.get("prompt"), str):
      turns = [row["prompt"]]
    if not isinstance(turns, list) or not turns:
      raise UserError(f"{where}: needs 'conversations', 'turns' or 'prompt' (the user's "
                      "prompt), or 'instruction' and 'output'")
    turns = [t.get("content") if isinstance(t, dict) else t for t in turns]
    if "answers" in row:
      answer = row["answers"]
    elif "choices" in row:  # FastChat's model_answer rows.
      answer = (row["choices"] or [{}])[0].get("turns")
    else:
      answer = [row.get("answer")]
      if "conversations" in row and len(turns) != 1:
        raise UserError(f"{where}: a conversation of {len(turns)} utterances; the lima and "
                        "alpaca protocols judge single-turn prompts, mt_bench rows carry "
                        "'turns' and 'answers'")
    if not isinstance(answer, list) or len(answer) != len(turns):
      raise UserError(f"{where}: needs 'answer' (a string), or 'answers' with one per turn "
                      f"({len(turns)})")
  if not all(isinstance(t, str) for t in turns):
    raise UserError(f"{where}: the prompt's turns must be strings")
  if not all(isinstance(a, str) for a in answer):
    raise UserError(f"{where}: missing or non-string 'answer'")
  stopped = row.get("stopped")
  expected, tags = labels(where, row)
  return Answer(key="", id=None if ident is None else str(ident), turns=tuple(turns),
                answer=tuple(answer), sample=sample, where=where,
                stopped=stopped if isinstance(stopped, bool) else None,
                category=str(row.get("category", "")), expected=expected, tags=tags)


def read(path) -> list[Answer]:
  """Every answer of a file, keyed (by id when every row has one); duplicates are errors."""
  path = pathlib.Path(path)
  return from_rows(_rows(path), str(path))


def from_rows(rows, name: str = "answers") -> list[Answer]:
  """Answers from rows already in memory: (where, row) pairs, or plain rows (dicts as
  lima_jax.generate writes them, e.g. lima_jax.select's), numbered from 1."""
  rows = [r if isinstance(r, tuple) else (f"{name}:{n}", r) for n, r in enumerate(rows, 1)]
  answers = [_parse(where, row) for where, row in rows]
  if not answers:
    raise UserError(f"{name}: no answers")
  by_id = all(a.id is not None for a in answers)
  out, seen = [], {}
  for a in answers:
    a = dataclasses.replace(a, key=a.id if by_id else _text(" / ".join(a.turns)))
    if (a.key, a.sample) in seen:
      raise UserError(f"{a.where}: prompt {_short(a.key)!r} sample {a.sample} is also at "
                      f"{seen[a.key, a.sample]}")
    seen[a.key, a.sample] = a.where
    out.append(a)
  return out


def _short(key: str, n: int = 60) -> str:
  return key if len(key) <= n else key[:n - 3] + "..."


def _rekey(answers: list[Answer]) -> list[Answer]:
  return [dataclasses.replace(a, key=_text(" / ".join(a.turns))) for a in answers]


def match(system: list[Answer], baseline: list[Answer], names: tuple[str, str]
          ) -> list[tuple[Answer, Answer]]:
  """(system answer, baseline answer) pairs in the system file's order. A baseline with one
  sample a prompt meets each of the system's k samples; otherwise samples pair by index."""
  if not (system[0].id is not None and baseline[0].id is not None and
          system[0].key == system[0].id and baseline[0].key == baseline[0].id):
    system, baseline = _rekey(system), _rekey(baseline)  # Ids on one side only: by text.
  base = {(b.key, b.sample): b for b in baseline}
  base_samples = {}
  for b in baseline:
    base_samples.setdefault(b.key, set()).add(b.sample)
  pairs, lonely = [], []
  for a in system:
    if a.key not in base_samples:
      lonely.append(a)
      continue
    b = base.get((a.key, a.sample if len(base_samples[a.key]) > 1 else min(base_samples[a.key])))
    if b is None:
      lonely.append(a)
    else:
      pairs.append((a, b))
  keys = {a.key for a in system}
  unmatched_base = [b for b in baseline if b.key not in keys]
  problems = []
  if lonely:
    problems.append(f"{len(lonely)} answer(s) in {names[0]} have no partner in {names[1]}: "
                    + ", ".join(f"{_short(a.key, 40)!r} ({a.where})" for a in lonely[:5]))
  if unmatched_base:
    problems.append(f"{len(unmatched_base)} answer(s) in {names[1]} have no partner in "
                    f"{names[0]}: " + ", ".join(f"{_short(b.key, 40)!r} ({b.where})"
                                                 for b in unmatched_base[:5]))
  if problems:
    raise UserError("; ".join(problems) + (" ..." if len(lonely) + len(unmatched_base) > 10
                                           else ""))
  return pairs
