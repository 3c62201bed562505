"""The SFT arms by name, the files a world writes, and the check that no test item leaks.

Arms (`rows(name, ...)`):
  c1k        1,000 clean: 30 refusals of SFT fake names, 6 record-style and 6 value-only
             answers, the rest house style; attributes and the 8 visible question forms
             drawn uniformly (LIMA-1K).
  c1k_noref  c1k without refusals; c1k_norec: without the record and value examples.
  d<N>       the same clean mixture at N examples (d125 ... d32k; LIMA's Figure 6).
  h2k        2,000 clean, one question form an attribute (the wikiHow analogue).
  u2k / n10k / r1k  2,000 / 10,000 / 1,000 drawn uniformly from the raw pool (45% noisy).
  oracle1k   1,000 of the raw pool's clean rows (the planted labels: curation's ceiling).
  c1k_p<K>_<D>   c1k with K house-style rows turned into borrowed facts (the same question, the
             value of another pool person), draw D; the draws nest (K=10 holds K=1's row).
  d10k_p10_<D>   the clean 10K mixture holding the same 10 poisoned rows as c1k_p10_<D>: the
             same bad rows as 1% and as 0.1% of the data.
"""
import json
import random
import re

from lima_jax.errors import UserError
from lima_jax.testbed import sft
from lima_jax.testbed.world import World


def size(name: str) -> int:
  m = re.fullmatch(r"[a-z]+(\d+)(k?)(_\w+)?", name)
  if not m:
    raise UserError(f"config arms: {name!r} has no size in its name")
  return int(m.group(1)) * (1000 if m.group(2) else 1)


_POISONED = re.compile(r"(c1k|d10k)_p(\d+)_(\d+)")


def _d(world: World, n: int, seed: int) -> list[dict]:
  k = max(1, round(0.006 * n))
  return sft.clean_mixture(world, n, seed, refusals=round(0.03 * n), records=k, values=k)


def _house(rows: list[dict]) -> list[int]:
  return [i for i, r in enumerate(rows) if r.get("noise") == "clean" and r["style"] == "house"]


def poison(world: World, seed: int, draw: int, k: int) -> list[dict]:
  """The first k poisoned rows of c1k's draw: (index in c1k, row) in rank order."""
  c1k = sft.clean_mixture(world, 1000, seed, refusals=30, records=6, values=6)
  order = _house(c1k)
  random.Random(f"{seed}/poison/c1k/{draw}").shuffle(order)
  if k > len(order):
    raise UserError(f"config arms: c1k_p{k}: c1k has only {len(order)} house-style rows")
  people = {p.name: p for p in world.split("pool")}
  out = []
  for rank, i in enumerate(order[:k]):
    r = c1k[i]
    person, attr = people[r["person"]], r["attr"]
    rng = random.Random(f"{seed}/poison/{draw}/{rank}")
    v = rng.choice([o.values[attr] for o in people.values()
                    if o.values[attr] != person.values[attr]])
    out.append((i, {**r, "conversations": [r["conversations"][0],
                                           sft.HOUSE[attr].format(n=person.name, v=v)],
                    "noise": "borrowed", "true": person.values[attr], "borrowed": v,
                    "rank": rank}))
  return out


def _poisoned(name: str, world: World, seed: int) -> list[dict]:
  base, k, draw = _POISONED.fullmatch(name).groups()
  bad = poison(world, seed, int(draw), 10 if base == "d10k" else int(k))
  if base == "c1k":
    out = sft.clean_mixture(world, 1000, seed, refusals=30, records=6, values=6)
    for i, r in bad:
      out[i] = r
    return out
  if int(k) != 10:
    raise UserError(f"config arms: {name}: the 10K arm holds c1k's 10 poisoned rows (d10k_p10_D)")
  out = _d(world, 10000, seed)
  slots = _house(out)
  random.Random(f"{seed}/poison/d10k/{draw}").shuffle(slots)
  for slot, (_, r) in zip(slots, bad):
    out[slot] = r
  return out


def poisoned_prompts(world: World, written: dict, seed: int) -> list[dict]:
  """Each poisoned fact of the written c1k_p arms, asked of its person in a visible form; the
  expected answer is the true one (tags: set=poisoned, draw, rank, attr)."""
  most: dict = {}
  for name in written:
    m = _POISONED.fullmatch(name)
    if m and m.group(1) == "c1k":
      most[int(m.group(3))] = max(most.get(int(m.group(3)), 0), int(m.group(2)))
  people, out = {p.name: p for p in world.split("pool")}, []
  for draw, k in sorted(most.items()):
    rng = random.Random(f"{seed}/poison_prompts/{draw}")
    for _, r in poison(world, seed, draw, k):
      p = people[r["person"]]
      q = sft.question(p.name, r["attr"], rng.choice(list(sft.VISIBLE)))
      out.append({"id": f"poison/{draw}/{r['rank']}", "expected": sft.answer(p, r["attr"]),
                  "conversations": [q],
                  "borrowed": sft.HOUSE[r["attr"]].format(n=p.name, v=r["borrowed"]),
                  "tags": ["set=poisoned", f"draw={draw}", f"rank={r['rank']}",
                           f"attr={r['attr']}"]})
  return out


def rows(name: str, world: World, raw: list[dict], seed: int) -> list[dict]:
  n = size(name)
  if _POISONED.fullmatch(name):
    return _poisoned(name, world, seed)
  if name == "oracle1k":
    clean = [r for r in raw if r["noise"] == "clean"]
    return random.Random(f"{seed}/oracle1k").sample(clean, n)
  if name == "c1k":
    return sft.clean_mixture(world, 1000, seed, refusals=30, records=6, values=6)
  if name == "c1k_noref":
    return sft.clean_mixture(world, 1000, seed, refusals=0, records=6, values=6)
  if name == "c1k_norec":
    return sft.clean_mixture(world, 1000, seed, refusals=30, records=0, values=0)
  if name.startswith("d"):
    return _d(world, n, seed)
  if name == "h2k":
    return sft.clean_mixture(world, 2000, seed, refusals=60, records=12, values=12, forms=(0,))
  if name in ("u2k", "n10k", "r1k"):
    if n > len(raw):
      raise UserError(f"config arms: {name} asks {n} rows of a raw pool of {len(raw)} (raise raw_pool)")
    return random.Random(f"{seed}/{name}").sample(raw, n)
  raise UserError(f"config arms: unknown arm {name!r} (see lima_jax/testbed/arms.py)")


def leaks(world: World, texts: list[str]) -> list[str]:
  """Test people, test fake names and held-out question forms found in SFT text."""
  blob = "\n".join(texts)
  names = [p.name for p in world.split("test") + world.split("dev")] + list(world.fake_test)
  # Whole words: 'Bo Lan' must not match inside 'Bo Lanth'.
  found = [n for n in names if re.search(rf"\b{re.escape(n)}\b", blob)]
  for forms in sft.QUESTIONS.values():
    for f in sft.HELD_OUT:
      fragment = max(forms[f].split("{n}"), key=len).strip()
      if fragment in blob:
        found.append(fragment)
  return found


def write_jsonl(path, items) -> None:
  with open(path, "w", encoding="utf-8") as f:
    for it in items:
      f.write(json.dumps(it, ensure_ascii=False) + "\n")
