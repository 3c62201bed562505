r"""Serving under load: lima_jax's server against `transformers serve --continuous-batching`.

    python benchmarks/serve.py --checkpoint=/tmp/serve_demo/checkpoints/96 \
        --transformers=/tmp/hfserve/bin/transformers --rates=1,2,4,inf --requests=24

Before and after a change to the server, in one run: check out the earlier commit beside this
one (`git worktree add --detach /tmp/before COMMIT`) and add `--before_repo=/tmp/before
--servers=lima_jax,lima_jax_before,transformers,transformers_1thread`; `lima_jax_before` runs
that checkout's `python -m lima_jax.serve` on the same directory and requests.

`--transformers` is the CLI of a venv with torch and transformers[serving] (not in
requirements.txt), e.g. `python -m venv /tmp/hfserve && /tmp/hfserve/bin/pip install
torch==2.13.0 "transformers[serving]==5.24.0"`.

The checkpoint is exported once with `python -m lima_jax.convert to-hf --dtype=float32`, and
every server serves that same directory (lima_jax reads Hugging Face directories too), float32
on the CPU of the same machine, with the same requests: chat completions of LIMA test prompts
(the demo's own prompts when the shared data is absent) cut to --prompt_words words, greedy
(temperature 0; lima_jax also gets repetition_penalty 1, a field transformers refuses: its
exported generation config has no penalty), at most --max_tokens new tokens, streamed.
Requests arrive as a Poisson process at each rate (requests/s; inf: all at once, the
saturation point) after an untimed warm-up of 2 x slots requests. The servers are up together
(each one's CPU use while idle is recorded) and every round runs every rate on each, in
alternating order, so drifts in machine load hit all alike. transformers runs twice: as it
comes, and with OMP_NUM_THREADS=1 (torch's threads wait for each other at every op, which a
busy machine punishes); its paged KV cache is capped at 8,192 tokens, twice lima_jax's.

Per request, from the client: TTFT = arrival to the first content chunk; TPOT = (e2e - TTFT) /
(output tokens - 1) (vLLM's definition, TTFT excluded); e2e = arrival to the last chunk;
output tokens from the final usage chunk. Output tokens/s = all output tokens / (last end -
first arrival), the median over rounds; percentiles pool the rounds' requests. Results: --out
(JSON with per-rate p50/p90/p99, load averages and versions); `--markdown` prints the table
of docs/serving.md.
"""
import concurrent.futures
import json
import os
import pathlib
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
from absl import app, flags

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"

_CKPT = flags.DEFINE_string("checkpoint", None, "lima_jax checkpoint to export and serve.")
_HF_DIR = flags.DEFINE_string("hf_dir", None, "An exported float32 HF directory to use instead "
                              "of exporting --checkpoint.")
_TRANSFORMERS = flags.DEFINE_string("transformers", "transformers", "The `transformers` CLI "
                                    "(a venv with torch and transformers[serving]).")
_SERVERS = flags.DEFINE_list("servers", ["lima_jax", "transformers", "transformers_1thread"],
                             "Servers to measure (transformers_1thread: OMP_NUM_THREADS=1; "
                             "lima_jax_before: lima_jax.serve run from --before_repo).")
_BEFORE = flags.DEFINE_string("before_repo", None, "A checkout of an earlier lima_jax (e.g. `git "
                              "worktree add --detach /tmp/before COMMIT`) for the "
                              "lima_jax_before server, so before and after share one run.")
_RATES = flags.DEFINE_list("rates", ["1", "2", "4", "inf"], "Arrival rates, requests/s.")
_N = flags.DEFINE_integer("requests", 24, "Requests per rate.")
_MAX_TOKENS = flags.DEFINE_integer("max_tokens", 64, "max_tokens of every request.")
_WORDS = flags.DEFINE_integer("prompt_words", 40, "Prompts are cut to this many words.")
_SLOTS = flags.DEFINE_integer("slots", 8, "lima_jax's --slots.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the prompt choice and the arrival times.")
_ROUNDS = flags.DEFINE_integer("rounds", 2, "Rounds; each runs every rate on every server, the "
                               "servers' order alternating (drifts in machine load hit both).")
_OUT = flags.DEFINE_string("out", str(REPO / "benchmarks/results/serve.json"), "Results JSON.")
_MD = flags.DEFINE_bool("markdown", True, "Print the table of docs/serving.md.")


