r"""Time to trace, lower and compile lima_jax's real train step, by depth, with and without scan.

    python benchmarks/compile_time.py --layers=2,8,32,80 --modes=scan,unrolled

Each (depth, mode) is measured in a fresh subprocess (after a throwaway compile, so that backend
start-up is not counted): `build_train_step(...).train_step.lower(...)` (trace + lower to
StableHLO) and `.compile()` (XLA), for the 'demo' model (dim 256) with only `n_layers` changed
and configs/lima.py's remat policy.
Nothing is executed. With scan the layers are one loop body, so the time should be roughly flat
in depth (target: 80 layers within 1.5x of 2); unrolled it grows with depth.
"""
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import train_throughput as common  # noqa: E402 (the helpers only; its flags stay undefined)

_LAYERS = flags.DEFINE_list("layers", ["2", "8", "32", "80"], "Depths to compile.")
_MODES = flags.DEFINE_list("modes", ["scan", "unrolled"], "'scan' and/or 'unrolled'.")
_SIZE = flags.DEFINE_string("size", "demo",
                            "Base size from lima_jax.model.config.SIZES (depth replaced).")
_DIM = flags.DEFINE_integer("dim", 256, "Model width (0: the size's own).")
_BATCH = flags.DEFINE_integer("batch", 8, "Global batch of the compiled step.")
_SEQ = flags.DEFINE_integer("seq", 128, "Sequence length of the compiled step.")
_REPEATS = flags.DEFINE_integer("repeats", 1, "Fresh processes per (depth, mode); the median counts.")
_TIMEOUT = flags.DEFINE_integer("timeout_s", 900, "Give up on one measurement after this long.")
_OUT = flags.DEFINE_string("out", str(common.REPO / "benchmarks/results/compile_time.json"),
                           "Where to write the results JSON (atomically).")
_WORKER = flags.DEFINE_string("worker", "", "Internal: 'LAYERS,MODE' to measure in this process; "
                              "prints one JSON line.")


def model_config(n_layers: int, scan: bool):
  """The size at `n_layers`, with configs/lima.py's remat policy (what a run compiles)."""
  from configs import lima
  from lima_jax.model.config import get_size
  base = get_size(_SIZE.value)
  dim = _DIM.value or base.dim
  return get_size(
      _SIZE.value, n_layers=n_layers, dim=dim, head_dim=dim // base.n_heads,
      scan_layers=scan, dropout_top=0.0, max_seq_len=max(base.max_seq_len, _SEQ.value),
      remat_policy=lima.get_config("demo").model.remat_policy)


def measure(n_layers: int, scan: bool) -> dict:
  import jax
  from configs import lima
  from lima_jax.parallel import sharding
  from lima_jax.train import step as step_lib
  jax.jit(lambda x: x + 1)(1).block_until_ready()  # Backend start-up, not counted.
  cfg = model_config(n_layers, scan)
  config = lima.get_config("demo")
  config.unlock()
  config.model.dropout_top = 0.0
  config.data.max_len, config.train.batch_size = _SEQ.value, _BATCH.value
  mesh = sharding.make_mesh((1, -1, 1))
  with jax.set_mesh(mesh):
    built = step_lib.build_train_step(config, mesh, cfg, total_steps=1000)
    t0 = time.perf_counter()
    lowered = built.train_step.lower(built.abstract_state, built.abstract_batch, jax.random.key(0))
    t1 = time.perf_counter()
    lowered.compile()
    t2 = time.perf_counter()
  return {"layers": n_layers, "mode": "scan" if scan else "unrolled", "lower_s": t1 - t0,
          "compile_s": t2 - t1, "total_s": t2 - t0}


