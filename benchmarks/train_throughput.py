r"""Training throughput of lima_jax's real train step, side by side with PyTorch/transformers.

    python benchmarks/train_throughput.py --impl=both --size=bench-20m --batch=8 --seq=512 \
        --steps=5 --warmup=2 --rounds=3

Each (round, implementation) runs in its own fresh subprocess, alternating jax, torch, jax, ...
so that slow drifts in machine load hit both sides alike, the two runtimes never share a
thread pool, and each one's peak RSS is its own. The ratio jax/torch is taken per round
(paired), then summarised over rounds.

Both sides train the same LLaMA (`lima_jax.model.get_size(size)`; transformers'
`LlamaForCausalLM` from the same config, same init not required) on the same batch: one
conversation per row, user/assistant turns, loss on the assistant tokens only (~60%), AdamW
(b1 .9, b2 .95, wd .1 on weight matrices only, eps 1e-8), global-norm clipping at 1.0, no
dropout (transformers' Llama has no residual dropout).

MFU counts model FLOPs per step as 6 * N * B * T + 12 * L * H * K * T^2 * B (PaLM, App. B):
N = parameters used in matmuls (the input embedding table is a lookup; a tied table counts once,
as the output projection), the attention term counts the full T x T score matrix (no causal
halving), B * T = all tokens of the batch (padding included). Peak is --peak_tflops, or the
known dense peak of the accelerator for --dtype (CPU: none unless given).

lima_jax's head runs on loss tokens only (lima_jax/train/loss.py) and its attention skips the masked
upper triangle in blocks, so it executes fewer FLOPs than the formula counts; MFU and achieved
TFLOP/s are the formula's (the work a plain implementation does) over the measured time, for
both sides alike. --assistant_fraction changes how much the head skips. On CPU the step is
compiled with step_lib.CPU_COMPILER_OPTIONS (every matmul on Eigen, not XLA's default YNNPACK).

On one NVIDIA GPU (not measured yet: no GPU was lent to the sessions that wrote this), the
accelerator target (bfloat16, ~1B LLaMA, length 2,048) is one command:

    python benchmarks/train_throughput.py --impl=both --size=bench-1b --dtype=bfloat16 \
        --seq=2048 --batch=8 --attention=cudnn --loss_chunk=512 --remat_policy=none \
        --out=benchmarks/results/train_throughput_gpu.json

(--remat_policy=save_dots_no_batch if it runs out of memory; --peak_tflops is known for H100,
H200 and A100 in bfloat16.) It needs jax with CUDA (`pip install "jax[cuda12]==0.10.2"`) and, for
the torch side, a CUDA build of torch: requirements-test.txt pins the CPU wheel, and the torch
worker then stops with one line instead of timing a CPU torch against a GPU lima_jax. The
torch side always runs on the platform lima_jax ran on (round 1 runs lima_jax first).

`--shape=testbed` times the bioworld testbed's pretraining step (configs/bioworld.py:pretrain:
size 'bioworld', 8 rows of 256, every token in the loss), the step the testbed's study spends
most of its time in:

    python benchmarks/train_throughput.py --shape=testbed --impl=both --steps=20 --warmup=5 \
        --rounds=5 --out=benchmarks/results/train_throughput_testbed.json

Both sides' workers start with glibc's malloc on transparent huge pages
(`lima_jax.parallel.host_memory.with_huge_pages`, as the study runner starts its steps; each worker
records its GLIBC_TUNABLES): XLA:CPU's per-step block of temporaries otherwise costs a page
fault per 4 KiB each step. `--nohuge_pages` times the environment as given.

`--attention_free` adds a third worker each round, lima_jax's step with its causal attention
replaced by a stand-in of the same shapes and no scores (q + k + v, elementwise), so that every
other op (projections, MLP, head, norms, optimizer) is timed as shipped. Its ratio to torch
(`jax_attention_free_over_torch`) bounds what any attention kernel could buy at the shape: at
the testbed shape it says whether 2x is within reach of attention work at all.

Every worker also times one matmul of each of the step's weight-matmul shapes in its own
library (`gemm_gflops`, in the compute dtype; jax compiled as the step is). `matmul_floor` is the
time of 6 * N * B * T FLOPs (the projections' and head's forward and both gradients) at the best
of those rates in the round: no step, however written, does its weight matmuls faster on that
machine, so `matmul_floor_over_torch` is the most any implementation can gain over torch (with
every token in the loss, as at the testbed shape; with fewer, lima_jax's head skips the others
and needs less than the floor counts for it).

Results go to --out (JSON: figures per implementation and round, the ratio, machine, versions,
the exact command). Worker processes are this script with --worker_out.
"""
import json
import os
import pathlib
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app, flags

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))


