"""OpenAI's request bodies as lima_jax reads them, and its error shape.

What a field means here: temperature 0 is greedy; top_k and repetition_penalty are LIMA's
extras; an absent field takes LIMA's decoding (`lima_jax.decode.sampling.LIMA`: temperature 0.7,
top_p 0.9, repetition penalty 1.2, at most 2,048 new tokens, never past the context).
Known fields the server cannot honour are refused by name rather than silently ignored (a
client asking for tools or JSON mode must not get prose back believing otherwise); unknown
fields are ignored with a log line, as vLLM does.

Bodies are read strictly (pydantic's strict mode): `"max_tokens": "2"` or `2.0`, a boolean
token id, a null user message are 400s naming the field, never guessed at. Text must be valid
Unicode: a lone UTF-16 surrogate (valid JSON) is refused here, since no tokenizer can encode it.
"""
import logging
from typing import Annotated, Literal

import pydantic
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from lima_jax.decode import sampling
from lima_jax.errors import UserError
from lima_jax.tokenizer import chat

log = logging.getLogger(__name__)

MAX_N = 16
MAX_TOP_LOGPROBS = 20  # OpenAI's cap on top_logprobs; the engine always ranks this many
INT32_MAX = 2**31 - 1
UNSUPPORTED = ("tools", "tool_choice", "functions", "function_call", "response_format",
               "logit_bias", "suffix", "best_of", "presence_penalty", "frequency_penalty",
               "parallel_tool_calls", "audio", "modalities", "prediction", "min_tokens")
# Fields clients send by default with a value meaning "off": only other values are refused.
_OFF = {"best_of": (1, None), "response_format": (None, {"type": "text"}),
        "presence_penalty": (0, 0.0, None), "frequency_penalty": (0, 0.0, None),
        "parallel_tool_calls": (None, True, False), "suffix": (None, ""), "tool_choice": (
            None, "none"), "tools": (None, []), "functions": (None, []),
        "logit_bias": (None, {}), "min_tokens": (None, 0)}
# Below this a temperature is greedy (vLLM's epsilon): dividing by it overflows float32.
MIN_TEMPERATURE = 1e-5
_F32_TINY = 1e-30  # a float32 normal: smaller top_p / penalties would round to 0
_STRICT = ConfigDict(strict=True, allow_inf_nan=False)


def _unicode(text: str) -> str:
  try:
    text.encode("utf-8")
  except UnicodeEncodeError as e:
    raise ValueError(f"not valid Unicode: a lone surrogate {text[e.start]!r} at character "
                     f"{e.start}") from None
  return text


Text = Annotated[str, AfterValidator(_unicode)]
_Id = Annotated[int, Field(ge=0)]  # below the vocabulary's size too (the API checks it)



def _some(item):
  """A non-empty list of `item`."""
  return Annotated[list[item], Field(min_length=1)]


class APIError(Exception):
  """Answered as {"error": {"message", "type", "param", "code"}} with this HTTP status."""

  def __init__(self, status: int, message: str, type: str = "invalid_request_error",
               param: str | None = None, code: str | None = None,
               headers: dict[str, str] | None = None):
    super().__init__(message)
    self.status, self.message, self.type, self.param, self.code = (
        status, message, type, param, code)
    self.headers = headers

  def body(self) -> dict:
    return {"error": {"message": self.message, "type": self.type, "param": self.param,
                      "code": self.code}}


class StreamOptions(BaseModel):
  model_config = _STRICT
  include_usage: bool = False


class _Body(BaseModel):
  model_config = ConfigDict(extra="allow", **_STRICT)
  model: str
  max_tokens: int | None = Field(None, ge=1)
  temperature: float | None = Field(None, ge=0, le=2)
  top_p: float | None = Field(None, gt=0, le=1)
  # -1 or 0: off (vLLM spells off as -1); past the vocabulary it keeps every token.
  top_k: int | None = Field(None, ge=-1)
  repetition_penalty: float | None = Field(None, gt=0)
  seed: int | None = None
  stop: str | list[str] | None = None  # any number (lm-eval sends 5 for some tasks)
  n: int = Field(1, ge=1, le=MAX_N)
  stream: bool = False
  stream_options: StreamOptions | None = None
  user: str | None = None

  @pydantic.field_validator("stop")
  @classmethod
  def _stops(cls, v):
    return [s for s in ([v] if isinstance(v, str) else list(v or [])) if s]

  def check(self) -> None:
    """The checks that need several fields, and unsupported / unknown ones."""
    for name, value in (self.model_extra or {}).items():
      if name in UNSUPPORTED:
        if value in _OFF.get(name, (None,)):
          continue
        raise APIError(400, f"'{name}' is not supported by this server", param=name,
                       code="unsupported_field")
      log.info("ignoring unknown field %r", name)
    if self.stream_options is not None and not self.stream:
      raise APIError(400, "stream_options is only allowed with stream=true",
                     param="stream_options")

  def decoding(self) -> sampling.Decoding:
    """The request's decoding: LIMA's for every absent field; temperature 0 is greedy. Values
    the device's float32 / int32 cannot hold are clamped to ones that mean the same."""
    d = sampling.LIMA
    t = d.temperature if self.temperature is None else self.temperature
    p = d.repetition_penalty if self.repetition_penalty is None else self.repetition_penalty
    return sampling.Decoding(
        max_new_tokens=self.max_tokens or d.max_new_tokens,
        temperature=t if t >= MIN_TEMPERATURE else 1.0, greedy=t < MIN_TEMPERATURE,
        top_p=max(d.top_p if self.top_p is None else self.top_p, _F32_TINY),
        top_k=d.top_k if self.top_k is None else min(max(self.top_k, 0), INT32_MAX),
        repetition_penalty=min(max(p, _F32_TINY), 1 / _F32_TINY))


