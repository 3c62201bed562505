"""A compiled program's matmul FLOPs and HBM bytes, counted from its optimized HLO text with
every computation weighted by how many times it runs.

XLA's cost analysis counts a while loop's body once. In a training step that is the scan over
layers, the gradient-accumulation loop, and on FSDP slices libtpu's windowed einsums (collective
matmuls, one loop step per shard), so its figures can miss most of the step. Here the call graph
is walked instead: a while loop's body and condition count `known_trip_count` times (XLA writes
it into the loop's backend_config when it can prove it), fusions, calls and async wrappers once
per call, a conditional its most expensive branch. A loop without a known trip count is counted
once and reported in `unknown_loops`: the figures are then lower bounds. libtpu's optimized text
carries no trip counts, so where none is written the loop's integer counters are run instead:
from their initial constants, through the condition and the body's updates (`simulated_trip_count`).

FLOPs: dot and convolution only, 2 x output elements x contracted size (elementwise work, a
percent or so of a transformer step, is left out). Pallas kernels (custom calls) count 0: the
planner adds splash's analytically. Bytes follow XLA's rule: what each unfused op and each fusion
reads and writes (operands plus result), where a fused operand read only through a slice counts
the slice, and a dynamic-update-slice writes only its update (it runs in place).
"""
import dataclasses
import functools
import json
import math
import re

_COMPUTATION = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(ROOT\s+)?%?([\w.\-]+)\s*=\s*")
_ARRAY = re.compile(r"\b(pred|[subf]\d+|bf16|f8\w*|c64|c128|token)\[([\d,]*)\]")
_NAME = re.compile(r"%([\w.\-]+)")
_BITS = {"pred": 8, "token": 0, "bf16": 16, "c64": 64, "c128": 128}
# Ops that move no data of their own (their cost, if any, is in what they call).
_FREE = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "while", "call",
         "conditional", "after-all", "partition-id", "replica-id", "opt-barrier",
         "add-dependency", "copy-done", "all-gather-done", "all-reduce-done",
         "collective-permute-done", "async-done", "recv-done", "send-done", "custom-call-done"}
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
class Instr:
  name: str
  shape: str  # The result's shape text: an array, or a tuple of arrays.
  op: str
  args: str  # Between the op's parentheses, as written.
  operands: list[str]
  attrs: str
  root: bool


@dataclasses.dataclass
class ProgramCount:
  """Per program run (per chip under SPMD)."""
  flops: float
  bytes: float
  loops: int  # While loops in the program, counted per loop op (not per trip).
  # The op_name of each loop whose trip count is not a constant (data-dependent, or a pattern
  # not followed here): counted once, so the figures are lower bounds when this is not empty.
  unknown_loops: list[str]


def _arrays(shape: str) -> list[tuple[str, list[int]]]:
  return [(t, [int(d) for d in dims.split(",") if d]) for t, dims in _ARRAY.findall(shape)]


def _nbytes(shape: str) -> float:
  total = 0
  for t, dims in _arrays(shape):
    bits = _BITS.get(t) or int(re.sub(r"\D", "", t.split("e")[0]) or 8)
    total += math.prod(dims) * bits // 8
  return float(total)


def _split(rest: str) -> tuple[str, str, str, str]:
  """'SHAPE op(operands), attrs' -> (shape, op, operands, attrs), parentheses balanced."""
  if rest.startswith("("):
    depth = 0
    for i, ch in enumerate(rest):
      depth += {"(": 1, ")": -1}.get(ch, 0)
      if depth == 0:
        break
    shape, rest = rest[:i + 1], rest[i + 1:].lstrip()
  else:
    shape, rest = rest.split(" ", 1)
  op, rest = rest.split("(", 1)
  depth = 1
  for i, ch in enumerate(rest):
    depth += {"(": 1, ")": -1}.get(ch, 0)
    if depth == 0:
      break
  return shape, op.strip(), rest[:i], rest[i + 1:]


