"""lima_jax.serve end to end: a live server on 127.0.0.1 (uvicorn on a thread, a tiny random
model on one device) spoken to with the official `openai` client (max_retries=0), plus raw
HTTP where the client hides the wire. Answers are checked against lima_jax's own offline
decoder (`Generator`, what `python -m lima_jax.generate` runs), token for token.

A second server over a fake engine whose step can be held or slowed makes the full queue
(429) and the mass client time-outs deterministic; the command line is tested in a
subprocess at the end."""
import concurrent.futures
import json
import os
import pathlib
import socket
import subprocess
import sys
import threading
import time

import httpx2 as httpx  # the HTTP library the pinned openai client is built on
import hypothesis
import openai
import pytest
import schemathesis
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from conftest import random_tiny_model, serve_process
from lima_jax.formats import checkpoint
from lima_jax.decode import generator as decoding
from lima_jax.decode.sampling import Decoding
from lima_jax.errors import UserError
from lima_jax.serve.api import create_app
from lima_jax.serve.engine import Engine, buckets

REPO = pathlib.Path(__file__).resolve().parents[1]
KEY = "sekrit"
SLOTS = 4
N_NEW = 16
CONVS = [["What is the capital of France?"], ["Hi"],
         ["Write a short poem about the sea, with waves and wind and salt in every line."],
         ["How many legs does a spider have?", "Eight.", "And an ant?"],
         ["Tell me a story."], ["Why is the sky blue? Explain it to a child please."],
         ["ok"], ["List three colours and a fruit."]]


@pytest.fixture(scope="module")
def model():
  params, cfg, tok = random_tiny_model()
  # EOT's logit scaled up: some greedy answers end on EOT within N_NEW tokens, others run out.
  head = params["lm_head"]["kernel"]
  params["lm_head"]["kernel"] = head.at[:, tok.eot_id].multiply(3.0)
  return params, cfg, tok


class Live:
  """uvicorn serving `app` on a free 127.0.0.1 port, on a thread; waits for /health."""

  def __init__(self, app, timeout=300, wait=True):
    self.app = app
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]},
                                   daemon=True)
    self.thread.start()
    t0 = time.time()
    while wait and httpx.get(self.url + "/health").status_code != 200:
      assert time.time() - t0 < timeout, "server never became healthy"
      time.sleep(0.05)

  def client(self, key=KEY, timeout=60.0):
    return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=timeout)

  def metrics(self):
    text = httpx.get(self.url + "/metrics").text
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}

  def close(self):
    self.server.should_exit = True
    self.thread.join(10)


@pytest.fixture(scope="module")
def live(model):
  params, cfg, tok = model
  banned = decoding.banned_ids(tok, (tok.eot_id, tok.eos_id))  # as Generator and the CLI
  app = create_app(lambda: (Engine(params, cfg, tok.vocab_size, slots=SLOTS, banned=banned),
                            tok),
                   served_model_name="tiny", api_key=KEY, max_queue=32)
  server = Live(app)
  yield server
  server.close()


@pytest.fixture(scope="module")
def reference(model):
  """Generator's answers (ids, stopped) with decoding `dec` and seed 0."""
  params, cfg, tok = model
  gen = decoding.Generator(params, cfg, tok, batch_size=SLOTS)

  def ref(convs, dec):
    prompts = [decoding.render_prompt(c, tok) for c in convs]
    return gen.answer_ids(prompts, dec, 0)

  return ref


def messages(turns):
  return [{"role": "user" if i % 2 == 0 else "assistant", "content": t}
          for i, t in enumerate(turns)]


def chat(client, turns, **kw):
  kw.setdefault("max_tokens", N_NEW)
  return client.chat.completions.create(model="tiny", messages=messages(turns), **kw)


GREEDY = dict(temperature=0, extra_body={"repetition_penalty": 1.0})
PLAIN = Decoding(greedy=True, repetition_penalty=1.0, max_new_tokens=N_NEW)


def test_greedy_equals_generator_alone_and_with_twice_the_slots_at_once(live, model, reference):
  tok = model[2]
  want = reference(CONVS, PLAIN)
  client = live.client()

  def ask(turns):
    r = chat(client, turns, **GREEDY)
    return r.choices[0].message.content, r.usage.completion_tokens, r.choices[0].finish_reason

  expected = [(tok.decode(ids), len(ids) + stopped, "stop" if stopped else "length")
              for ids, stopped in want]
  assert {f for _, _, f in expected} == {"stop", "length"}  # both endings are exercised
  assert [ask(c) for c in CONVS[:3]] == expected[:3]
  assert len(CONVS) == 2 * SLOTS
  with concurrent.futures.ThreadPoolExecutor(len(CONVS)) as pool:
    assert list(pool.map(ask, CONVS)) == expected


