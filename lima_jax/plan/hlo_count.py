"""A compiled program's matmul FLOPs and HBM bytes, counted from its optimized HLO text with
every computation weighted by how many times it runs.

XLA's cost analysis counts a while loop's body once. In a training step that is the scan over
layers, the gradient-accumulation loop, and on FSDP slices libtpu's windowed einsums (collective
matmuls, one loop step per shard), so its figures can miss most of the step. Here the call graph
is walked instead: a while loop's body and condition count `known_trip_count` times (XLA writes
it into the loop's backend_config when it can prove it), fusions, calls and async wrappers once
per call, a conditional its most expensive branch. A loop without a known trip count is counted
once and reported in `unknown_loops`: the figures are then lower bounds. libtpu's optimized text
carries no trip counts: there the loop's counters are run (lima_jax.plan.hlo_text).

FLOPs: dot and convolution only, 2 x output elements x contracted size (a convolution's taps
that fall on padding excluded, as XLA counts them; elementwise work, a few percent of a
transformer step, is left out). Pallas kernels (custom calls) count 0: the
planner adds splash's analytically. Bytes follow XLA's rule: what each unfused op and each fusion
reads and writes (operands plus result), where a fused operand read only through a slice counts
the slice, and a dynamic-update-slice writes only its update (it runs in place).
"""
import dataclasses
import functools
import math
import re

from lima_jax.plan.hlo_text import Instr, arrays, called, dims, nbytes, parse
from lima_jax.plan.hlo_text import known_trip_count, simulated_trip_count

# Ops that move no data of their own (their cost, if any, is in what they call).
_FREE = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "while", "call",
         "conditional", "after-all", "partition-id", "replica-id", "opt-barrier",
         "add-dependency"}  # (and every *-done: its result is its -start's, counted there)
_SLICES = {"slice", "dynamic-slice", "gather"}


@dataclasses.dataclass
class Count:
  flops: float = 0.0
  bytes: float = 0.0

  def __add__(self, o):
    return Count(self.flops + o.flops, self.bytes + o.bytes)

  def __mul__(self, n):
    return Count(self.flops * n, self.bytes * n)


@dataclasses.dataclass
class ProgramCount:
  """Per program run (per chip under SPMD)."""
  flops: float
  bytes: float
  loops: int  # While loops in the program, counted per loop op (not per trip).
  # The op_name of each loop whose trip count is not a constant (data-dependent, or a pattern
  # not followed here): counted once, so the figures are lower bounds when this is not empty.
  unknown_loops: list[str]


def matmul_flops(ins: Instr, shapes: dict[str, str]) -> float:
  """FLOPs of one dot or convolution (0 for any other op); `shapes`: result shape by name."""
  out = math.prod(d for _, dims in arrays(ins.shape)[:1] for d in dims)
  operand = arrays(shapes.get(ins.operands[0], "")) if ins.operands else []
  if ins.op == "dot" and operand:
    lhs = operand[0][1]
    return 2.0 * out * math.prod(lhs[d] for d in dims(ins.attrs, "lhs_contracting_dims"))
  if ins.op == "convolution" and len(ins.operands) > 1:
    return _conv_flops(ins, shapes)
  return 0.0


def _conv_flops(ins: Instr, shapes: dict[str, str]) -> float:
  """2 x (output batch x output features x input features per group) x, per spatial dim, the
  (output, kernel tap) pairs that land on the input rather than its padding. libtpu writes many
  dots as convolutions padded on both sides, where counting every tap would overcount."""
  labels = re.search(r"dim_labels=(\w+)_(\w+)->(\w+)", ins.attrs)
  lhs, rhs = (arrays(shapes.get(o, "")) for o in ins.operands[:2])
  out = arrays(ins.shape)
  if not (labels and lhs and rhs and out):
    return 0.0
  (lhs, rhs, out), (l_lab, r_lab, o_lab) = (lhs[0][1], rhs[0][1], out[0][1]), labels.groups()
  size = lambda dims, lab, c: dims[lab.index(c)]
  total = 2.0 * size(out, o_lab, "b") * size(out, o_lab, "f") * size(rhs, r_lab, "i")
  window = re.search(r"window=\{([^}]*)\}", ins.attrs)
  field = lambda key: re.search(key + r"=([\d_x]+)", window.group(1)) if window else None
  spatial = sorted(c for c in r_lab if c.isdigit())
  per_dim = lambda key, default: ([int(v) for v in field(key).group(1).split("x")]
                                  if field(key) else [default] * len(spatial))
  stride, l_dil, r_dil = per_dim("stride", 1), per_dim("lhs_dilate", 1), per_dim("rhs_dilate", 1)
  pads = ([int(v.split("_")[0]) for v in field("pad").group(1).split("x")]
          if field("pad") else [0] * len(spatial))
  for d, c in enumerate(spatial):
    n_in, n_k, n_out = size(lhs, l_lab, c), size(rhs, r_lab, c), size(out, o_lab, c)
    span = (n_in - 1) * l_dil[d] + 1
    total *= sum(1 for o in range(n_out) for k in range(n_k)
                 if 0 <= (p := o * stride[d] - pads[d] + k * r_dil[d]) < span
                 and p % l_dil[d] == 0)
  return total


