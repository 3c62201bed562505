"""LIMA's conversation format, its one home: BOS, then each utterance followed by EOT.

Utterances alternate user, assistant, user, ... (no system turn). Training puts the loss on
the assistant's tokens and the EOT that ends each of its turns; a prompt is the same ids up to
the last user turn's EOT, where the answer starts; the exported Jinja template renders the same
text. Worked example (ids made up; B = BOS, E = EOT; "hi" -> [5], "yo there" -> [7, 8]):

  encode_turns(["hi", "yo there"], tok) -> ids  [B, 5, E, 7, 8, E]
                                           mask [0, 0, 0, 1, 1, 1]
  prompt_ids(["hi"], tok)                -> [B, 5, E]

Rows given as messages (`[{"role": ..., "content": ...}]`, the ecosystem's shape) become
utterances through `turns_from_messages`, which states the one rule for a system message in this
format: LIMA had none, so system (or developer) messages, allowed only before the first user
message, are joined by a blank line and put before the first user utterance, separated from it
by a blank line. No new token, no new turn: a model trained without system prompts reads them
as part of the request.

The other format is the model's own chat template (`template.ChatTemplate`, jinja2 as
transformers renders it). Both are renderers with one interface, which `renderer(fmt, tok,
template)` returns: `encode(messages, where) -> (ids, loss mask)`, `prompt_ids(messages, where)`
and `stop_ids`. Conversations travel as messages (`as_messages` turns LIMA's utterance lists into
them), so a system message reaches a template that has a place for it.

Everything here reads ROLES and `_spans`: a new kind of turn (a system prompt) is a change to
this file alone, and the training ids, prompts and export template move together.
"""
from typing import Any, Mapping, Sequence

import numpy as np

from lima_jax.errors import UserError

ROLES = ("user", "assistant")  # utterance i is spoken by ROLES[i % 2]
LOSS_ROLE = "assistant"  # whose tokens (and closing EOT) training learns


def role(i: int) -> str:
  """Who speaks utterance i of a conversation."""
  return ROLES[i % len(ROLES)]


SYSTEM_ROLES = ("system", "developer")  # folded into the first user utterance (see above)
SYSTEM_JOIN = "\n\n"


def turns_from_messages(messages: Sequence[Mapping[str, Any]], *, where: str = "messages"
                        ) -> list[str]:
  """The utterances of a messages list: system messages folded into the first user utterance
  (the rule above), then user and assistant alternating, user first. Raises UserError naming
  `where[i]` for a message out of place."""
  system, i = [], 0
  while i < len(messages) and messages[i].get("role") in SYSTEM_ROLES:
    system.append(_content(messages[i], f"{where}[{i}]"))
    i += 1
  turns = []
  for j, m in enumerate(messages[i:], start=i):
    want = role(j - i)
    if m.get("role") != want:
      why = ("a system message is allowed only before the first user message"
             if m.get("role") in SYSTEM_ROLES else
             f"messages must alternate user/assistant starting with user; got {m.get('role')!r}")
      raise UserError(f"{where}[{j}].role: {why}")
    turns.append(_content(m, f"{where}[{j}]"))
  if not turns:
    raise UserError(f"{where}: no user message")
  if system:
    turns[0] = SYSTEM_JOIN.join(system + [turns[0]])
  return turns


def message_text(m: Mapping[str, Any], where: str = "message") -> str:
  """A message's content as text (OpenAI content parts joined); UserError naming `where`."""
  return _content(m, where)


def _content(m: Mapping[str, Any], where: str) -> str:
  c = m.get("content")
  if isinstance(c, list):  # OpenAI content parts: [{"type": "text", "text": ...}]
    c = "".join(p.get("text", "") for p in c if isinstance(p, Mapping))
  if not isinstance(c, str):
    raise UserError(f"{where}.content: expected a string, got {type(c).__name__}")
  return c


def _spans(turn_ids: Sequence[Sequence[int]], tok) -> list[tuple[list[int], bool]]:
  """(ids, learned) in order: BOS (never learned), then each utterance followed by EOT."""
  return [([tok.bos_id], False)] + [([*ids, tok.eot_id], role(i) == LOSS_ROLE)
                                    for i, ids in enumerate(turn_ids)]