def test_chat_and_completion_schema_and_usage(live, model):
  tok = model[2]
  client = live.client()
  r = chat(client, CONVS[3], **GREEDY)
  assert (r.object, r.model, len(r.choices), r.choices[0].index) == ("chat.completion", "tiny",
                                                                      1, 0)
  assert r.id.startswith("chatcmpl-") and r.choices[0].message.role == "assistant"
  assert r.usage.prompt_tokens == len(decoding.render_prompt(CONVS[3], tok))
  assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
  c = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=5,
                                temperature=0)
  assert (c.object, c.choices[0].finish_reason, c.usage.completion_tokens) == (
      "text_completion", "length", 5)
  assert c.usage.prompt_tokens == 1 + len(tok.encode("Once upon a time"))  # BOS + text
  # Token-id prompts are taken as they are; n choices share the prompt's count once.
  ids = [tok.bos_id] + tok.encode("Once upon a time")
  c2 = client.completions.create(model="tiny", prompt=ids, max_tokens=5, temperature=0, n=2)
  assert [ch.text for ch in c2.choices] == [c.choices[0].text] * 2
  assert [ch.index for ch in c2.choices] == [0, 1]
  assert (c2.usage.prompt_tokens, c2.usage.completion_tokens) == (len(ids), 10)
  models = client.models.list().data
  assert [(m.id, m.model_extra["max_model_len"]) for m in models] == [("tiny", 128)]
  t = httpx.post(live.url + "/tokenize", json={"messages": messages(CONVS[3])},
                 headers={"Authorization": f"Bearer {KEY}"}).json()
  assert t["tokens"] == decoding.render_prompt(CONVS[3], tok) and t["count"] == len(t["tokens"])


