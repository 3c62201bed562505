"""The bioworld testbed: the world, what SFT files may contain, and how answers are read."""
import json
import pathlib
import subprocess
import sys

import pytest

from lima_jax.errors import UserError
from lima_jax.testbed import analysis, arms, sft, world as world_lib

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  out = tmp_path_factory.mktemp("bw") / "world"
  r = subprocess.run([sys.executable, "-m", "lima_jax.testbed", "build",
                      "--config=configs/bioworld.py:world_smoke", f"--out={out}"],
                     cwd=REPO, capture_output=True, text=True)
  assert r.returncode == 0, r.stderr[-2000:]
  return out


def test_world_is_a_function_of_its_seed():
  a = world_lib.make_world(10, 2, 5, 2, 3, seed=1)
  b = world_lib.make_world(10, 2, 5, 2, 3, seed=1)
  c = world_lib.make_world(10, 2, 5, 2, 3, seed=2)
  assert a == b and a != c
  names = [p.name for p in a.people] + list(a.fake_sft) + list(a.fake_test)
  assert len(set(names)) == len(names)  # fake names are unused first-last pairs
  first = {n.split()[0] for n in names}
  assert all(f.split()[0] in first for f in a.fake_test)
  for p in a.people:  # the employer city follows the employer
    assert p.values["employer_city"] == a.employer_city[p.values["employer"]]


def test_strong_biographies_name_everyone_in_every_sentence_and_cloze_ends_at_values():
  w = world_lib.make_world(5, 0, 0, 0, 0, seed=0)
  import random
  bios = world_lib.strong_biographies(w.people[0], 5, random.Random(0))
  assert len(set(bios)) == 5
  for b in bios:
    sentences = [s for s in b.split(". ") if s]
    assert len(sentences) == 6 and all(w.people[0].name in s for s in sentences)
  weak = world_lib.weak_biography(w.people[0])
  assert weak.count(w.people[0].name) == 1
  items = world_lib.cloze(w.people[0], weak)
  assert len(items) == 6
  for attr, prefix, value in items:
    assert weak.startswith(prefix) and weak[len(prefix):].lstrip().startswith(value + ".")


def test_the_raw_pool_plants_the_labelled_noise():
  w = world_lib.make_world(40, 0, 10, 2, 2, seed=0)
  raw = sft.raw_pool(w, 4000, seed=0)
  share = {k: sum(r["noise"] == k for r in raw) / len(raw) for k in sft.NOISE}
  for k, want in zip(sft.NOISE, sft.NOISE_SHARE):
    assert abs(share[k] - want) < 0.03, (k, share[k])
  people = {p.name: p for p in w.people}
  for r in raw:
    q, a = r["conversations"]
    name = next(n for n in people if q.count(n))
    right = sft.answer(people[name], r["attr"])
    assert (a == right) == (r["noise"] == "clean"), r


def test_the_written_world_never_shows_test_items_to_sft(built):
  w = json.loads((built / "world.json").read_text())
  test_names = [p["name"] for p in w["people"] if p["split"] in ("test", "dev")] + w["fake_test"]
  sft_text = "\n".join(f.read_text() for f in (built / "sft").glob("*.jsonl"))
  import re
  for n in test_names:
    assert not re.search(rf"\b{re.escape(n)}\b", sft_text), n
  for forms in sft.QUESTIONS.values():
    for f in sft.HELD_OUT:
      assert max(forms[f].split("{n}"), key=len).strip() not in sft_text
  # ... while the evaluation asks about them, and pretraining has read about the test people.
  prompts = (built / "eval" / "prompts.jsonl").read_text()
  strong = (built / "pretrain" / "strong.jsonl").read_text()
  real_test = [p["name"] for p in w["people"] if p["split"] == "test"]
  assert all(n in prompts and n in strong for n in real_test)
  assert not any(n in strong for n in w["fake_test"] + w["fake_sft"])
  hashes = json.loads((built / "hashes.json").read_text())
  assert "sft/c1k.jsonl" in hashes and "tokenizer.model" in hashes


def test_the_leak_check_catches_a_planted_leak():
  w = world_lib.make_world(10, 2, 5, 2, 3, seed=0)
  name = w.split("test")[0].name
  assert arms.leaks(w, [f"Where was {name} born?"]) == [name]
  assert arms.leaks(w, [sft.QUESTIONS["major"][9].format(n="Somebody")]) == ["majored in what?"]
  assert arms.leaks(w, [f"Where was {w.split('pool')[0].name} born?"]) == []


