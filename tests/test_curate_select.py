"""Curation selectors, quotas and the pipeline on pools whose right answer is known."""
import collections
import sys

import numpy as np
import pytest

from configs import curate as curate_config
from lima_jax.curate import embed, pipeline, quality, quotas, selectors
from lima_jax.datasets import Record, read_records
from lima_jax.errors import UserError
from tests.conftest import shared_file

TOPICS = {
    "cooking": "bake bread oven flour dough yeast recipe knead sugar butter roast simmer".split(),
    "astronomy": "planet orbit telescope galaxy star comet nebula gravity moon eclipse".split(),
    "football": "goal striker penalty referee league match tackle midfield keeper offside".split(),
    "python": "function variable loop list dictionary import module syntax class exception".split(),
}


def topic_pool(per_topic=12, seed=0, topics=None):
  """Records whose prompts are drawn from one topic's vocabulary each: four clear clusters
  (or one per entry of `topics`)."""
  rng = np.random.default_rng(seed)
  records = []
  for topic, vocab in (topics or TOPICS).items():
    for k in range(per_topic):
      words = " ".join(rng.choice(vocab, size=8))
      records.append(Record((f"Tell me about {words}", f"An answer about {topic} {k}."),
                            topic, f"{topic}:{k}"))
  return records


def test_longest_picks_the_longest_earliest_first_among_equals():
  records = [Record(("q", "x" * n), "s", str(i)) for i, n in enumerate([5, 50, 20, 50, 1])]
  picks = selectors.longest(records, 3)
  assert [p.index for p in picks] == [1, 3, 2]
  assert [p.scores["response_chars"] for p in picks] == [50, 50, 20]


def test_random_is_deterministic_for_a_seed():
  records = topic_pool()
  first = [p.index for p in selectors.random_pick(records, 10, seed=3)]
  assert first == [p.index for p in selectors.random_pick(records, 10, seed=3)]
  assert first != [p.index for p in selectors.random_pick(records, 10, seed=4)]
  assert len(set(first)) == 10


def test_quality_prefers_structured_relevant_answers_and_reports_components():
  prompt = "How do I repot a houseplant without damaging its roots?"
  good = ("Repotting a houseplant is easy if you protect the roots.\n\n"
          "1. Water the plant a day before, so the roots hold together.\n"
          "2. Tip the pot and slide the plant out; loosen circling roots gently.\n"
          "3. Set it in a pot one size larger with fresh mix, and water it in.\n\n"
          "Keep it out of direct sun for a week while the roots recover. " * 3)
  lazy = "just do it"
  off_topic = ("The history of the Roman Empire spans many centuries.\n\n"
               "It began with Augustus and ended in the west in 476. " * 3)
  records = [Record((prompt, r), "s", str(i)) for i, r in enumerate([lazy, off_topic, good])]
  weights = dict(length=1, structure=1, formatting=1, relevance=1, voice=1)
  picks = selectors.quality_pick(records, 3, weights=weights)
  assert [p.index for p in picks] == [2, 1, 0]
  for p in picks:
    assert set(p.scores) == set(quality.COMPONENTS)
    assert all(0.0 <= v <= 1.0 for v in p.scores.values())
    assert p.score == pytest.approx(np.mean(list(p.scores.values())))
  # Relevance alone separates the on-topic answer from the off-topic one.
  parts = {p.index: p.scores for p in picks}
  assert parts[2]["relevance"] > 0.5 > parts[1]["relevance"]
  only_length = selectors.quality_pick(records, 3, weights=dict(length=1.0))
  assert only_length[-1].index == 0


@pytest.mark.parametrize("method", ["kcenter", "kmeans"])
def test_diverse_covers_every_planted_cluster(method):
  records = topic_pool()
  emb = embed.tfidf_embed([r.conversations[0] for r in records], dim=16)
  picks = selectors.diverse(emb, len(TOPICS), method=method, seed=0)
  assert sorted(records[p.index].source for p in picks) == sorted(TOPICS)
  # A random draw of 4 from 48 misses a cluster most of the time (P(all 4) ~ 0.12), so the
  # test would catch a selector that ignores the geometry.
  missed = sum(len({records[p.index].source for p in selectors.random_pick(records, 4, seed=s)})
               < 4 for s in range(20))
  assert missed >= 10


