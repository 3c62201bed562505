r"""Decode speed: lima_jax's KV-cached decoder against full recomputation and transformers.

    python benchmarks/decode.py --size=demo --batch_sizes=1,8 --max_new_tokens=64 --rounds=3

Greedy decoding of the same prompts (LIMA test prompts rendered in the training format, cut to
--prompt_len tokens; the demo's own prompts when the shared data is absent), the same number of
new tokens for every row (no stop tokens), by:

  cache_device  `decoding.Generator`, the loop inside jit (`lax.while_loop`, the default)
  cache_host    `decoding.Generator(loop="host")`, one jitted step per token from Python
  recompute     `decoding.recompute_greedy`: no cache, a full forward pass per token
  transformers  `LlamaForCausalLM.generate(do_sample=False)` (its KV cache) on the same
                weights exported with `hf_export.save_hf` (whose generation config suppresses the
                vocabulary padding rows, as lima_jax masks them), torch on CPU, left-padded

tokens/s = generated tokens / wall time of one whole call (two batches, prefill included),
after one untimed call (compilation); a worker times --calls calls and keeps the median.
Every (round, implementation) runs in its own fresh process, in turn, so the runtimes never
share a thread pool (after JAX has run, torch in the same process slowed 3-10x on a 2-core
machine) and drifts in machine load hit all alike; the figure is the median over rounds. The
model has random weights (drawn from a fixed key: every worker has the same); workers report
their tokens, so the results also say whether all four agree.
Results: --out (JSON, with load averages, versions and the command).
"""
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app, flags

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "data"
IMPLS = ("cache_device", "cache_host", "recompute", "transformers")

_SIZE = flags.DEFINE_string("size", "demo", "Model size from lima_jax.model.config.SIZES "
                            "(vocabulary replaced by the tokenizer's, padded to 128).")
_BATCHES = flags.DEFINE_list("batch_sizes", ["1", "8"], "Batch sizes to measure.")
_NEW = flags.DEFINE_integer("max_new_tokens", 64, "New tokens per row.")
_PROMPT_LEN = flags.DEFINE_integer("prompt_len", 64, "Prompts are cut to at most this many "
                                   "tokens (their lengths still differ).")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Rounds; each runs every implementation once.")
_CALLS = flags.DEFINE_integer("calls", 2, "Timed calls per worker (median kept).")
_IMPLS = flags.DEFINE_list("impls", list(IMPLS), "Implementations to time.")
_OUT = flags.DEFINE_string("out", str(REPO / "benchmarks/results/decode.json"), "Results JSON.")
# Internal: a worker process times one implementation.
_WORKER = flags.DEFINE_string("worker", None, "Internal: time this implementation.")
_BATCH = flags.DEFINE_integer("batch", 1, "Internal: the worker's batch size.")
_HF_DIR = flags.DEFINE_string("hf_dir", None, "Internal: the exported model.")
_WORKER_OUT = flags.DEFINE_string("worker_out", None, "Internal: the worker's result file.")


