"""Every error the server answers, in OpenAI's shape, and the last line of defence.

Validation is 400 (FastAPI would say 422) naming the first field at fault; Starlette's own
HTTP errors (404, 405) keep their headers (`Allow`). A bug anywhere else is caught by
`CatchAll`, which answers a clean 500 and returns: registering a handler for `Exception`
instead would hand it to Starlette's outermost middleware, which re-raises after answering,
and uvicorn then drops the keep-alive connection under the client's next request.
"""
import logging

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from lima_jax.serve.protocol import APIError

log = logging.getLogger("lima_jax.serve")

_TYPE_NAMES = {"str", "int", "float", "bool", "list", "dict"}


def answer(e: APIError) -> JSONResponse:
  return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


def _where(err: dict) -> str:
  """The field as OpenAI names it (messages[0].content). A location also holds what a union's
  members add (str, list[int], TextPart, function-after[...]): fields are lower-case names."""
  out = ""
  for x in err.get("loc", ())[1:]:
    if isinstance(x, int):
      out += f"[{x}]"
    elif x.isidentifier() and x.islower() and x not in _TYPE_NAMES:
      out += f".{x}" if out else x
  return out


def install(app: FastAPI) -> None:
  @app.exception_handler(APIError)
  async def api_error(_, e: APIError):
    return answer(e)

  @app.exception_handler(RequestValidationError)
  async def invalid(_, e: RequestValidationError):
    errors = e.errors()
    # Of a union's failures, the one that got furthest into the value names the field best.
    param = _where(max(errors, key=lambda err: len(err.get("loc", ())))) if errors else ""
    msg = "; ".join(f"{_where(err) or 'body'}: {err.get('msg')}" for err in errors[:5])
    return answer(APIError(400, msg or "invalid request", param=param or None))

  @app.exception_handler(HTTPException)
  async def http_error(_, e: HTTPException):
    code = "not_found" if e.status_code == 404 else None
    return JSONResponse(APIError(e.status_code, str(e.detail), code=code).body(), e.status_code,
                        headers=e.headers)

  app.add_middleware(CatchAll)


class CatchAll:
  """ASGI middleware: an unhandled exception becomes a 500 in OpenAI's shape, logged once, the
  connection kept. One raised after the answer started (a stream's body) is re-raised: the
  answer is broken and only closing the connection can say so."""

  def __init__(self, app):
    self.app = app

  async def __call__(self, scope, receive, send):
    if scope["type"] != "http":
      return await self.app(scope, receive, send)
    started = False

    async def tracked(message):
      nonlocal started
      if message["type"] == "http.response.start":
        started = True
      await send(message)

    try:
      await self.app(scope, receive, tracked)
    except Exception as e:  # noqa: BLE001 - the point of this class
      if started:
        raise
      log.exception("internal error")
      await answer(APIError(500, f"internal error: {type(e).__name__}: {e}",
                            type="server_error"))(scope, receive, send)
