"""lima_jax.eval end to end against a real HTTP judge on 127.0.0.1 (no network).

The judge speaks OpenAI's chat completions through the real `openai` client; its verdicts
follow a planted rule on the answers (each answer carries `q=N`, its planted quality), so
every figure is computed here from the plan, not from the code under test.
"""
import json
import math
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import _REPO, shared_file

sys.path.insert(0, str(_REPO))
from configs import eval as eval_configs  # noqa: E402
from lima_jax import eval as lima_eval  # noqa: E402
from lima_jax.eval.scripted_judge import Server  # noqa: E402

N = 24
Z = 1.959963984540054


def planted_rule(request):
  """[[A]] / [[B]] for the higher q, [[C]] for equal; 'BIASED' prompts always get [[A]];
  'GARBAGE' prompts get no verdict; graded prompts get the last answer's q as the grade."""
  user = "\n".join(m["content"] for m in request["messages"])
  qs = [int(x) for x in re.findall(r"q=(\d+)", request["messages"][-1]["content"])]
  if "GARBAGE" in user:
    return {"content": "I will not say."}
  if "from 1 to 6" in user or "scale of 1 to 10" in user:
    return {"content": f"Reasons. [[{qs[-1]}]]"}
  if "letter of the better output" in user:  # alpaca_eval: soft preference by logprobs.
    pa = 1 / (1 + math.exp(-(qs[0] - qs[1])))
    return {"content": "A" if pa >= .5 else "B",
            "logprobs": [[["A", math.log(pa)], ["B", math.log(1 - pa)]]]}
  if len(qs) == 4:  # MT-Bench turn 2: A's two answers, then B's; the second ones count.
    qs = [qs[1], qs[3]]
  label = "A" if "BIASED" in user or qs[0] > qs[1] else "B" if qs[1] > qs[0] else "C"
  return {"content": f"Compared. Not [[C]] here, but:\n[[{label}]]"}


def sys_q(i):
  return 1 + i % 5


BASE_Q = 3


def prompt(i):
  tag = " BIASED" if i % 8 == 7 else ""
  return f"Question number {i}{tag}?"


def write_answers(path, q_of, n=N, samples=1, fmt="generate", who="answer", per_sample=False):
  rows = []
  for s in range(samples):
    for i in range(n):
      q = q_of(i, s) if per_sample else q_of(i)
      rows.append({"id": f"p{i}", "conversations": [prompt(i)], "sample": s,
                   "answer": f"{who} {i}.{s} q={q}", "stopped": True})
  if fmt == "alpaca":
    path.write_text(json.dumps([{"instruction": r["conversations"][0], "output": r["answer"],
                                 "generator": "base"} for r in rows]))
  else:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return path


def config(protocol, server, answers, baseline=None, **judge):
  c = eval_configs.get_config(protocol)
  c.answers, c.baseline = str(answers), str(baseline or "")
  c.judge.base_url, c.judge.model = server.url, "scripted"
  c.judge.backoff_s, c.judge.max_concurrency = 0.01, 4
  c.bootstrap.rounds = 300
  for k, v in judge.items():
    c.judge[k] = v
  return c


def wilson(k, n):
  # Textbook form (Wilson 1927), written out again here on purpose.
  p = k / n
  d = 1 + Z * Z / n
  c = (p + Z * Z / (2 * n)) / d
  h = Z / d * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n))
  return [max(0, c - h), min(1, c + h)]


def expected_pairwise():
  w = t = l = 0
  for i in range(N):
    if "BIASED" in prompt(i) or sys_q(i) == BASE_Q:
      t += 1  # Biased: A in both orders = the orders disagree; equal q: [[C]] twice.
    elif sys_q(i) > BASE_Q:
      w += 1
    else:
      l += 1
  return w, t, l


@pytest.fixture
def judge():
  with Server(planted_rule) as s:
    yield s