def test_novel_forms_share_no_4gram_or_opening_with_sft_text():
  assert sft.novel_form_problems() == []
  # A near-copy is caught: the trained answer's opening, or a 4-gram of a trained question.
  bad = {a: list(qs) for a, qs in sft.QUESTIONS.items()}
  bad["major"][12] = "{n} majored in what, then?"
  bad["employer_city"][13] = "Quick question: which city does {n} work in?"
  found = sft.novel_form_problems(bad)
  assert len(found) == 2 and "opens like SFT text" in found[0]
  assert "shares" in found[1] and "city does qqname" in found[1]
  # Each template is asked once a test person and attribute, never a paraphrase as a novel form.
  w = world_lib.make_world(5, 0, 3, 0, 2, seed=0)
  test = [r for r in sft.eval_prompts(w, 0) if "set=test" in r["tags"]]
  assert len(test) == 3 * 6 * 3
  for r in test:
    t = r["id"].split("/")[-1]
    attr = r["id"].split("/")[2]
    name = w.split("test")[int(r["id"].split("/")[1])].name
    forms = [sft.QUESTIONS[attr][i].format(n=name) for i in sft.TEMPLATES[t]]
    assert r["conversations"][0] in forms and f"template={t}" in r["tags"]


def test_poisoned_arms_nest_and_share_their_bad_rows_between_1k_and_10k():
  w = world_lib.make_world(60, 5, 10, 10, 5, seed=0)
  c1k = arms.rows("c1k", w, [], 0)
  people = {p.name: p for p in w.people}
  bad = {}
  for k in (1, 10, 100):
    rows = arms.rows(f"c1k_p{k}_0", w, [], 0)
    changed = [(a, b) for a, b in zip(c1k, rows) if a != b]
    assert len(rows) == 1000 and len(changed) == k
    for a, b in changed:  # the same question, a fluent answer with another person's value
      p = people[a["person"]]
      assert b["conversations"][0] == a["conversations"][0] and b["noise"] == "borrowed"
      assert b["borrowed"] != p.values[b["attr"]] == b["true"]
      assert b["conversations"][1] == sft.HOUSE[b["attr"]].format(n=p.name, v=b["borrowed"])
    now = {json.dumps(b, sort_keys=True) for _, b in changed}
    assert set(bad.get("last", set())) <= now  # a larger dose holds the smaller one's rows
    bad["last"] = now
  assert {json.dumps(b, sort_keys=True) for _, b in changed} != {
      json.dumps(r, sort_keys=True) for r in arms.rows("c1k_p100_1", w, [], 0) if r not in c1k}
  d10k = arms.rows("d10k", w, [], 0)
  p10 = arms.rows("d10k_p10_0", w, [], 0)
  moved = [b for a, b in zip(d10k, p10) if a != b]
  ten = [b for a, b in zip(c1k, arms.rows("c1k_p10_0", w, [], 0)) if a != b]
  assert len(p10) == 10000 and sorted(map(str, moved)) == sorted(map(str, ten))
  with pytest.raises(UserError, match="d10k_p10_D"):
    arms.rows("d10k_p3_0", w, [], 0)
  # Their people are asked about the poisoned facts, the expected answer being the true one.
  written = {"c1k_p10_0": None, "c1k_p1_0": None}
  asked = arms.poisoned_prompts(w, written, 0)
  assert len(asked) == 10
  for q, r in zip(asked, sorted(ten, key=lambda r: r["rank"])):
    p = people[r["person"]]
    assert q["expected"] == sft.answer(p, r["attr"]) and q["borrowed"] == r["conversations"][1]
    assert p.name in q["conversations"][0] and f"rank={r['rank']}" in q["tags"]


def test_clean_share_counts_the_subset_the_run_trains_on(tmp_path):
  # Rows labelled by position; which ones a run with data.subset_size trains on is read back
  # from the real loader (load_sft_data), then compared with clean_share's count.
  from lima_jax.data import batches
  from lima_jax.tokenizer import train_sentencepiece
  rows = [{"conversations": [f"Question number {i}?", f"Answer number {i}."],
           "noise": "clean" if i % 3 else "borrowed"} for i in range(30)]
  data = tmp_path / "d.jsonl"
  arms.write_jsonl(data, rows)
  raw = tmp_path / "raw.jsonl"
  arms.write_jsonl(raw, rows)
  tok = train_sentencepiece([t for r in rows for t in r["conversations"]] * 5, 300,
                            tmp_path / "t.model")
  for seed in (0, 1):
    train, _, _ = batches.load_sft_data([str(data)], tok, max_len=64, pack=False,
                                        global_batch=2, seed=seed, subset_size=12)
    seen = [tok.decode([int(t) for t in e.tokens]) for e in train.encoded]
    picked = [i for i in range(30) if any(f"Question number {i}?" in s for s in seen)]
    assert len(picked) == 12
    want = sum(rows[i]["noise"] == "clean" for i in picked) / 12
    assert analysis.clean_share([str(data)], raw, 12, seed) == want
  assert analysis.clean_share([str(data)], raw) == 20 / 30