def encode_turn_ids(turn_ids: Sequence[Sequence[int]], tok) -> tuple[np.ndarray, np.ndarray]:
  """(ids int32 [n], loss mask bool [n]) of utterances already tokenized (`tok.encode` each)."""
  spans = _spans(turn_ids, tok)
  ids = np.concatenate([np.asarray(s, np.int32) for s, _ in spans])
  mask = np.concatenate([np.full(len(s), learned, bool) for s, learned in spans])
  return ids, mask


def encode_turns(turns: Sequence[str], tok) -> tuple[np.ndarray, np.ndarray]:
  """(ids, loss mask) of a conversation given as text: `encode_turn_ids` of each encoded."""
  return encode_turn_ids([tok.encode(t) for t in turns], tok)


def prompt_ids(turns: Sequence[str], tok) -> list[int]:
  """The ids a model answers: the conversation up to its last user turn, ready for the
  assistant (nothing follows that turn's EOT)."""
  if not turns or role(len(turns) - 1) != ROLES[0]:
    raise UserError(f"a prompt must end on a user turn (an odd number of utterances), got "
                    f"{len(turns)}")
  return [i for s, _ in _spans([tok.encode(t) for t in turns], tok) for i in s]


def response_ids(turns: Sequence[str], tok) -> list[int]:
  """BOS, then only the learned turns, each followed by EOT: the response without its prompt
  (instruction-following difficulty scores it against the whole conversation)."""
  spans = _spans([tok.encode(t) if role(i) == LOSS_ROLE else [] for i, t in enumerate(turns)],
                 tok)
  return spans[0][0] + [i for s, learned in spans[1:] if learned for i in s]


def chat_template(eot: str) -> str:
  """The Jinja chat template (as transformers renders it) of this format, with EOT's text
  `eot`: BOS, then every utterance followed by EOT, roles alternating as ROLES, first first.
  Nothing follows the last user turn: the answer starts right there."""
  first = ROLES[0]
  return ("{{ bos_token }}{% for message in messages %}"
          f"{{% if (message['role'] == '{first}') != (loop.index0 % 2 == 0) %}}"
          "{{ raise_exception('LIMA conversations alternate user and assistant turns, starting "
          "with the user (no system turn)') }}{% endif %}"
          f"{{{{ message['content'] + '{eot}' }}}}{{% endfor %}}")


FORMATS = ("lima", "chat_template")


def as_messages(conversation: Sequence[Any]) -> list[dict]:
  """Messages of a conversation given as utterances (strings, roles alternating user first) or
  as messages already ({"role", "content"})."""
  return [dict(u) if isinstance(u, Mapping) else {"role": role(i), "content": u}
          for i, u in enumerate(conversation)]


class Lima:
  """LIMA's format as a renderer (the interface of `template.ChatTemplate`)."""
  name = "LIMA's format"

  def __init__(self, tok):
    self.tok, self.eot_id = tok, tok.eot_id
    self.stop_ids = (tok.eot_id, tok.eos_id)

  def encode(self, messages, where: str = "messages") -> tuple[np.ndarray, np.ndarray]:
    return encode_turns(turns_from_messages(messages, where=where), self.tok)

  def prompt_ids(self, messages, where: str = "messages") -> list[int]:
    return prompt_ids(turns_from_messages(messages, where=where), self.tok)


def read_template(path: str) -> str:
  """The Jinja chat template in the file `path` (a --chat_template flag)."""
  try:
    with open(path, encoding="utf-8") as f:
      return f.read()
  except (OSError, UnicodeDecodeError) as e:
    raise UserError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from None


def renderer(fmt: str, tok, template: str | None = None, name: str = "chat template"):
  """The renderer of format `fmt`: `Lima(tok)`, or the chat template `template` (whose errors
  name it as `name`) for 'chat_template'."""
  if fmt == "lima":
    return Lima(tok)
  if fmt != "chat_template":
    raise UserError(f"format: {fmt!r} is not one of {FORMATS}")
  if not template:
    raise UserError(f"{name}: holds no chat template (give one as a file for format "
                    "'chat_template': --chat_template=F.jinja, or data.chat_template)")
  from lima_jax.tokenizer import template as template_lib  # jinja2 only for this format
  return template_lib.ChatTemplate(template, tok, name)

