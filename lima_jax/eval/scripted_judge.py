r"""A scripted judge on 127.0.0.1 that speaks OpenAI's chat completions: for tests and demos.

    python -m lima_jax.eval.scripted_judge --port=8765 [--rate_limit=0.05] [--garbage=0.0]

It is NOT a judge of quality. Its default rule reads the answers out of the request (the
"[The Start of ... Answer ...]" blocks of our and FastChat's prompts) and prefers the one
that shares more distinct words with the question (as many: [[C]]); on a
planted tenth of prompts (by hash) it always says [[A]], so position flips are there to
be measured. Tests pass their own `rule`. Faults (a 429 with Retry-After, a 500, a garbage
reply) are drawn per request body, the first time it is seen, from a hash: reproducible.
"""
import argparse
import hashlib
import json
import math
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_BLOCK = re.compile(r"\[The Start of ([^\]]*?)\]\n(.*?)\n\[The End of \1\]", re.DOTALL)
_QUESTION = re.compile(r"\[(?:Question|Instruction|User Question)\]\n(.*?)\n\n\[", re.DOTALL)


def blocks(text: str) -> dict[str, str]:
  """{label: body} of the answer blocks in a prompt (labels like 'Answer A')."""
  return {label: body for label, body in _BLOCK.findall(text)}


