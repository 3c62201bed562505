"""The HTTP side: a FastAPI app speaking OpenAI's chat and text completions over the engine.

`create_app(load, ...)` answers at once; `load()` (weights, engine, warm-up: minutes for a big
model) runs on a thread, and `/health` says 503 until it is done, so an orchestrator or a test
can wait for real readiness. Each choice is one `scheduler.Request`; its events come back on
the engine thread and are handed to this loop with `call_soon_threadsafe`.

A client that goes away frees its slot at once: a stream's generator is cancelled by
Starlette when the client disconnects (its `finally` cancels the requests); a plain request
races its answer against `request.receive()`, which reports `http.disconnect`.
"""
import asyncio
import hmac
import logging
import secrets
import threading
import time
import uuid
from typing import Callable

from fastapi import Depends, FastAPI, Request as HTTPRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException

from lima_jax.decode.generator import render_prompt
from lima_jax.errors import UserError
from lima_jax.tokenizer import chat as chat_format
from lima_jax.serve import stream
from lima_jax.serve.engine import int32_seed
from lima_jax.serve.metrics import Metrics
from lima_jax.serve.protocol import APIError, ChatRequest, CompletionRequest, TokenizeRequest
from lima_jax.serve.scheduler import QueueFull, Request, Scheduler

log = logging.getLogger(__name__)


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
    self.engine = self.tok = self.scheduler = self.renderer = None
    self.created = int(time.time())

  def start_loading(self) -> None:
    threading.Thread(target=self._load, name="lima_jax-load", daemon=True).start()

  def _load(self) -> None:
    try:
      engine, tok, *rest = self.load()  # (engine, tok[, renderer]); default LIMA's format
      engine.warm_up()
      self.engine, self.tok = engine, tok
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
      raise APIError(503, why, type="server_error", code="not_ready")

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

  app = FastAPI(title="lima_jax", lifespan=lifespan)
  app.state.server = srv
  _errors(app)

  def auth(request: HTTPRequest) -> None:
    if srv.api_key is None:
      return
    given = request.headers.get("authorization", "")
    given = given[7:] if given[:7].lower() == "bearer " else ""
    if not hmac.compare_digest(given.encode(), srv.api_key.encode()):
      raise APIError(401, "invalid or missing API key (send 'Authorization: Bearer KEY')",
                     type="authentication_error", code="invalid_api_key")

  keyed = [Depends(auth)]

  @app.get("/health")
  async def health():
    srv.check_ready()
    return {"status": "ok"}

  @app.get("/metrics")
  async def metrics():
    return Response(generate_latest(srv.metrics.registry), media_type=CONTENT_TYPE_LATEST)

  @app.get("/v1/models", dependencies=keyed)
  async def models():
    srv.check_ready()
    return {"object": "list", "data": [{
        "id": srv.name, "object": "model", "created": srv.created, "owned_by": "lima_jax",
        "max_model_len": srv.engine.max_len}]}

  @app.post("/tokenize", dependencies=keyed)
  async def tokenize(body: TokenizeRequest):
    srv.check_ready()
    srv.check_model(body.model)
    if body.messages is not None:
      chat = ChatRequest(model=srv.name, messages=body.messages)
      ids = _chat_prompt(srv, chat)
    elif body.prompt is not None:
      ids = srv.encode_text(body.prompt) if body.add_special_tokens else srv.tok.encode(
          body.prompt)
    else:
      raise APIError(400, "give 'prompt' or 'messages'", param="prompt")
    return {"count": len(ids), "max_model_len": srv.engine.max_len, "tokens": ids}

  @app.post("/v1/chat/completions", dependencies=keyed)
  async def chat_completions(body: ChatRequest, request: HTTPRequest):
    srv.check_ready()
    srv.check_model(body.model)
    body.check()
    prompt = _chat_prompt(srv, body)
    return await _generate(srv, request, body, [prompt], chat=True)

  @app.post("/v1/completions", dependencies=keyed)
  async def completions(body: CompletionRequest, request: HTTPRequest):
    srv.check_ready()
    srv.check_model(body.model)
    body.check()
    prompts = [srv.encode_text(p) if isinstance(p, str) else list(p) for p in body.prompts()]
    return await _generate(srv, request, body, prompts, chat=False)

  return app