def _prompts(n: int, words: int, rng) -> list[str]:
  path = SHARED / "lima/test.jsonl"
  if path.exists():
    texts = [json.loads(l)["conversations"][0] for l in path.read_text().splitlines() if l]
  else:
    rows = [json.loads(l) for l in (REPO / "data/demo/train.jsonl").read_text().splitlines()]
    texts = [r["conversations"][0] for r in rows]
  pick = rng.choice(len(texts), n, replace=False)
  return [" ".join(texts[i].split()[:words]) for i in pick]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start(server: str, hf_dir: str, port: int):
  env, cwd = dict(os.environ), REPO
  if server in ("lima_jax", "lima_jax_before"):
    cmd = [sys.executable, "-m", "lima_jax.serve", f"--checkpoint={hf_dir}", f"--port={port}",
           f"--slots={_SLOTS.value}", "--served_model_name=" + hf_dir]
    if server == "lima_jax_before":
      if not _BEFORE.value or not os.path.isdir(os.path.join(_BEFORE.value, "lima_jax")):
        raise SystemExit(f"--before_repo={_BEFORE.value}: not a lima_jax checkout")
      cwd = _BEFORE.value  # `python -m` imports the package from the working directory
  else:
    cmd = [_TRANSFORMERS.value, "serve", "--continuous-batching", "--device", "cpu", "--dtype",
           "float32", "--host", "127.0.0.1", "--port", str(port),
           # Its KV cache otherwise takes a share of all memory (13.8 GB here: the OOM killer
           # took it); 256 blocks of 32 tokens is twice lima_jax's 8 slots x 512.
           "--cb-block-size", "32", "--cb-num-blocks", "256", hf_dir]
    if server == "transformers_1thread":
      # torch's OpenMP threads wait for each other at every op: on a busy machine one thread
      # can be the faster setting, so it is measured too.
      env["OMP_NUM_THREADS"] = "1"
  log = tempfile.NamedTemporaryFile("w+", suffix=f".{server}.log", delete=False)
  proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
  proc.log = log.name
  import httpx2
  t0 = time.time()
  while True:
    if proc.poll() is not None:
      raise SystemExit(f"{server} exited: see {log.name}")
    try:
      if httpx2.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
        break
    except httpx2.TransportError:
      pass
    if time.time() - t0 > 600:
      raise SystemExit(f"{server} never became healthy: see {log.name}")
    time.sleep(0.5)
  print(f"{server}: healthy after {time.time() - t0:.1f}s ({' '.join(cmd[:4])} ...)", flush=True)
  return proc, cmd


def _one(url: str, model: str, extra: dict, prompt: str, start_at: float) -> dict:
  """One streamed chat completion at `start_at` (perf_counter); client-side timings."""
  import httpx2
  body = {"model": model, "messages": [{"role": "user", "content": prompt}], "stream": True,
          "max_tokens": _MAX_TOKENS.value, "temperature": 0,
          "stream_options": {"include_usage": True}, **extra}
  time.sleep(max(0.0, start_at - time.perf_counter()))
  t0 = time.perf_counter()
  first, text, usage, chunks = None, [], None, 0
  with httpx2.stream("POST", url + "/v1/chat/completions", json=body, timeout=600) as r:
    r.raise_for_status()
    for line in r.iter_lines():
      if not line.startswith("data: ") or line == "data: [DONE]":
        continue
      event = json.loads(line[6:])
      usage = event.get("usage") or usage
      for c in event.get("choices", []):
        piece = (c.get("delta") or {}).get("content")
        if piece:
          first = first or time.perf_counter()
          text.append(piece)
          chunks += 1
  end = time.perf_counter()
  n = usage["completion_tokens"] if usage else chunks
  return {"start": t0, "ttft": (first or end) - t0, "e2e": end - t0, "tokens": n,
          "tpot": (end - first) / (n - 1) if first and n > 1 else None, "text": "".join(text)}


def _pcts(xs) -> dict:
  xs = [x for x in xs if x is not None]
  return {f"p{q}": float(np.percentile(xs, q)) for q in (50, 90, 99)} if xs else {}


