r"""Where lima_jax's train step spends its time, per op class, from a `jax.profiler` trace.

    python benchmarks/profile_step.py --shape=testbed --trace_steps=10 \
        --out=benchmarks/results/profile_testbed.json

It builds the step exactly as benchmarks/train_throughput.py's jax worker does (the same flags:
--shape, --size, --batch, --seq, ...), runs --warmup steps, traces --trace_steps more, and reads
the trace against the compiled HLO: every XLA:CPU thunk event (one per executed HLO instruction:
dots, fusions, copies) is put in one class by its opcode and its JAX source path (op_name
metadata, or for a fusion without one the first op_name inside it):

- weight matmuls: dots without batch dimensions (the projections, forward and both gradients),
  with their achieved GFLOP/s (2 M N K per dot, from the HLO shapes);
- head matmuls: the fused loss's (lima_jax/train/loss.py) output projection;
- attention matmuls: the batched dots of the blocked causal attention;
- attention elementwise: the rest of the attention layer (mask, softmax, RoPE, layout);
- scan buffers: the zero-filled broadcasts and copies that start the scan's per-layer stacks,
  and other copies; scan stacking: the per-layer dynamic slices and updates of those stacks;
- optimizer and metrics: everything outside the model and loss (clipping, AdamW, norms);
- loss elementwise, and the model's other elementwise work (norms, SwiGLU, residuals, the
  embedding's gather and scatter).

Times are summed thunk durations over the threads that ran them (XLA:CPU runs thunks on its
Eigen pool, so two threads can each run one at once); `idle` is the step's wall time minus the
time each pool thread spent inside some thunk. On a loaded machine a thunk's duration includes
the time its thread was descheduled, so the shares are more stable than the milliseconds:
results record the 1-minute load average at the start and end of the trace.
"""
import collections
import glob
import gzip
import json
import math
import os
import pathlib
import re
import sys
import tempfile
import time

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import train_throughput as common  # noqa: E402
from lima_jax.plan import hlo_count, hlo_text  # noqa: E402

CLASSES = ("weight matmuls", "head matmuls", "attention matmuls", "attention elementwise",
           "scan buffers (zero-fill, copies)", "scan stacking (dynamic slice/update)",
           "optimizer and metrics", "loss elementwise", "other elementwise")
CONTAINERS = ("while", "conditional", "call")
_OP_NAME = re.compile(r'op_name="([^"]*)"')


def parse_hlo(text: str) -> dict:
  """name -> {op, shape, meta, batch, flops} for every instruction of the compiled module
  (parsed, and dots counted, as the planner does: lima_jax.plan.hlo_text / hlo_count)."""
  comps, _ = hlo_text.parse(text)
  op_name = lambda ins: (m.group(1) if (m := _OP_NAME.search(ins.attrs)) else "")
  fused_meta = {comp: next((op_name(i) for i in body if op_name(i)), "")  # its first op_name
                for comp, body in comps.items()}
  shapes = {i.name: i.shape for body in comps.values() for i in body}
  info = {}
  for ins in (i for body in comps.values() for i in body):
    calls = hlo_text.called(ins.attrs, "calls")
    info[ins.name] = {"op": ins.op, "shape": ins.shape, "batch": "lhs_batch_dims" in ins.attrs,
                      "meta": op_name(ins) or (fused_meta.get(calls[0], "") if calls else "")}
    if ins.op == "dot":
      info[ins.name]["flops"] = hlo_count.matmul_flops(ins, shapes)
  return info


def op_class(name: str, i: dict) -> str | None:
  op, meta = i["op"], i["meta"]
  if op in CONTAINERS:
    return None  # its body's thunks are counted themselves
  in_loss = "jvp()" in meta
  if op == "dot":
    return "attention matmuls" if i["batch"] else "head matmuls" if in_loss else "weight matmuls"
  if op == "copy" or name.startswith(("wrapped_broadcast", "copy")):
    return "scan buffers (zero-fill, copies)"
  if "dynamic-slice" in name or "dynamic-update-slice" in name:
    return "scan stacking (dynamic slice/update)"
  if "/attn/" in meta:
    return "attention elementwise"
  if in_loss:
    return "loss elementwise"
  if "Transformer" not in meta:
    return "optimizer and metrics"
  return "other elementwise"


def _union(intervals) -> float:
  total, end = 0.0, -math.inf
  for a, b in sorted(intervals):
    if a > end:
      total, end = total + b - a, b
    elif b > end:
      total, end = total + b - end, b
  return total


