"""A model's own chat template, rendered as transformers' `apply_chat_template` renders it, with
a loss mask found without `{% generation %}`.

Rendering: jinja2's ImmutableSandboxedEnvironment with trim_blocks and lstrip_blocks, the loop
controls, and the helpers transformers gives templates (`raise_exception`, `strftime_now`, its
`tojson` that does not escape HTML, `dict`, a `namespace` that refuses underscore names); the
template sees `messages`, `add_generation_prompt` and the model's special tokens (`bos_token`,
`eos_token`, `pad_token`). The rendered text is tokenized as transformers tokenizes it with
`add_special_tokens=False`: the model's added tokens are matched in the text (also in message
content, as transformers does by default), nothing is prepended.

The mask: for assistant message i, the template renders messages[:i] with the generation prompt
and messages[:i+1] without it; both must be prefixes of the whole conversation's text, and
their tokens prefixes of its tokens. The learned tokens are those after the generation prompt
up to and including the first end-of-turn token (the first special token the template puts
after an assistant message, found once from a probe conversation). Text the template adds after
the end-of-turn token (ChatML's newline) is not learned. Where any of this fails for a row, the
row is refused with one line naming it and the template: never an empty or shifted mask.
"""
import bisect
import datetime
import json
from typing import Any, Mapping, Sequence

import numpy as np

from lima_jax.errors import UserError

_PROBE = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]