def _run_rate(url, model, extra, prompts, rate, rng) -> dict:
  gaps = np.zeros(len(prompts)) if rate == float("inf") else rng.exponential(1 / rate,
                                                                            len(prompts))
  t0 = time.perf_counter() + 0.2
  starts = t0 + np.cumsum(gaps) - gaps[0]
  load0 = os.getloadavg()
  with concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
    rows = list(pool.map(lambda a: _one(url, model, extra, *a), zip(prompts, starts)))
  span = max(r["start"] + r["e2e"] for r in rows) - min(r["start"] for r in rows)
  tokens = sum(r["tokens"] for r in rows)
  return {"rate": rate, "requests": len(rows), "output_tokens": tokens, "duration_s": span,
          "output_tokens_per_s": tokens / span, "ttft_s": _pcts(r["ttft"] for r in rows),
          "tpot_s": _pcts(r["tpot"] for r in rows), "e2e_s": _pcts(r["e2e"] for r in rows),
          "loadavg_before": load0, "texts": [r["text"] for r in rows], "rows": rows}


def _versions() -> dict:
  import jax
  out = {"python": platform.python_version(), "jax": jax.__version__}
  tf_python = pathlib.Path(shutil.which(_TRANSFORMERS.value) or _TRANSFORMERS.value).parent
  probe = subprocess.run([str(tf_python / "python"), "-c", "import torch, transformers; print("
                          "torch.__version__, transformers.__version__)"],
                         capture_output=True, text=True)
  if probe.returncode == 0:
    out["torch"], out["transformers"] = probe.stdout.split()
  return out


def _table(result: dict) -> str:
  lines = ["| server | rate (req/s) | output tok/s | TTFT p50 / p90 / p99 (s) | "
           "TPOT p50 / p90 / p99 (ms) | e2e p50 / p90 / p99 (s) |", "|---|---|---|---|---|---|"]
  for server, runs in result["servers"].items():
    for r in runs:
      t, p, e = r["ttft_s"], r["tpot_s"], r["e2e_s"]
      lines.append(f"| {server} | {r['rate']:g} | {r['output_tokens_per_s']:.1f} | "
                   f"{t['p50']:.2f} / {t['p90']:.2f} / {t['p99']:.2f} | "
                   f"{p['p50'] * 1e3:.1f} / {p['p90'] * 1e3:.1f} / {p['p99'] * 1e3:.1f} | "
                   f"{e['p50']:.2f} / {e['p90']:.2f} / {e['p99']:.2f} |")
  return "\n".join(lines)


def _ratios(s: dict, rates: list[float]) -> dict:
  """lima_jax against the better transformers setting at each point (so the ratios flatter
  nobody), and against lima_jax_before when it ran."""
  sat = lambda k: s[k][-1]["output_tokens_per_s"]
  tpot = lambda k, i: s[k][i]["tpot_s"]["p50"]
  same = lambda k: [float(np.mean([a == b for a, b in zip(x["texts"], y["texts"])]))
                    for x, y in zip(s["lima_jax"], s[k])]
  out, others = {}, [k for k in s if not k.startswith("lima_jax")]
  if others:
    best_sat = max(others, key=sat)
    out["output_tokens_per_s_at_saturation_lima_jax_over_best_transformers"] = {
        "vs": best_sat, "ratio": sat("lima_jax") / sat(best_sat)}
    out["tpot_p50_best_transformers_over_lima_jax"] = {
        f"{r:g}": {"vs": min(others, key=lambda k: tpot(k, i)),
                   "ratio": min(tpot(k, i) for k in others) / tpot("lima_jax", i)}
        for i, r in enumerate(rates)}
  if "lima_jax_before" in s:
    out["tpot_p50_before_over_after"] = {
        f"{r:g}": tpot("lima_jax_before", i) / tpot("lima_jax", i) for i, r in enumerate(rates)}
    out["output_tokens_per_s_at_saturation_after_over_before"] = (
        sat("lima_jax") / sat("lima_jax_before"))
  out["same_answers_as_lima_jax"] = {k: same(k) for k in s if k != "lima_jax"}
  return out


def _cpu_s(pid: int) -> float:
  fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
  return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _merge(runs: list[dict]) -> dict:
  """One rate's rounds: percentiles over every request, tokens/s the median round's."""
  rows = [x for r in runs for x in r["rows"]]
  return {"rate": runs[0]["rate"], "requests": len(rows),
          "output_tokens": sum(x["tokens"] for x in rows),
          "output_tokens_per_s": float(np.median([r["output_tokens_per_s"] for r in runs])),
          "rounds_output_tokens_per_s": [r["output_tokens_per_s"] for r in runs],
          "ttft_s": _pcts(x["ttft"] for x in rows), "tpot_s": _pcts(x["tpot"] for x in rows),
          "e2e_s": _pcts(x["e2e"] for x in rows),
          "loadavg": [r["loadavg_before"] for r in runs], "texts": runs[0]["texts"]}