def define_flags() -> None:
  """Defined on demand, so that compile_time.py can import this module's helpers."""
  flags.DEFINE_enum("impl", "both", ["jax", "torch", "both"], "Which implementation(s) to time.")
  flags.DEFINE_string("size", "bench-20m", "Model size from lima_jax.model.SIZES.")
  flags.DEFINE_enum("shape", "", ["", *SHAPES], "A named benchmark shape (SHAPES): the --size, "
                    "--batch, --seq and --assistant_fraction it sets, for those not given on the "
                    "command line.")
  flags.DEFINE_integer("batch", 8, "Rows per step (global batch).")
  flags.DEFINE_integer("seq", 512, "Tokens per row.")
  flags.DEFINE_integer("steps", 5, "Timed steps per round; the step time is their median.")
  flags.DEFINE_integer("warmup", 2, "Untimed steps first (the first includes compilation).")
  flags.DEFINE_integer("rounds", 2, "Rounds; each runs every implementation once, in a fresh "
                       "process, alternating the order.")
  flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"],
                    "Compute dtype; parameters and optimizer state stay float32.")
  flags.DEFINE_float("peak_tflops", 0.0, "Peak dense TFLOP/s of the device for --dtype, for MFU "
                     "(0: the known figure for the accelerator; none on CPU).")
  flags.DEFINE_float("assistant_fraction", 0.6,
                     "Fraction of tokens that are assistant tokens (those in the loss); 1: "
                     "plain text, the loss on every token.")
  flags.DEFINE_bool("scan_layers", True, "jax: nn.scan over layers (False: unrolled).")
  from configs import lima
  from lima_jax.model.transformer import REMAT_POLICIES
  flags.DEFINE_enum("remat_policy", lima.get_config("demo").model.remat_policy,
                    list(REMAT_POLICIES), "jax: rematerialisation policy of each layer "
                    "(lima_jax.model.REMAT_POLICIES; the default is configs/lima.py's).")
  flags.DEFINE_string("attention", "", "jax: ModelConfig.attention_impl ('': the model's "
                      "default, 'xla'; 'cudnn' on NVIDIA GPUs with --dtype=bfloat16).")
  flags.DEFINE_integer("attention_block", -1, "jax: ModelConfig.attention_block (-1: the "
                       "size's default).")
  flags.DEFINE_integer("loss_chunk", -1, "jax: config.train.loss_chunk (-1: configs/lima.py's "
                       "default; 0: plain logits).")
  flags.DEFINE_enum("torch_attention", "sdpa", ["sdpa", "eager"],
                    "torch: transformers attn_implementation.")
  flags.DEFINE_enum("torch_optimizer", "fused", ["fused", "foreach", "loop"],
                    "torch: AdamW kernel ('fused' is the fastest on CPU; 'loop' is torch's "
                    "default there).")
  flags.DEFINE_bool("torch_compile", False,
                    "torch: also time a torch.compile'd model (reported as torch_compile).")
  flags.DEFINE_bool("attention_free", False, "Also time lima_jax with attention replaced by "
                    "a stand-in that costs nothing (jax_attention_free: every other op of the "
                    "step as shipped), reported beside the real step. Not a model anyone "
                    "trains: the ratio it gets is a ceiling on what any attention kernel could "
                    "buy at this shape.")
  flags.DEFINE_bool("huge_pages", True, "Start both sides' workers with glibc's malloc on "
                    "transparent huge pages (GLIBC_TUNABLES=glibc.malloc.hugetlb=1, "
                    "lima_jax/parallel/host_memory.py); --nohuge_pages: the environment as given.")
  flags.DEFINE_string("out", str(REPO / "benchmarks/results/train_throughput.json"),
                      "Where to write the results JSON (atomically).")
  flags.DEFINE_string("worker_out", "", "Internal: run ONE implementation (--impl) for one "
                      "round and write its figures to this path.")
  flags.DEFINE_enum("worker_platform", "", ["", "cpu", "gpu", "tpu"], "Internal: the platform "
                    "lima_jax ran on, which the torch worker must match ('': torch's choice).")


