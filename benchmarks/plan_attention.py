r"""Splash beside XLA attention in the planner, for LIMA's recipe on the slices docs/tpu.md
names: fits or not, peak HBM, FLOPs (XLA's cost analysis, the loop-weighted HLO count, splash's
own) against the model count, bytes, the roofline step, compile time.

  python benchmarks/plan_attention.py [--rows=7b-v4-16,...] [--impls=splash,xla]

Each cell is one `python -m lima_jax.plan ... --out=J` run (libtpu's compiler, no TPU:
pip install -r requirements-tpu.txt); the JSON holds every plan and the markdown table docs/tpu.md
shows (rewritten from the JSON on every run, so a run with nothing left to plan refreshes it).
Compiling 65B takes minutes a plan on a small CPU.
"""
import importlib.metadata
import json
import pathlib
import subprocess
import sys
import tempfile
import time

from absl import app, flags

REPO = pathlib.Path(__file__).resolve().parents[1]
# name -> (config, topology, mesh, extra overrides)
ROWS = {
    "7b-v4-16": ("configs/lima.py:7b", "v4-16", "1,8,1", ["--config.train.grad_accum_steps=2"]),
    "7b-v5e-16": ("configs/lima.py:7b", "v5e-16", "1,16,1", []),
    "65b-v4-128": ("configs/lima.py:65b", "v4-128", "1,32,2", []),
    "65b-v4-256": ("configs/lima.py:65b", "v4-256", "1,32,4", []),
    "llama3.1-8b-v5p-8": ("configs/lima.py:7b", "v5p-8", "1,4,1",
                          ["--config.model.size=llama3.1-8b"]),
}
IMPLS = ("splash", "xla")
FLAGS = flags.FLAGS
flags.DEFINE_list("rows", list(ROWS), f"Rows to plan, of {list(ROWS)}.")
flags.DEFINE_list("impls", list(IMPLS), "Attentions to plan each row with.")
flags.DEFINE_bool("redo", False, "Plan again the cells --out already holds.")
flags.DEFINE_string("out", str(REPO / "benchmarks/results/plan_attention.json"), "JSON out.")


def plan(row: str, impl: str) -> dict:
  config, topology, mesh, extra = ROWS[row]
  with tempfile.TemporaryDirectory() as tmp:
    out = pathlib.Path(tmp) / "plan.json"
    cmd = [sys.executable, "-m", "lima_jax.plan", f"--config={config}", f"--topology={topology}",
           f"--mesh={mesh}", f"--config.model.attention_impl={impl}", *extra, f"--out={out}"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode not in (0, 3):
      raise SystemExit(f"error: {row} {impl}: {proc.stderr.strip().splitlines()[-1]}")
    p = json.loads(out.read_text())
  print(proc.stdout, flush=True)
  return {"row": row, "impl": impl, "command": " ".join(cmd[1:-1]), "wall_seconds": wall, **p}


def _gib(b):
  return f"{b / 2**30:.2f}" if b is not None else "-"


def table(plans: list[dict]) -> str:
  """Per chip per step. XLA: its cost analysis (each loop body once). HLO: lima_jax.plan.hlo_count
  (every loop body x its trip count, matmul FLOPs). Kernel: splash counted from its blocks."""
  lines = ["| config | slice | mesh | attention | fits | peak HBM GiB / usable | XLA FLOPs "
           "(bodies once) | HLO FLOPs (loop-weighted) | kernel FLOPs | model FLOPs | "
           "(HLO + kernel) / model | HLO + kernel bytes | roofline step | implied MFU | "
           "compile s |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for p in plans:
    mesh = ",".join(str(v) for v in p["mesh"].values())
    cells = ["-"] * 8
    if p["fits"] and "hlo_flops" in p:  # (not in plans made before the loop-weighted count)
      flops = p["hlo_flops"] + p["kernel_flops"]
      bound = " (lower bound)" if p["unknown_loops"] else ""
      cells = [f"{p['xla_flops_loop_bodies_once']:.3g}", f"{p['hlo_flops']:.3g}",
               f"{p['kernel_flops']:.3g}", f"{p['model_flops']:.3g}",
               f"{flops / p['model_flops']:.2f}{bound}",
               f"{p['hlo_bytes']:.3g} + {p['kernel_bytes']:.3g}",
               f"{p['roofline']['seconds']:.2f} s{bound}", f"{p['roofline_mfu']:.0%}"]
    lines.append(
        f"| {p['row']} | {p['accelerator_type']} | {mesh} | {p['impl']} | "
        f"{'yes' if p['fits'] else 'no'} | {_gib(p['peak_bytes'])} / "
        f"{_gib(p['usable_hbm_bytes'])} | {' | '.join(cells)} | {p['compile_seconds']:.0f} |")
  return "\n".join(lines)


def main(argv):
  del argv
  out = pathlib.Path(FLAGS.out)
  done = json.loads(out.read_text())["plans"] if out.exists() else []
  order = {(r, i): n for n, (r, i) in enumerate((r, i) for r in ROWS for i in IMPLS)}
  meta = {"libtpu": importlib.metadata.version("libtpu")}
  for row in FLAGS.rows:
    for impl in FLAGS.impls:
      if not FLAGS.redo and any((p["row"], p["impl"]) == (row, impl) for p in done):
        continue
      done = [p for p in done if (p["row"], p["impl"]) != (row, impl)] + [plan(row, impl)]
      done.sort(key=lambda p: order[p["row"], p["impl"]])
      out.write_text(json.dumps({**meta, "plans": done, "table": table(done)}, indent=1) + "\n")
  out.write_text(json.dumps({**meta, "plans": done, "table": table(done)}, indent=1) + "\n")
  print(table(done))


if __name__ == "__main__":
  app.run(main)
