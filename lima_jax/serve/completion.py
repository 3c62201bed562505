"""One generation request: its choices queued together, then one JSON body or a stream.

Each choice is one `scheduler.Request`; its events come back on the engine thread and are
handed to this event loop with `call_soon_threadsafe`. A client that goes away frees its slot
at once: a stream's generator is cancelled by Starlette when the client disconnects (its
`finally` cancels the requests); a plain request races its answer against
`request.receive()`, which reports `http.disconnect`.
"""
import asyncio
import functools
import secrets
import time
import uuid

from fastapi import Request as HTTPRequest
from fastapi.responses import Response

from lima_jax.serve import logprobs as lp_lib
from lima_jax.serve import stream
from lima_jax.serve.engine import int32_seed
from lima_jax.serve.protocol import APIError
from lima_jax.serve.scheduler import QueueFull, Request

RETRY_AFTER_S = "1"  # a full queue drains in about an answer's time


async def generate(srv, request: HTTPRequest, body, prompts, *, chat: bool,
                   prompt_texts=None):
  """prompts: ids of each prompt; prompt_texts: their text, for completions' echo."""
  for i, p in enumerate(prompts):
    srv.check_prompt(p, "messages" if chat else "prompt" + (f"[{i}]" if len(prompts) > 1 else ""))
  dec = body.decoding()
  k = body.logprob_count()
  echo = bool(getattr(body, "echo", False))
  seed = int32_seed(body.seed) if body.seed is not None else secrets.randbits(31)
  loop, queue = asyncio.get_running_loop(), asyncio.Queue()
  reqs = []
  for p_i, prompt in enumerate(prompts):
    for j in range(body.n):
      index = p_i * body.n + j
      emit = lambda ev, i=index: loop.call_soon_threadsafe(queue.put_nowait, (i, ev))
      reqs.append(Request(prompt, dec.max_new_tokens, emit, stop=body.stop or (), seed=seed,
                          index=index, temperature=dec.temperature, top_p=dec.top_p,
                          top_k=dec.top_k, penalty=dec.repetition_penalty, greedy=dec.greedy,
                          logprobs=k, score_prompt=echo and k is not None))
  try:
    srv.scheduler.submit_all(reqs)
  except QueueFull as e:
    srv.metrics.rejected.inc()
    raise APIError(429, f"the server is busy ({e}); retry later", type="rate_limit_error",
                   code="queue_full", headers={"Retry-After": RETRY_AFTER_S}) from None
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

  shape = None
  if k is not None:
    shape = functools.partial(lp_lib.chat_shape if chat else lp_lib.completion_shape,
                              text=srv.token_text)
  if body.stream:
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    sse = stream.sse(events, meta, usage, len(reqs), chat, include_usage, done, shape)
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
  texts, finishes, tokens, entries = work.result()
  usage["completion_tokens"] = sum(tokens)
  usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
  if chat:
    choices = [{"index": i, "message": {"role": "assistant", "content": t},
                "logprobs": shape(e) if shape else None, "finish_reason": f}
               for i, (t, f, e) in enumerate(zip(texts, finishes, entries))]
  else:
    choices = []
    for i, (t, f, e) in enumerate(zip(texts, finishes, entries)):
      r = reqs[i]
      if echo:
        t = prompt_texts[i // body.n] + t
        e = (r.prompt_logprobs or []) + e
      choices.append({"index": i, "text": t, "logprobs": shape(e) if shape else None,
                      "finish_reason": f})
  return {**meta, "object": "chat.completion" if chat else "text_completion",
          "choices": choices, "usage": usage}
