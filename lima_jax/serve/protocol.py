"""OpenAI's request bodies as lima_jax reads them, and its error shape.

What a field means here: temperature 0 is greedy; top_k and repetition_penalty are LIMA's
extras; an absent field takes LIMA's decoding (`lima_jax.decode.sampling.LIMA`: temperature 0.7,
top_p 0.9, repetition penalty 1.2, at most 2,048 new tokens, never past the context).
Known fields the server cannot honour are refused by name rather than silently ignored (a
client asking for tools or JSON mode must not get prose back believing otherwise); unknown
fields are ignored with a log line, as vLLM does.
"""
import logging
from typing import Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from lima_jax.decode import sampling
from lima_jax.errors import UserError
from lima_jax.tokenizer import chat

log = logging.getLogger(__name__)

MAX_STOPS = 4
MAX_N = 16
UNSUPPORTED = ("tools", "tool_choice", "functions", "function_call", "response_format",
               "logit_bias", "logprobs", "top_logprobs", "echo", "suffix", "best_of",
               "presence_penalty", "frequency_penalty", "parallel_tool_calls", "audio",
               "modalities", "prediction", "min_tokens")
# Fields clients send by default with a value meaning "off": only other values are refused.
_OFF = {"logprobs": (False, None, 0), "echo": (False, None), "best_of": (1, None),
        "presence_penalty": (0, 0.0, None), "frequency_penalty": (0, 0.0, None),
        "parallel_tool_calls": (None, True, False), "suffix": (None, ""), "tool_choice": (
            None, "none"), "tools": (None, []), "functions": (None, []),
        "logit_bias": (None, {}), "min_tokens": (None, 0)}


class APIError(Exception):
  """Answered as {"error": {"message", "type", "param", "code"}} with this HTTP status."""

  def __init__(self, status: int, message: str, type: str = "invalid_request_error",
               param: str | None = None, code: str | None = None):
    super().__init__(message)
    self.status, self.message, self.type, self.param, self.code = (
        status, message, type, param, code)

  def body(self) -> dict:
    return {"error": {"message": self.message, "type": self.type, "param": self.param,
                      "code": self.code}}


class StreamOptions(BaseModel):
  include_usage: bool = False


class _Body(BaseModel):
  model_config = ConfigDict(extra="allow")
  model: str
  max_tokens: int | None = Field(None, ge=1)
  temperature: float | None = Field(None, ge=0, le=2)
  top_p: float | None = Field(None, gt=0, le=1)
  top_k: int | None = Field(None, ge=-1)  # -1 or 0: off (vLLM spells off as -1)
  repetition_penalty: float | None = Field(None, gt=0)
  seed: int | None = None
  stop: str | list[str] | None = None
  n: int = Field(1, ge=1, le=MAX_N)
  stream: bool = False
  stream_options: StreamOptions | None = None
  user: str | None = None

  @pydantic.field_validator("stop")
  @classmethod
  def _stops(cls, v):
    stops = [v] if isinstance(v, str) else list(v or [])
    if len(stops) > MAX_STOPS:
      raise ValueError(f"at most {MAX_STOPS} stop strings, got {len(stops)}")
    return [s for s in stops if s]

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
    """The request's decoding: LIMA's for every absent field; temperature 0 is greedy."""
    d = sampling.LIMA
    t = d.temperature if self.temperature is None else self.temperature
    return sampling.Decoding(
        max_new_tokens=self.max_tokens or d.max_new_tokens,
        temperature=t if t > 0 else 1.0, greedy=t == 0,
        top_p=d.top_p if self.top_p is None else self.top_p,
        top_k=d.top_k if self.top_k is None else max(self.top_k, 0),
        repetition_penalty=(d.repetition_penalty if self.repetition_penalty is None
                            else self.repetition_penalty))


class TextPart(BaseModel):
  type: Literal["text"]
  text: str


class Message(BaseModel):
  model_config = ConfigDict(extra="allow")
  role: Literal["system", "developer", "user", "assistant", "tool", "function"]
  content: str | list[TextPart] | None = None

  def text(self) -> str:
    if isinstance(self.content, list):
      return "".join(p.text for p in self.content)
    return self.content or ""


class ChatRequest(_Body):
  messages: list[Message] = Field(min_length=1)
  max_completion_tokens: int | None = Field(None, ge=1)

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
  prompt: str | list[str] | list[int] | list[list[int]]

  def prompts(self) -> list[str | list[int]]:
    p = self.prompt
    if isinstance(p, str) or (p and isinstance(p[0], int)):
      return [p]
    if not p:
      raise APIError(400, "prompt is empty", param="prompt")
    return list(p)


class TokenizeRequest(BaseModel):
  model_config = ConfigDict(extra="ignore")
  model: str | None = None
  prompt: str | None = None
  messages: list[Message] | None = None
  add_special_tokens: bool = True
