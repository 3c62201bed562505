"""The HTTP side: a FastAPI app speaking OpenAI's chat and text completions over the engine.

`create_app(load, ...)` answers at once; `load()` (weights, engine, warm-up: minutes for a big
model) runs on a thread, and `/health` says 503 until it is done, so an orchestrator or a test
can wait for real readiness. Generation itself: `completion`; errors: `failures`; the OpenAPI
document: `openapi`.
"""
import hmac
import logging
import threading
import time
from typing import Callable

from fastapi import Depends, FastAPI, Request as HTTPRequest
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from lima_jax.decode.generator import render_prompt
from lima_jax.errors import UserError
from lima_jax.serve import failures, openapi
from lima_jax.serve.completion import generate
from lima_jax.serve.logprobs import Texts
from lima_jax.tokenizer import chat as chat_format
from lima_jax.serve.metrics import Metrics
from lima_jax.serve.protocol import (APIError, ChatRequest, CompletionRequest,
                                     DetokenizeRequest, TokenizeMessages, TokenizePrompt)
from lima_jax.serve.scheduler import Scheduler

log = logging.getLogger(__name__)
RETRY_LOADING_S = "5"


def _chat_prompt(srv, body: ChatRequest) -> list[int]:
  """A chat request's prompt ids in the server's format (LIMA's: its stated system rule)."""
  if isinstance(srv.renderer, chat_format.Lima):
    return render_prompt(body.turns(), srv.tok)
  try:
    return srv.renderer.prompt_ids(body.message_dicts())
  except UserError as e:
    raise APIError(400, str(e), param="messages") from None


class _Server:
  """What the routes share: the loaded model (once ready), the scheduler, the metrics."""

  def __init__(self, load, name, api_key, max_queue, keepalive_s, on_failure):
    self.load, self.name, self.api_key = load, name, api_key
    self.max_queue, self.keepalive_s, self.on_failure = max_queue, keepalive_s, on_failure
    self.metrics, self.ready, self.failure = Metrics(), False, None
    self.engine = self.tok = self.scheduler = self.token_text = self.renderer = None
    self.created = int(time.time())

  def start_loading(self) -> None:
    threading.Thread(target=self._load, name="lima_jax-load", daemon=True).start()

  def _load(self) -> None:
    try:
      engine, tok, *rest = self.load()  # (engine, tok[, renderer]); default LIMA's format
      engine.warm_up()
      self.engine, self.tok, self.token_text = engine, tok, Texts(tok)
      self.renderer = rest[0] if rest else chat_format.Lima(tok)
      self.scheduler = Scheduler(engine, tok.decode, self.renderer.stop_ids,
                                 max_queue=self.max_queue, metrics=self.metrics)
      self.scheduler.start()
      self.ready = True
      log.info("ready: %d slots of %d tokens", engine.slots, engine.max_len)
    except BaseException as e:  # noqa: BLE001 - reported on /health and to the CLI
      self.failure = e
      log.exception("loading failed")
      if self.on_failure is not None:
        self.on_failure(e)

  def check_ready(self) -> None:
    if not self.ready:
      why = f"loading failed: {self.failure}" if self.failure else "the model is loading"
      raise APIError(503, why, type="server_error", code="not_ready",
                     headers=None if self.failure else {"Retry-After": RETRY_LOADING_S})

  def check_model(self, model: str | None) -> None:
    if model is not None and model != self.name:
      raise APIError(404, f"the model '{model}' does not exist; this server has '{self.name}'",
                     param="model", code="model_not_found")

  def encode_text(self, text: str) -> list[int]:
    return [self.tok.bos_id] + self.tok.encode(text)

  def check_prompt(self, ids: list[int], param: str) -> None:
    if not ids:
      raise APIError(400, "the prompt is empty", param=param)
    if any(not 0 <= i < self.tok.vocab_size for i in ids):
      raise APIError(400, f"token ids must be in [0, {self.tok.vocab_size})", param=param)
    if len(ids) >= self.engine.max_len:
      raise APIError(400, f"the prompt is {len(ids)} tokens; this model's context is "
                     f"{self.engine.max_len} tokens, prompt and answer together",
                     param=param, code="context_length_exceeded")

  def model_card(self) -> dict:
    return {"id": self.name, "object": "model", "created": self.created, "owned_by": "lima_jax",
            "max_model_len": self.engine.max_len}