FLAGS = flags.FLAGS

# Named shapes: the flags a shape sets, unless the command line gives them.
SHAPES = {
    # Issue 23's synthetic testbed as configs/bioworld.py:pretrain runs it: size 'bioworld'
    # (dim 192, 4 layers, 4 heads of 48, MLP 512, vocab 1,024, 2.2M parameters), rows of 256,
    # batch 8, float32, no dropout, the loss on every token (plain text). One segment per row
    # here: lima_jax's cost does not depend on the number of packed segments, and torch would
    # need a 4-D mask for more.
    "testbed": dict(size="bioworld", batch=8, seq=256, assistant_fraction=1.0),
}


def apply_shape() -> None:
  """Fills the flags --shape names that the command line did not give."""
  for name, value in SHAPES.get(FLAGS.shape, {}).items():
    if not FLAGS[name].present:
      FLAGS[name].value = value


# ---------------------------------------------------------------------------------------------
# Shared pieces: batch, FLOPs, machine.
# ---------------------------------------------------------------------------------------------

def make_batch(cfg, batch: int, seq: int, assistant_fraction: float, seed: int = 0) -> dict:
  """One conversation per row: alternating user / assistant turns, loss on assistant tokens
  (assistant_fraction 1: plain text, the loss on every token).

  A single segment per row (no packing, no padding) so that torch gets the same causal
  attention without a 4-D mask.
  """
  import numpy as np
  rng = np.random.default_rng(seed)
  tokens = rng.integers(3, cfg.vocab_size, size=(batch, seq + 1), dtype=np.int32)
  mask = np.zeros((batch, seq), bool)
  if assistant_fraction >= 1.0:  # plain text: every token in the loss
    mask[:] = True
  else:
    ratio = assistant_fraction / (1.0 - assistant_fraction)
    for row in mask:
      t = 0
      while t < seq:
        user = int(rng.integers(16, 128))
        reply = int(user * ratio * rng.uniform(0.5, 1.5))
        if t + user + reply > seq:  # The last turn, trimmed at the row's end, keeps the ratio.
          user = int((seq - t) * (1.0 - assistant_fraction))
        row[t + user:t + user + reply] = True
        t += user + reply
  return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "loss_mask": mask,
          "segment_ids": np.ones((batch, seq), np.int32),
          "positions": np.tile(np.arange(seq, dtype=np.int32), (batch, 1))}


def matmul_params(cfg, n_params: int) -> int:
  return n_params - (0 if cfg.tie_embeddings else cfg.vocab_size * cfg.dim)


def model_flops(cfg, n_params: int, batch: int, seq: int) -> float:
  attention = 12 * cfg.n_layers * cfg.n_heads * cfg.head_dim * seq**2 * batch
  return 6.0 * matmul_params(cfg, n_params) * batch * seq + attention


def gemm_shapes(cfg, tokens: int) -> list[tuple[int, int, int]]:
  """(M, K, N) of the step's weight matmuls as the forward pass runs them (the backward pass
  runs the same sizes with an operand transposed): q, k, v, o, the MLP's in and out, the head."""
  D, F, V = cfg.dim, cfg.hidden_dim, cfg.vocab_size
  q, kv = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
  return sorted({(tokens, D, q), (tokens, D, kv), (tokens, q, D), (tokens, D, F), (tokens, F, D),
                 (tokens, D, V)})


def gemm_rates(make, shapes, reps: int = 25) -> dict[str, float]:
  """GFLOP/s of one matmul of each shape, the median of `reps` after 3 untimed:
  make(m, k, n) returns a no-argument call that runs it to completion."""
  import numpy as np
  rates = {}
  for m, k, n in shapes:
    run = make(m, k, n)
    times = []
    for i in range(reps + 3):
      t0 = time.perf_counter()
      run()
      if i >= 3:
        times.append(time.perf_counter() - t0)
    rates[f"{m}x{k}x{n}"] = 2.0 * m * k * n / float(np.median(times)) / 1e9
  return rates


