"""The OpenAPI document as the server really behaves: the statuses it answers (400, not
FastAPI's 422), the bodies it sends (JSON or a Server-Sent Events stream; `/metrics` is
Prometheus text), and what only the loaded model knows (its one name, the vocabulary's
size, how many ids fit) filled in when the document is asked for. The response models here
document; the routes build their bodies themselves.
"""
from typing import Literal

from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

_REASONS = {400: "a bad field (`param` names it) or a prompt that does not fit",
            401: "a wrong or missing API key (with `--api_key_env`)",
            404: "another model's name",
            429: "the queue is full (`Retry-After`)",
            500: "an engine failure",
            503: "loading, or shutting down (`Retry-After` while loading)"}


class ErrorDetail(BaseModel):
  message: str
  type: str
  param: str | None
  code: str | None


class Error(BaseModel):
  error: ErrorDetail


class Health(BaseModel):
  status: Literal["ok"]


class Model(BaseModel):
  id: str
  object: Literal["model"]
  created: int
  owned_by: str
  max_model_len: int


class ModelList(BaseModel):
  object: Literal["list"]
  data: list[Model]


class TokenizerInfo(BaseModel):
  bos_token: str | None
  eos_token: str | None
  eot_token: str | None
  pad_token: str | None
  bos_token_id: int
  eos_token_id: int | None
  eot_token_id: int
  pad_token_id: int
  vocab_size: int
  model_max_length: int
  chat_template: None


class Tokens(BaseModel):
  count: int
  max_model_len: int
  tokens: list[int]


class Detokenized(BaseModel):
  prompt: str


class Usage(BaseModel):
  prompt_tokens: int
  completion_tokens: int
  total_tokens: int


_Finish = Literal["stop", "length"]


class ChatMessage(BaseModel):
  role: Literal["assistant"]
  content: str


class ChatChoice(BaseModel):
  index: int
  message: ChatMessage
  logprobs: dict | None  # {"content": [{token, logprob, bytes, top_logprobs}]}
  finish_reason: _Finish


class ChatCompletion(BaseModel):
  id: str
  object: Literal["chat.completion"]
  created: int
  model: str
  choices: list[ChatChoice]
  usage: Usage


class CompletionChoice(BaseModel):
  index: int
  text: str
  logprobs: dict | None  # {tokens, token_logprobs, top_logprobs, text_offset}
  finish_reason: _Finish


class Completion(BaseModel):
  id: str
  object: Literal["text_completion"]
  created: int
  model: str
  choices: list[CompletionChoice]
  usage: Usage


_EVENT = {"type": "object", "required": ["data"], "properties": {"data": {
    "type": "string", "description": "a chunk (chat.completion.chunk or text_completion) as "
    "JSON, {\"error\": ...} if the engine failed, then [DONE]"}}}
METRICS = {200: {"description": "Prometheus text exposition",
                 "content": {"text/plain": {"schema": {"type": "string"}}}}}


def responses(*statuses: int, model: type[BaseModel], stream: bool = False) -> dict:
  """A route's documented answers: `model` on 200 (or an SSE stream with stream=true), and
  the error body on each status."""
  ok = {"model": model, "description": "the answer"}
  if stream:
    ok["description"] = "the answer; with stream=true, Server-Sent Events (chunks, [DONE])"
    # One event's schema (OpenAPI 3.2's itemSchema): `data` is a JSON chunk, an error, [DONE].
    ok["content"] = {"text/event-stream": {"itemSchema": _EVENT}}
  return {200: ok, **{s: {"model": Error, "description": _REASONS[s]} for s in statuses}}


def document(app, srv) -> dict:
  doc = get_openapi(title=app.title, version="1", routes=app.routes)
  for path in doc["paths"].values():
    for op in path.values():
      op.get("responses", {}).pop("422", None)
  schemas = doc.get("components", {}).get("schemas", {})
  for name in ("HTTPValidationError", "ValidationError"):
    schemas.pop(name, None)
  if srv.api_key is not None:
    doc["components"]["securitySchemes"] = {"key": {"type": "http", "scheme": "bearer"}}
    for path, ops in doc["paths"].items():
      for op in ops.values():
        if path not in ("/health", "/metrics"):
          op["security"] = [{"key": []}]
  if srv.ready:
    for name in ("ChatRequest", "CompletionRequest", "TokenizePrompt", "TokenizeMessages",
                 "DetokenizeRequest"):
      model = schemas.get(name, {}).get("properties", {}).get("model")
      if model is not None:
        optional = "anyOf" in model
        model.pop("anyOf", None)
        model.pop("type", None)
        name_only = {"type": "string", "enum": [srv.name]}
        model.update({"anyOf": [name_only, {"type": "null"}]} if optional else name_only)
    _bound_ids(schemas.get("CompletionRequest", {}).get("properties", {}).get("prompt"),
               srv.tok.vocab_size - 1, srv.engine.max_len - 1)
    _bound_ids(schemas.get("DetokenizeRequest", {}).get("properties", {}).get("tokens"),
               srv.tok.vocab_size - 1, None)
  return doc


def _bound_ids(schema, top: int, most: int) -> None:
  """Token ids below the vocabulary's size, and at most `most` of them in one prompt."""
  if not isinstance(schema, dict):
    return
  if schema.get("type") == "integer":
    schema["maximum"] = top
  if most and schema.get("type") == "array" and schema.get("items", {}).get("type") == "integer":
    schema["maxItems"] = most
  for sub in schema.get("anyOf", []) + [schema.get("items")]:
    _bound_ids(sub, top, most)