def breakdown(trace: dict, info: dict, wall_s: list[float]) -> dict:
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in events
             if e.get("ph") == "M" and e.get("name") == "thread_name"}
  n = len(wall_s)
  ms = collections.Counter()
  flops = collections.Counter()
  busy = collections.defaultdict(list)
  top = collections.defaultdict(collections.Counter)
  for e in events:
    if e.get("ph") != "X" or e["name"] not in info:
      continue
    cls = op_class(e["name"], info[e["name"]])
    if cls is None:
      continue
    ms[cls] += e["dur"] / 1e3 / n
    flops[cls] += info[e["name"]].get("flops", 0) / n
    top[cls][e["name"]] += e["dur"] / 1e3 / n
    busy[threads.get((e["pid"], e["tid"]), str(e["tid"]))].append((e["ts"], e["ts"] + e["dur"]))
  wall_ms = 1e3 * sum(wall_s) / n
  ops_ms = sum(ms.values())
  classes = {}
  for cls in CLASSES:
    classes[cls] = {"ms": ms[cls], "share_of_op_time": ms[cls] / ops_ms,
                    "top": {k: {"ms": v, "shape": info[k]["shape"], "op_name": info[k]["meta"]}
                            for k, v in top[cls].most_common(5)}}
    if flops[cls]:
      classes[cls]["gflop"] = flops[cls] / 1e9
      classes[cls]["gflops"] = flops[cls] / 1e9 / (ms[cls] / 1e3)
  busy_ms = {t: _union(iv) / 1e3 / n for t, iv in busy.items()}
  return {"step_wall_ms": wall_ms, "op_time_ms": ops_ms, "classes": classes,
          "threads": {t: {"busy_ms": v, "idle_ms": wall_ms - v} for t, v in busy_ms.items()}}


def markdown(result: dict) -> str:
  b = result["breakdown"]
  lines = [f"Step wall time {b['step_wall_ms']:.1f} ms (mean; median of the traced steps "
           f"{result['step_ms_median']:.1f} ms), thunk time {b['op_time_ms']:.1f} ms summed over "
           f"threads; load average (1 min) {result['load_1m_before']:.2f} before, "
           f"{result['load_1m_after']:.2f} after.", "",
           "| op class | ms / step | % of thunk time | GFLOP / step | GFLOP/s |",
           "|---|---|---|---|---|"]
  for cls, c in b["classes"].items():
    rate = (f"{c['gflop']:.2f} | {c['gflops']:.0f}" if "gflop" in c else " | ")
    lines.append(f"| {cls} | {c['ms']:.1f} | {100 * c['share_of_op_time']:.1f} | {rate} |")
  lines += ["", "| thread | busy ms / step | idle ms / step |", "|---|---|---|"]
  lines += [f"| {t} | {v['busy_ms']:.1f} | {v['idle_ms']:.1f} |" for t, v in b["threads"].items()]
  return "\n".join(lines) + "\n"


def main(argv):
  import jax
  common.apply_shape()
  step, _ = common.jax_step()
  for _ in range(FLAGS.warmup):
    step()
  trace_dir = tempfile.mkdtemp(prefix="profile_step_")
  load_before, wall = os.getloadavg()[0], []
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    for _ in range(FLAGS.trace_steps):
      t0 = time.perf_counter()
      step()
      wall.append(time.perf_counter() - t0)
  trace = json.load(gzip.open(glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True)[0]))
  info = parse_hlo(step.compiled.as_text())
  result = {"benchmark": "profile_step", "command": " ".join([sys.executable] + sys.argv),
            "settings": {k: FLAGS[k].value for k in ("shape", "size", "batch", "seq", "dtype",
                                                     "remat_policy", "scan_layers")},
            "machine": common.machine_info(), "load_1m_before": load_before,
            "load_1m_after": os.getloadavg()[0], "trace_dir": trace_dir,
            "step_ms_median": 1e3 * sorted(wall)[len(wall) // 2],
            "breakdown": breakdown(trace, info, wall)}
  common.write_json(FLAGS.out, result)
  print(markdown(result))
  print(f"wrote {FLAGS.out} (trace in {trace_dir})")


FLAGS = flags.FLAGS

if __name__ == "__main__":
  common.define_flags()
  flags.DEFINE_integer("trace_steps", 10, "Steps traced (after --warmup untraced ones).")
  FLAGS.set_default("out", str(common.REPO / "benchmarks/results/profile_step.json"))
  FLAGS.set_default("warmup", 5)
  from lima_jax.errors import cli_main
  app.run(cli_main(main))