# Dense peaks (TFLOP/s) by device-kind substring; float32 on GPUs/TPUs is left to --peak_tflops.
KNOWN_PEAKS = {
    ("H100", "bfloat16"): 989.0, ("H200", "bfloat16"): 989.0, ("A100", "bfloat16"): 312.0,
    ("TPU v4", "bfloat16"): 275.0, ("TPU v5 lite", "bfloat16"): 197.0,
    ("TPU v5p", "bfloat16"): 459.0, ("TPU v6 lite", "bfloat16"): 918.0,
}


def known_peak(device_kind: str, dtype: str) -> float | None:
  for (kind, dt), peak in KNOWN_PEAKS.items():
    if kind in device_kind and dt == dtype:
      return peak
  return None


def machine_info() -> dict:
  cpu = platform.processor()
  try:
    text = pathlib.Path("/proc/cpuinfo").read_text()
    cpu = re.search(r"model name\s*:\s*(.*)", text).group(1)
  except (OSError, AttributeError):
    pass
  versions = {"python": platform.python_version()}
  for mod in ("jax", "jaxlib", "flax", "optax", "torch", "transformers", "numpy"):
    try:
      versions[mod] = __import__(mod).__version__
    except ImportError:
      versions[mod] = None
  return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
          "xla_flags": os.environ.get("XLA_FLAGS", ""), "versions": versions}


def write_json(path: str, obj: dict) -> None:
  """Atomic: a temp file in the same directory, then rename (never half a file)."""
  out = pathlib.Path(path)
  out.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=out.name, suffix=".tmp")
  with os.fdopen(fd, "w") as f:
    json.dump(obj, f, indent=2)
    f.write("\n")
  os.replace(tmp, out)


def _time_steps(step, n_warmup: int, n_steps: int, desc: str) -> tuple[list, list, float]:
  """Wall and CPU seconds of each timed step, and the minor page faults per timed step."""
  from tqdm import tqdm
  wall, cpu, faults = [], [], 0
  for i in tqdm(range(n_warmup + n_steps), desc=desc, unit="step", file=sys.stderr):
    t0, c0 = time.perf_counter(), time.process_time()
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step()
    if i >= n_warmup:
      wall.append(time.perf_counter() - t0)
      cpu.append(time.process_time() - c0)
      faults += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
  return wall, cpu, faults / n_steps


# ---------------------------------------------------------------------------------------------
# Workers.
# ---------------------------------------------------------------------------------------------

def model_config():
  from lima_jax import model as model_lib
  overrides = dict(dtype=FLAGS.dtype, param_dtype="float32", scan_layers=FLAGS.scan_layers,
                   remat_policy=FLAGS.remat_policy, dropout_top=0.0)
  if FLAGS.attention:
    overrides["attention_impl"] = FLAGS.attention
  if FLAGS.attention_block >= 0:
    overrides["attention_block"] = FLAGS.attention_block
  cfg = model_lib.get_size(FLAGS.size, **overrides)
  return model_lib.get_size(FLAGS.size, **overrides, max_seq_len=max(cfg.max_seq_len, FLAGS.seq))


