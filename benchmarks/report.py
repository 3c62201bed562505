r"""Renders benchmarks/results/ into the tables of docs/performance.md.

train_throughput.json is the main table; every other train_throughput_*.json (a rerun, another
machine, a GPU run) becomes one line under it, naming its machine; ablation/<machine>/*.json
fill one column each of the ablation table; compile_time.json the compile-time table.

    python benchmarks/report.py           # rewrites the block between docs/performance.md's markers
    python benchmarks/report.py --check   # exit 1 if that block is not what the files say

docs/performance.md's figures are only ever written by this script, from the results files
the benchmarks wrote, so no number in that table is typed by hand (tests/test_benchmarks.py
runs --check).
"""
import json
import pathlib
import re
import sys

from absl import app, flags

REPO = pathlib.Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- benchmarks:begin -->", "<!-- benchmarks:end -->"

_CHECK = flags.DEFINE_bool("check", False, "Only compare; exit 1 if docs/performance.md is stale.")
_README = flags.DEFINE_string("readme", str(REPO / "docs/performance.md"), "The file to update.")
_RESULTS = flags.DEFINE_string("results", str(REPO / "benchmarks/results"),
                               "The results folder the tables are rendered from.")


def _command(result: dict) -> str:
  """The recorded command with the interpreter's path shortened to `python`."""
  words = result["command"].split()
  return " ".join(["python", *words[1:]]) if words and "python" in words[0] else result["command"]


def _same_run(a: dict, b: dict) -> bool:
  """Whether two results came from the same command, wherever each wrote its file."""
  def words(r):
    return [w for w in _command(r).split() if not w.startswith("--out=")]
  return words(a) == words(b)


def _device(result: dict) -> str:
  """The accelerator lima_jax ran on, with its host CPU, or the CPU it ran on."""
  first = next((r["jax"] for r in result["rounds"] if "platform" in r.get("jax", {})), {})
  cpu = result["machine"]["cpu"]
  return cpu if first.get("platform", "cpu") == "cpu" else f"{first['device_kind']} (host {cpu})"


def _mfu(summary: dict) -> str:
  """', MFU a% (lima_jax), b% (torch)' against the device's peak, where one is known."""
  parts = [f"{summary[k]['mfu']['median']:.1%} ({name})" for k, name in (
      ("jax", "lima_jax"), ("torch", "torch")) if (summary.get(k) or {}).get("mfu")]
  return f", MFU {', '.join(parts)}" if parts else ""


def _machine(result: dict) -> str:
  m = result["machine"]
  v = m["versions"]
  libs = ", ".join(f"{k} {v[k]}" for k in ("jax", "flax", "torch", "transformers") if v.get(k))
  return f"{_device(result)}, {m['cores']} cores; {libs}"


def throughput_table(result: dict, results: pathlib.Path) -> str:
  s, settings = result["summary"], result["settings"]
  rows = [("lima_jax", "jax")] + [(name, key) for name, key in (
      ("PyTorch + transformers", "torch"), ("PyTorch + transformers, torch.compile",
                                            "torch_compile")) if key in s]
  lines = [f"Training step, `{settings['size']}`, batch {settings['batch']} x {settings['seq']}, "
           f"{settings['dtype']}, {int(settings['assistant_fraction'] * 100)}% of tokens in the "
           f"loss; median over {settings['rounds']} rounds of {settings['steps']} steps "
           "(each round a fresh process per side, sides alternating):", "",
           "| implementation | tokens/s | loss tokens/s | step (s) | peak RSS (MB) |",
           "|---|---|---|---|---|"]
  for name, key in rows:
    if key not in s:
      continue
    f = s[key]
    lines.append(f"| {name} | {f['tokens_per_s']['median']:.0f} | "
                 f"{f['loss_tokens_per_s']['median']:.0f} | {f['step_time_s']['median']:.2f} "
                 f"({f['step_time_s']['min']:.2f}-{f['step_time_s']['max']:.2f}) | "
                 f"{f['host_peak_rss_mb']['max']:.0f} |")
  for key in ("jax_over_torch", "jax_over_torch_compile"):
    if key in s:
      r = s[key]
      lines += ["", f"**{key.replace('_', ' ').replace('jax over', 'lima_jax /')}: "
                f"{r['median']:.2f}x** tokens/s (per-round ratios {r['min']:.2f}-{r['max']:.2f})."]
  lines += ["", f"Machine: {_machine(result)}{_mfu(s)}.", "", f"`{_command(result)}`"]
  others = sorted(results.glob("train_throughput_*.json"))
  if others:
    lines += ["", "Other runs (each file's own machine; the command above, apart from --out, "
              "unless shown):", ""]
  for path in others:
    other = json.loads(path.read_text())
    again = other["summary"]
    line = (f"- `benchmarks/results/{path.name}`, {_device(other)}: lima_jax "
            f"{again['jax']['step_time_s']['median']:.2f} s")
    if "jax_over_torch" in again:
      r = again["jax_over_torch"]
      line += (f", torch {again['torch']['step_time_s']['median']:.2f} s a step, "
               f"**{r['median']:.2f}x** (per-round ratios {r['min']:.2f}-{r['max']:.2f})")
    else:
      line += " a step"
    if "jax_attention_free_over_torch" in again:
      r, share = again["jax_attention_free_over_torch"], again["jax_attention_free_over_jax"]
      line += (f"; with attention replaced by a stand-in that costs nothing (`--attention_free`, "
               f"the ceiling for any attention kernel) **{r['median']:.2f}x** (per-round "
               f"{r['min']:.2f}-{r['max']:.2f}): attention is {1 - 1 / share['median']:.0%} of "
               "lima_jax's step")
    if "matmul_floor_over_torch" in again:
      r, floor = again["matmul_floor_over_torch"], again["matmul_floor"]
      line += (f"; the weight matmuls alone at the best single-matmul rate measured "
               f"({floor['best_gemm_gflops']['median']:.0f} GFLOP/s) take "
               f"{floor['step_time_s']['median']:.3f} s, **{r['median']:.2f}x** torch's step "
               f"(per-round {r['min']:.2f}-{r['max']:.2f}): the most any step gains at that rate")
    line += _mfu(again)
    if not _same_run(other, result):
      line += f"; `{_command(other)}`"
    lines.append(line + ".")
  return "\n".join(lines)