def parse(text: str) -> tuple[dict[str, list[Instr]], str]:
  """Computations by name, and the entry computation's name."""
  comps, entry, current = {}, None, None
  for line in text.splitlines():
    if current is None:
      m = _COMPUTATION.match(line)
      if m and "(" in line:
        current = comps.setdefault(m.group(2), [])
        entry = m.group(2) if m.group(1) else entry
      continue
    if line.strip() == "}":
      current = None
      continue
    m = _INSTRUCTION.match(line)
    if m:
      shape, op, operands, attrs = _split(line[m.end():])
      current.append(Instr(m.group(2), shape, op, operands, _NAME.findall(operands), attrs,
                           bool(m.group(1))))
  if entry is None:
    raise ValueError("no ENTRY computation in the HLO text")
  return comps, entry


def _dims(attrs: str, key: str) -> list[int]:
  m = re.search(key + r"=\{([\d,]*)\}", attrs)
  return [int(d) for d in m.group(1).split(",") if d] if m else []


def _called(attrs: str, key: str) -> list[str]:
  m = re.search(key + r"=\{([^}]*)\}", attrs) or re.search(key + r"=(%?[\w.\-]+)", attrs)
  return _NAME.findall(m.group(1)) or [m.group(1).lstrip("%")] if m else []


def known_trip_count(attrs: str) -> int | None:
  """The trip count XLA proved and wrote into a while op's backend_config (XLA:CPU and GPU
  keep it in the optimized text; libtpu's does not)."""
  m = re.search(r"backend_config=(\{.*\})", attrs)
  if not m:
    return None
  try:
    n = json.JSONDecoder().raw_decode(m.group(1))[0].get("known_trip_count", {}).get("n")
  except ValueError:
    return None
  return int(n) if n is not None else None


class _Unknown(Exception):
  pass


_ARITH = {"add": lambda a, b: a + b, "subtract": lambda a, b: a - b,
          "multiply": lambda a, b: a * b, "negate": lambda a: -a, "maximum": max, "minimum": min,
          "and": lambda a, b: a and b, "or": lambda a, b: a or b}
_COMPARE = {"LT": lambda a, b: a < b, "LE": lambda a, b: a <= b, "GT": lambda a, b: a > b,
            "GE": lambda a, b: a >= b, "EQ": lambda a, b: a == b, "NE": lambda a, b: a != b}


def _eval(name: str, instrs: dict[str, Instr], comps, params) -> int:
  """The value of a scalar integer instruction; `params` are thunks for the parameters."""
  ins, ev = instrs[name], lambda n: _eval(n, instrs, comps, params)
  if ins.op == "parameter":
    return params[int(ins.args)]()
  if ins.op == "constant":
    return {"true": 1, "false": 0}.get(ins.args.strip()) if ins.args.strip() in (
        "true", "false") else int(ins.args)
  if ins.op == "get-tuple-element":
    k, src = int(re.search(r"index=(\d+)", ins.attrs).group(1)), instrs[ins.operands[0]]
    if src.op == "tuple":
      return ev(src.operands[k])
    value = ev(src.name)
    if not isinstance(value, dict) or k not in value:
      raise _Unknown(name)
    return value[k]
  if ins.op in ("copy", "bitcast", "convert", "reshape"):
    return ev(ins.operands[0])
  if ins.op in _ARITH:
    return _ARITH[ins.op](*map(ev, ins.operands))
  if ins.op == "compare":
    return int(_COMPARE[re.search(r"direction=(\w+)", ins.attrs).group(1)](
        *map(ev, ins.operands)))
  if ins.op == "select":
    p, a, b = ins.operands
    return ev(a) if ev(p) else ev(b)
  if ins.op == "fusion":
    body = _called(ins.attrs, "calls")[0]
    inner = [lambda o=o: ev(o) for o in ins.operands]
    return _eval(next(i.name for i in comps[body] if i.root), instrs, comps, inner)
  raise _Unknown(name)