def _attention_stand_in(q, k, v, segments, block):
  """causal_attention's shapes at elementwise cost: every query row gets q + k + v of its own
  position (k kept so that its projection is not dead code), no scores, no softmax."""
  import jax.numpy as jnp
  del segments, block
  return q + jnp.repeat(k + v, q.shape[2] // k.shape[2], axis=2)


def jax_step(attention_free: bool = False):
  """lima_jax's compiled step at the flags' shape, on its state: a no-argument `step` that runs
  one step to completion (step.loss: its loss; step.compiled and step.compile_s: the
  executable and its compile time), and the batch (numpy). benchmarks/profile_step.py traces
  the same step."""
  import jax
  import jax.numpy as jnp
  import flax.linen as nn
  from configs import lima
  from lima_jax.model import attention
  from lima_jax.parallel import sharding
  from lima_jax.train import step as step_lib

  if attention_free:  # This worker process only; layers.Attention looks the kernel up per call.
    attention.causal_attention = _attention_stand_in

  cfg = model_config()
  config = lima.get_config("demo")
  config.unlock()
  config.model.dropout_top = 0.0
  config.data.max_len, config.train.batch_size = FLAGS.seq, FLAGS.batch
  config.train.weight_decay, config.train.learning_rate = 0.1, 1e-5
  config.train.end_learning_rate, config.train.warmup_steps = 1e-6, 0
  if FLAGS.loss_chunk >= 0:
    config.train.loss_chunk = FLAGS.loss_chunk
  mesh = sharding.make_mesh((1, -1, 1))
  sharding.check_batch(FLAGS.batch, 1, mesh)
  batch_np = make_batch(cfg, FLAGS.batch, FLAGS.seq, FLAGS.assistant_fraction)
  with jax.set_mesh(mesh):
    built = step_lib.build_train_step(config, mesh, cfg, total_steps=1000)
    t0 = time.perf_counter()
    compiled = built.train_step.lower(built.abstract_state, built.abstract_batch,
                                      jax.random.key(0)).compile()
    compile_s = time.perf_counter() - t0
    init = lambda r: nn.meta.unbox(built.model.init(r, jnp.zeros((1, 8), jnp.int32)))["params"]
    params = jax.jit(init, out_shardings=built.state_shardings.params)(jax.random.key(0))
    opt_state = jax.jit(built.tx.init, out_shardings=built.state_shardings.opt_state)(params)
    state = [step_lib.TrainState(jnp.int32(0), params, opt_state)]
    batch = sharding.put_batch(batch_np, mesh)
    rng = jax.random.key(1)

    def step():
      state[0], metrics = compiled(state[0], batch, rng)
      jax.block_until_ready((state[0], metrics))
      step.loss = float(metrics["loss"])

  step.compiled, step.compile_s = compiled, compile_s
  return step, batch_np


def run_jax(attention_free: bool = False) -> dict:
  import jax
  import jax.numpy as jnp
  from lima_jax.model import transformer as model_lib
  from lima_jax.train import step as step_lib

  cfg = model_config()
  step, batch_np = jax_step(attention_free)
  wall, cpu, faults = _time_steps(step, FLAGS.warmup, FLAGS.steps, "jax")
  compile_s = step.compile_s
  dev = jax.devices()[0]
  options = step_lib.CPU_COMPILER_OPTIONS if dev.platform == "cpu" else None
  dtype = jnp.dtype(FLAGS.dtype)

  def gemm(m, k, n):  # as the step compiles its matmuls, in the compute dtype
    a, b = jnp.full((m, k), 0.5, dtype), jnp.full((k, n), 0.5, dtype)
    f = jax.jit(jnp.matmul, compiler_options=options)
    return lambda: f(a, b).block_until_ready()

  rates = gemm_rates(gemm, gemm_shapes(cfg, FLAGS.batch * FLAGS.seq))
  stats = dev.memory_stats() or {}
  return {"step_s": wall, "cpu_s": cpu, "compile_s": compile_s, "loss": step.loss,
          "page_faults_per_step": faults, "gemm_gflops": rates,
          "device_kind": dev.device_kind, "platform": dev.platform,
          "device_peak_bytes": stats.get("peak_bytes_in_use"),
          "n_params": model_lib.param_count(cfg), "cfg": cfg.to_dict(), "batch": batch_np}


def torch_device(jax_platform: str):
  """Where torch runs: where lima_jax ran, or a clear error (a CPU-only torch beside a GPU jax
  would time a 1B model on the host for hours and report a meaningless ratio)."""
  import torch
  from lima_jax.errors import UserError
  has_cuda = torch.cuda.is_available()
  if jax_platform == "tpu":
    raise UserError("lima_jax ran on a TPU, where the torch side has no path: use --impl=jax")
  if jax_platform == "gpu" and not has_cuda:
    raise UserError(f"lima_jax ran on a GPU but torch {torch.__version__} has no CUDA: "
                    "install a CUDA build of torch for the side-by-side run, or time lima_jax "
                    "alone with --impl=jax")
  return torch.device("cuda" if has_cuda and jax_platform != "cpu" else "cpu")


def run_torch(compile_model: bool) -> dict:
  import numpy as np
  import torch
  import transformers

  torch.set_num_threads(os.cpu_count())
  cfg = model_config()
  dev = torch_device(FLAGS.worker_platform)
  dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[FLAGS.dtype]
  hf = transformers.LlamaConfig(
      vocab_size=cfg.vocab_size, hidden_size=cfg.dim, intermediate_size=cfg.hidden_dim,
      num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
      num_key_value_heads=cfg.n_kv_heads, head_dim=cfg.head_dim,
      max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps,
      rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
      tie_word_embeddings=cfg.tie_embeddings, attn_implementation=FLAGS.torch_attention)
  model = transformers.LlamaForCausalLM(hf).to(dev)
  # Autocast keeps float32 master weights and moments, as lima_jax does with param_dtype.
  autocast = torch.autocast(dev.type, dtype=dtype, enabled=dtype != torch.float32)
  decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
  no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
  kind = FLAGS.torch_optimizer
  opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=1e-5, betas=(0.9, 0.95), eps=1e-8,
                          fused=kind == "fused" or None, foreach=kind == "foreach" or None)
  forward = torch.compile(model) if compile_model else model
  batch_np = make_batch(cfg, FLAGS.batch, FLAGS.seq, FLAGS.assistant_fraction)
  b = {k: torch.from_numpy(np.asarray(v)).to(dev) for k, v in batch_np.items()}
  inputs, positions, targets = b["inputs"].long(), b["positions"].long(), b["targets"].long()
  mask = b["loss_mask"]
  count = mask.sum().float()
  sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

  def step():
    with autocast:
      logits = forward(input_ids=inputs, position_ids=positions).logits
    # transformers' own loss upcasts logits to float32 too.
    nll = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten(),
                                            reduction="none")
    loss = torch.where(mask.flatten(), nll, 0.0).sum() / count
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    sync()
    step.loss = loss.item()

  if dev.type == "cuda":
    torch.cuda.reset_peak_memory_stats()
  wall, cpu, faults = _time_steps(step, FLAGS.warmup, FLAGS.steps,
                                  "torch.compile" if compile_model else "torch")

  def gemm(m, k, n):
    a, b = (torch.full(shape, 0.5, dtype=dtype, device=dev) for shape in ((m, k), (k, n)))
    return lambda: (a @ b, sync())

  with torch.no_grad():
    rates = gemm_rates(gemm, gemm_shapes(cfg, FLAGS.batch * FLAGS.seq))
  return {"step_s": wall, "cpu_s": cpu, "loss": step.loss, "platform": dev.type,
          "page_faults_per_step": faults, "gemm_gflops": rates,
          "device_kind": (torch.cuda.get_device_name() if dev.type == "cuda"
                          else platform.processor()),
          "device_peak_bytes": torch.cuda.max_memory_allocated() if dev.type == "cuda" else None,
          "n_params": sum(p.numel() for p in model.parameters()),
          "torch_threads": torch.get_num_threads(), "optimizer": kind,
          "attention": model.config._attn_implementation, "cfg": cfg.to_dict(), "batch": batch_np}


