r"""Interleaved A/B of lima_jax's train step under flag variants, in one process.

    python benchmarks/ab_step.py --shape=testbed --cycles=30 \
        --variants="shipped:;block0:attention_block=0;unrolled:scan_layers=false" \
        --out=benchmarks/results/ab_step_testbed.json

Each variant (`name:flag=value,flag=value`, the flags of benchmarks/train_throughput.py that
change the step: attention_block, scan_layers, remat_policy, loss_chunk, attention) is compiled
as train_throughput's jax worker compiles it, then every cycle runs one step of each, in an order
reversed every other cycle, so that a shared machine's load changes hit all of them alike. Each
variant's step time (wall) and process CPU time are paired with the first variant's in the same
cycle; the results are the medians and quartiles of those ratios, with the 1-minute load
average over the run. CPU time is the steadier of the two on a busy host (a descheduled step
loses wall time, not CPU time), but it also counts the thread pool's spinning.
"""
import os
import pathlib
import statistics
import sys
import time

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import train_throughput as common  # noqa: E402

VARIANT_FLAGS = ("attention_block", "scan_layers", "remat_policy", "loss_chunk", "attention")


def parse_variants(text: str) -> dict[str, dict[str, str]]:
  """'a:;b:x=1,y=2' -> {'a': {}, 'b': {'x': '1', 'y': '2'}}."""
  out = {}
  for item in filter(None, text.split(";")):
    name, _, sets = item.partition(":")
    pairs = dict(p.split("=", 1) for p in filter(None, sets.split(",")))
    bad = sorted(set(pairs) - set(VARIANT_FLAGS))
    if not name or name in out or bad:
      raise ValueError(f"--variants: {item!r} (names must be unique; flags one of "
                       f"{', '.join(VARIANT_FLAGS)})")
    out[name] = pairs
  return out


def build(pairs: dict[str, str]):
  defaults = {k: FLAGS[k].value for k in VARIANT_FLAGS}
  try:
    for k, v in pairs.items():
      FLAGS[k].parse(v)
    return common.jax_step()[0]
  finally:
    for k, v in defaults.items():
      FLAGS[k].value = v


def main(argv):
  from lima_jax.errors import fail
  common.apply_shape()
  try:
    variants = parse_variants(FLAGS.variants)
  except ValueError as e:
    fail(str(e))
  steps = {name: build(pairs) for name, pairs in variants.items()}
  for step in steps.values():
    for _ in range(FLAGS.warmup):
      step()
  names = list(steps)
  wall, cpu, loads = ({n: [] for n in names}, {n: [] for n in names}, [])
  for c in range(FLAGS.cycles):
    for n in names if c % 2 == 0 else names[::-1]:
      t0, c0 = time.perf_counter(), time.process_time()
      steps[n]()
      wall[n].append(time.perf_counter() - t0)
      cpu[n].append(time.process_time() - c0)
    loads.append(os.getloadavg()[0])
  base = names[0]
  results = {}
  for n in names:
    row = {"flags": variants[n]}
    for kind, times in (("wall", wall), ("cpu", cpu)):
      ratios = [a / b for a, b in zip(times[n], times[base])]
      q1, _, q3 = statistics.quantiles(ratios, n=4)
      row[f"{kind}_ms"] = 1e3 * statistics.median(times[n])
      row[f"{kind}_ratio"] = {"median": statistics.median(ratios), "q1": q1, "q3": q3}
    results[n] = row
    print(f"{n}: wall {row['wall_ms']:.1f} ms, x{row['wall_ratio']['median']:.3f} "
          f"({row['wall_ratio']['q1']:.3f}-{row['wall_ratio']['q3']:.3f}); cpu "
          f"{row['cpu_ms']:.1f} ms, x{row['cpu_ratio']['median']:.3f} "
          f"({row['cpu_ratio']['q1']:.3f}-{row['cpu_ratio']['q3']:.3f})")
  load = {"min": min(loads), "median": statistics.median(loads), "max": max(loads)}
  print(f"load average (1 min) over the run: {load['min']:.2f}-{load['max']:.2f}")
  common.write_json(FLAGS.out, {
      "benchmark": "ab_step", "command": " ".join([sys.executable] + sys.argv),
      "settings": {k: FLAGS[k].value for k in ("shape", "size", "batch", "seq", "cycles")},
      "machine": common.machine_info(), "load_1m": load, "variants": results})


FLAGS = flags.FLAGS

if __name__ == "__main__":
  common.define_flags()
  flags.DEFINE_string("variants", "shipped:", "';'-separated name:flag=value,... (the first "
                      "is the baseline).")
  flags.DEFINE_integer("cycles", 30, "Cycles of one step per variant.")
  FLAGS.set_default("out", str(common.REPO / "benchmarks/results/ab_step.json"))
  FLAGS.set_default("warmup", 3)
  from lima_jax.errors import cli_main
  app.run(cli_main(main))