def test_pairwise_both_orders_retries_and_cache(tmp_path, judge):
  judge.rate_limit, judge.server_error, judge.retry_after = 0.25, 0.15, 0.2
  a = write_answers(tmp_path / "a.jsonl", sys_q)
  b = write_answers(tmp_path / "b.jsonl", lambda i: BASE_Q, who="base")
  t0 = time.perf_counter()
  r = lima_eval.evaluate(config("lima_pairwise", judge, a, b), tmp_path / "run")
  w, t, l = expected_pairwise()
  assert (r["wins"], r["ties"], r["losses"], r["n"]) == (w, t, l, N)
  assert r["win_rate"] == pytest.approx(w / N)
  assert r["win_rate_ci95"] == pytest.approx(wilson(w, N))
  assert r["equal_or_better_ci95"] == pytest.approx(wilson(w + t, N))
  assert r["position_flip_rate"] == pytest.approx(sum("BIASED" in prompt(i) for i in range(N))
                                                  / N)
  # 429s (Retry-After: 0.2 s) and 500s were served, retried, and nothing failed.
  assert 429 in judge.statuses and 500 in judge.statuses
  assert r["n_failed"] == 0 and r["retries"] == judge.statuses.count(429) + \
      judge.statuses.count(500)
  # Retry-After is honoured: a body's retry after a 429 comes 0.2 s later, after a 500 it
  # comes after the client's own backoff (0.01 s).
  first = {}
  for digest, at, status in judge.log:
    if digest in first and first[digest][1] == 429:
      assert at - first[digest][0] >= 0.2
    first.setdefault(digest, (at, status))
  assert time.perf_counter() - t0 >= 0.2
  assert r["judge_calls"] == 2 * N and max(judge.answered.values()) == 1
  for f in ("results.json", "judgments.sqlite", "report.html", "winrates.png"):
    assert (tmp_path / "run" / f).stat().st_size > 0
  on_disk = json.loads((tmp_path / "run/results.json").read_text())
  assert on_disk["wins"] == w and on_disk["judge_prompt_sha256"] and on_disk["answers_sha256"]
  # A rerun asks nothing; an edited judge setting asks everything again.
  again = lima_eval.evaluate(config("lima_pairwise", judge, a, b), tmp_path / "run")
  assert again["judge_calls"] == 0 and again["cache_hits"] == 2 * N
  assert {k: again[k] for k in ("wins", "ties", "losses")} == {"wins": w, "ties": t, "losses": l}
  hotter = lima_eval.evaluate(config("lima_pairwise", judge, a, b, temperature=0.5),
                              tmp_path / "run")
  assert hotter["judge_calls"] == 2 * N


def test_garbage_is_unparsed_and_retried_next_run(tmp_path, judge):
  a = tmp_path / "a.jsonl"
  write_answers(a, sys_q)
  rows = [json.loads(l) for l in a.read_text().splitlines()]
  rows[0]["conversations"] = ["GARBAGE please"]
  a.write_text("".join(json.dumps(r) + "\n" for r in rows))
  b = tmp_path / "b.jsonl"
  write_answers(b, lambda i: BASE_Q, who="base")
  rows = [json.loads(l) for l in b.read_text().splitlines()]
  rows[0]["conversations"] = ["GARBAGE please"]
  b.write_text("".join(json.dumps(r) + "\n" for r in rows))
  r = lima_eval.evaluate(config("lima_pairwise", judge, a, b), tmp_path / "run")
  assert r["n_unparsed"] == 2 and r["n"] == N - 1  # Not a tie: left out, and said so.
  before = dict(judge.seen)
  r2 = lima_eval.evaluate(config("lima_pairwise", judge, a, b), tmp_path / "run")
  asked = [k for k in judge.seen if judge.seen[k] > before.get(k, 0)]
  assert r2["judge_calls"] == 2 and len(asked) == 2 and r2["n_unparsed"] == 2


def test_likert_k_samples_clustered(tmp_path, judge):
  a = write_answers(tmp_path / "a.jsonl", lambda i, s: 1 + (i + s) % 6, samples=3,
                    per_sample=True)
  r = lima_eval.evaluate(config("lima_likert", judge, a), tmp_path / "run")
  grades = [1 + (i + s) % 6 for s in range(3) for i in range(N)]
  assert r["mean"] == pytest.approx(sum(grades) / len(grades))
  assert (r["n"], r["n_prompts"], r["samples_per_prompt"]) == (3 * N, N, 3)
  lo, hi = r["mean_ci95"]
  assert lo < r["mean"] < hi
  # A prompt's grades move together: the interval is that of N prompt means.
  means = [sum(1 + (i + s) % 6 for s in range(3)) / 3 for i in range(N)]
  m = sum(means) / N
  se = math.sqrt(sum((x - m) ** 2 for x in means) / (N - 1) / N)
  assert hi - lo == pytest.approx(2 * Z * se, rel=0.3)