def summarise(raw: dict) -> dict:
  """Per-round figures (median step) from a worker's raw timings."""
  from lima_jax.model.transformer import ModelConfig
  batch = raw.pop("batch")
  cfg = ModelConfig.from_dict(raw.pop("cfg"))
  step = statistics.median(raw["step_s"])
  flops = model_flops(cfg, raw["n_params"], FLAGS.batch, FLAGS.seq)
  peak = FLAGS.peak_tflops or known_peak(raw["device_kind"] or "", FLAGS.dtype)
  return {**raw, "step_time_s": step, "cpu_time_s": statistics.median(raw["cpu_s"]),
          "tokens_per_s": batch["inputs"].size / step,
          "loss_tokens_per_s": int(batch["loss_mask"].sum()) / step,
          "assistant_fraction": float(batch["loss_mask"].mean()),
          "model_tflop_per_step": flops / 1e12, "achieved_tflops": flops / step / 1e12,
          "weight_matmul_gflop_per_step": 6.0 * matmul_params(cfg, raw["n_params"])
          * batch["inputs"].size / 1e9,
          "peak_tflops": peak, "mfu": flops / step / 1e12 / peak if peak else None,
          "host_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
          "glibc_tunables": os.environ.get("GLIBC_TUNABLES", "")}


def worker(impl: str) -> None:
  if impl.startswith("jax"):
    raw = run_jax(attention_free=impl == "jax_attention_free")
  else:
    raw = run_torch(impl == "torch_compile")
  write_json(FLAGS.worker_out, summarise(raw))


