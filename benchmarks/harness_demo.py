r"""lm-evaluation-harness against the served demo checkpoint: what the `harness` protocol reports
for the demo model before and after its fine-tune, and the same figure from lm-eval run by hand.

    python -m lima_jax.main --config=configs/lima.py:demo --workdir=/tmp/lima_demo  # ~3 min
    python benchmarks/harness_demo.py --demo=/tmp/lima_demo \
      --out=benchmarks/results/harness_demo.json

Three local tasks (no network), written from the demo's own training conversations (the demo
has no held-out facts, so this measures what the fine-tune stored, not generalisation):
- demo_sums_mc: "What is A plus B?" with 4 answers "A plus B is C." (C = the sum and 3 wrong
  sums), multiple choice, `local-completions` (loglikelihoods from the server's echo+logprobs);
- demo_capitals_mc: "What is the capital of X?" with 4 answers "The capital of X is Y.";
- demo_sums_gen: the sum questions generated through `local-chat-completions` (LIMA's turn
  format) with a system instruction (--system_instruction, folded into the first user turn by
  LIMA's rule), greedy with repetition penalty 1, exact match on the full answer sentence;
- demo_sums_gen5: the same through `local-completions` (raw text, no turn format) with 5 stop
  strings.
Each checkpoint (--steps; the epochs 4 and 12 the demo keeps, by default) runs through
`python -m lima_jax.eval --config=configs/eval.py:harness`; the last one is also served by
`python -m lima_jax.serve` and evaluated by the `lm_eval` CLI by hand, whose acc must equal the
protocol's.
"""
import argparse
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time

import numpy as np

_REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_REPO))
from lima_jax.eval.harness import served  # noqa: E402

_MC = ("output_type: multiple_choice\ndoc_to_choice: \"{{choices}}\"\ndoc_to_target: label\n"
       "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n")
_STOPS5 = ["\n", "Question:", "</s>", "<|im_end|>", "\n\n"]


def _gen(until: list[str]) -> str:
  return ("output_type: generate_until\ndoc_to_target: \"{{answer}}\"\ngeneration_kwargs:\n"
          f"  until: {json.dumps(until)}\n  max_gen_toks: 16\n  temperature: 0\nmetric_list:\n"
          "  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n")