def test_alpaca_eval_logprobs_and_json_list(tmp_path, judge):
  a = write_answers(tmp_path / "a.jsonl", sys_q)
  # An AlpacaEval-style JSON list without ids: matched by prompt text.
  b = write_answers(tmp_path / "b.json", lambda i: BASE_Q, fmt="alpaca", who="base")
  r = lima_eval.evaluate(config("alpaca_eval", judge, a, b), tmp_path / "run")
  # Both orders: P(system better) = sigmoid(q_sys - q_base) in each (the biased-prompt rule
  # does not apply to the letter-only prompt).
  pref = [1 / (1 + math.exp(-(sys_q(i) - BASE_Q))) for i in range(N)]
  assert r["preference"] == pytest.approx(sum(pref) / N, abs=1e-6)
  assert r["logprobs_share"] == 1.0
  assert 0 < r["lc_win_rate"] < 1 and r["lc_win_rate_ci95"][0] <= r["lc_win_rate_ci95"][1]


def test_mt_bench_reference_and_turn_two_in_context(tmp_path, judge):
  questions = [json.loads(l) for l in
               shared_file("eval/mt_bench/question.jsonl").read_text().splitlines()]
  chosen = [q for q in questions if q["category"] == "writing"][:2] + \
      [q for q in questions if q["category"] == "math"][:2]
  rows = [{"question_id": q["question_id"], "category": q["category"], "turns": q["turns"],
           "answers": [f"first q={2 + j}", f"second q={5 + j}"]} for j, q in enumerate(chosen)]
  a = tmp_path / "mt.jsonl"
  a.write_text("".join(json.dumps(r) + "\n" for r in rows))
  c = config("mt_bench", judge, a)
  c.mt_bench.judge_prompts = str(shared_file("eval/mt_bench/judge_prompts.jsonl"))
  c.mt_bench.references = str(shared_file("eval/mt_bench/reference_answer_gpt-4.jsonl"))
  r = lima_eval.evaluate(c, tmp_path / "run")
  turn = {t["turn"]: t for t in r["turns"]}
  assert turn[1]["mean"] == pytest.approx(sum(2 + j for j in range(4)) / 4)
  assert turn[2]["mean"] == pytest.approx(sum(5 + j for j in range(4)) / 4)
  assert r["categories"]["writing"]["mean"] == pytest.approx((2 + 3 + 5 + 6) / 4)
  assert r["categories"]["math"]["mean"] == pytest.approx((4 + 5 + 7 + 8) / 4)
  from lima_jax.eval.store import read_rows
  rows = read_rows(tmp_path / "run/judgments.sqlite")
  math_turn2 = [x for x in rows if x["item"]["turn"] == 2 and x["item"]["prompt"] == str(
      chosen[2]["question_id"])][0]["messages"][-1]["content"]
  assert "Reference answer" in math_turn2 and "first q=4" in math_turn2  # turn 1 in context
  # Pairwise mode against a baseline whose answers have q=3 in both turns: per turn, the
  # system wins where its q is higher, loses where lower, ties where equal.
  b = tmp_path / "mt_base.jsonl"
  b.write_text("".join(json.dumps({**r, "answers": ["base q=3", "base q=3"]}) + "\n"
                       for r in [json.loads(l) for l in a.read_text().splitlines()]))
  c.mt_bench.mode, c.baseline = "pairwise", str(b)
  r = lima_eval.evaluate(c, tmp_path / "pair")
  qs = [2 + j for j in range(4)] + [5 + j for j in range(4)]
  assert (r["wins"], r["ties"], r["losses"]) == (sum(q > 3 for q in qs), qs.count(3),
                                                 sum(q < 3 for q in qs))


