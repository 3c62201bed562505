"""Readers for conversation files: LIMA-style JSONL and Alpaca/Dolly JSON or JSONL.

Every reader returns `Record`s: the utterances of one conversation (user first, then
alternating), where it came from, and its source label. Bad input is reported as
"FILE:LINE: what is wrong" (JSONL) or "FILE:#INDEX: what is wrong" (items of a JSON list).

Formats (`fmt`):

* `lima`: one object per line, `{"conversations": [str, ...], "source": str?}`. An utterance
  may also be `{"role": "user"|"assistant", "content": str}`; then the roles must alternate
  user, assistant, ... and a break in that order is an error.
  The ecosystem's rows, `{"messages": [{"role": "system"|"user"|"assistant", "content": str},
  ...]}` (Hugging Face chat datasets, TRL), are read too: system messages first, then user and
  assistant alternating. `Record.messages` keeps them as given (a chat template renders them);
  `conversations` holds LIMA's utterances, system messages folded into the first user turn by
  LIMA's stated rule (`lima_jax.tokenizer.chat.turns_from_messages`).
* `alpaca` (also Dolly): `{"instruction": str, "input": str?, "output": str}`, as a JSON list
  or as JSONL. The user turn is the instruction, followed by "\\n\\n" and the input when the
  input is not empty; the assistant turn is the output.
* `text` (pretraining): `{"text": str, "source": str?}`, one plain document per line, learned
  on every token (`Record.text`); see `lima_jax.data.encode_text_ids`.
* `auto`: the first object in the file decides: "conversations" means `lima`, "instruction"
  means `alpaca`, "text" means `text`. A file whose first non-blank byte is "[" is read as a JSON list, any other
  as JSONL, whatever its extension.

Source label: the object's own "source" field when it has one, else the file's stem. Dolly's
"category" is a task type (open_qa, ...), not a data source, so it is not used: ablations
compare data sources (LIMA vs Alpaca vs Dolly), and the stem names those.

A conversation of odd length ends on a user turn. LIMA's train row 1021 is one (see
shared/data/SOURCES.md), so this is not an error: the trailing user turn is dropped (it has
nothing to learn from) and counted in `Record.dropped_turns`, with a logged warning.
`keep_trailing_user=True` keeps it, for prompt files such as LIMA's test.jsonl.
"""
import dataclasses
import json
import os
import pathlib
from typing import Any, Iterator, Sequence

from absl import logging

from lima_jax.errors import UserError
from lima_jax.tokenizer import chat

FORMATS = ("auto", "lima", "alpaca", "text")
_ROLES = ("user", "assistant")


@dataclasses.dataclass(frozen=True)
class Record:
  """One conversation.

  Attributes:
    conversations: utterances, alternating user, assistant, user, ... starting with user.
    source: the record's "source" field, else the stem of its file.
    origin: "path:line" (1-based) for JSONL, "path:#index" (0-based) for a JSON list.
    dropped_turns: trailing user turns removed while reading (0 or 1).
    text: a plain document (`conversations` holds it alone), learned on every token.
    messages: a messages row's messages ({"role", "content"}) as given (less a dropped
      trailing user message); () for other rows (`chat.as_messages(conversations)`).
  """

  conversations: tuple[str, ...]
  source: str
  origin: str
  dropped_turns: int = 0
  text: bool = False
  messages: tuple = ()


class _BadRow(Exception):
  """A problem with one row; the caller adds its location."""


def read_records(path: str | os.PathLike, *, on_error: str = "raise", fmt: str = "auto",
                 keep_trailing_user: bool = False) -> tuple[list[Record], list[str]]:
  """Reads one conversation file.

  Args:
    path: a .jsonl or .json file.
    on_error: "raise" stops at the first bad row with a `UserError`; "skip" leaves bad rows
      out and lists them. A file that cannot be read at all (missing, not UTF-8 or malformed
      as a whole JSON list) raises in both modes.
    fmt: "auto", "lima", "alpaca" or "text" (see the module docstring).
    keep_trailing_user: keep a final user turn instead of dropping it.

  Returns:
    (records, problems), problems being "path:line: why" for each skipped row.
  """
  if on_error not in ("raise", "skip"):
    raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
  if fmt not in FORMATS:
    raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
  path = pathlib.Path(path)
  try:
    raw = path.read_bytes()
  except OSError as e:
    raise UserError(f"{path}: cannot read ({e.strerror or e})") from None
  if raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark, as some editors write
    raw = raw[3:]
  rows = _json_list_rows(path, raw) if raw.lstrip().startswith(b"[") else _jsonl_rows(path, raw)

  records, problems = [], []
  for origin, obj in rows:
    try:
      if isinstance(obj, _BadRow):
        raise obj
      if not isinstance(obj, dict):
        raise _BadRow(f"expected a JSON object, got {_type_name(obj)}")
      if fmt == "auto":
        fmt = _detect_format(obj)
      if fmt == "text":
        records.append(Record((_text_document(obj),), _source(obj, default=path.stem), origin,
                              text=True))
        continue
      messages = _messages(obj) if fmt == "lima" and "conversations" not in obj else []
      convo = (_turns_of(messages) if messages else _lima_turns(obj)) if fmt == "lima" \
          else _alpaca_turns(obj)
      source = _source(obj, default=path.stem)
    except _BadRow as e:
      message = f"{origin}: {e}"
      if on_error == "raise":
        raise UserError(message) from None
      problems.append(message)
      continue
    dropped = 0
    if len(convo) % 2 == 1 and not keep_trailing_user:
      if len(convo) == 1:
        message = f"{origin}: a single user turn, with no assistant reply to learn from"
        if on_error == "raise":
          raise UserError(message)
        problems.append(message)
        continue
      convo, dropped, messages = convo[:-1], 1, messages[:-1]
      logging.warning("%s: dropped the trailing user turn (turn %d has no reply)", origin,
                      len(convo) + 1)
    records.append(Record(tuple(convo), source, origin, dropped, messages=tuple(messages)))
  return records, problems


