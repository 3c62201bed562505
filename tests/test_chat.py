"""The one conversation format: known ids and masks, prompts, responses and the Jinja template."""
import jinja2
import jinja2.sandbox
import numpy as np
import pytest

from lima_jax.errors import UserError
from lima_jax.tokenizer import chat

B, E = 1, 9  # BOS and EOT of the stand-in tokenizer


class _Words:
  """A stand-in tokenizer with fixed ids, so expected outputs can be written down."""
  bos_id, eot_id = B, E
  ids = {"hi": [5], "yo there": [7, 8], "why": [6], "": []}

  def encode(self, text):
    return self.ids[text]


def test_training_ids_and_mask_are_bos_then_each_utterance_and_eot():
  ids, mask = chat.encode_turns(["hi", "yo there", "why", ""], _Words())
  assert ids.dtype == np.int32 and mask.dtype == bool
  assert ids.tolist() == [B, 5, E, 7, 8, E, 6, E, E]
  assert mask.tolist() == [0, 0, 0, 1, 1, 1, 0, 0, 1]
  ids, mask = chat.encode_turn_ids([[5], [7, 8]], _Words())
  assert (ids.tolist(), mask.tolist()) == ([B, 5, E, 7, 8, E], [0, 0, 0, 1, 1, 1])


def test_a_prompt_ends_after_the_last_user_turn():
  assert chat.prompt_ids(["hi"], _Words()) == [B, 5, E]
  assert chat.prompt_ids(["hi", "yo there", "why"], _Words()) == [B, 5, E, 7, 8, E, 6, E]
  for turns in ([], ["hi", "yo there"]):
    with pytest.raises(UserError, match=f"must end on a user turn .*got {len(turns)}"):
      chat.prompt_ids(turns, _Words())


def test_response_ids_keep_only_the_assistant_turns():
  assert chat.response_ids(["hi", "yo there", "why", "hi"], _Words()) == [B, 7, 8, E, 5, E]


def test_template_renders_as_transformers_does():
  # transformers renders chat templates with a sandboxed jinja2 environment and these globals.
  env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

  def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)

  template = env.from_string(chat.chat_template("<eot>"))
  msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo there"},
          {"role": "user", "content": "why"}]
  out = template.render(messages=msgs, bos_token="<s>", raise_exception=raise_exception)
  assert out == "<s>hi<eot>yo there<eot>why<eot>"
  for bad in ([{"role": "system", "content": "x"}], msgs[1:], [msgs[0], msgs[0]]):
    with pytest.raises(jinja2.exceptions.TemplateError, match="alternate user and assistant"):
      template.render(messages=bad, bos_token="<s>", raise_exception=raise_exception)


def test_template_text_is_the_exported_one():
  # The exact text every export so far carries: changing it changes exported models.
  assert chat.chat_template("<eot\ue000>") == (
      "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != "
      "(loop.index0 % 2 == 0) %}{{ raise_exception('LIMA conversations alternate user and "
      "assistant turns, starting with the user (no system turn)') }}{% endif %}"
      "{{ message['content'] + '<eot\ue000>' }}{% endfor %}")


def test_system_messages_fold_into_the_first_user_utterance():
  msgs = [{"role": "system", "content": "Be brief."}, {"role": "developer", "content": "No lists."},
          {"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."},
          {"role": "user", "content": "And Spain?"}]
  assert chat.turns_from_messages(msgs) == [
      "Be brief.\n\nNo lists.\n\nCapital of France?", "Paris.", "And Spain?"]
  parts = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
  assert chat.turns_from_messages(parts) == ["ab"]


@pytest.mark.parametrize("msgs, where", [
    ([{"role": "user", "content": "a"}, {"role": "system", "content": "late"}], "rows[1].role"),
    ([{"role": "assistant", "content": "a"}], "rows[0].role"),
    ([{"role": "system", "content": "only"}], "rows: no user message"),
    ([{"role": "user", "content": None}], "rows[0].content"),
])
def test_messages_out_of_place_name_the_message(msgs, where):
  with pytest.raises(UserError, match=where.replace("[", r"\[").replace("]", r"\]")):
    chat.turns_from_messages(msgs, where="rows")
