"""One evaluation, top to bottom: answers -> jobs -> judge (cached) -> figures -> files.

Everything a user can get wrong (files, rows, partners, config) is checked before anything
is written or sent. Judging runs in one asyncio loop with at most judge.max_concurrency
requests in flight; each judgment is committed to DIR/judgments.sqlite as it arrives. The
budget caps are checked before each request is sent, against what has been spent plus
the worst case of what is in flight, so a cap is never exceeded.
"""
import asyncio
import collections
import dataclasses
import json
import math
import pathlib
import sys
import time

from lima_jax import files
from lima_jax.errors import UserError
from lima_jax.eval import answers as answers_lib
from lima_jax.eval import client as client_lib
from lima_jax.eval import judge_free, protocols, report, results as results_lib
from lima_jax.eval.store import Store, request_key

PAIRED = ("lima_pairwise", "alpaca_eval")
EXIT_BUDGET = 3  # The CLI's exit status when a budget cap stopped the run before the end.
EXIT_FAILED = 4  # ... when judgments failed after every retry (a rerun retries them).


def _needs_baseline(config) -> bool:
  return config.protocol in PAIRED or (config.protocol == "mt_bench"
                                       and config.mt_bench.mode == "pairwise")


def _estimate_tokens(messages) -> int:
  # ~4 characters a token for English with BPE vocabularies; only for estimates and caps.
  return sum(len(m["content"]) // 4 + 8 for m in messages)


def _inputs(config, system, baseline):
  if system is None:
    if not config.answers:
      raise UserError("config answers: needs --config.answers=A.jsonl (or --config.checkpoint "
                      "and --config.prompts)")
    system = answers_lib.read(config.answers)
  if _needs_baseline(config):
    if baseline is None:
      if not config.baseline:
        raise UserError(f"config baseline: {config.protocol} compares against a baseline: "
                        "--config.baseline=B.jsonl")
      baseline = answers_lib.read(config.baseline)
  else:
    baseline = None
  pairs = None
  if baseline is not None:
    pairs = answers_lib.match(system, baseline, (config.answers or "answers",
                                                 config.baseline or "baseline"))
  if config.max_prompts:
    keep = set(list(dict.fromkeys(a.key for a in system))[:config.max_prompts])
    system = [a for a in system if a.key in keep]
    pairs = None if pairs is None else [p for p in pairs if p[0].key in keep]
  return system, baseline, pairs


def _jobs(config, system, pairs):
  if config.protocol in PAIRED:
    return protocols.pairwise_jobs(config.protocol, pairs)
  if config.protocol == "lima_likert":
    return protocols.likert_jobs(system)
  if config.protocol == "mt_bench":
    return protocols.mt_bench_jobs(config, system, pairs)
  raise UserError(f"config protocol: unknown {config.protocol!r}")


@dataclasses.dataclass
class _Budget:
  max_calls: int
  max_cost: float
  prices: tuple | None
  max_tokens: int
  calls: int = 0
  spent: float = 0.0
  reserved: float = 0.0
  stopped: str = ""

  def take(self, est_prompt: int) -> bool:
    worst = client_lib.cost(self.prices, est_prompt, self.max_tokens)
    if self.max_calls and self.calls >= self.max_calls:
      self.stopped = f"judge.max_calls={self.max_calls} reached"
    elif self.max_cost and self.spent + self.reserved + worst > self.max_cost:
      self.stopped = (f"judge.max_cost=${self.max_cost:g} would be exceeded (spent "
                      f"${self.spent:.4f})")
    if self.stopped:
      return False
    self.calls += 1
    self.reserved += worst
    return True

  def settle(self, est_prompt: int, reply=None):
    self.reserved -= client_lib.cost(self.prices, est_prompt, self.max_tokens)
    if reply is not None:
      self.spent += client_lib.cost(self.prices, reply.prompt_tokens, reply.completion_tokens)


async def _judge_all(judge, store: Store, todo, budget: _Budget, params: dict) -> int:
  """Sends every pending request; returns the number of attempts (first tries + retries)."""
  sem = asyncio.Semaphore(judge.cfg.max_concurrency)
  attempts, done = [0], [0]

  async def one(job, key):
    async with sem:
      est = _estimate_tokens(job.messages)
      if not budget.take(est):
        return
      common = dict(protocol=job.protocol, item=job.item, messages=job.messages, params=params)
      try:
        reply = await judge.complete(job.messages)
      except client_lib.JudgeFailure as e:
        budget.settle(est)
        attempts[0] += e.attempts
        store.put(key, **common, status="failed", error=str(e), attempts=e.attempts)
        return
      budget.settle(est, reply)
      attempts[0] += reply.attempts
      verdict = protocols.parse(job.parser, reply.text, reply.logprobs)
      store.put(key, **common, status="ok" if verdict is not None else "unparsed",
                raw=reply.text, verdict=verdict, logprobs=reply.logprobs,
                prompt_tokens=reply.prompt_tokens, completion_tokens=reply.completion_tokens,
                seconds=reply.seconds, attempts=reply.attempts)
      done[0] += 1
      if done[0] % 100 == 0:
        print(f"  judged {done[0]} of {len(todo)}", file=sys.stderr, flush=True)

  try:
    async with asyncio.TaskGroup() as tg:
      for job, key in todo:
        tg.create_task(one(job, key))
  except* UserError as group:
    raise group.exceptions[0] from None
  finally:
    await judge.close()
  return attempts[0]


def _clean(obj):
  """NaN is not JSON: an undefined figure (no units) is written as null."""
  if isinstance(obj, float) and math.isnan(obj):
    return None
  if isinstance(obj, dict):
    return {k: _clean(v) for k, v in obj.items()}
  if isinstance(obj, list):
    return [_clean(v) for v in obj]
  return obj


def _sha_of(path, answers) -> str:
  if path:
    return answers_lib.file_sha256(path)
  return protocols.sha(json.dumps([dataclasses.astuple(a) for a in answers]))


def evaluate(config, workdir, *, answers=None, baseline=None, fmt=None,
             chat_template: str = "") -> dict | None:
  """Runs one evaluation and writes DIR/results.json, judgments.sqlite, report.html and the
  figure; returns the results (None for a dry run). `answers`/`baseline`: lists of
  answers.Answer instead of the config's files (lima_jax.select passes its own). fmt,
  chat_template: the conversation format `config.checkpoint` answers in (default its own)."""
  if config.protocol == "harness":
    from lima_jax.eval import harness
    return harness.evaluate(config, workdir)
  t0 = time.perf_counter()
  workdir = pathlib.Path(workdir)
  if answers is None and config.checkpoint:
    from lima_jax.eval import generation
    generation.check_prompts(config)  # bad rows stop here, before anything is written
    if not workdir.is_dir():
      workdir.mkdir(parents=True)
    config.answers = generation.generate_answers(config, workdir / "answers.jsonl", fmt,
                                                 chat_template)
  system, base, pairs = _inputs(config, answers, baseline)
  names = (config.name or (pathlib.Path(config.answers).stem if config.answers else "system"),
           config.baseline_name or (pathlib.Path(config.baseline).stem if config.baseline
                                    else "baseline"))
  out = {"protocol": config.protocol, "system": names[0],
         "baseline": names[1] if base is not None else None}
  if config.protocol == "judge_free":
    out.update(judge_free.figures(system, config))
    if base is not None:
      out["baseline_figures"] = judge_free.figures(base, config)
    return _finish(config, workdir, out, system, base, t0, None, None,
                   exact=judge_free.per_prompt_exact(system))
  jobs = _jobs(config, system, pairs)
  judge = client_lib.Judge(config.judge)
  params = judge.params()
  prices = client_lib.parse_prices(config.judge.prices).get(config.judge.model)
  if config.judge.max_cost and prices is None:
    raise UserError(f"config judge.max_cost: no price for {config.judge.model!r} in "
                    "judge.prices, so the cap cannot be enforced; add MODEL=PROMPT/COMPLETION")
  keyed = [(job, request_key(job.messages, params, job.parser)) for job in jobs]
  db = pathlib.Path(config.store) if config.store else workdir / "judgments.sqlite"
  if not config.dry_run:
    workdir.mkdir(parents=True, exist_ok=True)
  store = Store(db) if db.exists() or not config.dry_run else None
  unique = dict((key, job) for job, key in keyed)
  todo = [(job, key) for key, job in unique.items() if store is None or not store.done(key)]
  if config.dry_run:
    est = sum(_estimate_tokens(j.messages) for j, _ in todo)
    completion = len(todo) * config.judge.max_tokens
    print(f"dry run: {len(todo)} judge calls of {len(unique)} ({len(unique) - len(todo)} "
          f"cached), ~{est} prompt tokens, at most {completion} completion tokens, "
          + (f"at most ${client_lib.cost(prices, est, completion):.2f}" if prices else
             f"cost unknown (no price for {config.judge.model!r} in judge.prices)"))
    return None
  budget = _Budget(config.judge.max_calls, config.judge.max_cost, prices,
                   config.judge.max_tokens)
  attempts = asyncio.run(_judge_all(judge, store, todo, budget, params)) if todo else 0
  rows = {key: store.get(key) for key in unique}
  store.close()
  us = results_lib.units(keyed, rows)
  if config.protocol in PAIRED or pairs is not None:
    fig, detail = results_lib.pairwise(us, config, soft=config.protocol == "alpaca_eval")
    if config.protocol == "alpaca_eval":
      fig.update(_lc(us, detail, pairs, config))
  else:
    fig, detail = results_lib.graded(us, config)
  out.update(fig)
  out.update(results_lib.bookkeeping(us, prices))
  errors = [r["error"] for r in rows.values() if r is not None and r["status"] == "failed"]
  out["first_error"] = errors[0] if errors else ""
  out.update(judge_calls=budget.calls, retries=attempts - budget.calls,
             cache_hits=len(unique) - len(todo), complete=not budget.stopped and
             out["n_pending"] == 0, stopped_reason=budget.stopped,
             judge_model=config.judge.model, judge_base_url=config.judge.base_url,
             judge_params=params, price_known=prices is not None)
  if budget.stopped:
    print(f"stopped: {budget.stopped}; {out['n_pending']} judgments pending (kept: "
          f"{db}); rerun with a larger cap to finish", file=sys.stderr)
  return _finish(config, workdir, out, system, base, t0, us, detail, pairs)


def _lc(us, detail, pairs, config) -> dict:
  """Length-controlled rate from each order's soft preference."""
  lengths = {(a.key, a.sample): len(a.answer[0]) - len(b.answer[0]) for a, b in pairs}
  by_prompt_pref, by_prompt_len = collections.OrderedDict(), collections.OrderedDict()
  for u, judgments in us.items():
    if u not in detail["pref"]:
      continue
    for job, row in judgments:
      p = row["verdict"]["p_a"] if job.item["order"] == "ab" else 1 - row["verdict"]["p_a"]
      by_prompt_pref.setdefault(u[0], []).append(p)
      by_prompt_len.setdefault(u[0], []).append(lengths[u[0], u[1]])
  from lima_jax.eval import stats
  lc = stats.length_controlled(list(by_prompt_pref.values()), list(by_prompt_len.values()),
                               config.alpaca_eval.prompt_l2, config.alpaca_eval.lc_rounds,
                               config.bootstrap.seed)
  used = [r["verdict"].get("from_logprobs") for js in us.values() for _, r in js
          if r is not None and r["status"] == "ok"]
  lc["logprobs_share"] = sum(map(bool, used)) / len(used) if used else math.nan
  return lc


def _finish(config, workdir, out, system, base, t0, us, detail, pairs=None, exact=None
            ) -> dict:
  out["judge_prompt_sha256"] = protocols.template_sha256(config.protocol, config)
  out["answers_sha256"] = _sha_of(config.answers, system)
  if base is not None:
    out["baseline_sha256"] = _sha_of(config.baseline, base)
  out["seconds"] = round(time.perf_counter() - t0, 2)
  out = _clean(out)
  workdir.mkdir(parents=True, exist_ok=True)
  files.write_json(workdir / "results.json", out)
  if detail is not None:
    files.write_json(workdir / "per_prompt.json", results_lib.per_prompt_scores(detail))
  elif exact is not None:  # judge_free: each prompt's exact share, when `expected` is known
    for name, obj in (("per_prompt.json", exact[0]), ("prompt_tags.json", exact[1])):
      if obj:
        files.write_json(workdir / name, obj)
      else:
        (workdir / name).unlink(missing_ok=True)  # from an earlier run with `expected`
  report.write(workdir, out, us, detail, system, pairs, config)
  return out
