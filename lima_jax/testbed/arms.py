"""The SFT arms by name, the files a world writes, and the check that no test item leaks.

Arms (`rows(name, ...)`):
  c1k        1,000 clean: 30 refusals of SFT fake names, 6 record-style and 6 value-only
             answers, the rest house style; attributes and the 8 visible question forms
             drawn uniformly (LIMA-1K).
  c1k_noref  c1k without refusals; c1k_norec: without the record and value examples.
  d<N>       the same clean mixture at N examples (d125 ... d32k; LIMA's Figure 6).
  h2k        2,000 clean, one question form an attribute (the wikiHow analogue).
  u2k / n10k / r1k  2,000 / 10,000 / 1,000 drawn uniformly from the raw pool (45% noisy).
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


def rows(name: str, world: World, raw: list[dict], seed: int) -> list[dict]:
  n = size(name)
  if name == "c1k":
    return sft.clean_mixture(world, 1000, seed, refusals=30, records=6, values=6)
  if name == "c1k_noref":
    return sft.clean_mixture(world, 1000, seed, refusals=0, records=6, values=6)
  if name == "c1k_norec":
    return sft.clean_mixture(world, 1000, seed, refusals=30, records=0, values=0)
  if name.startswith("d"):
    k = max(1, round(0.006 * n))
    return sft.clean_mixture(world, n, seed, refusals=round(0.03 * n), records=k, values=k)
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