def _setup(size: str):
  """(params, cfg, tok): random weights from a fixed key, the LLaMA tokenizer when present."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  from lima_jax.model import transformer as model_lib
  from lima_jax.model.config import get_size
  from lima_jax.tokenizer import load as load_tokenizer
  tok_path = SHARED / "llama2c/llama_tokenizer/tokenizer.model"
  tok = load_tokenizer(tok_path if tok_path.exists() else REPO / "data/demo/tokenizer.model")
  cfg = get_size(size, vocab_size=tok.padded_vocab_size(128))
  init = jax.jit(lambda k: nn.meta.unbox(model_lib.Transformer(cfg).init(
      k, jnp.zeros((1, 8), jnp.int32))["params"]))
  return init(jax.random.key(0)), cfg, tok


def _prompts(tok, n: int, max_len: int) -> list[list[int]]:
  from lima_jax.decode import generator as decoding
  path = SHARED / "lima/test.jsonl"
  if not path.exists():
    path = REPO / "data/demo/train.jsonl"
  rows = [json.loads(l) for l in path.read_text().splitlines()[:n]]
  return [decoding.render_prompt(r["conversations"][:1], tok)[:max_len] for r in rows]


def _runner(impl: str, batch: int, new: int, hf_dir: str):
  """(prompts, () -> generated ids per prompt)."""
  if impl == "transformers":
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM
    from lima_jax.tokenizer import from_meta as tokenizer_from_meta
    meta = json.loads((pathlib.Path(hf_dir) / "lima_tokenizer.json").read_text())
    tok = tokenizer_from_meta(meta)
    prompts = _prompts(tok, 2 * batch, _PROMPT_LEN.value)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None  # every row makes exactly `new` tokens

    def run():
      out = []
      for start in range(0, len(prompts), batch):
        chunk = prompts[start:start + batch]
        width = max(map(len, chunk))
        ids = np.full((len(chunk), width), tok.pad_id)
        mask = np.zeros((len(chunk), width), np.int64)
        for b, p in enumerate(chunk):  # left padding, as decoder-only generation wants
          ids[b, width - len(p):], mask[b, width - len(p):] = p, 1
        with torch.no_grad():
          seq = model.generate(torch.tensor(ids), attention_mask=torch.tensor(mask),
                               do_sample=False, repetition_penalty=1.0, max_new_tokens=new,
                               pad_token_id=tok.pad_id)
        out += seq[:, width:].tolist()
      return out
    return prompts, run

  from lima_jax.decode import generator as decoding
  params, cfg, tok = _setup(_SIZE.value)
  prompts = _prompts(tok, 2 * batch, _PROMPT_LEN.value)
  if impl == "recompute":
    return prompts, lambda: [ids for s in range(0, len(prompts), batch)
                             for ids in decoding.recompute_greedy(
                                 params, cfg, tok.vocab_size, prompts[s:s + batch], new)]
  dec = decoding.Decoding(greedy=True, repetition_penalty=1.0, max_new_tokens=new)
  gen = decoding.Generator(params, cfg, tok, batch_size=batch, stop_ids=(),
                           loop=impl.removeprefix("cache_"))
  return prompts, lambda: [ids for ids, _ in gen.answer_ids(prompts, dec)]


def _worker() -> None:
  prompts, run = _runner(_WORKER.value, _BATCH.value, _NEW.value, _HF_DIR.value)
  t0 = time.perf_counter()
  tokens = run()
  first = time.perf_counter() - t0
  rates = []
  for _ in range(_CALLS.value):
    t0 = time.perf_counter()
    n = sum(map(len, run()))
    rates.append(n / (time.perf_counter() - t0))
  pathlib.Path(_WORKER_OUT.value).write_text(json.dumps(
      {"tokens_per_s": statistics.median(rates), "first_call_s": first, "tokens": tokens,
       "prompt_lengths": [len(p) for p in prompts]}))


def main(argv) -> None:
  del argv
  if _WORKER.value:
    return _worker()
  import jax
  import torch
  import transformers
  from tqdm import tqdm
  from lima_jax.formats import hf_export
  load_before = os.getloadavg()
  params, cfg, tok = _setup(_SIZE.value)
  results = {"command": " ".join(["python", "benchmarks/decode.py"] + sys.argv[1:]),
             "model": {"size": _SIZE.value, **cfg.to_dict()}, "max_new_tokens": _NEW.value,
             "prompt_len_max": _PROMPT_LEN.value, "rounds": _ROUNDS.value,
             "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                         "jax_devices": [str(d) for d in jax.devices()],
                         "torch_threads": torch.get_num_threads(),
                         "load_average_before": load_before},
             "versions": {"jax": jax.__version__, "torch": torch.__version__,
                          "transformers": transformers.__version__},
             "batches": {}}
  with tempfile.TemporaryDirectory() as tmp:
    hf_dir = pathlib.Path(tmp) / "hf"
    hf_export.save_hf(cfg, params, hf_dir, tok.to_meta())
    (hf_dir / "lima_tokenizer.json").write_text(json.dumps(tok.to_meta()))
    del params
    for batch in map(int, _BATCHES.value):
      runs = {impl: [] for impl in _IMPLS.value}
      for _ in tqdm(range(_ROUNDS.value), desc=f"batch {batch}", unit="round"):
        for impl in runs:
          out = pathlib.Path(tmp) / "worker.json"
          r = subprocess.run([sys.executable, __file__, f"--worker={impl}", f"--batch={batch}",
                              f"--size={_SIZE.value}", f"--max_new_tokens={_NEW.value}",
                              f"--prompt_len={_PROMPT_LEN.value}", f"--calls={_CALLS.value}",
                              f"--hf_dir={hf_dir}", f"--worker_out={out}"],
                             capture_output=True, text=True)
          if r.returncode:
            raise RuntimeError(f"{impl} worker failed:\n{r.stderr[-3000:]}")
          runs[impl].append(json.loads(out.read_text()))
      first = next(iter(runs))
      tps = {k: round(statistics.median(r["tokens_per_s"] for r in v), 1)
             for k, v in runs.items()}
      pairs = [("cache_device", "recompute"), ("cache_device", "cache_host"),
               ("cache_device", "transformers"), ("cache_host", "transformers")]
      results["batches"][str(batch)] = {
          "prompt_lengths": runs[first][0]["prompt_lengths"], "tokens_per_s": tps,
          "rounds_tokens_per_s": {k: [round(r["tokens_per_s"], 1) for r in v]
                                  for k, v in runs.items()},
          "first_call_s": {k: round(v[0]["first_call_s"], 2) for k, v in runs.items()},
          f"same_tokens_as_{first}": {k: v[0]["tokens"] == runs[first][0]["tokens"]
                                      for k, v in runs.items()},
          "ratios": {f"{a}/{b}": round(tps[a] / tps[b], 2) for a, b in pairs
                     if a in tps and b in tps}}
      print(json.dumps({batch: {"tokens_per_s": tps,
                                "ratios": results["batches"][str(batch)]["ratios"]}}), flush=True)
  results["machine"]["load_average_after"] = os.getloadavg()
  out = pathlib.Path(_OUT.value)
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = out.with_name(out.name + ".tmp")
  tmp.write_text(json.dumps(results, indent=2) + "\n")
  os.replace(tmp, out)
  print(f"wrote {out}")


if __name__ == "__main__":
  app.run(main)