def _spawn(n_layers: int, mode: str) -> dict:
  args = [sys.executable, os.path.abspath(__file__), f"--worker={n_layers},{mode}",
          f"--size={_SIZE.value}", f"--dim={_DIM.value}", f"--batch={_BATCH.value}",
          f"--seq={_SEQ.value}"]
  try:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=_TIMEOUT.value)
  except subprocess.TimeoutExpired:
    return {"layers": n_layers, "mode": mode, "error": f"timeout after {_TIMEOUT.value}s"}
  lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
  if proc.returncode or not lines:
    tail = [l for l in proc.stderr.splitlines() if l.strip()]
    return {"layers": n_layers, "mode": mode,
            "error": f"exit {proc.returncode}: {tail[-1] if tail else 'no output'}"}
  return json.loads(lines[-1])


def main(argv):
  from lima_jax.errors import fail
  try:
    layers = [int(x) for x in _LAYERS.value]
  except ValueError:
    fail(f"--layers={','.join(_LAYERS.value)}: expected comma-separated integers")
  if any(n < 1 for n in layers):
    fail(f"--layers={','.join(_LAYERS.value)}: depths must be positive")
  bad = [m for m in _MODES.value if m not in ("scan", "unrolled")]
  if bad:
    fail(f"--modes: {bad} not in ['scan', 'unrolled']")
  model_config(layers[0], True)  # A bad size stops here, before any worker starts.
  if _WORKER.value:
    n, mode = _WORKER.value.split(",")
    print(json.dumps(measure(int(n), mode == "scan")), flush=True)
    return

  from tqdm import tqdm
  jobs = [(n, m) for m in _MODES.value for n in layers for _ in range(_REPEATS.value)]
  runs = []
  for n, mode in tqdm(jobs, desc="compile", unit="run", file=sys.stderr):
    runs.append(dict(_spawn(n, mode), load_avg_1m=os.getloadavg()[0]))
  table = []
  for mode in _MODES.value:
    for n in layers:
      ok = [r for r in runs if r["layers"] == n and r["mode"] == mode and "error" not in r]
      row = {"layers": n, "mode": mode, "n": len(ok)}
      if ok:
        row.update({k: statistics.median(r[k] for r in ok) for k in
                    ("lower_s", "compile_s", "total_s")})
      else:
        row["error"] = next(r["error"] for r in runs if r["layers"] == n and r["mode"] == mode)
      table.append(row)
  ratios = {}
  for mode in _MODES.value:
    rows = {r["layers"]: r for r in table if r["mode"] == mode and "total_s" in r}
    if len(rows) > 1:
      lo, hi = min(rows), max(rows)
      ratios[f"{mode}_{hi}_over_{lo}"] = rows[hi]["total_s"] / rows[lo]["total_s"]
  cfg = model_config(layers[0], True)
  result = {"benchmark": "compile_time", "command": " ".join([sys.executable] + sys.argv),
            "model": {"size": _SIZE.value, "dim": cfg.dim, "n_heads": cfg.n_heads,
                      "remat_policy": cfg.remat_policy,
                      "hidden_dim": cfg.hidden_dim, "vocab_size": cfg.vocab_size,
                      "batch": _BATCH.value, "seq": _SEQ.value},
            "machine": common.machine_info(), "table": table, "ratios": ratios, "runs": runs}
  common.write_json(_OUT.value, result)
  for row in table:
    shown = (f"lower {row['lower_s']:.2f}s + compile {row['compile_s']:.2f}s = "
             f"{row['total_s']:.2f}s" if "total_s" in row else row["error"])
    print(f"{row['mode']:>8} {row['layers']:>3} layers: {shown}")
  for k, v in ratios.items():
    print(f"{k}: {v:.2f}x")
  print(f"wrote {_OUT.value}")
  failed = [r for r in table if "error" in r]
  if failed:
    fail(f"{len(failed)} measurement(s) failed, first: {failed[0]['layers']} layers "
         f"{failed[0]['mode']}: {failed[0]['error']}")


if __name__ == "__main__":
  from lima_jax.errors import cli_main
  app.run(cli_main(main))