def test_stream_concatenates_to_the_plain_answer(live):
  client = live.client()
  for turns in (CONVS[0], CONVS[2]):
    plain = chat(client, turns, **GREEDY)
    chunks = list(chat(client, turns, stream=True, stream_options={"include_usage": True},
                       **GREEDY))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices
                if c.choices[0].finish_reason]
    assert text == plain.choices[0].message.content
    assert finishes == [plain.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage == plain.usage
    assert all(c.usage is None for c in chunks[:-1])
  c = client.completions.create(model="tiny", prompt="Once upon", max_tokens=8, temperature=0,
                                stream=True)
  plain = client.completions.create(model="tiny", prompt="Once upon", max_tokens=8,
                                    temperature=0)
  assert "".join(x.choices[0].text for x in c) == plain.choices[0].text
  # On the wire: SSE events, then [DONE].
  with httpx.stream("POST", live.url + "/v1/chat/completions", headers={
      "Authorization": f"Bearer {KEY}"}, json={"model": "tiny", "messages": messages(CONVS[1]),
                                               "stream": True, "max_tokens": 4}) as r:
    assert r.headers["content-type"].startswith("text/event-stream")
    body = r.read().decode()
  events = [e for e in body.split("\n\n") if e]
  assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
  assert sum(json.loads(e[6:])["choices"][0]["finish_reason"] is not None
             for e in events[:-1]) == 1


def test_seeded_sampling_gives_the_same_text_whatever_the_batch(live):
  client = live.client()
  kw = dict(temperature=0.9, top_p=0.95, seed=1234, max_tokens=N_NEW)
  alone = chat(client, CONVS[4], **kw).choices[0].message.content
  other = chat(client, CONVS[4], **{**kw, "seed": 99}).choices[0].message.content
  assert other != alone  # the seed matters (else the test below proves nothing)
  with concurrent.futures.ThreadPoolExecutor(6) as pool:
    crowd = [pool.submit(chat, client, c, temperature=0.7) for c in CONVS[:5]]
    same = [pool.submit(chat, client, CONVS[4], **kw) for _ in range(3)]
    assert [f.result().choices[0].message.content for f in same] == [alone] * 3
    [f.result() for f in crowd]
  # Choice 0 of n is the n=1 answer; choice 1 has its own stream of keys.
  two = chat(client, CONVS[4], n=2, **kw).choices
  assert two[0].message.content == alone and two[1].message.content != alone


def test_stop_strings_and_max_tokens(live, model, reference):
  client = live.client()
  (ids, _), = reference([CONVS[2]], PLAIN)
  full = model[2].decode(ids)
  stop = full[5:8]
  assert len(full) > 8 and stop.strip()
  r = chat(client, CONVS[2], stop=[stop, "\u2603never"], **GREEDY)
  assert (r.choices[0].message.content, r.choices[0].finish_reason) == (
      full[:full.index(stop)], "stop")
  streamed = "".join(c.choices[0].delta.content or "" for c in chat(
      client, CONVS[2], stop=stop, stream=True, **GREEDY))
  assert streamed == full[:full.index(stop)]
  r = chat(client, CONVS[2], **{**GREEDY, "max_tokens": 3})
  assert (r.choices[0].finish_reason, r.usage.completion_tokens) == ("length", 3)


def test_errors_are_openai_shaped_with_the_right_status(live):
  client = live.client()
  bad = [
      (openai.BadRequestError, dict(temperature=5), "temperature"),
      (openai.BadRequestError, dict(stream_options={"include_usage": True}), "stream_options"),
      (openai.BadRequestError, dict(tools=[{"type": "function", "function": {"name": "f"}}]),
       "tools"),
      (openai.BadRequestError, dict(extra_body={"logit_bias": {"5": 10}}), "logit_bias"),
      (openai.BadRequestError, dict(extra_body={"top_logprobs": 2}), "top_logprobs"),
      (openai.NotFoundError, dict(model="gpt-4"), "model"),
  ]
  for error, kw, param in bad:
    kw = {"model": "tiny", "messages": messages(["hi"]), **kw}
    with pytest.raises(error) as e:
      client.chat.completions.create(**kw)
    assert e.value.body["param"] == param, e.value.body
    assert set(e.value.body) == {"message", "type", "param", "code"}
  late_system = [{"role": "user", "content": "hi"}, {"role": "system", "content": "be nice"}]
  for msgs, param in ((late_system, "messages[1].role"), (messages(["a", "b"]), "messages"),
                      (messages(["word " * 200]), "messages")):
    with pytest.raises(openai.BadRequestError) as e:
      client.chat.completions.create(model="tiny", messages=msgs)
    assert e.value.body["param"] == param
  with pytest.raises(openai.AuthenticationError) as e:
    chat(live.client(key="wrong"), ["hi"])
  assert e.value.body["type"] == "authentication_error"
  r = httpx.post(live.url + "/v1/chat/completions", json={"model": "tiny",
                                                          "messages": messages(["hi"])})
  assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
  r = httpx.post(live.url + "/v1/chat/completions", content=b"{not json",
                 headers={"Authorization": f"Bearer {KEY}"})
  assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
  assert httpx.get(live.url + "/v1/models").status_code == 401  # no key
  assert chat(client, ["hi"]).choices  # and the server is fine after all that


# --- a fake engine: held or slow steps make queueing and time-outs deterministic ----------------

class FakeEngine:
  """Every slot says 'a' forever (max_tokens ends it); `gate` cleared holds every step."""

  def __init__(self, tok, slots, step_s=0.0):
    self.slots, self.max_len, self.step_s = slots, 128, step_s
    self.token, self.compiles, self.inserts = tok.encode("a")[-1], {}, 0
    self.gate = threading.Event()
    self.gate.set()
    self.fail = False

  def warm_up(self):
    pass

  def insert(self, slot, prompt, **knobs):
    self.inserts += 1

  def free(self, slot):
    pass

  def step(self):
    self.gate.wait()
    time.sleep(self.step_s)
    if self.fail:
      raise RuntimeError("device on fire")
    return [self.token] * self.slots


@pytest.fixture
def fake(model):
  tok = model[2]
  holder = {}

  def start(slots, max_queue, step_s=0.0, tokenizer=tok):
    holder["engine"] = FakeEngine(tok, slots, step_s)
    holder["live"] = Live(create_app(lambda: (holder["engine"], tokenizer),
                                     served_model_name="tiny", api_key=KEY,
                                     max_queue=max_queue, keepalive_s=0.1))
    return holder["live"], holder["engine"]

  yield start
  if "live" in holder:
    holder["engine"].gate.set()
    holder["live"].close()


def _until(live, name, value):
  """Waits (10 s at most) until the live server's metric `name` reads `value`."""
  t0 = time.time()
  while live.metrics()[name] != value:
    assert time.time() - t0 < 10, (name, live.metrics())
    time.sleep(0.02)


def _one_running_one_queued(live, client, pool):
  """Futures of two chats on a one-slot server whose engine is held: one in the slot, one
  waiting in the queue."""
  first = pool.submit(chat, client, ["one"], max_tokens=3)
  _until(live, "lima_jax:slots_in_use", 1)
  queued = pool.submit(chat, client, ["two"], max_tokens=3)
  _until(live, "lima_jax:num_requests_waiting", 1)
  return first, queued


def test_full_queue_is_429_and_the_queued_request_still_runs(fake):
  live, engine = fake(slots=1, max_queue=1)
  client = live.client()
  engine.gate.clear()

  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    first, queued = _one_running_one_queued(live, client, pool)
    with pytest.raises(openai.RateLimitError) as e:
      chat(client, ["three"])
    assert e.value.body["code"] == "queue_full"
    engine.gate.set()
    three = live.app.state.server.tok.decode([engine.token] * 3)
    assert [f.result().choices[0].message.content for f in (first, queued)] == [three] * 2
  assert live.metrics()["lima_jax:requests_rejected_total"] == 1


def test_clients_that_time_out_leave_nothing_running(fake):
  live, engine = fake(slots=2, max_queue=64, step_s=0.05)
  quick = live.client(timeout=0.5)

  def ask(stream):
    """Plain: the client's 0.5 s timeout; streamed: tokens keep coming, so the client hangs up
    after 0.5 s itself."""
    t0 = time.time()
    try:
      r = chat(quick, ["go"], max_tokens=100_000, stream=stream)
      if stream:
        for _ in r:
          if time.time() - t0 > 0.5:
            r.close()
            return "left"
    except openai.APITimeoutError:
      return "left"
    return "answered"

  with concurrent.futures.ThreadPoolExecutor(16) as pool:
    outcomes = list(pool.map(ask, [i % 2 == 0 for i in range(16)]))
  assert outcomes == ["left"] * 16
  t0 = time.time()
  while True:
    m = live.metrics()
    if (m["lima_jax:num_requests_running"], m["lima_jax:slots_in_use"],
        m["lima_jax:num_requests_waiting"]) == (0, 0, 0):
      break
    assert time.time() - t0 < 3, m
    time.sleep(0.02)
  assert m["lima_jax:requests_aborted_total"] == 16
  assert engine.inserts < 16  # queued requests whose clients left were never prefilled
  t0 = time.time()
  r = chat(live.client(), ["now"], max_tokens=5)
  assert r.usage.completion_tokens == 5 and time.time() - t0 < 2


def test_keep_alive_while_waiting_and_engine_failures_are_500(fake):
  live, engine = fake(slots=1, max_queue=4)
  engine.gate.clear()
  body = {"model": "tiny", "messages": messages(["hi"]), "stream": True, "max_tokens": 2}
  with httpx.stream("POST", live.url + "/v1/chat/completions", json=body,
                    headers={"Authorization": f"Bearer {KEY}"}, timeout=10) as r:
    lines = r.iter_lines()
    assert json.loads(next(lines)[6:])["choices"][0]["delta"]["role"] == "assistant"
    assert [next(lines) for _ in range(2)] == ["", ": keep-alive"]  # the step is held
    engine.gate.set()
    assert [l for l in lines if l][-1] == "data: [DONE]"
  engine.fail = True
  with pytest.raises(openai.InternalServerError) as e:
    chat(live.client(), ["hi"])
  assert "device on fire" in e.value.body["message"] and e.value.body["type"] == "server_error"
  events = [json.loads(c.removeprefix("data: ")) for c in httpx.post(
      live.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}
  ).text.split("\n\n") if c.startswith("data: {")]
  assert "device on fire" in events[-1]["error"]["message"]
  engine.fail = False
  assert chat(live.client(), ["hi"], max_tokens=2).usage.completion_tokens == 2


