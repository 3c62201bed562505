"""lima_jax.serve.scheduler and .text without a model: a fake engine whose slots replay a
script chosen by the prompt, so slot reuse, budgets, stop ids and strings, aborts, cancelled
queued requests and a full queue are checked against hand-written answers."""
import random
import threading
import time

import pytest

from lima_jax.serve.metrics import Metrics
from lima_jax.serve.scheduler import QueueFull, Request, Scheduler
from lima_jax.serve.text import TextStream

EOT = 0
FOREVER = 99  # a prompt starting with this id never stops on its own


def ids(text):
  return [ord(c) - 96 for c in text]  # 'a' -> 1 ... 'z' -> 26, ' ' -> -64 (kept as is)


def letters(seq):
  return "".join(chr(i + 96) for i in seq)


class FakeEngine:
  """Slot s answers prompt p with SCRIPTS[p[0]] then EOT (or 'x' forever for FOREVER)."""
  SCRIPTS = {1: "hello world", 2: "ab", 3: "abcabcabc", 4: "the end"}

  def __init__(self, slots=2, max_len=64, fail_step=False):
    self.slots, self.max_len, self.fail_step = slots, max_len, fail_step
    self.rows = [None] * slots
    self.inserts = []  # (slot, prompt)
    self.frees = []
    self.compiles = {"step": 1}
    self.peak = 0

  def insert(self, slot, prompt, **knobs):
    self.inserts.append((slot, tuple(prompt)))
    script = [ord("x") - 96] * 10**6 if prompt[0] == FOREVER else ids(self.SCRIPTS[prompt[0]])
    self.rows[slot] = iter(script + [EOT] * 10**6)

  def free(self, slot):
    self.frees.append(slot)
    self.rows[slot] = None

  def step(self):
    time.sleep(0.001)
    if self.fail_step:
      raise RuntimeError("device on fire")
    return [next(r) if r is not None else EOT for r in self.rows]


class Client:
  """Collects one request's events; `wait` blocks until it finished."""

  def __init__(self):
    self.events, self.finished = [], threading.Event()
    self.started = threading.Event()

  def __call__(self, event):
    self.events.append(event)
    self.started.set()
    if event.finish is not None:
      self.finished.set()

  @property
  def text(self):
    return "".join(e.text for e in self.events)

  def wait(self, timeout=10):
    assert self.finished.wait(timeout), "request never finished"
    return self.events[-1]


@pytest.fixture
def make():
  made = []

  def make(engine=None, **kw):
    engine = engine or FakeEngine()
    s = Scheduler(engine, letters, [EOT], metrics=Metrics(), **kw)
    s.start()
    made.append(s)
    return s, engine

  yield make
  for s in made:
    s.close()


def submit(sched, prompt, max_tokens=50, stop=()):
  c = Client()
  c.req = Request(prompt, max_tokens, c, stop=stop)
  sched.submit(c.req)
  return c


def test_more_requests_than_slots_reuse_slots_and_each_gets_its_own_answer(make):
  sched, engine = make()
  prompts = [[1, 5], [2], [3, 3, 3], [4], [2, 9], [1]]
  clients = [submit(sched, p) for p in prompts]
  for p, c in zip(prompts, clients):
    last = c.wait()
    want = FakeEngine.SCRIPTS[p[0]]
    assert (c.text, last.finish, last.tokens) == (want, "stop", len(want) + 1)  # + EOT
    assert [e.finish for e in c.events].count("stop") == 1
  assert sorted(p for _, p in engine.inserts) == sorted(map(tuple, prompts))
  assert {s for s, _ in engine.inserts} == {0, 1}
  assert sorted(engine.frees) == sorted(s for s, _ in engine.inserts)  # each slot given back
  assert (sched.running, sched.waiting) == (0, 0)


def test_max_tokens_and_room_in_the_slot_end_with_length(make):
  sched, _ = make(FakeEngine(max_len=6))
  c = submit(sched, [1], max_tokens=3)
  last = c.wait()
  assert (last.finish, last.tokens, c.text) == ("length", 3, "hel")
  c = submit(sched, [1, 1], max_tokens=50)  # 6 - 2 = room for 4 tokens
  last = c.wait()
  assert (last.finish, last.tokens, c.text) == ("length", 4, "hell")


