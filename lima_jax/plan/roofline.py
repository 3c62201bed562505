"""A training step's FLOPs, HBM bytes and roofline time, from its compiled program and from what
the Pallas kernels in it run.

The compiled step is counted by lima_jax.plan.hlo_count: every loop body (the scan over layers,
the gradient-accumulation loop, libtpu's windowed einsums on FSDP slices) times its trip count.
XLA's own cost analysis counts each body once, so on a real step it reads a fraction of the
work: it is kept beside the count as a reference, labelled so.

Pallas kernels are invisible to both (a custom call of unknown cost), so splash attention is
counted here from the blocks the kernel visits (a causal mask skips those above the diagonal).
FLOPs, per head: forward QK^T and PV, the backward's dq kernel (QK^T, dO V^T, dS K) and dkv
kernel (QK^T, P^T dO, dO V^T, dS^T Q), each 2 x K per (query, key) pair visited, and the forward
once more where the remat policy does not keep its output. HBM bytes: `splash_bytes`.
"""
import dataclasses

# Remat policies that keep splash's output and log-sum-exp (named 'attention'): the backward
# pass does not rerun the kernel's forward.
KEEPS_ATTENTION = ("none", "elementwise")
TPU_CUSTOM_CALL = 'custom_call_target="tpu_custom_call"'


@dataclasses.dataclass
class Cost:
  """Per chip, per step, from XLA's cost analysis: loop bodies once, Pallas kernels excluded."""
  flops: float
  bytes: float
  optimal_seconds: float  # XLA's own time estimate of the program.


def cost_of(compiled) -> Cost:
  c = compiled.cost_analysis()
  c = c[0] if isinstance(c, (list, tuple)) else c
  return Cost(float(c.get("flops", 0.0)), float(c.get("bytes accessed", 0.0)),
              float(c.get("optimal_seconds", 0.0)))


def kernels_in(text: str) -> int:
  """How many Mosaic (Pallas TPU) kernel calls a program's HLO text holds."""
  return text.count(TPU_CUSTOM_CALL)


def _passes(remat_policy: str, forward, dq, dkv):
  return forward + dq + dkv + (0 if remat_policy in KEEPS_ATTENTION else forward)


def splash_flops(cfg, batch: int, seq_len: int, block: int, remat_policy: str) -> float:
  """FLOPs splash attention runs in one training step, all chips together (`batch` rows of
  `seq_len` tokens, padded to the block)."""
  blocks = -(-seq_len // block)
  pairs = blocks * (blocks + 1) // 2 * block * block  # causal: blocks on or below the diagonal
  passes = _passes(remat_policy, 2, 3, 4)
  return float(passes * 2 * cfg.head_dim * pairs * cfg.n_heads * cfg.n_layers * batch)


def splash_bytes(cfg, batch: int, seq_len: int, block: int, remat_policy: str,
                 itemsize: int = 2) -> float:
  """HBM bytes splash's kernels move in one training step, all chips together.

  Per query head (K/V that grouped heads share are counted per query head: the kernel fetches
  them per head), a block's tile is fetched again whenever the grid moves to another block of
  it. Forward: q once per query block, k and v once per visited (query, key) block pair; o and
  the log-sum-exp written once. dq kernel: q, dO, log-sum-exp and softmax delta once, k and v
  per pair; dq written. dkv kernel: k and v once, q, dO, log-sum-exp and delta per pair; dk and
  dv written. Each kernel reads the query segment ids once and the key ids per pair. Activations
  are `itemsize` bytes; log-sum-exp, delta and segment ids 4.
  """
  blocks = -(-seq_len // block)
  T, pairs = blocks * block, blocks * (blocks + 1) // 2
  row = T * cfg.head_dim * itemsize  # One [T, K] tensor of one head.
  tiles = pairs * block * cfg.head_dim * itemsize  # One tensor's tiles over the visited pairs.
  segments = 4 * T + 4 * pairs * block
  forward = row + 2 * tiles + row + 4 * T + segments
  dq = 2 * row + 2 * 4 * T + 2 * tiles + row + segments
  dkv = 2 * row + 2 * tiles + 2 * 4 * pairs * block + 2 * row + segments
  return float(_passes(remat_policy, forward, dq, dkv) * cfg.n_heads * cfg.n_layers * batch)


def roofline(flops: float, bytes_: float, chip) -> dict[str, float]:
  """The lower bound on a step: the larger of compute at peak and traffic at full bandwidth."""
  compute, memory = flops / chip.peak_bf16_flops, bytes_ / chip.hbm_bytes_per_s
  return {"compute_seconds": compute, "memory_seconds": memory,
          "seconds": max(compute, memory)}
