"""The engine thread: admit queued requests into free slots, step every slot, detokenize, stop.

Continuous batching at token granularity, llama.cpp's and JetStream's shape: a request waits
in a bounded queue until a slot is free, is prefilled and inserted there, and leaves its slot
the step it ends (stop id, stop string, its token budget, a cancel), so the next one can take
it at once. Only this thread touches the engine (JAX calls, the donated state); the HTTP side
talks to it through `submit` / `cancel` and gets `Event`s back through each request's `emit`,
called on this thread (the API hands them over to its event loop).

The engine is anything with `slots`, `max_len`, `insert(slot, prompt, **knobs)`, `free(slot)`
and `step() -> [slots] ids`, so the scheduler is tested with a fake one, without a model.
"""
import collections
import dataclasses
import logging
import threading
import time
from typing import Callable, NamedTuple, Sequence

from lima_jax.serve.text import TextStream

log = logging.getLogger(__name__)


class QueueFull(Exception):
  """The queue has no room for the choices submitted together (the API answers 429)."""


class Event(NamedTuple):
  """Text that became safe to send; `finish` ("stop", "length", "abort", "error") on the last
  event of a request, with `tokens` the count of ids generated (the ending stop id included).
  `logprobs`: (id, logprob, [(id, logprob)] * k) of the tokens generated since the previous
  event, when the request asked for them (the ending stop id has none: it is not text)."""
  text: str
  finish: str | None = None
  tokens: int = 0
  logprobs: tuple = ()


@dataclasses.dataclass(eq=False)
class Request:
  """One choice to generate. prompt: ids (1 <= len < engine.max_len); max_tokens: its budget
  (capped at the room left in the slot); the knobs go to `Engine.insert` as they are."""
  prompt: Sequence[int]
  max_tokens: int
  emit: Callable[[Event], None]
  stop: Sequence[str] = ()
  seed: int = 0
  index: int = 0
  temperature: float = 1.0
  top_p: float = 1.0
  top_k: int = 0
  penalty: float = 1.0
  greedy: bool = True
  logprobs: int | None = None  # alternatives per generated token; None: no logprobs
  score_prompt: bool = False  # fill `prompt_logprobs` (echo) before the first event
  prompt_logprobs: list | None = None  # entries as Event.logprobs, the first prompt id's None
  arrived: float = dataclasses.field(default_factory=time.perf_counter)
  cancelled: bool = False
  done: bool = False


@dataclasses.dataclass(eq=False)
class _Running:
  req: Request
  text: TextStream
  budget: int
  last: float  # when its previous token came (for the inter-token latency)
  n: int = 0
  pending: list = dataclasses.field(default_factory=list)  # logprobs not yet delivered