def _fusion_bytes(ins: Instr, shapes: dict[str, str], body: list[Instr]) -> float:
  """Operands as the fused body reads them, plus the result as it is written."""
  users: dict[str, list[Instr]] = {}
  for i in body:
    for o in i.operands:
      users.setdefault(o, []).append(i)
  total = 0.0
  for p in (i for i in body if i.op == "parameter"):
    n = int(p.args) if p.args.strip().isdigit() else -1
    if not 0 <= n < len(ins.operands):
      continue
    uses = users.get(p.name, [])
    if uses and all(u.op in _SLICES and u.operands[0] == p.name for u in uses):
      total += sum(nbytes(u.shape) for u in uses)
    elif not (uses and all(u.op == "dynamic-update-slice" and u.operands[0] == p.name
                           for u in uses)):  # (updated in place: the update is the result)
      total += nbytes(shapes.get(ins.operands[n], ""))
  return total + _written(body)


def _written(body: list[Instr]) -> float:
  by_name = {i.name: i for i in body}
  root = next(i for i in body if i.root)
  outs = [by_name[o] for o in root.operands] if root.op == "tuple" else [root]
  return sum(nbytes(by_name[o.operands[1]].shape if o.op == "dynamic-update-slice" else o.shape)
             for o in outs)


def count(text: str) -> ProgramCount:
  """FLOPs and bytes of one run of the program whose optimized HLO text is `text`."""
  comps, entry = parse(text)
  instrs = {i.name: i for body in comps.values() for i in body}
  shapes = {name: i.shape for name, i in instrs.items()}
  loops, unknown = [0], []

  @functools.lru_cache(maxsize=None)
  def flops_of(name: str) -> float:  # Everything under a computation, fused bodies included.
    total = 0.0
    for ins in comps.get(name, []):
      total += matmul_flops(ins, shapes)
      total += sum(map(flops_of, called(ins.attrs, "calls")))
    return total

  @functools.lru_cache(maxsize=None)
  def run(name: str) -> Count:
    total = Count()
    for ins in comps.get(name, []):
      if ins.op == "while":
        n = known_trip_count(ins.attrs)
        n = simulated_trip_count(ins, instrs, comps) if n is None else n
        loops[0] += 1
        if n is None:
          m = re.search(r'op_name="([^"]*)"', ins.attrs)
          unknown.append(m.group(1) if m else ins.name)
        body = run(called(ins.attrs, "body")[0]) + run(called(ins.attrs, "condition")[0])
        total += body * (1 if n is None else n)
      elif ins.op == "conditional":
        branches = (called(ins.attrs, "branch_computations")
                    or called(ins.attrs, "true_computation")
                    + called(ins.attrs, "false_computation"))
        total += max(map(run, branches), key=lambda c: (c.flops, c.bytes), default=Count())
      elif ins.op in ("call", "async-start") or (ins.op == "custom-call"
                                                  and "calls=" in ins.attrs):
        total += sum(map(run, called(ins.attrs, "calls") or called(ins.attrs, "to_apply")),
                     Count())
      elif ins.op == "fusion":
        body = called(ins.attrs, "calls")[0]
        total += Count(flops_of(body), _fusion_bytes(ins, shapes, comps[body]))
      elif ins.op not in _FREE and not ins.op.endswith("-done"):
        own = nbytes(ins.shape)
        if ins.op == "dynamic-update-slice":
          own = 2 * nbytes(shapes.get(ins.operands[1], ""))
        elif ins.op in _SLICES:
          own = 2 * own
        elif not ins.op.endswith("-start"):  # (a -start's result holds its operands)
          own += sum(nbytes(shapes.get(o, "")) for o in ins.operands)
        total += Count(matmul_flops(ins, shapes), own)
    return total

  # Loop counts are tallied once per loop op: walk each computation once, then read the tally.
  c = run(entry)
  return ProgramCount(c.flops, c.bytes, loops[0], unknown)
