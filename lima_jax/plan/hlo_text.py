"""Optimized HLO text (`compiled.as_text()`) read into computations of instructions, and the
trip counts of its while loops: the one XLA wrote (`known_trip_count` in the loop's
backend_config: XLA:CPU and GPU keep it in the optimized text, libtpu's does not), or else the
one found by running the loop's integer counters from their initial constants through the
condition and the body's updates.
"""
import dataclasses
import json
import math
import re

_COMPUTATION = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(ROOT\s+)?%?([\w.\-]+)\s*=\s*")
_ARRAY = re.compile(r"\b(pred|[subf]\d+|bf16|f8\w*|c64|c128|token)\[([\d,]*)\]")
_LAID_OUT = re.compile(r"\b(pred|[subf]\d+|bf16|f8\w*|c64|c128|token)\[([\d,]*)\]"
                       r"(?:\{([\d,]*)(?::((?:[A-Z]\([^)]*\))*))?[^}]*\})?")
_NAME = re.compile(r"%([\w.\-]+)")
_BITS = {"pred": 8, "token": 0, "bf16": 16, "c64": 64, "c128": 128}


@dataclasses.dataclass
class Instr:
  name: str
  shape: str  # The result's shape text: an array, or a tuple of arrays.
  op: str
  args: str  # Between the op's parentheses, as written.
  operands: list[str]
  attrs: str
  root: bool


def arrays(shape: str) -> list[tuple[str, list[int]]]:
  return [(t, [int(d) for d in ds.split(",") if d]) for t, ds in _ARRAY.findall(shape)]


def nbytes(shape: str) -> float:
  """Bytes of the arrays in `shape` as laid out: a tiled layout (TPU's `{1,0:T(8,128)(2,1)}`)
  pads its minor dims to the tile, which is what the chip moves."""
  total = 0
  for t, ds, m2m, tiles in _LAID_OUT.findall(shape):
    dims = [int(d) for d in ds.split(",") if d]
    bits = _BITS.get(t) or int(re.sub(r"\D", "", t.split("e")[0]) or 8)
    tile = [[int(v) for v in x.split(",")] for x in re.findall(r"T\(([\d,]+)\)", tiles)]
    order = [int(d) for d in m2m.split(",") if d] or list(range(len(dims)))[::-1]
    if tile and dims:
      first = tile[0][:]
      if len(tile) > 1 and len(first) > 1 and len(tile[1]) == 2 and tile[1][1] == 1:
        first[-2] *= tile[1][0]  # Sub-word types packed along the second-minor dim.
      for i, size in enumerate(reversed(first)):
        if i < len(order):
          dims[order[i]] = -(-dims[order[i]] // size) * size
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


def dims(attrs: str, key: str) -> list[int]:
  m = re.search(key + r"=\{([\d,]*)\}", attrs)
  return [int(d) for d in m.group(1).split(",") if d] if m else []


def called(attrs: str, key: str) -> list[str]:
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
    value = ins.args.strip()
    return {"true": 1, "false": 0}[value] if value in ("true", "false") else int(value)
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
    body = called(ins.attrs, "calls")[0]
    inner = [lambda o=o: ev(o) for o in ins.operands]
    return _eval(next(i.name for i in comps[body] if i.root), instrs, comps, inner)
  raise _Unknown(name)


def simulated_trip_count(loop: Instr, instrs: dict[str, Instr], comps,
                         limit: int = 1_000_000) -> int | None:
  """Runs the loop's scalar integer state (its counters) from their initial constants through
  the condition and the body's updates; None where any of it is not a known constant."""
  init, cond = instrs[loop.operands[0]], called(loop.attrs, "condition")[0]
  body_root = next(i for i in comps[called(loop.attrs, "body")[0]] if i.root)
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