def _errors(app: FastAPI) -> None:
  """Every error in OpenAI's shape; validation is 400 (FastAPI would say 422)."""

  @app.exception_handler(APIError)
  async def api_error(_, e: APIError):
    return JSONResponse(e.body(), status_code=e.status)

  @app.exception_handler(RequestValidationError)
  async def invalid(_, e: RequestValidationError):
    first = e.errors()[0] if e.errors() else {"loc": (), "msg": "invalid request"}
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    param = ".".join(loc) or None
    msg = "; ".join(f"{'.'.join(str(x) for x in err.get('loc', ()) if x != 'body') or 'body'}: "
                    f"{err.get('msg')}" for err in e.errors()[:5])
    return JSONResponse(APIError(400, msg or "invalid request", param=param).body(), 400)

  @app.exception_handler(HTTPException)
  async def http_error(_, e: HTTPException):
    code = "not_found" if e.status_code == 404 else None
    return JSONResponse(APIError(e.status_code, str(e.detail), code=code).body(), e.status_code)

  @app.exception_handler(Exception)
  async def internal(_, e: Exception):
    log.exception("internal error")
    return JSONResponse(APIError(500, f"internal error: {type(e).__name__}: {e}",
                                 type="server_error").body(), 500)


async def _generate(srv: _Server, request: HTTPRequest, body, prompts, *, chat: bool):
  for i, p in enumerate(prompts):
    srv.check_prompt(p, "messages" if chat else "prompt" + (f"[{i}]" if len(prompts) > 1 else ""))
  dec = body.decoding()
  seed = int32_seed(body.seed) if body.seed is not None else secrets.randbits(31)
  loop, queue = asyncio.get_running_loop(), asyncio.Queue()
  reqs = []
  for p_i, prompt in enumerate(prompts):
    for j in range(body.n):
      index = p_i * body.n + j
      emit = lambda ev, i=index: loop.call_soon_threadsafe(queue.put_nowait, (i, ev))
      reqs.append(Request(prompt, dec.max_new_tokens, emit, stop=body.stop or (), seed=seed,
                          index=index, temperature=dec.temperature, top_p=dec.top_p,
                          top_k=dec.top_k, penalty=dec.repetition_penalty, greedy=dec.greedy))
  try:
    for r in reqs:
      srv.scheduler.submit(r)
  except QueueFull as e:
    for r in reqs:
      srv.scheduler.cancel(r)
    srv.metrics.rejected.inc()
    raise APIError(429, f"the server is busy ({e}); retry later", type="rate_limit_error",
                   code="queue_full") from None
  srv.metrics.requests_running.inc()
  meta = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}", "created": int(time.time()),
          "model": srv.name}
  usage = {"prompt_tokens": sum(map(len, prompts))}
  events = stream.events(queue, len(reqs), srv.keepalive_s)

  closed = []

  def done():
    if not closed:
      closed.append(True)
      for r in reqs:
        srv.scheduler.cancel(r)  # a no-op for those that finished
      srv.metrics.requests_running.dec()

  if body.stream:
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    sse = stream.sse(events, meta, usage, len(reqs), chat, include_usage, done)
    return stream.SSEResponse(sse, done, media_type="text/event-stream",
                              headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
  work = asyncio.ensure_future(stream.collect(events, len(reqs)))
  gone = asyncio.ensure_future(stream.disconnected(request))
  try:
    await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
  finally:
    gone.cancel()
    if not work.done():
      work.cancel()
    done()
  if not work.done() or work.cancelled():
    return Response(status_code=499)  # nobody is listening; nginx's "client closed request"
  texts, finishes, tokens = work.result()
  usage["completion_tokens"] = sum(tokens)
  usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
  if chat:
    choices = [{"index": i, "message": {"role": "assistant", "content": t}, "logprobs": None,
                "finish_reason": f} for i, (t, f) in enumerate(zip(texts, finishes))]
  else:
    choices = [{"index": i, "text": t, "logprobs": None, "finish_reason": f}
               for i, (t, f) in enumerate(zip(texts, finishes))]
  return {**meta, "object": "chat.completion" if chat else "text_completion",
          "choices": choices, "usage": usage}