def _write(tasks: pathlib.Path, name: str, rows: list[dict], body: str) -> pathlib.Path:
  (tasks / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  yaml = tasks / f"{name}.yaml"
  yaml.write_text(f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
                  f"    test: {tasks / f'{name}.jsonl'}\ntest_split: test\n"
                  "doc_to_text: \"{{question}}\"\n" + body)
  return yaml


def _tasks(tasks: pathlib.Path, rng) -> list[pathlib.Path]:
  rows = [json.loads(l) for l in (_REPO / "data/demo/train.jsonl").read_text().splitlines()]
  turns = [(q, a) for r in rows for q, a in zip(r["conversations"][::2], r["conversations"][1::2])]
  sums = sorted({(int(m[1]), int(m[2])) for q, _ in turns
                 if (m := re.fullmatch(r"What is (\d+) plus (\d+)\?", q))})
  capitals = sorted({(m[1], m[2]) for _, a in turns
                     if (m := re.fullmatch(r"The capital of (.+) is (.+)\.", a))})
  mc_sums, gen_sums = [], []
  for a, b in sums:
    wrong = rng.choice([c for c in range(max(0, a + b - 4), a + b + 5) if c != a + b], 3, False)
    choices = [a + b, *map(int, wrong)]
    order = rng.permutation(4)
    mc_sums.append({"question": f"What is {a} plus {b}?", "label": int(np.argmin(order)),
                    "choices": [f"{a} plus {b} is {choices[i]}." for i in order]})
    gen_sums.append({"question": f"What is {a} plus {b}?", "answer": f"{a} plus {b} is {a + b}."})
  mc_caps = []
  for country, city in capitals:
    others = [c for _, c in capitals if c != city]
    choices = [city, *rng.choice(others, 3, False)]
    order = rng.permutation(4)
    mc_caps.append({"question": f"What is the capital of {country}?",
                    "label": int(np.argmin(order)),
                    "choices": [f"The capital of {country} is {choices[i]}." for i in order]})
  return [_write(tasks, "demo_sums_mc", mc_sums, _MC),
          _write(tasks, "demo_capitals_mc", mc_caps, _MC),
          _write(tasks, "demo_sums_gen", gen_sums, _gen(["\n"])),
          _write(tasks, "demo_sums_gen5", gen_sums, _gen(_STOPS5))]


def _protocol(ckpt: pathlib.Path, workdir: pathlib.Path, tasks, model: str, *extra) -> dict:
  t0 = time.perf_counter()
  cmd = [sys.executable, "-m", "lima_jax.eval", "--config=configs/eval.py:harness",
         f"--workdir={workdir}", f"--config.checkpoint={ckpt}",
         f"--config.harness.tasks={','.join(map(str, tasks))}", f"--config.harness.model={model}",
         "--config.harness.gen_kwargs=repetition_penalty=1", *extra]
  subprocess.run(cmd, cwd=_REPO, check=True)
  results = json.loads((workdir / "results.json").read_text())
  return {"command": " ".join(["python"] + cmd[1:]), "seconds": round(time.perf_counter() - t0),
          "results": results}


def _by_hand(ckpt: pathlib.Path, tasks: pathlib.Path, out: pathlib.Path) -> dict:
  """The lm_eval CLI against `python -m lima_jax.serve`, as a user would run it."""
  with served(str(ckpt)) as url:
    cmd = ["lm_eval", "--model", "local-completions", "--tasks", "demo_sums_mc,demo_capitals_mc",
           "--include_path", str(tasks), "--model_args",
           f"model=lima_jax,base_url={url}/v1/completions,num_concurrent=1,max_retries=1",
           "--output_path", str(out)]
    subprocess.run([str(pathlib.Path(sys.executable).parent / cmd[0])] + cmd[1:], check=True,
                   env={**os.environ, "HF_DATASETS_OFFLINE": "1",
                        "HF_HUB_OFFLINE": "1", "OPENAI_API_KEY": "none"})
  raw = json.loads(next(out.rglob("results_*.json")).read_text())
  return {"command": " ".join(cmd), "acc": {t: raw["results"][t]["acc,none"]
                                            for t in ("demo_sums_mc", "demo_capitals_mc")}}


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--demo", default="/tmp/lima_demo", help="The demo's workdir.")
  ap.add_argument("--steps", default="32,96", help="Checkpoints to evaluate (the last: by hand).")
  ap.add_argument("--seed", type=int, default=0, help="Seed of the wrong answers' choice.")
  ap.add_argument("--system_instruction", default="Answer in one sentence.",
                  help="The chat route's system instruction ('' for none).")
  ap.add_argument("--out", default=str(_REPO / "benchmarks/results/harness_demo.json"))
  args = ap.parse_args()
  tmp = pathlib.Path(tempfile.mkdtemp(prefix="harness_demo_"))
  (tmp / "tasks").mkdir()
  mc_sums, mc_caps, gen, gen5 = _tasks(tmp / "tasks", np.random.default_rng(args.seed))
  result = {"command": " ".join(["python", "benchmarks/harness_demo.py"] + sys.argv[1:]),
            "tasks": {p.stem: sum(1 for _ in open(p.with_suffix(".jsonl")))
                      for p in (mc_sums, mc_caps, gen, gen5)}, "stops5": _STOPS5,
            "system_instruction": args.system_instruction, "checkpoints": {}}
  for step in args.steps.split(","):
    ckpt = pathlib.Path(args.demo) / "checkpoints" / step
    if not ckpt.is_dir():
      sys.exit(f"--demo: no checkpoint {ckpt} (train the demo first; see the docstring)")
    r = {"completions": _protocol(ckpt, tmp / f"c{step}", [mc_sums, mc_caps, gen5],
                                  "local-completions"),
         "chat": _protocol(ckpt, tmp / f"g{step}", [gen], "local-chat-completions",
                           f"--config.harness.system_instruction={args.system_instruction}")}
    result["checkpoints"][step] = r
    print(json.dumps({step: {k: v["results"] for k, v in r.items()}}, indent=1), flush=True)
  result["by_hand"] = _by_hand(ckpt, tmp / "tasks", tmp / "by_hand")
  print(json.dumps(result["by_hand"], indent=1))
  pathlib.Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