# --- what real clients found (issue 39): each a real HTTP request -------------------------------

def post(live, path, body, key=KEY, **kw):
  headers = {"Authorization": f"Bearer {key}"} if key else {}
  return httpx.post(live.url + path, content=json.dumps(body), headers={
      **headers, "Content-Type": "application/json"}, timeout=60, **kw)


def test_top_k_past_int32_samples_like_top_k_off(live):
  """top_k >= 2^31 was a 500 (OverflowError) on both endpoints and an error event mid-stream.
  Past the vocabulary, top_k keeps every token: the seeded answer equals top_k off."""
  client = live.client()
  kw = dict(temperature=0.9, seed=7, max_tokens=N_NEW)
  off = chat(client, CONVS[4], **kw, extra_body={"top_k": 0}).choices[0].message.content
  for k in (2**31, 2**40):
    assert chat(client, CONVS[4], **kw, extra_body={"top_k": k}).choices[0].message.content == off
    streamed = chat(client, CONVS[4], **kw, extra_body={"top_k": k}, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == off
    c = client.completions.create(model="tiny", prompt="Once upon", **kw, extra_body={"top_k": k})
    assert c.choices[0].finish_reason in ("stop", "length")


def test_lone_surrogate_is_a_400_naming_the_field(live):
  """A lone UTF-16 surrogate is valid JSON but no text; the tokenizer raised (a 500)."""
  cases = [("/v1/chat/completions", {"model": "tiny", "messages": [
      {"role": "user", "content": "a\udcff b"}]}, "messages[0].content"),
           ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": [
               {"type": "text", "text": "\ud800"}]}]}, "messages[0].content[0].text"),
           ("/v1/completions", {"model": "tiny", "prompt": "a\udcff b"}, "prompt"),
           ("/v1/completions", {"model": "tiny", "prompt": ["ok", "\udcff"]}, "prompt[1]"),
           ("/tokenize", {"prompt": "a\udcff b"}, "prompt")]
  for path, body, param in cases:
    r = post(live, path, body)
    assert r.status_code == 400, (path, r.text)
    assert r.json()["error"]["param"] == param and "surrogate" in r.json()["error"]["message"]