# ---------------------------------------------------------------------------------------------
# Driver: alternate fresh worker processes, then summarise.
# ---------------------------------------------------------------------------------------------

def _spawn(impl: str, jax_platform: str) -> dict:
  """Runs one worker; its progress bar passes through, its stderr tail names any failure."""
  from lima_jax.parallel import host_memory
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "worker.json")
    args = [f"--{k}={FLAGS[k].value}" for k in _OWN_FLAGS
            if k not in ("impl", "torch_compile", "attention_free")]
    args += [f"--impl={'jax' if impl.startswith('jax') else 'torch'}", f"--worker_out={out}",
             "--torch_compile" if impl == "torch_compile" else "--notorch_compile",
             "--attention_free" if impl == "jax_attention_free" else "--noattention_free",
             f"--worker_platform={jax_platform}"]
    load = os.getloadavg()[0]
    env = host_memory.with_huge_pages(os.environ) if FLAGS.huge_pages else None
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), *args],
                            stderr=subprocess.PIPE, env=env)
    tail = b""
    for chunk in iter(lambda: proc.stderr.read1(4096), b""):
      sys.stderr.buffer.write(chunk)
      sys.stderr.flush()
      tail = (tail + chunk)[-4000:]
    code = proc.wait()
    if code or not os.path.exists(out):
      lines = [l for l in re.split(r"[\r\n]+", tail.decode(errors="replace")) if l.strip()]
      return {"error": f"exit {code}: {lines[-1] if lines else 'no output'}"}
    result = json.loads(pathlib.Path(out).read_text())
    result["load_avg_1m_before"] = load
    result["load_avg_1m_after"] = os.getloadavg()[0]
    return result


def matmul_floor(round_: dict) -> dict:
  """The least time a step could take if it were only its weight matmuls (6 N B T FLOPs: the
  forward and both gradients of every projection and the head; no attention, no elementwise
  work, no optimizer) at the best single-matmul rate any worker of the round measured on the
  step's shapes (gemm_shapes). A side whose step is 2x another's must beat this floor."""
  best = max(rate for res in round_.values() for rate in res["gemm_gflops"].values())
  gflop = next(iter(round_.values()))["weight_matmul_gflop_per_step"]
  tokens = FLAGS.batch * FLAGS.seq
  return {"step_time_s": gflop / best, "tokens_per_s": tokens * best / gflop,
          "best_gemm_gflops": best, "gflop_per_step": gflop}


def _spread(values: list[float]) -> dict:
  return {"median": statistics.median(values), "min": min(values), "max": max(values),
          "n": len(values)}