def compile_table(result: dict) -> str:
  m = result["model"]
  modes = sorted({r["mode"] for r in result["table"]}, key=["scan", "unrolled"].index)
  depths = sorted({r["layers"] for r in result["table"]})
  cell = {(r["layers"], r["mode"]): r for r in result["table"]}
  lines = [f"Trace + lower + compile of the train step (seconds), `{m['size']}` at width "
           f"{m['dim']}, batch {m['batch']} x {m['seq']}, by depth:", "",
           "| layers | " + " | ".join(modes) + " |", "|---" * (len(modes) + 1) + "|"]
  for n in depths:
    vals = [f"{cell[(n, mo)]['total_s']:.1f}" if "total_s" in cell.get((n, mo), {}) else
            "failed" for mo in modes]
    lines.append(f"| {n} | " + " | ".join(vals) + " |")
  ratios = "; ".join(f"{k.split('_')[0]}: {k.split('_')[1]} layers / {k.split('_')[3]} layers = "
                     f"{v:.2f}x" for k, v in result["ratios"].items())
  lines += ["", f"{ratios}.", "", f"`{_command(result)}`"]
  return "\n".join(lines)


ABLATIONS = (  # file in results/ablation/ -> what that run had
    ("session3_final.json", "commit 5de37f3: fused loss-token head in chunks of 32 positions "
     "per row, blocked attention on [B, T, G, R, K] with a stored mask, no remat"),
    ("head_major_attention.json", "+ head-major attention, key-major scores, masks built from "
     "segment ids in each block (commit d879bda)"),
    ("remat_elementwise.json", "+ remat policy `elementwise`: norms, RoPE and SwiGLU's "
     "activation recomputed, not stacked (commit 933cdb7)"),
    ("loss_groups.json", "+ loss tokens of each batch shard's rows joined, chunks of 512 "
     "(commit 6e5ef43)"),
)


def ablation_table(results: pathlib.Path) -> str:
  """One column per machine: results/ablation/<machine>/<file> for each row of ABLATIONS."""
  machines = sorted(d for d in (results / "ablation").iterdir() if d.is_dir())
  runs = {(d.name, name): json.loads((d / name).read_text())
          for d in machines for name, _ in ABLATIONS if (d / name).exists()}
  cpus = {d.name: next((r["machine"]["cpu"] for (m, _), r in runs.items() if m == d.name), "?")
          for d in machines}
  lines = ["What each change bought: lima_jax alone, each commit's own code and defaults, one "
           "round each (`--impl=jax --steps=8 --warmup=4 --rounds=1`), run one after the other; "
           "step time in seconds, one column per machine (`benchmarks/results/ablation/`).", "",
           "| lima_jax | " + " | ".join(cpus[d.name] for d in machines) + " |",
           "|---" * (len(machines) + 1) + "|"]
  for name, what in ABLATIONS:
    cells = [f"{runs[d.name, name]['summary']['jax']['step_time_s']['median']:.2f}"
             if (d.name, name) in runs else "-" for d in machines]
    lines.append(f"| {what} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def render(results: pathlib.Path) -> str:
  parts = [BEGIN, "<!-- written by `python benchmarks/report.py` from benchmarks/results/ -->"]
  for name, fn in (("train_throughput.json", lambda r: throughput_table(r, results)),
                   ("compile_time.json", compile_table)):
    path = results / name
    if path.exists():
      parts += ["", fn(json.loads(path.read_text()))]
    else:
      parts += ["", f"(no `benchmarks/results/{name}` yet)"]
    if name == "train_throughput.json" and (results / "ablation").exists():
      parts += ["", ablation_table(results)]
  return "\n".join(parts + ["", END])


def main(argv):
  from lima_jax.errors import fail
  readme = pathlib.Path(_README.value)
  text = readme.read_text()
  found = re.search(re.escape(BEGIN) + ".*?" + re.escape(END), text, flags=re.S)
  if not found:
    fail(f"{readme}: no '{BEGIN}' ... '{END}' block to fill")
  block = render(pathlib.Path(_RESULTS.value))
  if _CHECK.value:
    if found.group(0) != block:
      fail(f"{readme}: the benchmark tables differ from benchmarks/results/; run "
           "`python benchmarks/report.py`")
    print(f"{readme}: benchmark tables match benchmarks/results/")
    return
  tmp = readme.with_suffix(".md.tmp")
  tmp.write_text(text[:found.start()] + block + text[found.end():])
  tmp.replace(readme)
  print(f"updated {readme}")


if __name__ == "__main__":
  sys.path.insert(0, str(REPO))
  app.run(main)
