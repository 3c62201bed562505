r"""Peak host memory of `convert to-hf` on a ~200M-parameter checkpoint, against its size.

    python benchmarks/convert_memory.py [--size=bench-200m] [--dtype=float32] [--workdir=D]

Writes a random checkpoint with `checkpoint.save`, then runs, each in its own subprocess and
measured with os.wait4 (the child's own peak RSS; MB = 10^6 bytes throughout):
  baseline   the imports and JAX/orbax start-up that to-hf pays before touching any weight;
  to-hf      `python -m lima_jax.convert to-hf` (bfloat16 export, its default), which reads
             the checkpoint through TensorStore a layer slice at a time;
  to-hf-url  the same from a file:// URL (the path any gs:// checkpoint takes);
  full-load  for comparison, `checkpoint.load` of the whole tree followed by `save_hf`.
Writes benchmarks/results/convert_memory.json.
"""
import json
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile
import time

from absl import app, flags

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FLAGS = flags.FLAGS
flags.DEFINE_string("size", "bench-200m", "Named model size (lima_jax.model.config.SIZES).")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Stored parameter dtype.")
flags.DEFINE_string("workdir", None, "Scratch directory for the checkpoint and the exports "
                    "(default: a fresh temporary directory, deleted afterwards).")
flags.DEFINE_string("out", str(ROOT / "benchmarks" / "results" / "convert_memory.json"),
                    "Where to write the results JSON.")

_BASELINE = ("import jax, jax.numpy as jnp, orbax.checkpoint, safetensors, tqdm; "
             "from lima_jax import convert, model; from lima_jax.formats import checkpoint; "
             "jnp.zeros(1).block_until_ready()")
# Random weights of the named size, saved with checkpoint.save; prints sizes as JSON.
_WRITE = """
import json, sys
import jax, numpy as np
from lima_jax import model
from lima_jax.formats import checkpoint
from lima_jax.model import layers
from lima_jax.model.config import get_size
size, dtype, path = sys.argv[1:]
cfg = get_size(size, param_dtype=dtype, dtype=dtype)
boxed = model.abstract_params(cfg)
leaves, treedef = jax.tree.flatten(
    jax.tree.map(lambda b: b.value, boxed, is_leaf=lambda b: hasattr(b, "value")))
rng, np_dtype = np.random.default_rng(0), np.dtype(layers.as_dtype(dtype))
values = [(rng.standard_normal(s.shape, np.float32) * 0.02).astype(np_dtype) for s in leaves]
checkpoint.save(path, jax.tree.unflatten(treedef, values),
                {"model_config": cfg.to_dict(), "tokenizer": None, "step": 0, "epoch": 0})
per_layer = [v[0].nbytes for v, s in zip(values, leaves) if len(s.shape) > 2]
print(json.dumps({"params": model.param_count(cfg),
                  "largest_parameter_mb": round(max(v.nbytes for v in values) / 1e6, 1),
                  "largest_layer_slice_mb": round(max(per_layer) / 1e6, 1),
                  "largest_hf_tensor_mb": round(max(per_layer + [values[0].nbytes]) / 1e6, 1)}))
"""
_FULL_LOAD = ("import sys, pathlib; from lima_jax import convert; "
              "from lima_jax.formats import checkpoint; "
              "from lima_jax.model.config import ModelConfig; "
              "params, meta = checkpoint.load(sys.argv[1]); "
              "convert.save_hf(ModelConfig.from_dict(meta['model_config']), params, "
              "pathlib.Path(sys.argv[2]), meta.get('tokenizer'))")


def measure(cmd: list[str]) -> dict:
  """Runs cmd; returns its wall time and peak RSS (from wait4), or exits with its error.

  Linux carries the parent's RSS at fork into the child's ru_maxrss, which is why this
  process stays small (no JAX, no weights) and the checkpoint is written by a child too.
  """
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
  t0 = time.perf_counter()
  with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=err)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    out.seek(0)
    err.seek(0)
    if proc.returncode:
      raise SystemExit(f"error: {' '.join(cmd)} failed ({proc.returncode}): "
                       f"{err.read().decode().strip()}")
    return {"wall_s": round(wall, 2), "peak_rss_mb": round(usage.ru_maxrss * 1024 / 1e6, 1),
            "stdout": out.read().decode()}


def dir_mb(path: pathlib.Path) -> float:
  return round(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6, 1)


def main(argv):
  del argv
  work = pathlib.Path(FLAGS.workdir or tempfile.mkdtemp(prefix="convert_memory_"))
  work.mkdir(parents=True, exist_ok=True)
  ckpt, out, out_url, out_full = work / "ckpt", work / "hf", work / "hf_url", work / "hf_full"
  for p in (ckpt, out, out_url, out_full):
    shutil.rmtree(p, ignore_errors=True)
  try:
    written = measure([sys.executable, "-c", _WRITE, FLAGS.size, FLAGS.dtype, str(ckpt)])
    info = json.loads(written.pop("stdout").strip().splitlines()[-1])
    baseline = measure([sys.executable, "-c", _BASELINE])
    to_hf = measure([sys.executable, "-m", "lima_jax.convert", "to-hf", f"--checkpoint={ckpt}",
                     f"--out={out}"])
    to_hf_url = measure([sys.executable, "-m", "lima_jax.convert", "to-hf",
                         f"--checkpoint={ckpt.absolute().as_uri()}", f"--out={out_url}"])
    full = measure([sys.executable, "-c", _FULL_LOAD, str(ckpt), str(out_full)])
    for r in (baseline, to_hf, to_hf_url, full):
      r.pop("stdout")
    result = {
        "benchmark": "convert_memory", "size": FLAGS.size, "dtype": FLAGS.dtype, **info,
        "checkpoint_mb": dir_mb(ckpt), "hf_output_mb": dir_mb(out),
        "baseline": baseline, "to_hf": to_hf, "to_hf_file_url": to_hf_url,
        "full_load_then_save_hf": full,
        "to_hf_increment_over_baseline_mb": round(
            to_hf["peak_rss_mb"] - baseline["peak_rss_mb"], 1),
        "to_hf_file_url_increment_over_baseline_mb": round(
            to_hf_url["peak_rss_mb"] - baseline["peak_rss_mb"], 1),
        "full_load_increment_over_baseline_mb": round(
            full["peak_rss_mb"] - baseline["peak_rss_mb"], 1),
        "command": " ".join(["python", "benchmarks/convert_memory.py"] + sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2),
                    "python": platform.python_version()},
    }
  finally:
    if FLAGS.workdir is None:
      shutil.rmtree(work, ignore_errors=True)
  out_path = pathlib.Path(FLAGS.out)
  out_path.parent.mkdir(parents=True, exist_ok=True)
  tmp = out_path.with_name(out_path.name + ".tmp")
  tmp.write_text(json.dumps(result, indent=2) + "\n")
  os.replace(tmp, out_path)
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  app.run(main)