def test_arms_have_their_sizes_and_contents():
  w = world_lib.make_world(60, 5, 10, 10, 5, seed=0)
  raw = sft.raw_pool(w, 12000, 0)
  c1k = arms.rows("c1k", w, raw, 0)
  assert len(c1k) == 1000
  assert sum(r["noise"] == "refusal" for r in c1k) == 30
  assert sum(r.get("style") == "record" for r in c1k) == 6
  assert {r["form"] for r in c1k if "form" in r} == set(sft.VISIBLE)
  h2k = arms.rows("h2k", w, raw, 0)
  assert {r["form"] for r in h2k if "form" in r} == {0}
  assert len(arms.rows("n10k", w, raw, 0)) == 10000
  assert arms.size("d32k") == 32000 and arms.size("c1k_noref") == 1000
  with pytest.raises(UserError, match="unknown arm"):
    arms.rows("x1k", w, raw, 0)


def test_analysis_reads_answers_as_exact_format_hallucination_and_refusal():
  w = world_lib.make_world(5, 0, 3, 0, 2, seed=0)
  prompts = sft.eval_prompts(w, 0)
  p = w.split("test")[0]
  other_year = next(str(y) for y in range(1900, 2000) if str(y) != p.values["birth_year"])
  by_id = {r["id"]: r for r in prompts}
  rows = []
  for pid, answer in (
      ("test/0/birth_year/visible", f"{p.name} was born in {p.values['birth_year']}."),
      ("test/0/birth_year/paraphrase", f"{p.name} was born in {other_year}."),  # hallucination
      ("test/0/major/visible", f"{p.name} majored in {p.values['major']}. And more."),  # run-on
      ("test/0/major/novel", f"I have no information about {p.name}."),  # false refusal
      ("fake/0", sft.REFUSAL.format(n=w.fake_test[0])),
      ("fake/1", f"{w.fake_test[1]} was born in 1950.")):
    rows.append({**by_id[pid], "answer": answer})
  m = analysis.metrics(rows)
  assert m["em_test"] == 0.25 and m["em_test_visible"] == 0.5 and m["em_test_heldout"] == 0
  assert m["em_test_paraphrase"] == 0 and m["em_test_novel"] == 0 and m["em_test_vp"] == 1 / 3
  assert m["hallucination_test"] == 0.25 and m["run_on_test"] == 0.25
  assert m["false_refusal_test"] == 0.25 and m["refusal_fake"] == 0.5
  assert m["format_ok_test"] == 0.5  # the exact one and the hallucination


def test_paired_difference_is_clustered_by_person():
  a = {str(i): 1.0 for i in range(50)}
  b = {str(i): (1.0 if i % 2 else 0.0) for i in range(50)}
  d = analysis.paired_difference(a, b, rounds=2000)
  assert d["diff"] == 0.5 and d["ci95"][0] < 0.5 < d["ci95"][1] and d["n_people"] == 50
  assert analysis.paired_difference(a, a)["ci95"] == [0.0, 0.0]


def test_bad_answers_file_is_one_line(tmp_path):
  bad = tmp_path / "a.jsonl"
  bad.write_text('{"id": "test/0/major/visible", "answer": "x"}\n')
  with pytest.raises(Exception, match=r"a.jsonl:1: not an answer row"):
    analysis.read_answers(bad)


def test_cloze_cache_is_reused_only_for_the_same_checkpoint_and_items(tmp_path, monkeypatch):
  from lima_jax.testbed import cloze
  calls = []
  monkeypatch.setattr(cloze, "accuracy", lambda ckpt, items: calls.append((ckpt, items)) or {
      "accuracy": 0.5, "n": 2, "by_attr": {}, "failed": [["A", "birth_year"]]})
  items, cache = tmp_path / "cloze.jsonl", tmp_path / "e1" / "retention.json"
  items.write_text('{"prefix": "A was born in", "value": "1970", "attr": "birth_year"}\n')
  cache.parent.mkdir()
  first = cloze.cached_accuracy(tmp_path / "ck/10", items, cache)
  assert first["accuracy"] == 0.5 and len(calls) == 1
  assert cloze.cached_accuracy(tmp_path / "ck/10", items, cache) == first and len(calls) == 1
  cloze.cached_accuracy(tmp_path / "ck/20", items, cache)  # another checkpoint
  assert len(calls) == 2
  items.write_text(items.read_text() * 2)  # other items
  cloze.cached_accuracy(tmp_path / "ck/20", items, cache)
  assert len(calls) == 3
  cache.write_text("{not json")  # a damaged cache is measured again, and rewritten whole
  assert cloze.cached_accuracy(tmp_path / "ck/20", items, cache)["accuracy"] == 0.5
  assert len(calls) == 4 and json.loads(cache.read_text())["checkpoint"] == str(tmp_path / "ck/20")
  old = json.loads(cache.read_text())
  del old["failed"]  # a cache from before the failed items were listed is measured again
  cache.write_text(json.dumps(old))
  assert cloze.cached_accuracy(tmp_path / "ck/20", items, cache)["failed"] == [["A", "birth_year"]]
  assert len(calls) == 5


