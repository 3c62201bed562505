"""LIMA's conversation format, its one home: BOS, then each utterance followed by EOT.

Utterances alternate user, assistant, user, ... (no system turn). Training puts the loss on
the assistant's tokens and the EOT that ends each of its turns; a prompt is the same ids up to
the last user turn's EOT, where the answer starts; the exported Jinja template renders the same
text. Worked example (ids made up; B = BOS, E = EOT; "hi" -> [5], "yo there" -> [7, 8]):

  encode_turns(["hi", "yo there"], tok) -> ids  [B, 5, E, 7, 8, E]
                                           mask [0, 0, 0, 1, 1, 1]
  prompt_ids(["hi"], tok)                -> [B, 5, E]

Everything here reads ROLES and `_spans`: a new kind of turn (a system prompt) is a change to
this file alone, and the training ids, prompts and export template move together.
"""
from typing import Sequence

import numpy as np

from lima_jax.errors import UserError

ROLES = ("user", "assistant")  # utterance i is spoken by ROLES[i % 2]
LOSS_ROLE = "assistant"  # whose tokens (and closing EOT) training learns


def role(i: int) -> str:
  """Who speaks utterance i of a conversation."""
  return ROLES[i % len(ROLES)]


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
