"""Prompt files: JSONL rows of LIMA test prompts, the ecosystem's messages, or {"prompt": str},
checked line by line."""
import json
import pathlib

from lima_jax.errors import UserError
from lima_jax.tokenizer import chat


def read_prompts(path) -> list[tuple[dict, list[dict], int]]:
  """(row, messages, line number) per prompt of a JSONL file: LIMA test rows
  ({"conversations": [...]} ending on a user turn; utterances as strings or {"role",
  "content"}), the ecosystem's {"messages": [{"role", "content"}, ...]} (system messages
  first, then user and assistant alternating, ending on the user's), or {"prompt": str}."""
  try:
    lines = pathlib.Path(path).read_text(encoding="utf-8").splitlines()
  except (OSError, UnicodeDecodeError) as e:
    raise UserError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from None
  rows = []
  for n, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      obj = json.loads(line)
    except json.JSONDecodeError as e:
      raise UserError(f"{path}:{n}: invalid JSON ({e.msg})") from None
    if isinstance(obj, dict) and isinstance(obj.get("messages"), list) and obj["messages"]:
      messages = [m if isinstance(m, dict) else {} for m in obj["messages"]]
      # LIMA's rule checks order and content; every format needs that much
      turns = chat.turns_from_messages(messages, where=f"{path}:{n}: messages")
      if len(turns) % 2 == 0:
        raise UserError(f"{path}:{n}: 'messages' ends on an assistant message; a prompt must end "
                        "on a user message")
      rows.append((obj, [{"role": m["role"], "content": chat.message_text(m)} for m in messages],
                   n))
      continue
    turns = obj.get("conversations") if isinstance(obj, dict) else None
    if isinstance(obj, dict) and turns is None and isinstance(obj.get("prompt"), str):
      turns = [obj["prompt"]]
    if not isinstance(turns, list) or not turns:
      raise UserError(f"{path}:{n}: needs 'conversations' (a list of utterances ending on a user "
                      "turn), 'messages' (role/content objects) or 'prompt' (a string)")
    turns = [t.get("content") if isinstance(t, dict) else t for t in turns]
    if not all(isinstance(t, str) for t in turns):
      raise UserError(f"{path}:{n}: 'conversations' must hold strings or "
                      "{\"role\", \"content\"} objects")
    if len(turns) % 2 == 0:
      raise UserError(f"{path}:{n}: 'conversations' ends on an assistant turn ({len(turns)} "
                      "utterances); a prompt must end on a user turn")
    rows.append((obj, chat.as_messages(turns), n))
  if not rows:
    raise UserError(f"{path}: no prompts")
  return rows