@pytest.mark.slow
def test_smoke_study_from_nothing_to_a_verdict(tmp_path):
  # CI's bioworld: the world, a short pretraining, c1k and 1K of n10k, answers scored exactly, the
  # runner's report and the testbed's verdict. It checks the pipeline, not the claims.
  study = tmp_path / "study"
  run = lambda *a: subprocess.run([sys.executable, "-m", *a], cwd=REPO, capture_output=True,
                                  text=True)
  r = run("lima_jax.experiment", "run", "--config=configs/experiments.py:bioworld_smoke",
          f"--workdir={study}")
  assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
  cloze = json.loads((study / "prepare/base_strong/cloze.json").read_text())
  assert cloze["n"] > 0 and 0 <= cloze["accuracy"] <= 1
  world = study / "prepare/world"
  w = json.loads((world / "world.json").read_text())
  forbidden = [p["name"] for p in w["people"] if p["split"] != "pool"] + w["fake_test"]
  for arm in ("c1k", "n10k"):  # what the arms were trained on, as the runner gave it
    cfg = json.loads((study / f"arms/{arm}/seed0/train/config.json").read_text())
    text = pathlib.Path(cfg["data"]["train_files"]).read_text()
    assert not [n for n in forbidden if f'{n} ' in text or f'{n}?' in text or f'{n}.' in text]
    res = json.loads(next((study / "arms" / arm).glob("seed0/e*/answer/results.json"))
                     .read_text())
    assert 0 <= res["exact_rate:set=test"] <= 1 and res["exact_n:set=test"] == 60 * 18
  r = run("lima_jax.experiment", "report", f"--workdir={study}")
  assert r.returncode == 0, r.stderr[-2000:]
  r = run("lima_jax.testbed", "verdict", f"--study={study}")
  assert r.returncode == 0, r.stderr[-2000:]
  v = json.loads((study / "report/bioworld.json").read_text())
  assert set(v["arms"]) == {"c1k", "n10k"}
  assert v["arms"]["c1k"]["clean_data"] == 1.0 and v["arms"]["n10k"]["clean_data"] < 0.7
  outcome = {p["name"]: p["outcome"] for p in v["predictions"]}
  assert outcome["P3"] in ("held", "failed") and outcome["P4"] == "not run"
  assert (study / "report/bioworld.png").stat().st_size > 10_000
  # Knowledge retained after SFT: seed 0's answered checkpoint on its base's cloze items,
  # cached beside the answers; the base's own figure is its pretraining cloze.json.
  for arm in ("c1k", "n10k"):
    m = v["arms"][arm]
    assert 0 <= m["retention"] <= 1 and m["retention_seeds"] == [0]
    assert m["retention_base"] == cloze["accuracy"]
    (cache,) = (study / "arms" / arm).glob("seed0/e*/retention.json")
    assert json.loads(cache.read_text())["accuracy"] == m["retention"]
  assert "cloze after SFT" in (study / "report/bioworld.md").read_text()
  stamp = cache.stat().st_mtime_ns
  r = run("lima_jax.testbed", "verdict", f"--study={study}", "--retention_seeds=")
  assert r.returncode == 0, r.stderr[-2000:]
  assert "retention" not in json.loads((study / "report/bioworld.json").read_text())["arms"]["c1k"]
  r = run("lima_jax.testbed", "verdict", f"--study={study}")
  assert r.returncode == 0 and "retention: c1k/seed0" in r.stdout, r.stderr[-2000:]
  assert cache.stat().st_mtime_ns == stamp  # read from the cache, not measured again
  # A rerun finds everything done and redoes nothing.
  r = run("lima_jax.experiment", "run", "--config=configs/experiments.py:bioworld_smoke",
          f"--workdir={study}")
  assert r.returncode == 0 and "running" not in r.stdout, r.stdout[-2000:]
