r"""Time every non-model curation stage on a synthetic 100,000-conversation pool.

    python benchmarks/curate_pool.py [--pool_size=100000] [--n=1000] [--seed=0]

The pool is generated here (no data needed): four sources, prompts from 200 topic
vocabularies, responses of log-normal length (median ~600 chars) with paragraphs, lists and
code, and planted defects whose counts are known: exact duplicates (2%), near duplicates
(2%, two words changed), truncated responses (1%), non-English responses (1%). It is written
as JSONL and read back with `read_records`, then each stage is timed alone on the records it
would see in the pipeline (diverse: TF-IDF embedding, then k-center and k-means). Writes
benchmarks/results/curate_pool.json (times, counts, how many planted defects each filter
found, and the diversity figures of both diverse methods against a random sample).
"""
import json
import os
import pathlib
import platform
import sys
import tempfile
import time

from absl import app, flags
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lima_jax.curate import dedup, embed, filters, report, selectors  # noqa: E402
from lima_jax.datasets import read_records  # noqa: E402

_POOL_SIZE = flags.DEFINE_integer("pool_size", 100_000, "Conversations in the synthetic pool.")
_N = flags.DEFINE_integer("n", 1000, "How many each selector chooses.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the generated pool and of the selectors.")
_OUT = flags.DEFINE_string("out", str(ROOT / "benchmarks" / "results" / "curate_pool.json"),
                           "Where to write the results JSON.")

SOURCES = ("forum", "howto", "stories", "tasks")
_SYLLABLES = "ba be bi bo bu ka ke ki ko ku la le li lo lu ma me mi mo mu na ne ni no nu " \
             "ra re ri ro ru sa se si so su ta te ti to tu va ve vi vo vu za ze zi zo zu"