def read_files(paths: Sequence[str | os.PathLike], *, on_error: str = "raise",
               fmt: str = "auto") -> tuple[list[Record], list[str]]:
  """`read_records` over several files, concatenated in order."""
  records, problems = [], []
  for path in paths:
    got, bad = read_records(path, on_error=on_error, fmt=fmt)
    records += got
    problems += bad
  return records, problems


def _jsonl_rows(path: pathlib.Path, raw: bytes) -> Iterator[tuple[str, Any]]:
  for lineno, line in enumerate(raw.split(b"\n"), start=1):
    if not line.strip():
      continue
    origin = f"{path}:{lineno}"
    try:
      text = line.decode("utf-8")
    except UnicodeDecodeError as e:
      yield origin, _BadRow(f"not valid UTF-8 (byte 0x{line[e.start]:02x} at column "
                            f"{e.start + 1})")
      continue
    try:
      yield origin, json.loads(text)
    except json.JSONDecodeError as e:
      yield origin, _BadRow(f"malformed JSON ({e.msg} at column {e.colno})")


def _json_list_rows(path: pathlib.Path, raw: bytes) -> Iterator[tuple[str, Any]]:
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError as e:
    line = raw.count(b"\n", 0, e.start) + 1
    raise UserError(f"{path}:{line}: not valid UTF-8 (byte 0x{raw[e.start]:02x})") from None
  try:
    items = json.loads(text)
  except json.JSONDecodeError as e:
    raise UserError(f"{path}:{e.lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
  if not isinstance(items, list):
    raise UserError(f"{path}: expected a JSON list of objects, got {_type_name(items)}")
  for index, item in enumerate(items):
    yield f"{path}:#{index}", item


def _detect_format(obj: dict) -> str:
  if "conversations" in obj or "messages" in obj:
    return "lima"
  if "instruction" in obj or "output" in obj:
    return "alpaca"
  if "text" in obj:
    return "text"
  fields = ", ".join(sorted(obj)) or "none"
  raise _BadRow("expected a 'conversations' list (LIMA), 'messages', 'instruction' and 'output' "
                f"(Alpaca/Dolly) or 'text' (a plain document); fields found: {fields}")


def _text_document(obj: dict) -> str:
  if "text" not in obj:
    raise _BadRow("missing field 'text' (the file's first row is a plain document)")
  return _utterance(obj["text"], "text")


def _lima_turns(obj: dict) -> list[str]:
  if "conversations" not in obj:
    raise _BadRow("missing field 'conversations'")
  turns = obj["conversations"]
  if not isinstance(turns, list):
    raise _BadRow(f"field 'conversations' must be a list, got {_type_name(turns)}")
  if not turns:
    raise _BadRow("field 'conversations' is empty")
  texts = []
  for i, turn in enumerate(turns):
    where = f"conversations[{i}]"
    if isinstance(turn, dict):
      expected = _ROLES[i % 2]
      role = turn.get("role")
      if role != expected:
        raise _BadRow(f"{where}: role {role!r} where {expected!r} was expected (turns must "
                      "alternate user, assistant, ... starting with user)")
      if "content" not in turn:
        raise _BadRow(f"{where}: missing field 'content'")
      turn = turn["content"]
      where += ".content"
    texts.append(_utterance(turn, where))
  return texts


def _messages(obj: dict) -> list[dict]:
  """A messages row's messages, each {"role", "content"} with non-empty text content."""
  messages = obj.get("messages")
  if not isinstance(messages, list) or not messages:
    raise _BadRow("missing field 'conversations' or 'messages' (a non-empty list)")
  out = []
  for i, m in enumerate(messages):
    if not isinstance(m, dict):
      raise _BadRow(f"messages[{i}] must be an object, got {_type_name(m)}")
    try:
      text = chat.message_text(m, f"messages[{i}]")
    except UserError as e:
      raise _BadRow(str(e)) from None
    out.append({"role": m.get("role"), "content": _utterance(text, f"messages[{i}].content")})
  return out


def _turns_of(messages: list[dict]) -> list[str]:
  try:
    return chat.turns_from_messages(messages)
  except UserError as e:
    raise _BadRow(str(e)) from None


def _alpaca_turns(obj: dict) -> list[str]:
  for field in ("instruction", "output"):
    if field not in obj:
      raise _BadRow(f"missing field {field!r}")
  instruction = _utterance(obj["instruction"], "instruction")
  output = _utterance(obj["output"], "output")
  extra = obj.get("input")
  if extra is None:  # some exports write null for "no input"
    extra = ""
  if not isinstance(extra, str):
    raise _BadRow(f"field 'input' must be a string, got {_type_name(extra)}")
  prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
  return [prompt, output]


def _utterance(value: Any, where: str) -> str:
  if not isinstance(value, str):
    raise _BadRow(f"{where} must be a string, got {_type_name(value)}")
  if not value.strip():
    raise _BadRow(f"{where} is empty")
  return value


def _source(obj: dict, default: str) -> str:
  if "source" not in obj:
    return default
  source = obj["source"]
  if not isinstance(source, str) or not source.strip():
    raise _BadRow(f"field 'source' must be a non-empty string, got {json.dumps(source)[:40]}")
  return source


def _type_name(value: Any) -> str:
  return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
          int: "a number", float: "a number", type(None): "null"}.get(type(value),
                                                                      type(value).__name__)