def test_stop_string_is_cut_and_its_start_is_never_sent(make):
  sched, _ = make()
  c = submit(sched, [1], stop=["lo w"])
  last = c.wait()
  assert (c.text, last.finish) == ("hel", "stop")
  # The earliest of several stops wins.
  c = submit(sched, [3], stop=["cab", "bca", "zz"])
  last = c.wait()
  assert (c.text, last.finish) == ("a", "stop")
  # A tail that may start a stop string is held back, and sent once the answer ends without it.
  c = submit(sched, [4], stop=["endless"])
  last = c.wait()
  assert (c.text, last.finish, last.text) == ("the end", "stop", "end")
  assert "".join(e.text for e in c.events[:-1]) == "the "


def test_abort_frees_the_slot_for_the_next_request(make):
  sched, engine = make(FakeEngine(slots=1))
  a = submit(sched, [FOREVER], max_tokens=10**6)
  assert a.started.wait(5)
  b = submit(sched, [2])
  time.sleep(0.05)
  assert not b.finished.is_set()  # the only slot is taken
  sched.cancel(a.req)
  assert a.wait().finish == "abort"
  assert b.wait().finish == "stop" and b.text == "ab"
  assert sched.metrics.aborted._value.get() == 1
  sched.cancel(a.req)  # again, and after it finished: nothing happens
  sched.cancel(b.req)
  assert sched.metrics.aborted._value.get() == 1


def test_cancelled_queued_request_never_starts_and_full_queue_refuses(make):
  sched, engine = make(FakeEngine(slots=1), max_queue=2)
  a = submit(sched, [FOREVER], max_tokens=10**6)
  assert a.started.wait(5)
  b, c = submit(sched, [4]), submit(sched, [2])
  with pytest.raises(QueueFull):
    submit(sched, [1])
  sched.cancel(b.req)
  last = b.wait()
  assert (last.finish, last.tokens, b.text) == ("abort", 0, "")
  d = submit(sched, [1])  # b's place in the queue is free again
  sched.cancel(a.req)
  assert c.wait().finish == d.wait().finish == "stop"
  assert [p for _, p in engine.inserts] == [(FOREVER,), (2,), (1,)]


def test_a_failing_step_fails_its_requests_not_the_thread(make):
  sched, engine = make(FakeEngine(fail_step=True))
  c = submit(sched, [1])
  assert c.wait().finish == "error" and "device on fire" in c.text
  engine.fail_step = False
  assert submit(sched, [2]).wait().finish == "stop"


def test_prompt_must_fit_the_slot(make):
  sched, _ = make(FakeEngine(max_len=4))
  for prompt in ([], [1, 1, 1, 1]):
    with pytest.raises(ValueError):
      sched.submit(Request(prompt, 5, Client()))


# --- TextStream --------------------------------------------------------------------------------

def utf8(seq):
  return bytes(seq).decode("utf-8", errors="replace")


def test_text_stream_never_sends_half_a_character():
  t = TextStream(utf8)
  pieces = [t.add(b) for b in "aé€😀".encode()]
  assert pieces == ["a", "", "é", "", "", "€", "", "", "", "😀"]
  assert t.finish() == ""
  t = TextStream(utf8)  # a broken byte at the very end is flushed as U+FFFD, not dropped
  assert (t.add(ord("a")), t.add(0xE2), t.finish()) == ("a", "", "\ufffd")


def test_text_stream_pieces_concatenate_to_the_whole_decode():
  rng = random.Random(0)
  for _ in range(50):
    data = "".join(rng.choice("ab é€😀") for _ in range(rng.randrange(1, 20))).encode()
    t = TextStream(utf8, stop=[" é", "€€"])
    out = "".join(t.add(b) for b in data) + t.finish()
    full = data.decode()
    cut = min([full.find(s) for s in (" é", "€€") if s in full], default=len(full))
    assert out == full[:cut] == t.text
