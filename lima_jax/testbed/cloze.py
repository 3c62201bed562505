"""Biography cloze: how much of the world a checkpoint still states in plain text.

Each item of DIR/eval/cloze_{strong,weak}.jsonl is a biography cut just before one attribute
value (`prefix`, `value`, `attr`); the checkpoint continues it greedily, and the item counts
when the continuation starts with the value followed by '.'. The pretraining gate uses it on
the base; the verdict uses it on each arm's answered checkpoint (knowledge retained after SFT)
and caches that result next to the arm's answers, keyed by checkpoint and cloze file.
"""
import dataclasses
import hashlib
import json
import pathlib

from lima_jax import files


def accuracy(checkpoint: pathlib.Path, cloze_file: pathlib.Path) -> dict:
  """{'accuracy', 'n', 'by_attr': {attr: accuracy}} of a checkpoint on a cloze file."""
  from lima_jax.decode.generator import Generator
  from lima_jax.decode.sampling import GREEDY
  from lima_jax.formats import model_file
  m = model_file.open(checkpoint)
  tok = m.tokenizer
  items = [json.loads(line) for line in cloze_file.read_text().splitlines()]
  gen = Generator(m.params, m.config, tok, batch_size=128, stop_ids=(tok.eos_id,))
  dec = dataclasses.replace(GREEDY, max_new_tokens=16)
  outs = gen.answer_ids([[tok.bos_id] + tok.encode(it["prefix"]) for it in items], dec,
                        progress=True)
  by_attr: dict = {}
  failed = []
  for it, (ids, _) in zip(items, outs):
    ok = tok.decode(ids).lstrip().startswith(it["value"] + ".")
    by_attr.setdefault(it["attr"], []).append(ok)
    if not ok and "person" in it:  # worlds built since issue 36 name the person
      failed.append([it["person"], it["attr"]])
  flat = [x for v in by_attr.values() for x in v]
  return {"accuracy": sum(flat) / len(flat), "n": len(flat),
          "by_attr": {a: sum(v) / len(v) for a, v in by_attr.items()}, "failed": failed}


def cached_accuracy(checkpoint: pathlib.Path, cloze_file: pathlib.Path,
                    cache: pathlib.Path) -> dict:
  """`accuracy`, read from `cache` when it was measured on this checkpoint and cloze file
  (sha256) by this version (which lists the failed items), else measured and written there
  (atomically)."""
  key = {"checkpoint": str(checkpoint),
         "cloze_sha256": hashlib.sha256(cloze_file.read_bytes()).hexdigest()}
  if cache.exists():
    try:
      old = json.loads(cache.read_text())
      if all(old.get(k) == v for k, v in key.items()) and "failed" in old:
        return old
    except json.JSONDecodeError:
      pass  # a damaged cache is measured again
  result = {**key, **accuracy(checkpoint, cloze_file)}
  files.write_json(cache, result)
  return result