def test_judge_epochs_ladder(tmp_path, judge):
  quality = {5: 2, 6: 4, 7: 3}
  files = {e: write_answers(tmp_path / f"e{e}.jsonl", lambda i, q=q: q)
           for e, q in quality.items()}
  c = config("lima_likert", judge, "")
  # As lima_jax.select would pass them: rows in memory (the prompt row plus "answer").
  files[7] = [json.loads(l) for l in files[7].read_text().splitlines()]
  out = lima_eval.judge_epochs(files, tmp_path / "select", c)
  assert out["best_epoch"] == 6 and out["best_by_likert"] == 6
  assert [(m["epoch"], m["against"]) for m in out["pairwise"]] == [(6, 5), (7, 6)]
  assert out["likert"][7]["mean"] == 3
  assert (tmp_path / "select/judgments.sqlite").exists()  # one store for every epoch
  seen = sum(judge.seen.values())
  again = lima_eval.judge_epochs(files, tmp_path / "select", c)
  assert sum(judge.seen.values()) == seen and again["best_epoch"] == 6


def _cli(args, **kw):
  return subprocess.run([sys.executable, "-m", "lima_jax.eval", *args], cwd=_REPO,
                        capture_output=True, text=True, timeout=120, **kw)


def _flags(judge, a, b, workdir, protocol="lima_pairwise"):
  return [f"--config=configs/eval.py:{protocol}", f"--workdir={workdir}",
          f"--config.answers={a}", f"--config.baseline={b}",
          f"--config.judge.base_url={judge.url}", "--config.judge.model=scripted",
          "--config.judge.backoff_s=0.01", "--config.bootstrap.rounds=200"]


def test_bad_answers_files_one_line_no_results(tmp_path, judge):
  a = write_answers(tmp_path / "a.jsonl", sys_q)
  b = write_answers(tmp_path / "b.jsonl", lambda i: BASE_Q, n=N - 1, who="base")
  p = _cli(_flags(judge, a, b, tmp_path / "w1"))
  assert p.returncode == 1 and len(p.stderr.strip().splitlines()) == 1, p.stderr
  assert "no partner" in p.stderr and f"p{N - 1}" in p.stderr and "a.jsonl:24" in p.stderr
  lines = a.read_text().splitlines()
  lines[2] = '{"id": "p2", "answer": '
  a.write_text("\n".join(lines) + "\n")
  p = _cli(_flags(judge, a, b, tmp_path / "w2"))
  assert p.returncode == 1 and p.stderr.strip() == f"error: {a}:3: invalid JSON (Expecting " \
      "value)", p.stderr
  assert not (tmp_path / "w1").exists() and not (tmp_path / "w2").exists()
  assert not judge.seen


def test_dry_run_and_budget_cap(tmp_path, judge):
  a = write_answers(tmp_path / "a.jsonl", sys_q)
  b = write_answers(tmp_path / "b.jsonl", lambda i: BASE_Q, who="base")
  p = _cli(_flags(judge, a, b, tmp_path / "w") + ["--config.dry_run=True"])
  assert p.returncode == 0 and f"dry run: {2 * N} judge calls" in p.stdout, p.stdout + p.stderr
  assert not judge.seen and not (tmp_path / "w").exists()
  p = _cli(_flags(judge, a, b, tmp_path / "w") + ["--config.judge.max_calls=5"])
  assert p.returncode == 3 and "judge.max_calls=5 reached" in p.stderr, p.stderr
  r = json.loads((tmp_path / "w/results.json").read_text())
  assert r["judge_calls"] == 5 and len(judge.seen) == 5 and r["n_pending"] == 2 * N - 5
  assert not r["complete"]
  p = _cli(_flags(judge, a, b, tmp_path / "w"))
  r = json.loads((tmp_path / "w/results.json").read_text())
  assert p.returncode == 0 and r["complete"] and r["judge_calls"] == 2 * N - 5
  assert (r["wins"], r["ties"], r["losses"]) == expected_pairwise()