def test_loose_inputs_are_400s_naming_the_field(live):
  """Pydantic's lax mode took "2", 2.0 and false as integers and a user's null as ""."""
  cases = [("/v1/chat/completions", {"max_tokens": "2"}, "max_tokens"),
           ("/v1/chat/completions", {"max_tokens": 2.0}, "max_tokens"),
           ("/v1/chat/completions", {"n": True}, "n"),
           ("/v1/chat/completions", {"messages": [{"role": "user", "content": None}]},
            "messages[0].content"),
           ("/v1/completions", {"prompt": [[False]]}, "prompt[0][0]"),
           ("/v1/completions", {"prompt": [[]]}, "prompt[0]"),
           ("/v1/completions", {"prompt": "hi", "seed": "1"}, "seed")]
  for path, extra, param in cases:
    body = {"model": "tiny", "max_tokens": 2, **({"messages": messages(["hi"])} if "chat" in path
                                                   else {}), **extra}
    r = post(live, path, body)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, (extra, r.text)
  # What strict mode still takes: an integer temperature, a null assistant turn.
  ok = post(live, "/v1/chat/completions", {"model": "tiny", "max_tokens": 2, "temperature": 1,
                                           "messages": [{"role": "user", "content": "a"},
                                                        {"role": "assistant", "content": None},
                                                        {"role": "user", "content": "b"}]})
  assert ok.status_code == 200, ok.text


def test_tiny_positive_temperature_is_greedy(live, model, reference):
  """temperature 1e-40 is 0 in float32: sampling divided by it and drew garbage bytes."""
  tok = model[2]
  (ids, _), = reference([CONVS[0]], PLAIN)
  for t in (1e-40, 1e-30, 1e-6):
    r = chat(live.client(), CONVS[0], temperature=t, seed=3,
             extra_body={"repetition_penalty": 1.0})
    assert r.choices[0].message.content == tok.decode(ids), t


def test_405_keeps_allow_and_auth_headers_are_sent(live):
  r = httpx.request("DELETE", live.url + "/v1/chat/completions",
                    headers={"Authorization": f"Bearer {KEY}"})
  assert r.status_code == 405 and r.headers["allow"] == "POST"
  assert r.json()["error"]["type"] == "invalid_request_error"
  r = httpx.get(live.url + "/v1/models")
  assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")


def test_the_openapi_document_and_its_page_need_the_key(live):
  for path in ("/openapi.json", "/docs"):
    r = httpx.get(live.url + path)
    assert r.status_code == 401 and "www-authenticate" in r.headers, path
    assert httpx.get(live.url + path, headers={"Authorization": f"Bearer {KEY}"}
                     ).status_code == 200
  assert httpx.get(live.url + "/health").status_code == 200  # /health and /metrics stay open
  assert httpx.get(live.url + "/metrics").status_code == 200


def test_the_openapi_document_says_what_the_server_does(live, model):
  doc = httpx.get(live.url + "/openapi.json", headers={"Authorization": f"Bearer {KEY}"}).json()
  chat_op = doc["paths"]["/v1/chat/completions"]["post"]["responses"]
  assert set(chat_op) == {"200", "400", "401", "404", "429", "500", "503"}
  assert set(chat_op["200"]["content"]) == {"application/json", "text/event-stream"}
  assert chat_op["400"]["content"]["application/json"]["schema"] == {
      "$ref": "#/components/schemas/Error"}
  assert all("422" not in op["responses"] for path in doc["paths"].values()
             for op in path.values())
  assert set(doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == {"text/plain"}
  props = doc["components"]["schemas"]["CompletionRequest"]["properties"]
  assert props["model"]["enum"] == ["tiny"]
  ids = props["prompt"]["anyOf"][2]
  assert (ids["items"]["maximum"], ids["maxItems"]) == (model[2].vocab_size - 1, 127)
  r = httpx.get(live.url + "/metrics")
  assert r.headers["content-type"].startswith("text/plain")


def test_a_500_answers_cleanly_and_keeps_the_connection(fake, model):
  """A bug (here a tokenizer that raises) is a 500 in OpenAI's shape, and the next request on
  the same keep-alive connection is answered: Starlette's Exception handler re-raised after
  answering and uvicorn then dropped the connection."""
  tok = model[2]

  class Broken:
    def __getattr__(self, name):
      return getattr(tok, name)

    def encode(self, text):
      if "BOOM" in text:
        raise RuntimeError("tokenizer on fire")
      return tok.encode(text)

  live, _ = fake(slots=1, max_queue=4, tokenizer=Broken())
  port = int(live.url.rsplit(":", 1)[1])

  def request(sock, body):
    data = json.dumps(body).encode()
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Authorization: Bearer {KEY}\r\nContent-Length: {len(data)}\r\n\r\n".encode()
                 + data)
    raw = b""
    while b"\r\n\r\n" not in raw:
      chunk = sock.recv(65536)
      assert chunk, "the server closed the connection"
      raw += chunk
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:])}
    while len(rest) < int(headers["content-length"]):
      chunk = sock.recv(65536)
      assert chunk, "the server closed the connection"
      rest += chunk
    return int(lines[0].split()[1]), headers, json.loads(rest)

  with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
    for _ in range(3):
      status, headers, body = request(sock, {"model": "tiny", "prompt": "BOOM", "max_tokens": 1})
      assert status == 500 and body["error"]["type"] == "server_error"
      assert "tokenizer on fire" in body["error"]["message"]
      assert headers.get("connection", "").lower() != "close"
      status, _, body = request(sock, {"model": "tiny", "prompt": "fine", "max_tokens": 2})
      assert status == 200 and body["usage"]["completion_tokens"] == 2


