r"""Time tokenizing + encoding LIMA's train set (1,030 conversations) with the LLaMA tokenizer.

    python benchmarks/encode_lima.py [--data=F] [--tokenizer=T] [--repeats=3]

Measures reading (`read_records`), the batched `encode_records` that `load_sft_data` uses,
and a one-call-per-utterance `encode_conversation` loop for comparison, then builds the rows
of one epoch (padded and packed). Writes benchmarks/results/encode_lima.json. Skips, saying
why, when the shared data is absent.
"""
import json
import os
import pathlib
import platform
import statistics
import sys
import time

from absl import app, flags

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lima_jax.data import batches as data  # noqa: E402
from lima_jax.datasets import read_records  # noqa: E402
from lima_jax.tokenizer import load as load_tokenizer

SHARED = ROOT.parent / "shared" / "data"
FLAGS = flags.FLAGS
flags.DEFINE_string("data", str(SHARED / "lima" / "train.jsonl"), "LIMA train.jsonl.")
flags.DEFINE_string("tokenizer", str(SHARED / "llama2c" / "llama_tokenizer" / "tokenizer.model"),
                    "SentencePiece model (or llama2.c .bin) to encode with.")
flags.DEFINE_integer("max_len", 2048, "Trim length (LIMA: 2048).")
flags.DEFINE_integer("repeats", 3, "Timed repetitions; the median is reported.")
flags.DEFINE_string("out", str(ROOT / "benchmarks" / "results" / "encode_lima.json"),
                    "Where to write the results JSON.")


def timed(fn, repeats):
  times, result = [], None
  for _ in range(repeats):
    t0 = time.perf_counter()
    result = fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times), times, result


def main(argv):
  del argv
  for path in (FLAGS.data, FLAGS.tokenizer):
    if not pathlib.Path(path).exists():
      print(f"skipped: {path} not present (shared data is not bundled: licences)")
      return
  tok = load_tokenizer(FLAGS.tokenizer)
  read_s, _, (records, _) = timed(lambda: read_records(FLAGS.data), FLAGS.repeats)
  batched_s, batched_all, encoded = timed(
      lambda: data.encode_records(records, tok, FLAGS.max_len), FLAGS.repeats)
  loop_s, _, looped = timed(
      lambda: [data.encode_conversation(r.conversations, tok, FLAGS.max_len) for r in records],
      FLAGS.repeats)
  assert all((a.tokens == b.tokens).all() for a, b in zip(encoded, looped))
  rows_s = {}
  for pack in (False, True):
    ds = data.SFTDataset(encoded, global_batch=32, row_len=FLAGS.max_len, pack=pack, seed=0)
    rows_s["packed" if pack else "padded"] = timed(
        lambda: [ds.batch(s) for s in range(ds.steps_in_epoch(0))], 1)[0]
    rows_s[("packed" if pack else "padded") + "_steps"] = ds.steps_in_epoch(0)
  tokens = sum(len(e.tokens) for e in encoded)
  result = {
      "benchmark": "encode_lima",
      "data": FLAGS.data, "tokenizer": FLAGS.tokenizer, "max_len": FLAGS.max_len,
      "conversations": len(records), "tokens_after_trim": tokens,
      "loss_tokens": sum(e.n_loss_tokens for e in encoded),
      "read_s": round(read_s, 4),
      "encode_batched_s": round(batched_s, 4),
      "encode_batched_runs_s": [round(t, 4) for t in batched_all],
      "encode_per_utterance_s": round(loop_s, 4),
      "tokens_per_s_batched": round(tokens / batched_s),
      "epoch_rows_s": {k: round(v, 4) if isinstance(v, float) else v for k, v in rows_s.items()},
      "repeats": FLAGS.repeats,
      "machine": {"cpus": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2),
                  "platform": platform.platform(),
                  "python": platform.python_version()},
      "command": "python benchmarks/encode_lima.py",
  }
  out = pathlib.Path(FLAGS.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = out.with_name(out.name + ".tmp")
  tmp.write_text(json.dumps(result, indent=2) + "\n")
  os.replace(tmp, out)
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  app.run(main)