def create_app(load: Callable[[], tuple], *, served_model_name: str, api_key: str | None = None,
               max_queue: int = 64, keepalive_s: float = 10.0,
               on_failure: Callable[[BaseException], None] | None = None) -> FastAPI:
  """The app. load() -> (engine, tokenizer): an unwarmed `Engine` and its `Tokenizer`."""
  srv = _Server(load, served_model_name, api_key, max_queue, keepalive_s, on_failure)

  async def lifespan(app):
    srv.start_loading()
    yield
    if srv.scheduler is not None:
      srv.scheduler.close()

  # The document and its page are routes of ours below, behind the key like every other.
  app = FastAPI(title="lima_jax", lifespan=lifespan, openapi_url=None, docs_url=None,
                redoc_url=None)
  app.state.server = srv
  failures.install(app)

  def auth(request: HTTPRequest) -> None:
    if srv.api_key is None:
      return
    given = request.headers.get("authorization", "")
    given = given[7:] if given[:7].lower() == "bearer " else ""
    if not hmac.compare_digest(given.encode(), srv.api_key.encode()):
      raise APIError(401, "invalid or missing API key (send 'Authorization: Bearer KEY')",
                     type="authentication_error", code="invalid_api_key",
                     headers={"WWW-Authenticate": 'Bearer realm="lima_jax"'})

  keyed = [Depends(auth)]
  doc = openapi.responses

  @app.get("/openapi.json", dependencies=keyed, include_in_schema=False)
  async def openapi_json():
    return JSONResponse(openapi.document(app, srv))

  @app.get("/docs", dependencies=keyed, include_in_schema=False)
  async def docs():
    return get_swagger_ui_html(openapi_url="/openapi.json", title="lima_jax")

  @app.get("/health", responses=doc(503, model=openapi.Health))
  async def health():
    srv.check_ready()
    return {"status": "ok"}

  @app.get("/metrics", response_class=Response, responses=openapi.METRICS)
  async def metrics():
    return Response(generate_latest(srv.metrics.registry), media_type=CONTENT_TYPE_LATEST)

  @app.get("/v1/models", dependencies=keyed, responses=doc(401, 503, model=openapi.ModelList))
  async def models():
    srv.check_ready()
    return {"object": "list", "data": [srv.model_card()]}

  @app.get("/v1/models/{model_id}", dependencies=keyed,
           responses=doc(401, 404, 503, model=openapi.Model))
  async def model(model_id: str):
    srv.check_ready()
    srv.check_model(model_id)
    return srv.model_card()

  @app.get("/tokenizer_info", dependencies=keyed,
           responses=doc(401, 503, model=openapi.TokenizerInfo))
  async def tokenizer_info():
    """The special tokens, as lm-eval's remote tokenizer reads them (vLLM's route)."""
    srv.check_ready()
    tok = srv.tok
    piece = lambda i: tok.id_to_piece(i) if 0 <= i < tok.vocab_size else None
    return {"bos_token": piece(tok.bos_id), "eos_token": piece(tok.eos_id),
            "eot_token": piece(tok.eot_id), "pad_token": piece(tok.pad_id),
            "bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id if tok.eos_id >= 0 else None,
            "eot_token_id": tok.eot_id, "pad_token_id": tok.pad_id,
            "vocab_size": tok.vocab_size, "model_max_length": srv.engine.max_len,
            "chat_template": getattr(srv.renderer, "text", None)}

  @app.post("/tokenize", dependencies=keyed,
            responses=doc(400, 401, 404, 503, model=openapi.Tokens))
  async def tokenize(body: TokenizePrompt | TokenizeMessages):
    srv.check_ready()
    srv.check_model(body.model)
    if isinstance(body, TokenizeMessages):
      chat = ChatRequest(model=srv.name, messages=body.messages)
      ids = _chat_prompt(srv, chat)
    else:
      ids = srv.encode_text(body.prompt) if body.add_special_tokens else srv.tok.encode(
          body.prompt)
    return {"count": len(ids), "max_model_len": srv.engine.max_len, "tokens": ids}

  @app.post("/detokenize", dependencies=keyed,
            responses=doc(400, 401, 404, 503, model=openapi.Detokenized))
  async def detokenize(body: DetokenizeRequest):
    srv.check_ready()
    srv.check_model(body.model)
    if any(not 0 <= i < srv.tok.vocab_size for i in body.tokens):
      raise APIError(400, f"token ids must be in [0, {srv.tok.vocab_size})", param="tokens")
    return {"prompt": srv.tok.decode(body.tokens)}

  @app.post("/v1/chat/completions", dependencies=keyed,
            responses=doc(400, 401, 404, 429, 500, 503, model=openapi.ChatCompletion,
                          stream=True))
  async def chat_completions(body: ChatRequest, request: HTTPRequest):
    srv.check_ready()
    srv.check_model(body.model)
    body.check()
    prompt = _chat_prompt(srv, body)
    return await generate(srv, request, body, [prompt], chat=True)

  @app.post("/v1/completions", dependencies=keyed,
            responses=doc(400, 401, 404, 429, 500, 503, model=openapi.Completion, stream=True))
  async def completions(body: CompletionRequest, request: HTTPRequest):
    srv.check_ready()
    srv.check_model(body.model)
    body.check()
    given = body.prompts()
    prompts = [srv.encode_text(p) if isinstance(p, str) else list(p) for p in given]
    texts = None
    if body.echo:
      texts = [p if isinstance(p, str) else srv.tok.decode(p) for p in given]
    return await generate(srv, request, body, prompts, chat=False, prompt_texts=texts)

  return app