def simulated_trip_count(loop: Instr, instrs: dict[str, Instr], comps,
                         limit: int = 1_000_000) -> int | None:
  """Runs the loop's scalar integer state (its counters) from their initial constants through
  the condition and the body's updates; None where any of it is not a known constant."""
  init, cond = instrs[loop.operands[0]], _called(loop.attrs, "condition")[0]
  body_root = next(i for i in comps[_called(loop.attrs, "body")[0]] if i.root)
  if init.op != "tuple" or body_root.op != "tuple":
    return None
  state = {}
  for k, o in enumerate(init.operands):
    if re.fullmatch(r"(pred|[su]\d+)\[\](\{.*\})?", instrs[o].shape):
      try:
        state[k] = _eval(o, instrs, comps, [])
      except (_Unknown, IndexError, KeyError, ValueError):
        pass
  cond_root = next(i.name for i in comps[cond] if i.root)
  try:
    for n in range(limit):
      now = dict(state)
      if not _eval(cond_root, instrs, comps, [lambda: now]):
        return n
      for k in list(state):
        try:
          state[k] = _eval(body_root.operands[k], instrs, comps, [lambda: now])
        except _Unknown:
          del state[k]  # Not a counter; the condition fails below if it needs it.
  except (_Unknown, IndexError, KeyError, ValueError):
    return None
  return None


def _matmul_flops(ins: Instr, shapes: dict[str, str]) -> float:
  out = math.prod(d for _, dims in _arrays(ins.shape)[:1] for d in dims)
  operand = _arrays(shapes.get(ins.operands[0], "")) if ins.operands else []
  if ins.op == "dot" and operand:
    lhs = operand[0][1]
    return 2.0 * out * math.prod(lhs[d] for d in _dims(ins.attrs, "lhs_contracting_dims"))
  if ins.op == "convolution" and len(ins.operands) > 1:
    labels = re.search(r"dim_labels=\w+_(\w+)->", ins.attrs)
    rhs = _arrays(shapes.get(ins.operands[1], ""))
    if labels and rhs:  # Every kernel dim but the output feature is summed over.
      return 2.0 * out * math.prod(d for d, l in zip(rhs[0][1], labels.group(1)) if l != "o")
  return 0.0


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
      total += sum(_nbytes(u.shape) for u in uses)
    elif not (uses and all(u.op == "dynamic-update-slice" and u.operands[0] == p.name
                           for u in uses)):  # (updated in place: the update is the result)
      total += _nbytes(shapes.get(ins.operands[n], ""))
  return total + _written(body)


def _written(body: list[Instr]) -> float:
  by_name = {i.name: i for i in body}
  root = next(i for i in body if i.root)
  outs = [by_name[o] for o in root.operands] if root.op == "tuple" else [root]
  return sum(_nbytes(by_name[o.operands[1]].shape if o.op == "dynamic-update-slice" else o.shape)
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
      total += _matmul_flops(ins, shapes)
      total += sum(map(flops_of, _called(ins.attrs, "calls")))
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
        body = run(_called(ins.attrs, "body")[0]) + run(_called(ins.attrs, "condition")[0])
        total += body * (1 if n is None else n)
      elif ins.op == "conditional":
        branches = (_called(ins.attrs, "branch_computations")
                    or _called(ins.attrs, "true_computation")
                    + _called(ins.attrs, "false_computation"))
        total += max(map(run, branches), key=lambda c: (c.flops, c.bytes), default=Count())
      elif ins.op in ("call", "async-start") or (ins.op == "custom-call" and "calls=" in ins.attrs):
        total += sum(map(run, _called(ins.attrs, "calls") or _called(ins.attrs, "to_apply")),
                     Count())
      elif ins.op == "fusion":
        body = _called(ins.attrs, "calls")[0]
        total += Count(flops_of(body), _fusion_bytes(ins, shapes, comps[body]))
      elif ins.op not in _FREE:
        own = 0.0 if ins.op.endswith("-done") else _nbytes(ins.shape)
        if ins.op == "dynamic-update-slice":
          own = 2 * _nbytes(shapes.get(ins.operands[1], ""))
        elif ins.op in _SLICES:
          own = 2 * own
        elif not ins.op.endswith("-start"):  # (a -start's result holds its operands)
          own += sum(_nbytes(shapes.get(o, "")) for o in ins.operands)
        total += Count(_matmul_flops(ins, shapes), own)
    return total

  # Loop counts are tallied once per loop op: walk each computation once, then read the tally.
  c = run(entry)
  return ProgramCount(c.flops, c.bytes, loops[0], unknown)