def main(argv):
  del argv
  import logging
  logging.getLogger("httpx2").setLevel(logging.WARNING)  # a line per request otherwise
  rng = np.random.default_rng(_SEED.value)
  rates = [float(r) for r in _RATES.value]
  prompts = _prompts(_N.value, _WORDS.value, rng)
  warm = _prompts(2 * _SLOTS.value, _WORDS.value, np.random.default_rng(_SEED.value + 1))
  tmp = tempfile.mkdtemp(prefix="serve_bench_")
  hf_dir = _HF_DIR.value
  if hf_dir is None:
    if not _CKPT.value:
      raise SystemExit("give --checkpoint or --hf_dir")
    hf_dir = os.path.join(tmp, "hf")
    subprocess.run([sys.executable, "-m", "lima_jax.convert", "to-hf",
                    f"--checkpoint={_CKPT.value}", f"--out={hf_dir}", "--dtype=float32"],
                   check=True, cwd=REPO)
  result = {"command": " ".join(["python", "benchmarks/serve.py"] + sys.argv[1:]),
            "model": json.loads(pathlib.Path(hf_dir, "config.json").read_text()),
            "settings": {"requests": _N.value, "max_tokens": _MAX_TOKENS.value,
                         "prompt_words": _WORDS.value, "slots": _SLOTS.value, "rates": rates,
                         "rounds": _ROUNDS.value},
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
            "versions": _versions(), "server_commands": {}, "idle_cpu_s_per_s": {}}
  procs, urls = {}, {}
  # transformers refuses the field (422); its generation config has no penalty anyway.
  extra = {s: {"repetition_penalty": 1.0} if s.startswith("lima_jax") else {}
           for s in _SERVERS.value}
  try:
    for server in _SERVERS.value:  # both up at once, so rounds can alternate between them
      port = _free_port()
      procs[server], cmd = _start(server, hf_dir, port)
      urls[server] = f"http://127.0.0.1:{port}"
      result["server_commands"][server] = " ".join(cmd)
      _run_rate(urls[server], hf_dir, extra[server], warm, float("inf"), rng)  # untimed
    before = {s: _cpu_s(p.pid) for s, p in procs.items()}
    time.sleep(5)  # an idle server must not take CPU from the one being measured
    for s, p in procs.items():
      result["idle_cpu_s_per_s"][s] = (_cpu_s(p.pid) - before[s]) / 5
    runs = {s: [[] for _ in rates] for s in procs}
    for round_ in range(_ROUNDS.value):
      for i, rate in enumerate(rates):
        order = list(procs) if round_ % 2 == 0 else list(procs)[::-1]
        for server in order:
          r = _run_rate(urls[server], hf_dir, extra[server], prompts, rate,
                        np.random.default_rng(_SEED.value + round_))
          runs[server][i].append(r)
          print(f"round {round_} {server} rate={rate:g}: {r['output_tokens_per_s']:.1f} tok/s, "
                f"TPOT p50 {r['tpot_s']['p50'] * 1e3:.1f} ms, TTFT p50 "
                f"{r['ttft_s']['p50']:.2f}s, load {r['loadavg_before'][0]:.1f}", flush=True)
  except Exception:
    for name, proc in procs.items():
      if proc.poll() is not None:
        print(f"{name} exited with {proc.returncode}: see {proc.log}", file=sys.stderr)
    raise
  finally:
    for proc in procs.values():
      proc.terminate()
      try:
        proc.wait(30)
      except subprocess.TimeoutExpired:
        proc.kill()
  result["servers"] = {s: [_merge(r) for r in per_rate] for s, per_rate in runs.items()}
  if "lima_jax" in result["servers"] and len(result["servers"]) > 1:
    result["ratios"] = _ratios(result["servers"], rates)
  pathlib.Path(_OUT.value).write_text(json.dumps(result, indent=1) + "\n")
  print(f"wrote {_OUT.value}")
  if _MD.value:
    print(_table(result))
    if "ratios" in result:
      print(json.dumps(result["ratios"], indent=1))
  shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
  app.run(main)