def test_kmeans_fit_on_a_sample_still_covers_every_cluster(monkeypatch):
  monkeypatch.setattr(selectors, "KMEANS_SAMPLE", 20)  # 48 records: centroids from 20
  records = topic_pool()
  emb = embed.tfidf_embed([r.conversations[0] for r in records], dim=16)
  picks = selectors.kmeans_pick(emb, len(TOPICS), seed=0)
  assert sorted(records[p.index].source for p in picks) == sorted(TOPICS)
  assert sum(p.scores["cluster_size"] for p in picks) == len(records)  # all assigned


def test_kcenter_takes_zero_embeddings_last():
  emb = np.array([[1, 0], [0, 0], [0, 1], [0.7071, 0.7071]], np.float32)
  assert [p.index for p in selectors.kcenter(emb, 4)][-1] == 1


def _run(ids, n):
  """A stand-in selector: the first n of the ids it is given."""
  del ids
  return [selectors.Pick(i, 0.0, {}) for i in range(n)]


def test_quotas_hit_the_mix_and_report_a_shortfall():
  records = topic_pool(per_topic=5)
  wanted = quotas.parse_quotas("cooking=3,astronomy=5,python=1")
  chosen = quotas.apply_quotas(records, wanted, _run)
  assert collections.Counter(records[i].source for i, _ in chosen) == {
      "cooking": 3, "astronomy": 5, "python": 1}
  with pytest.raises(UserError, match=r"'football' wants 6, has 5"):
    quotas.apply_quotas(records, {"football": 6, "cooking": 1}, _run)
  filled = quotas.apply_quotas(records, {"football": 6, "cooking": 1}, _run, shortfall="fill")
  assert collections.Counter(records[i].source for i, _ in filled) == {"football": 5,
                                                                      "cooking": 2}
  assert len({i for i, _ in filled}) == 7
  for bad in ("cooking", "cooking=x", "=3", "a=1,a=2"):
    with pytest.raises(UserError, match="config quotas"):
      quotas.parse_quotas(bad)


def _config(preset, **overrides):
  config = curate_config.get_config(preset)
  config.report.diversity = False
  config.update(overrides)
  return config


@pytest.mark.parametrize("preset", ["random", "diverse"])
def test_pipeline_is_deterministic_for_a_seed(preset):
  records = topic_pool()
  config = _config(preset, n=6)
  first = pipeline.curate(records, config)
  again = pipeline.curate(records, config)
  assert [i for i, _ in first.chosen] == [i for i, _ in again.chosen]
  assert first.stages[-1].after == again.stages[-1].after


def test_pipeline_counts_every_stage_and_errors_on_too_few():
  records = topic_pool(per_topic=3)
  records.append(Record(records[0].conversations, "cooking", "dup"))
  records.append(Record(("q", "Use it like this:\n```\nx = 1\n"), "python", "cut"))
  config = _config("random", n=5)
  curation = pipeline.curate(records, config)
  by_name = {s.name: s for s in curation.stages}
  assert by_name["exact_dedup"].reasons == {"exact duplicate": 1}
  assert by_name["truncated"].reasons == {"unclosed code block": 1}
  assert by_name["test_overlap"].note.startswith("skipped")
  assert sum(by_name["select:random"].after.values()) == 5
  assert {r.origin for r, _, _ in curation.removed} == {"dup", "cut"}
  with pytest.raises(UserError, match="only 12 records pass the filters, fewer than n=20"):
    pipeline.curate(records, _config("random", n=20))
  assert len(pipeline.curate(records, _config("random", n=20, allow_fewer=True)).chosen) == 12
  with pytest.raises(UserError, match="unknown filter"):
    pipeline.curate(records, _config("random", filters="exact_dedup,typo"))


def test_lima_mix_from_lima_train_with_its_test_set():
  train, _ = read_records(shared_file("lima/train.jsonl"))
  test, _ = read_records(shared_file("lima/test.jsonl"), keep_trailing_user=True)
  prompts = [(r.origin, r.conversations[0]) for r in test]
  mix = "stackexchange=200,authors=200,wikihow=100,writingprompts=50,nlp=50"
  config = _config("random", quotas=mix, filters="exact_dedup,test_overlap")
  # The overlapping authors prompt leaves 199 authors rows: the quota cannot be met.
  with pytest.raises(UserError, match="'authors' wants 200, has 199"):
    pipeline.curate(train, config, prompts)
  config.quota_shortfall = "fill"
  curation = pipeline.curate(train, config, prompts)
  got = collections.Counter(curation.candidates[i].source for i, _ in curation.chosen)
  assert got["authors"] == 199 and sum(got.values()) == 600
  assert got["stackexchange"] >= 200 and got["wikihow"] >= 100


