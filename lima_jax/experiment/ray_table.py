"""What the Ray executor shows while it runs: a table of steps (state, where, attempt,
elapsed), and the words for where a step runs and why an attempt was lost."""
import sys
import time

# A table is printed when something changed, at most this often (every change also prints
# its own line).
EVERY_S = 10.0


class Table:
  def __init__(self, out=None):
    self.out = out or sys.stdout
    self.rows: dict[str, dict] = {}
    self.changed = False
    self.shown = 0.0

  def set(self, key: str, state: str, where: str | None = None, attempt: int | None = None):
    row = self.rows.setdefault(key, {"where": "", "attempt": 0, "since": time.monotonic()})
    if row.get("state") != state:
      row["since"] = time.monotonic()
    row["state"] = state
    if where is not None:
      row["where"] = where
    if attempt is not None:
      row["attempt"] = attempt
    self.changed = True

  def render(self) -> str:
    now = time.monotonic()
    width = max([len(k) for k in self.rows] + [4])
    lines = [f"{'step':<{width}}  {'state':<9} {'where':<28} {'attempt':>7} {'elapsed':>8}"]
    for key, r in self.rows.items():
      elapsed = (f"{now - r['since']:.0f} s" if r["state"] in ("placing", "running")
                 else "")
      lines.append(f"{key:<{width}}  {r['state']:<9} {r['where'][:28]:<28} "
                   f"{r['attempt'] or '':>7} {elapsed:>8}")
    return "\n".join(lines)

  def show(self, running=None, final: bool = False) -> None:
    now = time.monotonic()
    if final or (self.changed and now - self.shown >= EVERY_S):
      print(self.render(), file=self.out, flush=True)
      self.changed, self.shown = False, now


def bundle_nodes(pg) -> tuple[tuple[str, ...], str]:
  """The node ids of a ready group's bundles and how the table shows them (ADDRESS/ID)."""
  import ray
  from ray.util import placement_group_table
  by_bundle = placement_group_table(pg).get("bundles_to_node_id", {})
  ids = tuple(by_bundle[i] for i in sorted(by_bundle))
  address = {n["NodeID"]: n.get("NodeManagerAddress", "?") for n in ray.nodes()}
  shown = dict.fromkeys(f"{address.get(i, '?')}/{i[:6]}" for i in ids)
  return ids, "+".join(shown)


def dead_nodes(ids) -> list[str]:
  """Those of these node ids the cluster now calls dead."""
  import ray
  alive = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
  return [i for i in ids if i not in alive]


def reason(lost) -> str:
  """One line for why an attempt was lost: a Ray error, a signal, or a sentence."""
  if isinstance(lost, str):
    return lost
  if isinstance(lost, BaseException):
    first = (str(lost).strip().splitlines() or [""])[0]
    return f"{type(lost).__name__}: {first}"[:200]
  return f"a process was killed by signal {-lost[0]}"