def test_429_has_retry_after_and_counts_no_aborted_choice(fake):
  """A request whose choices do not all fit the queue is refused whole: before, the choices
  queued before the queue filled were cancelled and counted as clients gone."""
  live, engine = fake(slots=1, max_queue=2)
  client = live.client()
  engine.gate.clear()

  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    first, queued = _one_running_one_queued(live, client, pool)
    r = post(live, "/v1/chat/completions", {"model": "tiny", "messages": messages(["three"]),
                                            "n": 2, "max_tokens": 3})
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    assert "choices" in r.json()["error"]["message"]
    assert live.metrics()["lima_jax:num_requests_waiting"] == 1
    engine.gate.set()
    first.result(), queued.result()
  m = live.metrics()
  assert (m["lima_jax:requests_rejected_total"], m["lima_jax:requests_aborted_total"]) == (1, 0)


def test_503_while_loading_has_retry_after():
  gate = threading.Event()
  live = Live(create_app(lambda: gate.wait(60), served_model_name="tiny"), wait=False)
  try:
    t0 = time.time()
    while True:
      try:
        r = httpx.get(live.url + "/v1/models")
        break
      except httpx.TransportError:
        assert time.time() - t0 < 10
        time.sleep(0.05)
    assert r.status_code == 503 and r.headers["retry-after"] == "5"
    assert r.json()["error"]["code"] == "not_ready"
  finally:
    gate.set()
    live.close()


def _model_logprobs(model, ids):
  """log-softmax of the model's own logits over the tokenizer's vocabulary, [len(ids), V]."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from lima_jax.model.transformer import Transformer
  params, cfg, tok = model
  logits = Transformer(cfg).apply({"params": params}, jnp.asarray([ids], jnp.int32))[0]
  return np.asarray(jax.nn.log_softmax(logits[:, :tok.vocab_size].astype(jnp.float32), -1))


def test_chat_logprobs_are_the_models_own(live, model, reference):
  import numpy as np
  tok = model[2]
  (ids, _), = reference([CONVS[2]], PLAIN)
  prompt = decoding.render_prompt(CONVS[2], tok)
  lp = _model_logprobs(model, prompt + ids)
  r = chat(live.client(), CONVS[2], logprobs=True, top_logprobs=3, **GREEDY)
  got = r.choices[0].logprobs.content
  answer = [i for i in ids if i != tok.eot_id]
  assert len(got) == len(answer)
  for j, (i, entry) in enumerate(zip(answer, got)):
    row = lp[len(prompt) + j - 1]
    assert abs(entry.logprob - row[i]) < 1e-4
    best = np.argsort(-row)[:3]
    assert [round(t.logprob, 4) for t in entry.top_logprobs] == [round(float(row[b]), 4)
                                                                 for b in best]
    assert entry.bytes == list(entry.token.encode())
  # Token texts are mid-text ones: only the answer's first leading space differs.
  assert "".join(e.token for e in got).removeprefix(" ") == r.choices[0].message.content
  streamed = [c.choices[0].logprobs for c in chat(live.client(), CONVS[2], logprobs=True,
                                                  top_logprobs=3, stream=True, **GREEDY)
              if c.choices and c.choices[0].logprobs]
  assert [e for s in streamed for e in s.content] == got
  assert chat(live.client(), CONVS[2], **GREEDY).choices[0].logprobs is None


def test_echo_with_logprobs_scores_the_prompt_as_loglikelihood_tasks_need(live, model):
  """lm-eval's request: token ids, echo, logprobs 1, max_tokens 1, temperature 0."""
  tok = model[2]
  prompts = [tok.encode("Question: what is the sea? Answer: water"), tok.encode("Tell me more")]
  r = post(live, "/v1/completions", {"model": "tiny", "prompt": prompts, "echo": True,
                                     "logprobs": 1, "max_tokens": 1, "temperature": 0,
                                     "repetition_penalty": 1.0}).json()
  for ids, choice in zip(prompts, r["choices"]):
    lp = _model_logprobs(model, ids)
    got = choice["logprobs"]
    assert got["token_logprobs"][0] is None and got["top_logprobs"][0] is None
    n = len(ids)
    for t in range(1, n):
      assert abs(got["token_logprobs"][t] - lp[t - 1, ids[t]]) < 1e-4
      assert abs(max(got["top_logprobs"][t].values()) - lp[t - 1].max()) < 1e-4
    generated = int(lp[n - 1].argmax())
    if generated != tok.eot_id:
      assert len(got["tokens"]) == n + 1
      assert abs(got["token_logprobs"][n] - lp[n - 1, generated]) < 1e-4
    assert choice["text"].startswith(tok.decode(ids))
    assert got["text_offset"][:2] == [0, len(got["tokens"][0])]
  plain = post(live, "/v1/completions", {"model": "tiny", "prompt": "Once upon", "echo": True,
                                         "max_tokens": 2, "temperature": 0}).json()
  assert plain["choices"][0]["text"].startswith("Once upon")
  assert plain["choices"][0]["logprobs"] is None


