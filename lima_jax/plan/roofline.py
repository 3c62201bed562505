"""A training step's FLOPs, HBM bytes and roofline time, read from compiled programs.

XLA's cost analysis of the compiled step is per chip, but it counts a loop body once: the scan
over layers would show about one layer. So the same step is also compiled with 1 and with 2
unrolled layers, and the figures are extended linearly to L layers (c1 + (L - 1)(c2 - c1)): the
layers are identical, so this is what an unrolled L-layer program would report. With gradient
accumulation the micro-batch loop is a loop too: those programs take one micro-batch
(grad_accum_steps=1) and the step is A times it, which counts the optimizer's update A times.

Pallas kernels are invisible to the cost analysis (a custom call of unknown cost), so splash
attention's FLOPs are counted here from what the kernel runs: per head, forward QK^T and PV, the
backward's dq kernel (QK^T, dO V^T, dS K) and dkv kernel (QK^T, P^T dO, dO V^T, dS^T Q), each
2 x K FLOPs per (query, key) pair of every block it visits (a causal mask skips the blocks above
the diagonal), and the forward once more where the remat policy does not keep its output. The
kernel's own HBM traffic (its q, k, v, o: O(T K) per head, against O(T^2 K) FLOPs) is not
counted.

Any loop left in those programs is counted once too. On real slices libtpu turns FSDP's
gathered matmuls into windowed-einsum loops (collective matmuls, one step per shard: 22 loops in
LLaMA-7B's 1-layer step on v5e-16), so there the figures are lower bounds: `loops_in` counts
them and the planner says so instead of quoting a roofline.
"""
import dataclasses

# Remat policies that keep splash's output and log-sum-exp (named 'attention'): the backward
# pass does not rerun the kernel's forward.
KEEPS_ATTENTION = ("none", "elementwise")
TPU_CUSTOM_CALL = 'custom_call_target="tpu_custom_call"'


@dataclasses.dataclass
class Cost:
  """Per chip, per step, from XLA's cost analysis (Pallas kernels excluded)."""
  flops: float
  bytes: float
  optimal_seconds: float  # XLA's own time estimate of the program.


def cost_of(compiled) -> Cost:
  c = compiled.cost_analysis()
  c = c[0] if isinstance(c, (list, tuple)) else c
  return Cost(float(c.get("flops", 0.0)), float(c.get("bytes accessed", 0.0)),
              float(c.get("optimal_seconds", 0.0)))


def extend(one: Cost, two: Cost, layers: int, micro_batches: int) -> Cost:
  """The L-layer, A-micro-batch step from its 1- and 2-layer, one-micro-batch programs."""
  line = lambda a, b: micro_batches * (a + (layers - 1) * (b - a))
  return Cost(*(line(getattr(one, f.name), getattr(two, f.name))
                for f in dataclasses.fields(Cost)))


def loops_in(compiled) -> int:
  """While loops in the compiled program: bodies the cost analysis counts once."""
  return compiled.as_text().count(" while(")


def kernels_in(compiled) -> int:
  """How many Mosaic (Pallas TPU) kernel calls the program text holds."""
  return compiled.as_text().count(TPU_CUSTOM_CALL)


def splash_flops(cfg, batch: int, seq_len: int, block: int, remat_policy: str) -> float:
  """FLOPs splash attention runs in one training step, all chips together (`batch` rows of
  `seq_len` tokens, padded to the block)."""
  blocks = -(-seq_len // block)
  pairs = blocks * (blocks + 1) // 2 * block * block  # causal: blocks on or below the diagonal
  passes = 2 + 3 + 4 + (0 if remat_policy in KEEPS_ATTENTION else 2)
  return float(passes * 2 * cfg.head_dim * pairs * cfg.n_heads * cfg.n_layers * batch)


def roofline(flops: float, bytes_: float, chip) -> dict[str, float]:
  """The lower bound on a step: the larger of compute at peak and traffic at full bandwidth."""
  compute, memory = flops / chip.peak_bf16_flops, bytes_ / chip.hbm_bytes_per_s
  return {"compute_seconds": compute, "memory_seconds": memory,
          "seconds": max(compute, memory)}


def step_costs(build, layers: int, micro_batches: int, compile_) -> tuple[Cost, int]:
  """Compiles `build(n_layers)` for 1 and 2 unrolled layers (one micro-batch) and extends;
  also the loops left in the 2-layer program (0: the figures count every op)."""
  programs = [compile_(build(n)) for n in (1, 2)]
  return extend(*map(cost_of, programs), layers, micro_batches), loops_in(programs[1])
