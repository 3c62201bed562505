"""How a request's events become an HTTP answer: one JSON body, or Server-Sent Events.

Events arrive on an asyncio queue as (choice index, `scheduler.Event`). A stream is OpenAI's:
a role chunk per choice (chat), content deltas, one chunk with finish_reason per choice, the
usage chunk (`choices: []`) when asked for, then `data: [DONE]`; a `:` comment goes out when
nothing came for a while (a request waiting for a slot), which clients ignore and proxies
need. An engine failure mid-stream is one `data: {"error": ...}` event, then `[DONE]`.
"""
import asyncio
import json

from fastapi import Request as HTTPRequest
from fastapi.responses import StreamingResponse

from lima_jax.serve.protocol import APIError


class SSEResponse(StreamingResponse):
  """Cleans up even when the client left before the body generator ever started (then its
  own `finally` never runs)."""

  def __init__(self, content, on_close, **kw):
    super().__init__(content, **kw)
    self._on_close = on_close

  async def __call__(self, scope, receive, send):
    try:
      await super().__call__(scope, receive, send)
    finally:
      self._on_close()


async def events(queue: asyncio.Queue, count: int, keepalive_s: float):
  """(choice index, Event) until every choice finished; None when nothing came for a while.

  One `queue.get()` is awaited across time-outs rather than `wait_for(queue.get(), t)`: on
  Python < 3.12 wait_for can drop an item that arrives as it times out (a lost finish event
  would hang its request)."""
  left, getter = count, None
  try:
    while left:
      if getter is None and not queue.empty():
        item = queue.get_nowait()  # the usual case under load: no task, no wait
      else:
        getter = getter or asyncio.ensure_future(queue.get())
        done, _ = await asyncio.wait({getter}, timeout=keepalive_s)
        if not done:
          yield None
          continue
        item, getter = getter.result(), None
      if item[1].finish is not None:
        left -= 1
      yield item
  finally:
    if getter is not None:
      getter.cancel()


async def disconnected(request: HTTPRequest) -> None:
  while (await request.receive())["type"] != "http.disconnect":
    pass


def _failed(event) -> APIError | None:
  if event.finish == "error":
    return APIError(500, event.text, type="server_error")
  if event.finish == "abort":  # the server is shutting down
    return APIError(503, "the server is shutting down", type="server_error",
                    headers={"Retry-After": "10"})
  return None


async def collect(events, count):
  """(texts, finish reasons, token counts, logprob entries) of every choice."""
  texts, finishes, tokens = [""] * count, [None] * count, [0] * count
  entries = [[] for _ in range(count)]
  async for item in events:
    if item is None:
      continue
    i, ev = item
    if (err := _failed(ev)) is not None:
      raise err
    texts[i] += ev.text
    entries[i].extend(ev.logprobs)
    if ev.finish is not None:
      finishes[i], tokens[i] = ev.finish, ev.tokens
  return texts, finishes, tokens, entries


async def sse(events, meta, usage, count, chat, include_usage, done, shape=None):
  """shape: logprob entries -> the choice's `logprobs` (None: the request asked for none)."""
  obj = "chat.completion.chunk" if chat else "text_completion"
  completion = 0

  def chunk(choices, **extra):
    c = {**meta, "object": obj, "choices": choices, **extra}
    if include_usage and "usage" not in c:
      c["usage"] = None
    return f"data: {json.dumps(c, ensure_ascii=False)}\n\n"

  def choice(i, text=None, finish=None, role=None, entries=()):
    lp = shape(entries) if shape is not None and entries else None
    if chat:
      delta = {} if text is None else {"content": text}
      if role:
        delta["role"] = role
      return {"index": i, "delta": delta, "logprobs": lp, "finish_reason": finish}
    return {"index": i, "text": text or "", "logprobs": lp, "finish_reason": finish}

  try:
    if chat:
      for i in range(count):
        yield chunk([choice(i, "", role="assistant")])
    async for item in events:
      if item is None:
        yield ": keep-alive\n\n"  # bytes while waiting for a slot (proxies, clients' timers)
        continue
      i, ev = item
      if (err := _failed(ev)) is not None:
        yield f"data: {json.dumps(err.body())}\n\n"
        break
      if ev.text or ev.logprobs:
        yield chunk([choice(i, ev.text, entries=ev.logprobs)])
      if ev.finish is not None:
        completion += ev.tokens
        yield chunk([choice(i, None if chat else "", finish=ev.finish)])
    else:
      if include_usage:
        yield chunk([], usage={**usage, "completion_tokens": completion,
                               "total_tokens": usage["prompt_tokens"] + completion})
    yield "data: [DONE]\n\n"
  finally:
    done()
