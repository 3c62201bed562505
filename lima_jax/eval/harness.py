"""The `harness` protocol: lm-evaluation-harness tasks against a checkpoint served by the
project itself, so a study can report knowledge kept after SFT (MMLU-style) beside judged
quality.

The server is `python -m lima_jax.serve` in a subprocess on a free local port (or any running
one, `harness.base_url`); lm-eval (the optional requirements-eval.txt) speaks to it as to
vLLM: `local-completions` for loglikelihood and generate_until tasks (prompt ids from the
server's own /tokenize, logprobs with echo), `local-chat-completions` for generate_until
through the chat route. Tasks are lm-eval names (its registry; the hub for their data) or
local YAML files / directories (no network). results.json holds each task's metrics with
lm-eval's stderr and our own 95% interval over documents (Wilson for 0/1 metrics).
"""
import contextlib
import importlib.metadata
import os
import pathlib
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

from lima_jax import files
from lima_jax.errors import UserError
from lima_jax.eval import stats

MODELS = ("local-completions", "local-chat-completions")
_ROUTES = {"local-completions": "/v1/completions",
           "local-chat-completions": "/v1/chat/completions"}


@contextlib.contextmanager
def served(checkpoint: str, *, slots: int = 8, max_len: int = 0, timeout_s: float = 900):
  """`python -m lima_jax.serve` over `checkpoint` on a free 127.0.0.1 port until the block
  ends; yields its base URL once /health says ready."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  cmd = [sys.executable, "-m", "lima_jax.serve", f"--checkpoint={checkpoint}",
         f"--port={port}", f"--slots={slots}", f"--max_len={max_len}"]
  proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
  url = f"http://127.0.0.1:{port}"
  try:
    t0 = time.time()
    while True:
      if proc.poll() is not None:
        lines = proc.stderr.read().strip().splitlines()
        raise UserError(f"config checkpoint: the server stopped: "
                        f"{lines[-1] if lines else proc.returncode}")
      try:
        with urllib.request.urlopen(url + "/health", timeout=5) as r:
          if r.status == 200:
            break
      except (urllib.error.URLError, OSError):
        pass
      if time.time() - t0 > timeout_s:
        raise UserError(f"config checkpoint: the server was not ready in {timeout_s:.0f} s")
      time.sleep(0.5)
    yield url
  finally:
    proc.terminate()
    try:
      proc.wait(30)
    except subprocess.TimeoutExpired:
      proc.kill()


def _tasks(h) -> tuple[list[str], list[str]]:
  """(task names, directories to include): a .yaml entry is a local task file."""
  names, include = [], [h.include_path] if h.include_path else []
  for t in (x.strip() for x in h.tasks.split(",") if x.strip()):
    if t.endswith((".yaml", ".yml")):
      path = pathlib.Path(t)
      if not path.is_file():
        raise UserError(f"config harness.tasks: no such task file {t}")
      import yaml  # lm-eval's own dependency
      name = (yaml.safe_load(path.read_text()) or {}).get("task")
      if not isinstance(name, str):
        raise UserError(f"config harness.tasks: {t} has no 'task:' name")
      names.append(name)
      include.append(str(path.parent.resolve()))
    else:
      names.append(t)
  if not names:
    raise UserError("config harness.tasks: name at least one lm-eval task or task file")
  return names, include


def _check(config) -> None:
  h = config.harness
  if h.model not in MODELS:
    raise UserError(f"config harness.model: {h.model!r} is not one of {MODELS}")
  if not h.base_url and not config.checkpoint:
    raise UserError("config checkpoint: the harness protocol needs --config.checkpoint=CKPT "
                    "(served for the run) or --config.harness.base_url=URL (a running server)")
  try:
    importlib.metadata.version("lm_eval")
  except importlib.metadata.PackageNotFoundError:
    raise UserError("the harness protocol needs lm-eval: pip install -r "
                    "requirements-eval.txt") from None


def evaluate(config, workdir) -> dict:
  """Runs the tasks and writes DIR/results.json (and lm_eval.json, lm-eval's own results)."""
  _check(config)
  names, include = _tasks(config.harness)
  workdir = pathlib.Path(workdir)
  t0 = time.perf_counter()
  if config.harness.base_url:
    raw = _run_lm_eval(config, config.harness.base_url.rstrip("/"), names, include)
  else:
    with served(config.checkpoint, slots=config.harness.slots,
                max_len=config.harness.max_len) as url:
      raw = _run_lm_eval(config, url, names, include)
  out = {"protocol": "harness", "system": config.name or (
      pathlib.Path(config.checkpoint).name if config.checkpoint else config.harness.base_url),
         "lm_eval_version": importlib.metadata.version("lm_eval"),
         "model": config.harness.model, "tasks": _figures(raw, config),
         "seconds": round(time.perf_counter() - t0, 2)}
  workdir.mkdir(parents=True, exist_ok=True)
  files.write_json(workdir / "lm_eval.json", _plain({k: raw[k] for k in (
      "results", "configs", "versions", "n-shot") if k in raw}))
  files.write_json(workdir / "results.json", out)
  return out


def _run_lm_eval(config, url: str, names, include) -> dict:
  import lm_eval  # the optional stack: imported only here
  from lm_eval.tasks import TaskManager
  h = config.harness
  key = os.environ.get(h.api_key_env, "") if h.api_key_env else ""
  # lm-eval's API models read the key from OPENAI_API_KEY; its remote tokenizer from auth_token.
  os.environ["OPENAI_API_KEY"] = key or "none"
  args = {"model": h.served_model_name, "base_url": url + _ROUTES[h.model],
          "num_concurrent": h.num_concurrent, "max_retries": 1, "batch_size": h.batch_size,
          "max_length": h.max_length}
  if key:
    args["auth_token"] = key
  chat = h.model == "local-chat-completions"
  return lm_eval.simple_evaluate(
      model=h.model, model_args=args, tasks=names, task_manager=TaskManager(
          include_path=include or None), num_fewshot=None if h.num_fewshot < 0 else h.num_fewshot,
      limit=h.limit or None, log_samples=True, apply_chat_template=chat,
      system_instruction=h.system_instruction or None, gen_kwargs=h.gen_kwargs or None,
      random_seed=h.seed, numpy_random_seed=h.seed, torch_random_seed=h.seed,
      fewshot_random_seed=h.seed)


def _figures(raw: dict, config) -> dict:
  """Per task: each metric, lm-eval's stderr, our interval over documents, and n."""
  out = {}
  for task, metrics in raw["results"].items():
    samples = raw.get("samples", {}).get(task, [])
    fig = {"n": len(samples)}
    for name, value in metrics.items():
      metric, _, filt = name.partition(",")
      if metric.endswith("_stderr") or metric in ("alias", "name", "sample_len"):
        continue
      values = [float(s[metric]) for s in samples if isinstance(s.get(metric), (int, float))]
      label = metric if filt in ("", "none") else f"{metric},{filt}"
      fig[label] = float(value)
      stderr = metrics.get(f"{metric}_stderr,{filt}")
      fig[label + "_stderr"] = float(stderr) if isinstance(stderr, (int, float)) else None
      if values:
        ci, how = stats.rate_ci([[v] for v in values], config.bootstrap.rounds,
                                config.bootstrap.seed) if set(values) <= {0.0, 1.0} else (
            stats.cluster_bootstrap([[v] for v in values], config.bootstrap.rounds,
                                    config.bootstrap.seed), "bootstrap")
        fig[label + "_ci95"], fig[label + "_ci_method"] = ci, how
    out[task] = fig
  return out


def _plain(obj):
  """lm-eval's results as JSON (numpy scalars, tuples)."""
  if isinstance(obj, dict):
    return {str(k): _plain(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_plain(v) for v in obj]
  if hasattr(obj, "item") and callable(obj.item):
    return obj.item()
  if isinstance(obj, (str, int, float, bool)) or obj is None:
    return obj
  return str(obj)