class TextPart(BaseModel):
  model_config = _STRICT
  type: Literal["text"]
  text: Text


class Message(BaseModel):
  model_config = ConfigDict(extra="allow", **_STRICT)
  role: Literal["system", "developer", "user", "assistant", "tool", "function"]
  content: Text | list[TextPart] | None = None

  @pydantic.field_validator("content")
  @classmethod
  def _said(cls, v, info):
    # Only an assistant turn may be empty (OpenAI's null content beside tool calls).
    if v is None and info.data.get("role") != "assistant":
      raise ValueError(f"a {info.data.get('role', 'message')} message needs content")
    return v

  def text(self) -> str:
    if isinstance(self.content, list):
      return "".join(p.text for p in self.content)
    return self.content or ""


class ChatRequest(_Body):
  messages: list[Message] = Field(min_length=1)
  max_completion_tokens: int | None = Field(None, ge=1)
  logprobs: bool | None = None
  top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)

  def check(self) -> None:
    super().check()
    if self.top_logprobs and not self.logprobs:
      raise APIError(400, "top_logprobs needs logprobs=true", param="top_logprobs")

  def logprob_count(self) -> int | None:
    """Alternatives to list per answer token; None: no logprobs."""
    return (self.top_logprobs or 0) if self.logprobs else None

  def turns(self) -> list[str]:
    """The utterances, user first and last, alternating; system messages at the start folded
    into the first user utterance by LIMA's format's stated rule (tokenizer/chat.py)."""
    try:
      turns = chat.turns_from_messages(
          [{"role": m.role, "content": m.text()} for m in self.messages])
    except UserError as e:
      param, _, why = str(e).partition(": ")
      raise APIError(400, why, param=param.removesuffix(".content")) from None
    if len(turns) % 2 == 0:
      raise APIError(400, "the last message must be the user's", param="messages")
    return turns

  def message_dicts(self) -> list[dict]:
    """The messages as {"role", "content"} dicts, as a chat template reads them."""
    return [{"role": m.role, "content": m.text()} for m in self.messages]

  def decoding(self) -> sampling.Decoding:
    if self.max_completion_tokens is not None:
      self.max_tokens = self.max_completion_tokens
    return super().decoding()


class CompletionRequest(_Body):
  # One prompt (text or ids) or several; a text prompt gets BOS, as in training.
  prompt: Text | _some(Text) | _some(_Id) | _some(_some(_Id))
  # OpenAI's legacy logprobs: the k most likely alternatives per token (0: the chosen only).
  logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
  # The prompt before the answer; with logprobs, its tokens' logprobs too (loglikelihood tasks).
  echo: bool = False

  def check(self) -> None:
    super().check()
    if self.echo and self.stream:
      raise APIError(400, "echo is not supported with stream=true", param="echo")

  def logprob_count(self) -> int | None:
    return self.logprobs

  def prompts(self) -> list[str | list[int]]:
    p = self.prompt
    if isinstance(p, str) or (p and isinstance(p[0], int)):
      return [p]
    if not p:
      raise APIError(400, "prompt is empty", param="prompt")
    return list(p)


class TokenizePrompt(BaseModel):
  """A text's ids; add_special_tokens: with BOS, as completions encode text."""
  model_config = ConfigDict(extra="ignore", **_STRICT)
  model: str | None = None
  prompt: Text
  add_special_tokens: bool = True


class TokenizeMessages(BaseModel):
  """A conversation's ids, as chat completions render it."""
  model_config = ConfigDict(extra="ignore", **_STRICT)
  model: str | None = None
  messages: list[Message] = Field(min_length=1)


class DetokenizeRequest(BaseModel):
  model_config = ConfigDict(extra="ignore", **_STRICT)
  model: str | None = None
  tokens: list[_Id]