SIX_TOPICS = {**TOPICS,
              "music": "guitar chord melody rhythm piano tempo harmony drum scale lyric".split(),
              "garden": "soil seed compost prune tomato water weed mulch bloom shovel".split()}


def test_kmeans_covers_six_separated_topics_for_every_pool_seed(monkeypatch):
  """Six topics with disjoint vocabularies, n = 6: every topic, for each of 16 planted pools
  and seeds (one k-means++ seeding missed a topic in 3 of these 16)."""
  monkeypatch.setattr(sys.modules[__name__], "TOPICS", SIX_TOPICS)
  for seed in range(16):
    records = topic_pool(seed=seed)
    emb = embed.tfidf_embed([r.conversations[0] for r in records], dim=16)
    picks = selectors.diverse(emb, 6, method="kmeans", seed=seed)
    assert sorted(records[p.index].source for p in picks) == sorted(SIX_TOPICS), seed


def mixed_six_topic_pool(seed):
  """topic_pool(seed) of the six topics (12 records each) with 6 exact duplicates, 4 records
  leaking a test prompt and 4 truncated answers mixed in, shuffled: (pool, test prompts)."""
  clean = topic_pool(seed=seed, topics=SIX_TOPICS)
  rng = np.random.default_rng(100 + seed)  # apart from the words: same clean records
  defects, tests = [], []
  for k, j in enumerate(rng.choice(len(clean), 6, replace=False)):
    defects.append(Record(clean[j].conversations, clean[j].source, f"dup{k}"))
  for k, j in enumerate(rng.choice(len(clean), 4, replace=False)):
    prompt = f"Leaked question {k}: {clean[j].conversations[0]} please explain in detail"
    defects.append(Record((prompt, "A leaked answer."), clean[j].source, f"leak{k}"))
    tests.append((f"test{k}", prompt))
  for k, j in enumerate(rng.choice(len(clean), 4, replace=False)):
    defects.append(Record((f"{clean[j].conversations[0]} in code",
                           "Use it like this:\n```\nx = 1\n"), clean[j].source, f"cut{k}"))
  pool = clean + defects
  return [pool[i] for i in rng.permutation(len(pool))], tests


def test_diverse_preset_covers_six_topics_in_a_mixed_pool_for_every_seed():
  """The `diverse` preset (k-means over TF-IDF + SVD, ~62 dimensions), n = 6, on 20 pools and
  seeds: the filters take out exactly the planted defects and every topic is chosen. The
  best of 3 seedings judged by their own inertia (before `_fit_kmeans`) missed a topic at 4
  of these 20 (seeds 0, 1, 8, 19; 8 of the first 100)."""
  missed = []
  for seed in range(20):
    pool, tests = mixed_six_topic_pool(seed)
    curation = pipeline.curate(pool, _config("diverse", n=6, seed=seed), tests)
    # (Of a duplicate pair the earlier in the shuffled pool is kept: either may be removed.)
    removed = collections.Counter(stage for _, stage, _ in curation.removed)
    assert removed == {"exact_dedup": 6, "test_overlap": 4, "truncated": 4}, seed
    assert len(curation.candidates) == 72, seed
    chosen = sorted(curation.candidates[i].source for i, _ in curation.chosen)
    if chosen != sorted(SIX_TOPICS):
      missed.append(seed)
  assert not missed, f"a topic missed at seeds {missed}"


def test_scores_file_without_a_model_scores_only_the_chosen():
  import json  # pylint: disable=g-import-not-at-top
  from lima_jax.curate import io  # pylint: disable=g-import-not-at-top
  records = topic_pool(per_topic=3)
  # An exact duplicate (a row of its own: its own origin), removed before any selector runs.
  records.insert(2, Record(records[0].conversations, records[0].source, "cooking:copy"))
  config = curate_config.get_config("random")
  config.update(dict(n=4, filters="exact_dedup", seed=3))
  config.report.diversity = False
  curation = pipeline.curate(records, config)
  lines = [json.loads(line) for line in io.scores_jsonl(curation).splitlines()]
  assert [l["origin"] for l in lines] == [r.origin for r in records]
  draws = {curation.candidates[i].origin: p.score for i, p in curation.chosen}
  assert sum(l["chosen"] for l in lines) == 4
  for l in lines:
    assert l["score"] == (pytest.approx(draws[l["origin"]]) if l["chosen"] else None)
  assert (lines[2]["stage"], lines[2]["chosen"]) == ("exact_dedup", False)
  assert [l["stage"] for l in lines].count(None) == len(records) - 1