def main(argv):
  from lima_jax.errors import fail
  apply_shape()
  if FLAGS.batch < 1 or FLAGS.seq < 2 or FLAGS.steps < 1 or FLAGS.warmup < 0:
    fail("--batch, --seq, --steps must be positive and --warmup non-negative")
  if not 0.0 < FLAGS.assistant_fraction <= 1.0:
    fail(f"--assistant_fraction={FLAGS.assistant_fraction}: must be in (0, 1]")
  model_config()  # A bad size or override stops here, before any worker starts.
  if FLAGS.worker_out:
    impl = FLAGS.impl
    if impl == "torch" and FLAGS.torch_compile:
      impl = "torch_compile"
    elif impl == "jax" and FLAGS.attention_free:
      impl = "jax_attention_free"
    worker(impl)
    return
  impls = {"jax": ["jax"], "torch": ["torch"], "both": ["jax", "torch"]}[FLAGS.impl]
  if FLAGS.torch_compile and "torch" in impls:
    impls.append("torch_compile")
  if FLAGS.attention_free and "jax" in impls:
    impls.insert(1, "jax_attention_free")
  rounds, jax_platform = [], ""
  for r in range(FLAGS.rounds):
    # Alternate the order so that neither side always runs first (round 1 runs lima_jax first,
    # so that torch is then told the platform to match).
    order = impls if r % 2 == 0 else impls[::-1]
    rounds.append({})
    for impl in order:
      rounds[-1][impl] = res = _spawn(impl, jax_platform)
      if impl == "jax" and "platform" in res:
        jax_platform = res["platform"]
      shown = res.get("error") or (
          f"{res['tokens_per_s']:.0f} tok/s, step {res['step_time_s']:.2f}s"
          f" (load {res['load_avg_1m_before']:.1f})")
      print(f"round {r + 1}/{FLAGS.rounds} {impl}: {shown}", file=sys.stderr, flush=True)
    if any("error" in res for res in rounds[-1].values()):
      break  # A worker's failure (a flag, a missing package, memory) repeats in every round.
    rounds[-1]["matmul_floor"] = matmul_floor(rounds[-1])
  summary = {}
  for impl in impls:
    ok = [r[impl] for r in rounds if "error" not in r[impl]]
    if ok:
      summary[impl] = {k: _spread([r[k] for r in ok]) for k in (
          "tokens_per_s", "loss_tokens_per_s", "step_time_s", "cpu_time_s", "achieved_tflops",
          "host_peak_rss_mb")}
      summary[impl]["mfu"] = _spread([r["mfu"] for r in ok]) if ok[0]["mfu"] else None
  floors = [r["matmul_floor"] for r in rounds if "matmul_floor" in r]
  if floors:
    summary["matmul_floor"] = {k: _spread([f[k] for f in floors]) for k in (
        "step_time_s", "best_gemm_gflops")}
  for mine, other in (("jax", "torch"), ("jax", "torch_compile"),
                      ("jax_attention_free", "torch"), ("jax_attention_free", "jax"),
                      ("matmul_floor", "torch")):
    ratios = [r[mine]["tokens_per_s"] / r[other]["tokens_per_s"] for r in rounds
              if mine in r and other in r and "error" not in r[mine] and "error" not in r[other]]
    if ratios:
      summary[f"{mine}_over_{other}"] = _spread(ratios)
  result = {"benchmark": "train_throughput", "command": " ".join([sys.executable] + sys.argv),
            "settings": {k: FLAGS[k].value for k in _OWN_FLAGS},
            "flops_formula": "6*N*B*T + 12*L*H*K*T^2*B (N: matmul params)",
            "machine": machine_info(), "summary": summary, "rounds": rounds}
  write_json(FLAGS.out, result)
  for name, fig in summary.items():
    if "_over_" in name:
      print(f"{name}: {fig['median']:.2f}x (rounds: {fig['min']:.2f}..{fig['max']:.2f})")
    elif name == "matmul_floor":
      print(f"matmul floor: the weight matmuls alone at the best measured rate "
            f"({fig['best_gemm_gflops']['median']:.0f} GFLOP/s) take "
            f"{fig['step_time_s']['median']:.3f}s a step")
    else:
      print(f"{name}: {fig['tokens_per_s']['median']:.0f} tokens/s, "
            f"{fig['loss_tokens_per_s']['median']:.0f} loss tokens/s, step "
            f"{fig['step_time_s']['median']:.3f}s ({fig['step_time_s']['min']:.3f}.."
            f"{fig['step_time_s']['max']:.3f}), peak RSS {fig['host_peak_rss_mb']['max']:.0f} MB")
  print(f"wrote {FLAGS.out}")
  failed = [f"{i}: {r[i]['error']}" for r in rounds for i in r if "error" in r[i]]
  if failed:
    fail(f"{len(failed)} worker(s) failed; first: {failed[0]} (results in {FLAGS.out})")


_OWN_FLAGS = ("impl", "shape", "size", "batch", "seq", "steps", "warmup", "rounds", "dtype",
              "peak_tflops", "assistant_fraction", "scan_layers", "remat_policy", "attention",
              "attention_block", "loss_chunk", "torch_attention", "torch_optimizer",
              "torch_compile", "attention_free", "huge_pages")

if __name__ == "__main__":
  define_flags()
  from lima_jax.errors import cli_main
  app.run(cli_main(main))