def test_stop_strings_any_number_and_other_client_needs(live, model, reference):
  client = live.client()
  (ids, _), = reference([CONVS[2]], PLAIN)
  full = model[2].decode(ids)
  stop = full[5:8]
  stops = ["\u2603a", "\u2603b", "\u2603c", "\u2603d", stop, "\u2603e"]
  r = chat(client, CONVS[2], stop=stops, **GREEDY)
  assert r.choices[0].message.content == full[:full.index(stop)]
  prompt = decoding.render_prompt(CONVS[2], model[2])
  c = client.completions.create(model="tiny", prompt=prompt, stop=stops, max_tokens=N_NEW,
                                temperature=0, extra_body={"repetition_penalty": 1.0})
  assert c.choices[0].text == full[:full.index(stop)]
  assert client.models.retrieve("tiny").id == "tiny"
  with pytest.raises(openai.NotFoundError):
    client.models.retrieve("gpt-4")
  assert chat(client, ["hi"], response_format={"type": "text"}).choices
  with pytest.raises(openai.BadRequestError) as e:
    chat(client, ["hi"], response_format={"type": "json_object"})
  assert e.value.body["param"] == "response_format"
  auth = {"Authorization": f"Bearer {KEY}"}
  info = httpx.get(live.url + "/tokenizer_info", headers=auth).json()
  tok = model[2]
  assert (info["eos_token"], info["bos_token"], info["eot_token_id"]) == (
      tok.id_to_piece(tok.eos_id), tok.id_to_piece(tok.bos_id), tok.eot_id)
  ids = post(live, "/tokenize", {"prompt": "Hello there", "add_special_tokens": False}).json()
  assert ids["tokens"] == tok.encode("Hello there")
  assert post(live, "/detokenize", {"tokens": ids["tokens"]}).json()["prompt"] == "Hello there"


@pytest.fixture
def served_schema(live):
  return schemathesis.openapi.from_url(live.url + "/openapi.json",
                                       headers={"Authorization": f"Bearer {KEY}"})


_SCHEMA = schemathesis.pytest.from_fixture("served_schema")
# Valid by the document yet refused, by rules JSON Schema cannot state: chat turns must
# alternate user/assistant; a prompt must fit the context (in tokens, not characters);
# stream_options needs stream, top_logprobs needs logprobs, echo is not streamed; and an
# integer written 2.0 is refused (as OpenAI does), which JSON Schema cannot tell from 2.
_UNSTATABLE = {"/v1/chat/completions", "/v1/completions", "/tokenize", "/detokenize"}


@_SCHEMA.parametrize()
@hypothesis.settings(max_examples=25, deadline=None, derandomize=True,
                     suppress_health_check=list(hypothesis.HealthCheck))
def test_schemathesis_finds_nothing(case, live):
  """schemathesis 4.32.5 over the server's own document: every check on (no 5xx, statuses and
  bodies as documented, the key enforced, Allow on 405s...), but positive_data_acceptance
  on the POST operations, whose rules JSON Schema cannot state (above)."""
  from schemathesis.specs.openapi.checks import positive_data_acceptance
  skip = [positive_data_acceptance] if case.operation.path in _UNSTATABLE else []
  case.call_and_validate(headers={"Authorization": f"Bearer {KEY}"}, excluded_checks=skip,
                         timeout=60)


# --- metrics last: nothing above may have compiled anything new ---------------------------------

def test_metrics_parse_and_nothing_compiled_after_warm_up(live):
  chat(live.client(), CONVS[5], max_tokens=4)
  m = live.metrics()
  engine = live.app.state.server.engine
  n_prefill = len(buckets(engine.max_len))
  n_step = len(engine.spans) * len(engine.row_buckets)  # every (span, busy-row count)
  assert m["lima_jax:compiles"] == 2 * n_prefill + 1 + n_step
  assert engine.compiles == {"prefill": n_prefill, "insert": 1, "step": n_step,
                             "score": n_prefill}
  assert m["lima_jax:time_to_first_token_seconds_count"] > 0
  assert m["lima_jax:generation_tokens_total"] > m["lima_jax:e2e_request_latency_seconds_count"]
  assert (m["lima_jax:num_requests_running"], m["lima_jax:slots_in_use"]) == (0, 0)