class Scheduler:
  """Runs `engine` on its own thread. decode: ids -> text; stop_ids: ids that end an answer
  (EOT, EOS); max_queue: requests waiting for a slot before `submit` raises QueueFull."""

  def __init__(self, engine, decode: Callable[[Sequence[int]], str], stop_ids: Sequence[int],
               *, max_queue: int = 64, metrics=None):
    self.engine, self._decode, self._stop_ids = engine, decode, frozenset(stop_ids)
    self.max_queue, self.metrics = max_queue, metrics
    self._cv = threading.Condition()
    self._waiting: collections.deque[Request] = collections.deque()
    self._slots: dict[int, _Running] = {}
    self._stopping = False
    self._thread = threading.Thread(target=self._loop, name="lima_jax-engine", daemon=True)
    self.steps = 0
    if metrics is not None:
      # Read when scraped: values set from two threads could be left stale.
      metrics.slots.set(engine.slots)
      metrics.requests_waiting.set_function(lambda: len(self._waiting))
      metrics.slots_in_use.set_function(lambda: len(self._slots))
      metrics.compiles.set_function(lambda: sum(getattr(engine, "compiles", {}).values()))

  # -- the HTTP side's calls (any thread) -------------------------------------------------------

  def start(self) -> None:
    self._thread.start()

  def close(self, timeout: float | None = 10.0) -> None:
    with self._cv:
      self._stopping = True
      self._cv.notify_all()
    if self._thread.is_alive():
      self._thread.join(timeout)

  def submit(self, req: Request) -> None:
    self.submit_all([req])

  def submit_all(self, reqs: Sequence[Request]) -> None:
    """Queues every choice of one HTTP request, or none of them (QueueFull): a refused request
    leaves nothing to cancel, so it is never counted as aborted."""
    for req in reqs:
      if not len(req.prompt) or self.engine.max_len - len(req.prompt) < 1:
        raise ValueError(f"prompt of {len(req.prompt)} ids; a slot holds {self.engine.max_len}")
    with self._cv:
      if len(self._waiting) + len(reqs) > self.max_queue:
        raise QueueFull(f"{len(self._waiting)} choices wait for a slot already, room for "
                        f"{self.max_queue}; this request has {len(reqs)}")
      self._waiting.extend(reqs)
      self._cv.notify_all()

  def cancel(self, req: Request) -> None:
    """The client is gone: a queued request is dropped now; a running one leaves its slot
    before the next step. No-op once it finished."""
    with self._cv:
      if req.done or req.cancelled:
        return
      req.cancelled = True
      try:
        self._waiting.remove(req)
      except ValueError:
        self._cv.notify_all()  # running: the engine thread frees the slot
        return
    self._finish_queued(req)

  @property
  def waiting(self) -> int:
    return len(self._waiting)

  @property
  def running(self) -> int:
    return len(self._slots)

  # -- the engine thread ------------------------------------------------------------------------

  def _loop(self) -> None:
    while True:
      with self._cv:
        while not self._stopping and not self._waiting and not self._slots:
          self._cv.wait()
        if self._stopping:
          break
      try:
        self._drop_cancelled()
        self._admit()
        if self._slots:
          self._step()
      except Exception as e:  # a bug here fails the requests in flight, not the server
        log.exception("engine loop failed")
        for run in list(self._slots.values()):
          self._end(run, "error", f"engine failure: {type(e).__name__}: {e}")
    for run in list(self._slots.values()):
      self._end(run, "abort")
    while self._waiting:
      self._finish_queued(self._waiting.popleft())

  def _drop_cancelled(self) -> None:
    for run in [r for r in self._slots.values() if r.req.cancelled]:
      self._end(run, "abort")

  def _admit(self) -> None:
    free = (s for s in range(self.engine.slots) if s not in self._slots)
    for slot in free:
      with self._cv:
        if not self._waiting:
          break
        req = self._waiting.popleft()
      try:
        text = TextStream(self._decode, req.stop or ())
        if req.score_prompt:
          req.prompt_logprobs = _prompt_entries(req, self.engine.score(list(req.prompt)))
        knobs = {"want_logprobs": True} if req.logprobs is not None else {}
        self.engine.insert(slot, list(req.prompt), seed=req.seed, index=req.index,
                           temperature=req.temperature, top_p=req.top_p, top_k=req.top_k,
                           penalty=req.penalty, greedy=req.greedy, **knobs)
      except Exception as e:  # a failed prefill fails its request, not the server
        log.exception("prefill failed")
        self._deliver(req, Event(f"prefill failed: {type(e).__name__}: {e}", "error"))
        continue
      budget = min(req.max_tokens, self.engine.max_len - len(req.prompt))
      self._slots[slot] = _Running(req, text, budget, time.perf_counter())
      if self.metrics is not None:
        self.metrics.prompt_tokens.inc(len(req.prompt))

  def _step(self) -> None:
    try:
      tokens = self.engine.step()
    except Exception as e:
      log.exception("decode step failed")
      for run in list(self._slots.values()):
        self._end(run, "error", f"decode step failed: {e}")
      return
    self.steps += 1
    now = time.perf_counter()
    lps = getattr(self.engine, "logprobs", None)
    for slot, run in list(self._slots.items()):
      token = int(tokens[slot])
      k = run.req.logprobs
      if k is not None and token not in self._stop_ids:
        chosen, ids, top = (a[slot] for a in lps)
        run.pending.append((token, float(chosen),
                            [(int(i), float(l)) for i, l in zip(ids[:k], top[:k])]))
      run.n += 1
      m = self.metrics
      if m is not None:
        (m.ttft if run.n == 1 else m.itl).observe(now - (run.req.arrived if run.n == 1
                                                         else run.last))
        m.generation_tokens.inc()
      run.last = now
      if token in self._stop_ids:
        self._end(run, "stop")
        continue
      piece = run.text.add(token)
      if run.text.stopped:
        self._end(run, "stop", piece)
      elif run.n >= run.budget:
        self._end(run, "length", piece)
      elif piece:
        self._deliver(run.req, Event(piece, logprobs=tuple(run.pending)))
        run.pending.clear()

  def _end(self, run: _Running, reason: str, piece: str = "") -> None:
    slot = next(s for s, r in self._slots.items() if r is run)
    del self._slots[slot]
    self.engine.free(slot)
    if reason in ("stop", "length"):
      piece += run.text.finish()
    elif reason == "abort" and self.metrics is not None:
      self.metrics.aborted.inc()
    if self.metrics is not None:
      self.metrics.e2e.observe(time.perf_counter() - run.req.arrived)
    self._deliver(run.req, Event(piece, reason, run.n, tuple(run.pending)))

  def _finish_queued(self, req: Request) -> None:
    if self.metrics is not None:
      self.metrics.aborted.inc()
    self._deliver(req, Event("", "abort", 0))

  def _deliver(self, req: Request, event: Event) -> None:
    if event.finish is not None:
      req.done = True
    try:
      req.emit(event)
    except Exception:  # a broken consumer must not take the engine thread down
      log.exception("emit failed")


def _prompt_entries(req: Request, scored) -> list:
  """Engine.score's arrays as Event.logprobs entries, `req.logprobs` alternatives each."""
  chosen, ids, lps = scored
  k = req.logprobs or 0
  return [(int(req.prompt[0]), None, [])] + [
      (int(t), float(c), [(int(i), float(l)) for i, l in zip(ids[j][:k], lps[j][:k])])
      for j, (t, c) in enumerate(zip(req.prompt[1:], chosen))]