def _unit_hash(s: str) -> float:
  return int(hashlib.sha256(s.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def overlap(question: str, answer: str) -> int:
  words = lambda s: set(re.findall(r"[a-z]{3,}", s.lower()))
  return len(words(question) & words(answer))


def default_rule(request: dict) -> dict:
  """{'content': str, 'logprobs': [...] or None} for a request."""
  user = request["messages"][-1]["content"]
  q = _QUESTION.search(user)
  question = q.group(1) if q else user
  found = blocks(user)
  answers = [v for k, v in found.items() if "Reference" not in k]
  if not answers and "### Assistant A:" in user:  # MT-Bench turn 2: the last exchange counts.
    question = re.findall(r"### User:\n(.*?)\n\n###", user, re.DOTALL)[-1]
    answers = re.findall(r"### Assistant A:\n(.*?)\n\n(?:###|<\|)", user, re.DOTALL)[-1:]
  if len(answers) == 2:
    sa, sb = overlap(question, answers[0]), overlap(question, answers[1])
    biased = _unit_hash(question) < 0.1
    label = "A" if biased or sa > sb else "B" if sb > sa else "C"
    if "letter of the better output" in user:  # alpaca_eval: one letter, log-probabilities.
      pa = 1 / (1 + math.exp(-(sa - sb) / 3)) if not biased else 0.9
      return {"content": "A" if pa >= 0.5 else "B",
              "logprobs": [[["A", math.log(max(pa, 1e-9))], ["B", math.log(max(1 - pa, 1e-9))]]]}
    return {"content": f"Answer A shares {sa} words with the question, answer B {sb}.\n"
                       f"[[{label}]]"}
  s = overlap(question, answers[0]) if answers else 0
  top = 6 if "from 1 to 6" in user else 10
  grade = max(1, min(top, 1 + s))
  return {"content": f"The answer shares {s} words with the question.\nRating: [[{grade}]]"}


class Server:
  """ThreadingHTTPServer in a daemon thread. `rule(request) -> {'content', 'logprobs'?}`.
  rate_limit / server_error / garbage: shares of request bodies whose FIRST request gets a
  429 (Retry-After: retry_after), a 500, or an unparseable 200; `stall`: a share whose first
  request is answered only after stall_s seconds (a timeout). `hang_after`: answer that
  many requests, then hold every later one open (a client killed mid-run)."""

  def __init__(self, rule=default_rule, *, port: int = 0, rate_limit: float = 0.0,
               server_error: float = 0.0, garbage: float = 0.0, retry_after: float = 1.0,
               delay: float = 0.0, stall: float = 0.0, stall_s: float = 1.0):
    self.rule, self.rate_limit, self.server_error = rule, rate_limit, server_error
    self.garbage, self.retry_after, self.delay = garbage, retry_after, delay
    self.stall, self.stall_s = stall, stall_s
    self.lock = threading.Lock()
    self.seen: dict[str, int] = {}  # body hash -> requests received
    self.answered: dict[str, int] = {}  # body hash -> 200 replies sent
    self.statuses: list[int] = []
    self.log: list[tuple[str, float, int]] = []  # (body hash, arrival time, status sent)
    self.hang_after: int | None = None
    self.release = threading.Event()
    self.httpd = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
    self.httpd.daemon_threads = True
    self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

  @property
  def url(self) -> str:
    return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

  def __enter__(self):
    self.thread.start()
    return self

  def __exit__(self, *exc):
    self.release.set()
    self.httpd.shutdown()
    self.httpd.server_close()

  def _reply(self, body: bytes):
    request = json.loads(body)
    digest = hashlib.sha256(body).hexdigest()
    arrived = time.monotonic()
    status, headers, payload = self._answer(request, digest)
    with self.lock:
      self.log.append((digest, arrived, status))
    return status, headers, payload

  def _answer(self, request: dict, digest: str):
    with self.lock:
      first = digest not in self.seen
      self.seen[digest] = self.seen.get(digest, 0) + 1
      if self.hang_after is not None and sum(self.answered.values()) >= self.hang_after:
        hang = True
      else:
        hang = False
    if hang:
      self.release.wait()
      return 503, {}, {"error": {"message": "released"}}
    if self.delay:
      time.sleep(self.delay)
    h = _unit_hash(digest)
    if first and h < self.rate_limit:
      return 429, {"Retry-After": str(self.retry_after)}, {"error": {"message": "slow down"}}
    if first and h < self.rate_limit + self.server_error:
      return 500, {}, {"error": {"message": "internal"}}
    if first and self.stall and h > 1 - self.stall:  # Longer than the client waits.
      time.sleep(self.stall_s)
    out = self.rule(request)
    if "status" in out:  # A rule may answer as a failing endpoint would (401, 400, ...).
      return out["status"], {}, {"error": {"message": out.get("content", "error")}}
    if self.garbage and _unit_hash(digest + "g") < self.garbage:
      out = {"content": "I would rather not say."}
    choice = {"index": 0, "finish_reason": "stop",
              "message": {"role": "assistant", "content": out["content"]}}
    if out.get("logprobs") and request.get("logprobs"):
      top = [{"token": t, "logprob": lp, "bytes": None} for t, lp in out["logprobs"][0]]
      choice["logprobs"] = {"content": [{**top[0], "top_logprobs": top}]}
    prompt_tokens = sum(len(m["content"]) // 4 for m in request["messages"])
    with self.lock:
      self.answered[digest] = self.answered.get(digest, 0) + 1
    return 200, {}, {"id": "chatcmpl-scripted", "object": "chat.completion",
                     "created": int(time.time()), "model": request.get("model", "scripted"),
                     "choices": [choice],
                     "usage": {"prompt_tokens": prompt_tokens,
                               "completion_tokens": len(out["content"]) // 4 + 1,
                               "total_tokens": prompt_tokens + len(out["content"]) // 4 + 1}}

  def _handler(self):
    server = self

    class Handler(BaseHTTPRequestHandler):
      protocol_version = "HTTP/1.1"

      def do_POST(self):  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if not self.path.rstrip("/").endswith("/chat/completions"):
          status, headers, payload = 404, {}, {"error": {"message": f"no route {self.path}"}}
        else:
          status, headers, payload = server._reply(body)
        with server.lock:
          server.statuses.append(status)
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers.items():
          self.send_header(k, v)
        self.end_headers()
        try:
          self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
          pass  # A client killed mid-request (the SIGKILL test) is not the server's error.

      def log_message(self, *args):
        pass

    return Handler


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--port", type=int, default=8765)
  p.add_argument("--rate_limit", type=float, default=0.0)
  p.add_argument("--server_error", type=float, default=0.0)
  p.add_argument("--garbage", type=float, default=0.0)
  p.add_argument("--retry_after", type=float, default=1.0)
  a = p.parse_args()
  with Server(port=a.port, rate_limit=a.rate_limit, server_error=a.server_error,
              garbage=a.garbage, retry_after=a.retry_after) as s:
    print(f"scripted judge at {s.url}", flush=True)
    try:
      s.thread.join()
    except KeyboardInterrupt:
      pass


if __name__ == "__main__":
  main()