def _environment():
  import jinja2
  import jinja2.ext
  from jinja2.sandbox import ImmutableSandboxedEnvironment

  class Generation(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` renders its body: masks come from prefixes."""
    tags = {"generation"}

    def parse(self, parser):
      lineno = next(parser.stream).lineno
      body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
      return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller):
      return caller()

  class Namespace(jinja2.utils.Namespace):
    """jinja's namespace without underscore attributes (no way to CPython's internals)."""

    def __init__(*args, **kwargs):  # jinja's signature trick: namespace(self=...) still works
      self, args = args[0], args[1:]
      attrs = dict(*args, **kwargs)
      for name in attrs:
        _check_name(name)
      jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
      _check_name(name)
      jinja2.utils.Namespace.__setitem__(self, name, value)

  def _check_name(name):
    if isinstance(name, str) and name.startswith("_"):
      raise jinja2.exceptions.SecurityError(f"namespace attribute {name!r} starts with '_'")

  def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)

  def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)

  class Dict:  # dict() and dict.fromkeys only, no attribute access to the type
    def __call__(self, *args, **kwargs):
      return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
      return dict.fromkeys(*args, **kwargs)

  env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                      extensions=[Generation, jinja2.ext.loopcontrols])
  env.filters["tojson"] = tojson
  env.globals.update(raise_exception=raise_exception, dict=Dict(), namespace=Namespace,
                     strftime_now=lambda fmt: datetime.datetime.now().strftime(fmt))
  return env


class ChatTemplate:
  """A Jinja chat template with the tokenizer it renders for.

  tok: a tokenizer with `encode_rendered` (tokenizer.json backends). name: how errors name the
  template (its file, or "F.gguf's tokenizer.chat_template").
  """

  def __init__(self, template: str, tok, name: str = "chat template"):
    import jinja2
    if not isinstance(template, str) or not template.strip():
      raise UserError(f"{name}: empty chat template")
    if not hasattr(tok, "encode_rendered"):
      raise UserError(f"{name}: the chat_template format needs a tokenizer.json tokenizer "
                      f"(Hugging Face tokenizers); this model's is {type(tok).__name__}")
    try:
      self._compiled = _environment().from_string(template)
    except jinja2.TemplateSyntaxError as e:
      raise UserError(f"{name}:{e.lineno}: not a valid Jinja template ({e.message})") from None
    self.text, self.tok, self.name = template, tok, name
    self._specials = {key: tok.own_piece(i) for key, i in
                      (("bos_token", tok.bos_id), ("eos_token", tok.eos_id),
                       ("pad_token", tok.pad_id)) if 0 <= i < tok.base_vocab_size}
    self.eot_id = self._probe_eot()
    self.stop_ids = tuple(dict.fromkeys((self.eot_id, tok.eos_id)))

  def render(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = False,
             where: str = "") -> str:
    import jinja2
    try:
      return self._compiled.render(messages=[dict(m) for m in messages],
                                   add_generation_prompt=add_generation_prompt, **self._specials)
    except jinja2.TemplateError as e:
      raise UserError(f"{where or 'messages'}: {self.name} refuses it: "
                      f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None

  def _ids(self, text: str) -> list[int]:
    return self.tok.encode_rendered(text)

  def _probe_eot(self) -> int:
    before = self.render(_PROBE[:1], True, "the probe conversation")
    whole = self.render(_PROBE, False, "the probe conversation")
    if not whole.startswith(before) or "Hello" not in whole[len(before):]:
      raise UserError(f"{self.name}: its generation prompt is not where the assistant's message "
                      "starts (rendered for a probe conversation); cannot find its end of turn")
    rest = whole[len(before):]
    after = rest[rest.index("Hello") + len("Hello"):]
    special = self.tok.special_ids()
    eot = next((i for i in self._ids(after) if i in special), None)
    if eot is None:
      raise UserError(f"{self.name}: no special token follows an assistant message, so it has "
                      "no end-of-turn token to learn and stop at")
    return eot

  def encode(self, messages: Sequence[Mapping[str, Any]], where: str = "messages"
             ) -> tuple[np.ndarray, np.ndarray]:
    """(ids int32 [n], loss mask bool [n]): the whole conversation; the mask holds each
    assistant message's tokens and the end-of-turn token that closes it."""
    text = self.render(messages, False, where)
    ids, offsets = self.tok.encode_rendered(text, offsets=True)
    starts = [a for a, _ in offsets]
    mask = np.zeros(len(ids), bool)
    for i, m in enumerate(messages):
      if m.get("role") != "assistant":
        continue
      begin = self._prefix(messages[:i], True, text, where, i)
      end = self._prefix(messages[:i + 1], False, text, where, i)
      k = bisect.bisect_left(starts, begin)  # the first token that starts in the answer
      if k and offsets[k - 1][1] > begin:
        # A token spans the end of the generation prompt: only whitespace of the answer may
        # merge into it (ChatML's "assistant\n" + an answer that starts with "\n\n"); it
        # stays unlearned, as the prompt at inference ends before it.
        if not text[begin:offsets[k - 1][1]].isspace():
          raise UserError(f"{where}[{i}]: {self.name}: a token spans the generation prompt and "
                          "the assistant's text, so the assistant's tokens cannot be separated")
      elif self._ids(text[:begin]) != ids[:k]:
        raise UserError(f"{where}[{i}]: {self.name}: the tokens of messages[:{i}] with the "
                        "generation prompt are not a prefix of the whole conversation's")
      eot = next((j for j in range(k, len(ids)) if starts[j] < end and ids[j] == self.eot_id),
                 None)
      if eot is None:
        raise UserError(f"{where}[{i}]: {self.name} puts no end-of-turn token "
                        f"({self.tok.own_piece(self.eot_id)!r}) after this assistant message")
      mask[k:eot + 1] = True
    return np.asarray(ids, np.int32), mask

  def _prefix(self, messages, generation: bool, text: str, where: str, i: int) -> int:
    """Length of the text of `messages` (with the generation prompt or not), which must begin
    the whole conversation's `text`."""
    part = self.render(messages, generation, where)
    if not text.startswith(part):
      what = f"messages[:{i}] with the generation prompt" if generation else f"messages[:{i + 1}]"
      raise UserError(f"{where}[{i}]: {self.name} renders {what} as text that is not a prefix of "
                      "the whole conversation's, so the assistant's tokens cannot be found")
    return len(part)

  def prompt_ids(self, messages: Sequence[Mapping[str, Any]], where: str = "messages"
                 ) -> list[int]:
    """The ids a model answers: the conversation rendered with the generation prompt."""
    return self._ids(self.render(messages, True, where))