def test_sigkill_mid_run_then_resume(tmp_path, judge):
  a = write_answers(tmp_path / "a.jsonl", sys_q)
  b = write_answers(tmp_path / "b.jsonl", lambda i: BASE_Q, who="base")
  judge.hang_after = 10
  proc = subprocess.Popen([sys.executable, "-m", "lima_jax.eval",
                           *_flags(judge, a, b, tmp_path / "w")], cwd=_REPO,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + 60
    while sum(judge.answered.values()) < 10 or len(judge.seen) <= 10:
      assert time.time() < deadline and proc.poll() is None
      time.sleep(0.05)
    time.sleep(0.5)  # The ten replies are committed; the later requests hang in flight.
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
  finally:
    if proc.poll() is None:
      proc.kill()
  assert not (tmp_path / "w/results.json").exists()
  judge.hang_after = None
  judge.release.set()
  p = _cli(_flags(judge, a, b, tmp_path / "w"))
  r = json.loads((tmp_path / "w/results.json").read_text())
  assert p.returncode == 0, p.stderr
  assert (r["wins"], r["ties"], r["losses"]) == expected_pairwise()
  assert r["cache_hits"] == 10 and r["judge_calls"] == 2 * N - 10
  assert max(judge.answered.values()) == 1 and len(judge.answered) == 2 * N


def test_compare_and_agreement(tmp_path, judge):
  a = write_answers(tmp_path / "a.jsonl", sys_q)
  b = write_answers(tmp_path / "b.jsonl", lambda i: BASE_Q, who="base")
  lima_eval.evaluate(config("lima_pairwise", judge, a, b), tmp_path / "one")
  with Server(lambda req: {"content": "[[C]]"}) as ties:
    lima_eval.evaluate(config("lima_pairwise", ties, a, b), tmp_path / "two")
  p = _cli(["agreement", str(tmp_path / "one/judgments.sqlite"),
            str(tmp_path / "two/judgments.sqlite")])
  w, t, l = expected_pairwise()
  # Every unit of run two is a tie: agreement 1 on the ties, 1/2 on every other unit.
  assert f"tie-discounted agreement {(t + 0.5 * (w + l)) / N:.3f} on {N}" in p.stdout, p.stderr
  # Against a human label file: the human says the system wins on every prompt.
  labels = tmp_path / "human.jsonl"
  labels.write_text("".join(json.dumps({"prompt": f"p{i}", "label": "A"}) + "\n"
                            for i in range(N)))
  p = _cli(["agreement", str(tmp_path / "one/judgments.sqlite"), str(labels)])
  assert f"tie-discounted agreement {(w + 0.5 * t) / N:.3f} on {N}" in p.stdout, p.stderr
  p = _cli(["compare", str(tmp_path / "one"), str(tmp_path / "two")])
  assert p.returncode == 0 and "paired bootstrap over 24 shared prompts" in p.stdout
  diff = (w + 0.5 * t) / N - 0.5
  assert f"= {diff:+.3f}" in p.stdout, p.stdout


def test_timeouts_are_retried_and_fatal_replies_stop_with_one_line(tmp_path):
  a = write_answers(tmp_path / "a.jsonl", sys_q, n=6)
  b = write_answers(tmp_path / "b.jsonl", lambda i: BASE_Q, n=6, who="base")
  with Server(planted_rule, stall=0.5, stall_s=1.0) as slow:
    r = lima_eval.evaluate(config("lima_pairwise", slow, a, b, timeout_s=0.3),
                           tmp_path / "slow")
    stalled = sum(1 for v in slow.seen.values() if v > 1)
    assert stalled > 0 and r["n_failed"] == 0 and r["retries"] == stalled
    assert r["n"] == 6
  from lima_jax.errors import UserError
  with Server(lambda req: {"status": 401, "content": "bad key"}) as locked:
    with pytest.raises(UserError, match=r"401 .*check judge.model, judge.base_url and "
                                        r"\$OPENAI_API_KEY"):
      lima_eval.evaluate(config("lima_pairwise", locked, a, b), tmp_path / "locked")
  with Server(lambda req: {"status": 400, "content": "logprobs are not supported"}) as nolp:
    with pytest.raises(UserError, match="judge.logprobs=False"):
      lima_eval.evaluate(config("alpaca_eval", nolp, a, b), tmp_path / "nolp")
  assert not (tmp_path / "locked/results.json").exists()


def test_cost_cap_is_never_crossed(tmp_path, judge):
  a = write_answers(tmp_path / "a.jsonl", sys_q)
  b = write_answers(tmp_path / "b.jsonl", lambda i: BASE_Q, who="base")
  c = config("lima_pairwise", judge, a, b, prices="scripted=1000/1000", max_tokens=100,
             max_cost=1.0)
  r = lima_eval.evaluate(c, tmp_path / "run")
  # Spent from the server's usage: $1000 a million tokens each way.
  spent = (r["prompt_tokens"] + r["completion_tokens"]) * 1000 / 1e6
  assert r["cost_usd"] == pytest.approx(spent) and 0 < spent <= 1.0
  assert "judge.max_cost=$1" in r["stopped_reason"] and r["n_pending"] > 0
  assert r["judge_calls"] == len(judge.seen) < 2 * N
  c.judge.max_cost = 100.0
  r = lima_eval.evaluate(c, tmp_path / "run")
  assert r["complete"] and (r["wins"], r["ties"], r["losses"]) == expected_pairwise()
  c.judge.prices = ""
  from lima_jax.errors import UserError
  with pytest.raises(UserError, match="no price for 'scripted'"):
    lima_eval.evaluate(c, tmp_path / "run")


def test_pairwise_k_samples_against_one_baseline_answer(tmp_path, judge):
  # Two samples a prompt meet the baseline's single answer; the rates' intervals then come
  # from the bootstrap over prompts (a prompt's two outcomes move together).
  a = write_answers(tmp_path / "a.jsonl", lambda i, s: sys_q(i + s), samples=2,
                    per_sample=True)
  b = write_answers(tmp_path / "b.jsonl", lambda i: BASE_Q, who="base")
  r = lima_eval.evaluate(config("lima_pairwise", judge, a, b), tmp_path / "run")
  outcomes = []
  for s in range(2):
    for i in range(N):
      q = sys_q(i + s)
      outcomes.append("tie" if "BIASED" in prompt(i) or q == BASE_Q else
                      "win" if q > BASE_Q else "loss")
  assert (r["wins"], r["ties"], r["losses"]) == tuple(outcomes.count(o)
                                                      for o in ("win", "tie", "loss"))
  assert (r["n"], r["n_prompts"], r["samples_per_prompt"]) == (2 * N, N, 2)
  assert r["ci_method"] == "cluster_bootstrap"
  lo, hi = r["win_rate_ci95"]
  assert lo < r["win_rate"] < hi


def test_an_unreachable_judge_fails_every_judgment_and_says_so(tmp_path):
  a = write_answers(tmp_path / "a.jsonl", sys_q, n=2)
  b = write_answers(tmp_path / "b.jsonl", lambda i: BASE_Q, n=2, who="base")
  with Server(planted_rule) as gone:
    url = gone.url  # A port nothing listens on once the server is closed.
  p = _cli(["--config=configs/eval.py:lima_pairwise", f"--workdir={tmp_path / 'w'}",
            f"--config.answers={a}", f"--config.baseline={b}", f"--config.judge.base_url={url}",
            "--config.judge.model=m", "--config.judge.max_retries=1",
            "--config.judge.backoff_s=0.01"])
  r = json.loads((tmp_path / "w/results.json").read_text())
  assert p.returncode == 4 and "4 judgments failed after every retry" in p.stderr, p.stderr
  assert (r["n"], r["n_failed"], r["judge_calls"], r["retries"]) == (0, 4, 4, 4)
  assert r["win_rate"] is None and "APIConnectionError" in r["first_error"]


def _exact_rows(samples):
  """12 prompts with `expected`, 2 without; tags set=test (even i) / set=dev (odd i), and
  template=heldout on every third. Sample s of prompt i is right when (i + s) % 3 != 0;
  right answers differ from `expected` in whitespace only."""
  rows, right = [], {}
  for s in range(samples):
    for i in range(14):
      row = {"id": f"p{i}", "conversations": [f"Where was person {i} born?"], "sample": s,
             "stopped": True}
      if i < 12:
        tags = ["set=test" if i % 2 == 0 else "set=dev"] + (["template=heldout"]
                                                              if i % 3 == 0 else [])
        ok = (i + s) % 3 != 0
        right[i, s] = ok
        row.update(expected=f"City {i}", tags=tags,
                   answer=f"  City\n {i} " if ok else f"City {i}.")
      else:
        row["answer"] = "anything"
      rows.append(row)
  return rows, right


@pytest.mark.parametrize("samples", [1, 2])
def test_judge_free_exact_rate_by_tag(tmp_path, samples):
  rows, right = _exact_rows(samples)
  a = tmp_path / "a.jsonl"
  a.write_text("".join(json.dumps(r) + "\n" for r in rows))
  c = eval_configs.get_config("judge_free")
  c.answers, c.bootstrap.rounds = str(a), 300
  r = lima_eval.evaluate(c, tmp_path / "run")
  groups = {"": lambda i: True, "set=test": lambda i: i % 2 == 0,
            "set=dev": lambda i: i % 2 == 1, "template=heldout": lambda i: i % 3 == 0}
  assert r["exact_tags"] == sorted(groups)[1:]
  assert (r["exact_n"], r["exact_n_prompts"]) == (12 * samples, 12)
  for tag, member in groups.items():
    got = [right[i, s] for (i, s) in right if member(i)]
    suffix = f":{tag}" if tag else ""
    assert r[f"exact_rate{suffix}"] == pytest.approx(sum(got) / len(got)), tag
    if tag:
      assert r[f"exact_n{suffix}"] == len(got)
    lo, hi = r[f"exact_rate{suffix}_ci95"]
    if samples == 1:  # one answer a prompt: Wilson's interval
      assert [lo, hi] == pytest.approx(wilson(sum(got), len(got)))
    elif tag == "template=heldout":  # each prompt has one of its two samples right:
      assert [lo, hi] == [0.5, 0.5]     # drawn as clusters, every draw's mean is 0.5
    else:
      assert lo < r[f"exact_rate{suffix}"] < hi
  on_disk = json.loads((tmp_path / "run/results.json").read_text())
  assert on_disk["exact_rate:set=test"] == r["exact_rate:set=test"]
  per = json.loads((tmp_path / "run/per_prompt.json").read_text())
  assert per == {f"p{i}": pytest.approx(sum(right[i, s] for s in range(samples)) / samples)
                 for i in range(12)}
  tags = json.loads((tmp_path / "run/prompt_tags.json").read_text())
  assert tags["p3"] == ["set=dev", "template=heldout"] and "p12" not in tags
  # Without `expected` there are no exact figures, and no per-prompt files.
  plain = tmp_path / "plain.jsonl"
  plain.write_text("".join(json.dumps({k: v for k, v in x.items() if k not in (
      "expected", "tags")}) + "\n" for x in rows))
  c.answers = str(plain)
  r = lima_eval.evaluate(c, tmp_path / "run")
  assert "exact_rate" not in r and not (tmp_path / "run/per_prompt.json").exists()
  assert not (tmp_path / "run/prompt_tags.json").exists()


@pytest.mark.parametrize("field, value, message", [
    ("expected", 7, "'expected' must be a string (the exact answer), got int"),
    ("expected", None, "'expected' must be a string (the exact answer), got NoneType"),
    ("tags", "set=test", "'tags' must be a list of non-empty strings"),
    ("tags", ["set=test", 3], "'tags' must be a list of non-empty strings")])
def test_badly_typed_expected_or_tags_is_one_line_and_writes_nothing(tmp_path, field, value,
                                                                     message):
  rows, _ = _exact_rows(1)
  rows[4][field] = value
  a = tmp_path / "a.jsonl"
  a.write_text("".join(json.dumps(r) + "\n" for r in rows))
  p = _cli(["--config=configs/eval.py:judge_free", f"--workdir={tmp_path / 'w'}",
            f"--config.answers={a}"])
  assert p.returncode == 1 and p.stderr.strip().splitlines() == [
      f"error: {a}:5: {message}" + (f", got {value!r:.80}" if field == "tags" else "")], p.stderr
  assert not (tmp_path / "w").exists()