# --- the command line ---------------------------------------------------------------------------

def _env():
  env = dict(os.environ)
  flags = env.get("XLA_FLAGS", "").replace("--xla_force_host_platform_device_count=8", "")
  env.pop("XLA_FLAGS", None)  # one device: the server's default
  if flags.strip():  # XLA reads a blank value as a file name and exits
    env["XLA_FLAGS"] = flags.strip()
  return env


def test_cli_bad_input_is_one_line(tmp_path):
  env = {**_env(), "EMPTY_KEY": ""}
  cases = [([f"--checkpoint={tmp_path / 'nope'}"], "no such checkpoint directory"),
           ([f"--checkpoint={tmp_path}", "--api_key_env=EMPTY_KEY"], "EMPTY_KEY"),
           ([f"--checkpoint={tmp_path}"], "meta")]
  for args, message in cases:
    r = subprocess.run([sys.executable, "-m", "lima_jax.serve", *args], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and message in lines[0], r.stderr


def test_cli_serves_a_checkpoint_to_the_openai_client(model, tmp_path):
  params, cfg, tok = model
  ckpt = tmp_path / "ckpt"
  checkpoint.save(ckpt, params, {"model_config": cfg.to_dict(), "tokenizer": tok.to_meta(),
                                 "step": 0, "epoch": 0})
  with serve_process(ckpt, "--slots=2", "--served_model_name=mini", "--api_key_env=TEST_KEY",
                     env={**_env(), "TEST_KEY": KEY}, timeout_s=120, poll_s=0.2) as url:
    client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=60)
    stream = client.chat.completions.create(model="mini", messages=messages(CONVS[0]),
                                            max_tokens=N_NEW, stream=True, **GREEDY)
    text = "".join(c.choices[0].delta.content or "" for c in stream)
    (ids, _), = decoding.Generator(params, cfg, tok, batch_size=1).answer_ids(
        [decoding.render_prompt(CONVS[0], tok)], PLAIN)
    assert text == tok.decode(ids)


def test_a_hugging_face_directory_serves_the_same_tokens(model, tmp_path):
  from lima_jax.formats import hf_export
  from lima_jax.serve.__main__ import check_checkpoint, load_engine
  params, cfg, tok = model
  hf_export.save_hf(cfg, params, tmp_path / "hf", tok.to_meta(), "float32")
  check_checkpoint(tmp_path / "hf")
  engine, hf_tok = load_engine(tmp_path / "hf", slots=2)
  assert (hf_tok.eot_id, hf_tok.vocab_size) == (tok.eot_id, tok.vocab_size)
  prompt = decoding.render_prompt(CONVS[2], tok)
  (ids, _), = decoding.Generator(params, cfg, tok, batch_size=1).answer_ids([prompt], PLAIN)
  engine.insert(1, prompt, seed=0, index=0, temperature=1.0, top_p=1.0, top_k=0, penalty=1.0,
                greedy=True)
  assert [int(engine.step()[1]) for _ in ids] == ids


def test_a_hugging_face_directory_with_only_tokenizer_json_serves(model, tmp_path):
  """Without tokenizer.model the directory's tokenizer.json is the tokenizer: the engine gives
  the decoder's tokens with that tokenizer."""
  from lima_jax.formats import hf_export
  from lima_jax.serve.__main__ import check_checkpoint, load_engine
  from lima_jax.tokenizer import tokenizer_json
  from lima_jax.tokenizer import load as load_tokenizer
  params, cfg, tok = model
  hf_dir = tmp_path / "hf"
  hf_export.save_hf(cfg, params, hf_dir, tok.to_meta(), "float32")
  (hf_dir / "tokenizer.model").unlink()
  check_checkpoint(hf_dir)
  engine, served_tok = load_engine(hf_dir, slots=2)
  json_tok = load_tokenizer(hf_dir / "tokenizer.json")
  assert served_tok.to_meta() == json_tok.to_meta()
  assert served_tok.to_meta()["format"] == tokenizer_json.META_FORMAT
  prompt = decoding.render_prompt(CONVS[2], json_tok)
  (ids, _), = decoding.Generator(params, cfg, json_tok, batch_size=1).answer_ids([prompt], PLAIN)
  engine.insert(1, prompt, seed=0, index=0, temperature=1.0, top_p=1.0, top_k=0, penalty=1.0,
                greedy=True)
  assert [int(engine.step()[1]) for _ in ids] == ids
  (hf_dir / "tokenizer.json").unlink()
  with pytest.raises(UserError, match="needs tokenizer.model .* or tokenizer.json"):
    check_checkpoint(hf_dir)
