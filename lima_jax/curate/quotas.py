"""Per-source quotas: run the selector within each source to reach a target mix.

A quota spec is "source=count,source=count", e.g. LIMA's mix
"stackexchange=400,wikihow=200,writingprompts=150,nlp=50,authors=200" (the paper's 200
STEM + 200 other Stack Exchange are one `stackexchange` label in the released data).
Records of sources not named in the spec are not chosen.

When a source has fewer records left than its quota, `shortfall` decides:
  error  stop with a message naming the source, its quota and what is left (default: a
         silently different mix would change the experiment);
  fill   take all of that source, then fill the missing places by running the selector once
         more over the unchosen records of the other named sources.
"""
from typing import Any, Callable, Sequence

from lima_jax.curate.selectors import Pick
from lima_jax.errors import UserError

SHORTFALLS = ("error", "fill")

# (indices into the records, how many) -> picks whose `index` is a position in `indices`.
SelectFn = Callable[[list[int], int], list[Pick]]


def parse_quotas(spec: str) -> dict[str, int]:
  """'a=200,b=100' -> {'a': 200, 'b': 100}, in spec order."""
  quotas = {}
  for item in filter(None, (part.strip() for part in spec.split(","))):
    name, sep, count = item.rpartition("=")
    if not sep or not name.strip() or not count.strip().isdigit():
      raise UserError(f"config quotas: {item!r} is not SOURCE=COUNT (e.g. wikihow=200)")
    if name.strip() in quotas:
      raise UserError(f"config quotas: source {name.strip()!r} is given twice")
    quotas[name.strip()] = int(count)
  return quotas


def apply_quotas(records: Sequence[Any], quotas: dict[str, int], select: SelectFn, *,
                 shortfall: str = "error") -> list[tuple[int, Pick]]:
  """Selects quotas[source] records of each source; returns (record index, pick) pairs."""
  if shortfall not in SHORTFALLS:
    raise UserError(f"config quota_shortfall: {shortfall!r} is not one of {SHORTFALLS}")
  by_source: dict[str, list[int]] = {name: [] for name in quotas}
  for i, record in enumerate(records):
    if record.source in by_source:
      by_source[record.source].append(i)
  short = {name: (quota, len(by_source[name])) for name, quota in quotas.items()
           if len(by_source[name]) < quota}
  if short and shortfall == "error":
    detail = "; ".join(f"{name!r} wants {quota}, has {have}" for name, (quota, have)
                       in short.items())
    available = ", ".join(f"{name}={len(ids)}" for name, ids in by_source.items())
    raise UserError(f"config quotas: not enough records after filters: {detail} (left per "
                    f"source: {available}); lower the quota or set "
                    "--config.quota_shortfall=fill")

  chosen: list[tuple[int, Pick]] = []
  for name, quota in quotas.items():
    ids = by_source[name]
    for pick in select(ids, min(quota, len(ids))):
      chosen.append((ids[pick.index], pick))
  missing = sum(quotas.values()) - len(chosen)
  if missing > 0:
    taken = {i for i, _ in chosen}
    rest = sorted(i for ids in by_source.values() for i in ids if i not in taken)
    for pick in select(rest, min(missing, len(rest))):
      chosen.append((rest[pick.index], pick))
  return chosen
