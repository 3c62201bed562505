"""The judge: any OpenAI-compatible chat-completions endpoint, through the official client.

The client's own retries are off (max_retries=0): ours wait what the server asks
(Retry-After, or retry-after-ms) and otherwise back off exponentially, on 429, 5xx,
timeouts and refused connections, and count every attempt. A 401/403/404 is the user's
problem (key, model name, URL) and stops the run with one line rather than failing every
request the same way.
"""
import asyncio
import dataclasses
import email.utils
import logging
import os
import time

import openai

from lima_jax.errors import UserError

_RETRY_STATUS = {408, 409, 429}
_FATAL_STATUS = {401, 403, 404}
_TOP_LOGPROB_TOKENS = 8  # First positions kept: enough for a verdict token after a prefix.
# The client's HTTP transport logs every request at INFO, which absl shows: thousands of
# lines a run. (openai's transport is httpx, or httpx2 in recent releases.)
for _name in ("httpx", "httpx2"):
  logging.getLogger(_name).setLevel(logging.WARNING)


@dataclasses.dataclass
class Reply:
  text: str
  prompt_tokens: int
  completion_tokens: int
  logprobs: list | None  # [{"token", "logprob", "top": [[token, logprob], ...]}, ...]
  seconds: float
  attempts: int


class JudgeFailure(Exception):
  """A request that got no usable reply after every retry (the message says why)."""

  def __init__(self, message: str, attempts: int):
    super().__init__(message)
    self.attempts = attempts


def _retry_after(error) -> float | None:
  headers = getattr(getattr(error, "response", None), "headers", None) or {}
  if headers.get("retry-after-ms"):
    try:
      return float(headers["retry-after-ms"]) / 1000
    except ValueError:
      pass
  value = headers.get("retry-after")
  if not value:
    return None
  try:
    return float(value)
  except ValueError:
    date = email.utils.parsedate_to_datetime(value)  # The HTTP-date form.
    return None if date is None else max(0.0, date.timestamp() - time.time())


class Judge:
  """`await judge.complete(messages) -> Reply`; concurrency is bounded by the caller."""

  def __init__(self, cfg):
    if not cfg.base_url or not cfg.model:
      raise UserError("config judge: needs --config.judge.base_url=URL and "
                      "--config.judge.model=NAME")
    self.cfg = cfg
    # Local servers take any key; a hosted one answers 401, which names the variable.
    key = os.environ.get(cfg.api_key_env, "") if cfg.api_key_env else ""
    self.client = openai.AsyncOpenAI(base_url=cfg.base_url, api_key=key or "no-key",
                                     max_retries=0, timeout=cfg.timeout_s)

  def params(self) -> dict:
    """What is sent besides the messages: part of every judgment's cache key."""
    p = {"model": self.cfg.model, "temperature": self.cfg.temperature,
         "max_tokens": self.cfg.max_tokens, "seed": self.cfg.seed}
    if self.cfg.logprobs:
      p.update(logprobs=True, top_logprobs=5)
    return p

  async def complete(self, messages: list[dict]) -> Reply:
    t0, wait = time.perf_counter(), self.cfg.backoff_s
    for attempt in range(1, self.cfg.max_retries + 2):
      try:
        response = await self.client.chat.completions.create(messages=messages,
                                                             **self.params())
        return self._reply(response, time.perf_counter() - t0, attempt)
      except openai.APIStatusError as e:
        if e.status_code in _FATAL_STATUS:
          raise UserError(f"judge {self.cfg.base_url}: {e.status_code} for model "
                          f"{self.cfg.model!r} ({_brief(e)}); check judge.model, "
                          f"judge.base_url and ${self.cfg.api_key_env}") from None
        if e.status_code == 400 and self.cfg.logprobs and "logprob" in str(e).lower():
          raise UserError(f"judge {self.cfg.base_url}: the endpoint refuses log-probabilities "
                          f"({_brief(e)}); rerun with --config.judge.logprobs=False") from None
        if e.status_code not in _RETRY_STATUS and e.status_code < 500:
          raise JudgeFailure(f"{e.status_code}: {_brief(e)}", attempt) from None
        error = e
      except (openai.APITimeoutError, openai.APIConnectionError) as e:
        error = e
      except openai.APIResponseValidationError as e:
        raise JudgeFailure(f"malformed response: {e}", attempt) from None
      if attempt > self.cfg.max_retries:
        raise JudgeFailure(f"{type(error).__name__} after {attempt} attempts: {_brief(error)}",
                           attempt)
      delay = _retry_after(error)
      await asyncio.sleep(min(self.cfg.max_backoff_s, wait if delay is None else delay))
      wait *= 2
    raise AssertionError("unreachable")

  @staticmethod
  def _reply(response, seconds: float, attempts: int) -> Reply:
    choice = response.choices[0] if response.choices else None
    text = (choice.message.content if choice is not None and choice.message else None) or ""
    logprobs = None
    content = getattr(getattr(choice, "logprobs", None), "content", None)
    if content:
      logprobs = [{"token": t.token, "logprob": t.logprob,
                   "top": [[x.token, x.logprob] for x in (t.top_logprobs or [])]}
                  for t in content[:_TOP_LOGPROB_TOKENS]]
    usage = response.usage
    return Reply(text=text, prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
                 completion_tokens=getattr(usage, "completion_tokens", 0) or 0,
                 logprobs=logprobs, seconds=seconds, attempts=attempts)

  async def close(self):
    await self.client.close()


def _brief(error) -> str:
  return " ".join(str(error).split())[:200]


def parse_prices(table: str) -> dict[str, tuple[float, float]]:
  """'model=prompt/completion,...' (USD a million tokens) -> {model: (prompt, completion)}."""
  prices = {}
  for entry in filter(None, (e.strip() for e in table.split(","))):
    try:
      model, rates = entry.rsplit("=", 1)
      prompt, completion = (float(x) for x in rates.split("/"))
    except ValueError:
      raise UserError(f"config judge.prices: {entry!r} is not MODEL=PROMPT/COMPLETION "
                      "(USD a million tokens)") from None
    prices[model.strip()] = (prompt, completion)
  return prices


def cost(prices: tuple[float, float] | None, prompt_tokens: int, completion_tokens: int):
  if prices is None:
    return 0.0
  return (prompt_tokens * prices[0] + completion_tokens * prices[1]) / 1e6