def make_pool(size: int, seed: int) -> tuple[list[dict], dict[str, set[int]]]:
  """Rows of the synthetic pool and the indices of each kind of planted defect."""
  rng = np.random.default_rng(seed)
  syllables = _SYLLABLES.split()
  words = sorted({"".join(rng.choice(syllables, size=rng.integers(2, 4))) for _ in range(6000)})
  topics = [rng.choice(words, size=25, replace=False) for _ in range(200)]
  common = "the a of to and in is that for it with as on this be are by can you".split()
  rows, planted = [], {"exact": set(), "near": set(), "truncated": set(), "foreign": set()}
  kinds = rng.random(size)
  for i in range(size):
    if i > 10 and kinds[i] < 0.02:
      rows.append(dict(rows[int(rng.integers(0, i))]))
      planted["exact"].add(i)
      continue
    if i > 10 and kinds[i] < 0.04:
      src = rows[int(rng.integers(0, i))]
      tokens = src["conversations"][1].split(" ")
      for j in rng.integers(0, len(tokens), size=2):
        tokens[j] = "zuzu"
      rows.append({**src, "conversations": [src["conversations"][0], " ".join(tokens)]})
      planted["near"].add(i)
      continue
    topic = topics[int(rng.integers(0, len(topics)))]
    vocab = np.concatenate([topic, common, common])
    prompt = "How do I " + " ".join(rng.choice(vocab, size=int(rng.integers(6, 30)))) + "?"
    target = int(np.clip(rng.lognormal(np.log(600), 0.9), 30, 6000))
    paragraphs, length = [], 0
    while length < target:
      sentence_count = int(rng.integers(2, 6))
      para = " ".join(" ".join(rng.choice(vocab, size=int(rng.integers(6, 18)))).capitalize()
                      + "." for _ in range(sentence_count))
      if rng.random() < 0.15:
        para = "\n".join(f"- {w} {v}" for w, v in zip(rng.choice(topic, 3), rng.choice(topic, 3)))
      elif rng.random() < 0.05:
        para = "```\nx = compute(" + ", ".join(rng.choice(topic, 3)) + ")\n```"
      paragraphs.append(para)
      length += len(para) + 2
    response = "\n\n".join(paragraphs)
    if kinds[i] < 0.05:
      response = response.rstrip(".") + " and the"
      planted["truncated"].add(i)
    elif kinds[i] < 0.06:
      response = "这是一个关于" + "的回答和解释" * (target // 12 + 2) + "。"
      planted["foreign"].add(i)
    rows.append({"conversations": [prompt, response], "source": SOURCES[i % len(SOURCES)]})
  return rows, planted


def timed(fn):
  start = time.perf_counter()
  result = fn()
  return result, round(time.perf_counter() - start, 3)


def main(argv):
  del argv
  results = {"benchmark": "curate_pool", "pool_size": _POOL_SIZE.value, "n": _N.value,
             "seed": _SEED.value, "seconds": {}, "counts": {}}
  sec, counts = results["seconds"], results["counts"]
  (rows, planted), sec["generate"] = timed(lambda: make_pool(_POOL_SIZE.value, _SEED.value))
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "pool.jsonl")
    with open(path, "w", encoding="utf-8") as f:
      f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    results["pool_mb"] = round(os.path.getsize(path) / 2**20, 1)
    (records, _), sec["read_records"] = timed(lambda: read_records(path))
  index_of = {r.origin: int(r.origin.rsplit(":", 1)[1]) - 1 for r in records}

  def found(result, kind):
    """How many removed records were planted as `kind` / how many of them there were."""
    hits = sum(index_of[r.origin] in planted[kind] for r, _ in result.removed)
    return {"removed": len(result.removed), "planted_found": hits,
            "planted": len(planted[kind])}

  exact, sec["exact_dedup"] = timed(lambda: dedup.exact_dedup(records))
  counts["exact_dedup"] = found(exact, "exact")
  near, sec["near_dedup"] = timed(lambda: dedup.near_dedup(exact.kept))
  counts["near_dedup"] = found(near, "near")
  cut, sec["truncated"] = timed(lambda: filters.truncated(near.kept))
  counts["truncated"] = found(cut, "truncated")
  sane, sec["sanity"] = timed(lambda: filters.sanity(cut.kept))
  counts["sanity"] = found(sane, "foreign")
  cleaned, sec["clean_markup"] = timed(lambda: filters.clean_markup(sane.kept))
  lima, sec["lima_rules"] = timed(lambda: filters.lima_rules(cleaned.kept))
  counts["lima_rules_kept"] = len(lima.kept)
  candidates = sane.kept
  counts["candidates"] = len(candidates)

  n, seed = _N.value, _SEED.value
  _, sec["select_random"] = timed(lambda: selectors.random_pick(candidates, n, seed=seed))
  _, sec["select_longest"] = timed(lambda: selectors.longest(candidates, n))
  weights = dict(length=1, structure=1, formatting=1, relevance=1, voice=1)
  _, sec["select_quality"] = timed(lambda: selectors.quality_pick(candidates, n,
                                                                 weights=weights))
  emb, sec["embed_tfidf"] = timed(lambda: embed.tfidf_embed(
      [r.conversations[0] for r in candidates], dim=128, seed=seed))
  picks, sec["select_diverse_kcenter"] = timed(lambda: selectors.kcenter(emb, n))
  div, sec["report_diversity"] = timed(lambda: report.diversity(
      emb, [p.index for p in picks], seed=seed, clusters=100))
  results["diversity_kcenter_vs_random"] = div
  picks, sec["select_diverse_kmeans"] = timed(lambda: selectors.kmeans_pick(emb, n, seed=seed))
  results["diversity_kmeans_vs_random"] = report.diversity(
      emb, [p.index for p in picks], seed=seed, clusters=100)
  sec["total_stages"] = round(sum(v for k, v in sec.items() if k != "generate"), 3)
  load = os.getloadavg()
  results["machine"] = {"cpus": os.cpu_count(), "loadavg_1_5_15": [round(x, 2) for x in load],
                        "platform": platform.platform(), "python": platform.python_version()}
  results["command"] = "python benchmarks/curate_pool.py " + " ".join(sys.argv[1:])
  pathlib.Path(_OUT.value).write_text(json.dumps(results, indent=2) + "\n")
  print(json.dumps(results, indent=2))


if __name__ == "__main__":
  app.run(main)
