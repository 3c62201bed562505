r"""The judged-evaluation demo: LIMA's 300 test prompts, the demo model's last epoch against
an earlier one (and MT-Bench's 80 questions, two turns), every protocol, through the scripted
local judge; then a rerun (all cache).

    python -m lima_jax.main --config=configs/lima.py:demo --workdir=/tmp/eval_demo   # ~1-2 min
    python benchmarks/eval_demo.py --demo=/tmp/eval_demo --out=/tmp/eval_ms \
      --results=benchmarks/results/eval_demo.json

Answers: checkpoints/96 (epoch 12) and checkpoints/32 (epoch 4), LIMA's decoding, at most
128 new tokens (2 CPU cores), through the same CLI a user runs (`--config.checkpoint`). The
judge injects 2% 429s (Retry-After: 1) and 1% 500s on first sight of a request.
"""
import argparse
import json
import pathlib
import subprocess
import sys
import time

_REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_REPO))
from lima_jax.eval.scripted_judge import Server  # noqa: E402

PROMPTS = _REPO.parent / "shared/data/lima/test.jsonl"
MT_BENCH = _REPO.parent / "shared/data/eval/mt_bench/question.jsonl"


def _cli(*args) -> dict:
  t0 = time.perf_counter()
  p = subprocess.run([sys.executable, "-m", "lima_jax.eval", *args], cwd=_REPO,
                     capture_output=True, text=True)
  if p.returncode not in (0, 3):
    sys.exit(f"failed: {' '.join(args)}\n{p.stderr}")
  print(p.stdout.strip(), flush=True)
  return {"seconds": round(time.perf_counter() - t0, 1), "stdout": p.stdout.strip()}


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--demo", default="/tmp/eval_demo")
  ap.add_argument("--out", default="/tmp/eval_ms")
  ap.add_argument("--results", default="")
  a = ap.parse_args()
  out, ckpt = pathlib.Path(a.out), pathlib.Path(a.demo) / "checkpoints"
  gen = ["--config.generate.max_new_tokens=128", "--config.generate.batch_size=16"]
  runs = {}
  with Server(rate_limit=0.02, server_error=0.01, retry_after=1.0) as judge:
    j = [f"--config.judge.base_url={judge.url}", "--config.judge.model=scripted"]
    # Answers from both checkpoints (judge_free needs no judge: it also writes them).
    for name, step in (("epoch12", 96), ("epoch4", 32)):
      runs[f"judge_free_{name}"] = _cli(
          "--config=configs/eval.py:judge_free", f"--workdir={out}/judge_free_{name}",
          f"--config.checkpoint={ckpt}/{step}", f"--config.prompts={PROMPTS}",
          "--config.generate.samples=1", f"--config.name={name}", *gen)
    system = f"{out}/judge_free_epoch12/answers.jsonl"
    base = f"{out}/judge_free_epoch4/answers.jsonl"
    pair = ["--config=configs/eval.py:lima_pairwise", f"--workdir={out}/lima_pairwise",
            f"--config.answers={system}", f"--config.baseline={base}",
            "--config.name=epoch12", "--config.baseline_name=epoch4", *j]
    runs["dry_run"] = _cli(*pair, "--config.dry_run=True")
    runs["lima_pairwise"] = _cli(*pair)
    runs["lima_pairwise_rerun"] = _cli(*pair)
    runs["alpaca_eval"] = _cli(
        "--config=configs/eval.py:alpaca_eval", f"--workdir={out}/alpaca_eval",
        f"--config.answers={system}", f"--config.baseline={base}", "--config.name=epoch12",
        "--config.baseline_name=epoch4", *j)
    runs["lima_likert"] = _cli(
        "--config=configs/eval.py:lima_likert", f"--workdir={out}/lima_likert",
        f"--config.checkpoint={ckpt}/96", f"--config.prompts={PROMPTS}",
        "--config.generate.samples=5", "--config.name=epoch12", *gen, *j)
    runs["lima_likert_epoch4"] = _cli(
        "--config=configs/eval.py:lima_likert", f"--workdir={out}/lima_likert_epoch4",
        f"--config.checkpoint={ckpt}/32", f"--config.prompts={PROMPTS}",
        "--config.generate.samples=5", "--config.name=epoch4", *gen, *j)
    runs["mt_bench"] = _cli(
        "--config=configs/eval.py:mt_bench", f"--workdir={out}/mt_bench",
        f"--config.checkpoint={ckpt}/96", f"--config.prompts={MT_BENCH}",
        "--config.name=epoch12", *gen, *j)
    runs["compare"] = _cli("compare", f"{out}/lima_likert", f"{out}/lima_likert_epoch4")
    runs["figure_1"] = _cli("compare", f"{out}/lima_pairwise", f"{out}/alpaca_eval",
                            f"--png={out}/figure_1.png")
    statuses = {str(s): judge.statuses.count(s) for s in sorted(set(judge.statuses))}
    repeated = sum(1 for v in judge.answered.values() if v > 1)
  figures = {k: json.loads((out / k / "results.json").read_text())
             for k in ("lima_pairwise", "alpaca_eval", "lima_likert", "lima_likert_epoch4",
                       "mt_bench", "judge_free_epoch12", "judge_free_epoch4")}
  summary = {"runs": runs, "server_statuses": statuses, "answered_twice": repeated,
             "results": figures}
  print(f"server statuses {statuses}; requests answered twice: {repeated}")
  if a.results:
    pathlib.Path(a.results).write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
  main()
