"""Curation filters on small hand-made pools whose right answer is known."""
import json

import pytest

from lima_jax.curate import dedup, filters
from lima_jax.datasets import Record, read_records
from tests.conftest import shared_file


def rec(prompt, response, source="s", origin=None):
  return Record((prompt, response), source, origin or f"mem:{abs(hash((prompt, response)))}")


def kept_origins(result):
  return [r.origin for r in result.kept]


# A 60-word passage and a copy with two small edits: word 3-gram Jaccard 0.79 (checked
# below, not assumed), far above a different passage on the same subject.
PASSAGE = (
    "The mitochondria is the organelle that produces most of the chemical energy needed to "
    "power the biochemical reactions of the cell. Chemical energy produced by the mitochondria "
    "is stored in a small molecule called adenosine triphosphate. Mitochondria contain their "
    "own small chromosomes and they are thought to have descended from free living bacteria "
    "that were engulfed long ago by ancestral cells.")


def jaccard(a, b, n=3):
  from lima_jax.curate import text  # pylint: disable=g-import-not-at-top
  sa, sb = text.shingles(a, n), text.shingles(b, n)
  return len(sa & sb) / len(sa | sb)


def test_exact_dedup_folds_case_spacing_and_punctuation():
  a = rec("What is DNA?", "DNA is a molecule.", origin="a")
  b = rec("what is  dna", "DNA is a molecule", origin="b")  # same once normalised
  c = rec("What is RNA?", "RNA is a molecule.", origin="c")
  result = dedup.exact_dedup([a, b, c])
  assert kept_origins(result) == ["a", "c"]
  assert result.removed == [(b, "exact duplicate (of a)")]


def test_near_dedup_removes_the_near_copy_only():
  near = PASSAGE.replace("most of", "much of").replace("long ago", "a long time ago")
  other = ("Mitochondria are organelles of the cell. Their main job is to make energy, and "
           "scientists think that they were once free living bacteria.")
  assert 0.75 < jaccard(PASSAGE, near) < 0.85
  records = [rec("Explain mitochondria.", PASSAGE, origin="first"),
             rec("Explain mitochondria.", other, origin="other"),
             rec("Explain mitochondria.", near, origin="near")]
  result = dedup.near_dedup(records, threshold=0.7)
  assert kept_origins(result) == ["first", "other"]
  [(removed, why)] = result.removed
  assert removed.origin == "near" and why.startswith("near duplicate (of first, Jaccard ~")
  # A threshold above the pair's similarity keeps both.
  assert len(dedup.near_dedup(records, threshold=0.97).kept) == 3


def test_test_overlap_finds_exact_and_near_prompts():
  tests = [("test:1", "How can I make new friends as an adult?"),
           ("test:2", PASSAGE)]
  records = [rec("how can i make NEW friends as an adult", "Join a club.", origin="exact"),
             rec(PASSAGE.replace("most of", "much of"), "Sure.", origin="near"),
             rec("How do volcanoes form?", "Magma rises.", origin="clean")]
  result = dedup.test_overlap(records, tests, threshold=0.7)
  assert kept_origins(result) == ["clean"]
  reasons = dict((r.origin, why) for r, why in result.removed)
  assert reasons["exact"] == "test prompt overlap (exact: test:1)"
  assert reasons["near"].startswith("test prompt overlap (near test:2, Jaccard ~")


def test_test_overlap_finds_the_known_lima_train_test_overlap():
  train, _ = read_records(shared_file("lima/train.jsonl"))
  test, _ = read_records(shared_file("lima/test.jsonl"), keep_trailing_user=True)
  prompts = [(r.origin, r.conversations[0]) for r in test]
  result = dedup.test_overlap(train, prompts)
  # SOURCES.md: test prompt lima-83 is the first turn of train line 547 (0-based) = :548.
  assert [(r.origin.rsplit(":", 1)[1], r.source) for r, _ in result.removed] == [
      ("548", "authors")]
  assert result.removed[0][1].startswith("test prompt overlap (exact: ")
  assert json.loads(shared_file("lima/test.jsonl").read_text().splitlines()[83])["id"] == (
      "lima-83")


def test_clean_markup_strips_links_images_html_but_not_code_or_lists():
  response = ("See [the docs](https://example.com/docs) and ![diagram](d.png) here.<br>"
              "<ul><li>first</li><li>second</li></ul> Also https://x.org/page.\n\n"
              "```html\n<div><a href=\"https://keep.me\">code</a></div>\n```\n"
              "- a markdown item\n- another")
  result = filters.clean_markup([rec("q", response, origin="r")])
  cleaned = result.kept[0].conversations[1]
  assert result.changed == 1
  assert "See the docs and here." in cleaned
  for gone in ("https://example.com", "d.png", "<br>", "<ul>", "https://x.org"):
    assert gone not in cleaned
  assert "- first" in cleaned and "- second" in cleaned
  assert '```html\n<div><a href="https://keep.me">code</a></div>\n```' in cleaned
  assert cleaned.endswith("- a markdown item\n- another")
  assert filters.clean_markup([rec("q", '<img src="x.png">')]).removed


@pytest.mark.parametrize("length, kept", [(1199, False), (1200, True), (4096, True),
                                          (4097, False)])
def test_lima_rules_length_window(length, kept):
  body = ("Water boils at lower temperatures at altitude. " * 100)[:length - 1] + "."
  assert len(body) == length
  assert bool(filters.lima_rules([rec("q", body)]).kept) == kept


@pytest.mark.parametrize("sentence, reason", [
    ("I think the answer is yes.", "first person"),
    ("In my experience it works.", "first person"),
    ("Let me explain.", "first person"),
    ("As mentioned in the other answer, it works.", "refers to other answers"),
    ("See the accepted answer for details.", "refers to other answers"),
    ("The I/O scheduler and `for i in my_list: print(I)` are fine.", None),
    ("We can see that it works.", None),
])
def test_lima_rules_voice(sentence, reason):
  body = sentence + " " + "Plants convert light into chemical energy. " * 40
  result = filters.lima_rules([rec("q", body)], min_chars=10, max_chars=10_000)
  if reason is None:
    assert result.kept
  else:
    assert result.removed[0][1].startswith(reason)


@pytest.mark.parametrize("response, reason", [
    ("   ", "empty response"),
    ("Here is the code:\n```python\nprint(1)\n", "unclosed code block"),
    ("The reasons are many, and the most important of them is the", "ends mid-sentence"),
    ("Apples, pears,", "ends mid-sentence"),
    ("Paris", ""),
    ("Hashtags follow. #one #two", ""),
    ("Use it like this:\n```\nx = 1\n```", ""),
    ("1. Mix the flour\n2. Add water and knead it until it is smooth and elastic", ""),
])
def test_truncation_reason(response, reason):
  got = filters.truncation_reason(response)
  assert got.startswith(reason) and (got == "") == (reason == "")


def test_truncated_end_punctuation_check_is_opt_in():
  prose = ("The committee met on Tuesday to discuss the budget. After a long debate the "
           "members agreed to postpone the final vote until the next session of the year")
  assert filters.truncated([rec("q", prose)]).kept
  strict = filters.truncated([rec("q", prose)], require_end_punctuation=True)
  assert strict.removed[0][1].startswith("ends without closing punctuation")
  assert filters.truncated([rec("q", prose + ".")], require_end_punctuation=True).kept
  # Any assistant turn of a multi-turn chain counts.
  chain = Record(("hi", "Hello there, the short answer is that", "more?", "Yes."), "s", "m")
  assert filters.truncated([chain]).removed


def test_sanity():
  good = rec("q", "Photosynthesis turns light, water and carbon dioxide into sugar.")
  numbers = rec("q", "3.14159 2.71828 1.41421 1.73205 0.57721 1.61803 2.50290")
  chinese = rec("q", "光合作用是植物利用光能将二氧化碳和水转化为有机物的过程。" * 2)
  looping = rec("q", "\n".join(["Buy now!"] * 6))
  short = rec("q", "42")
  code = rec("q", "Use:\n```\n{{ x | 0 }} == [1, 2, 3] && ++i >= 0x7f\n```")
  result = filters.sanity([good, numbers, chinese, looping, short, code])
  assert result.kept == [good, short, code]
  reasons = [why.split(" (")[0] for _, why in result.removed]
  assert reasons == ["mostly non-letters", "mostly non-ASCII", "repeated lines"]


def test_words_cut_in_half_are_caught_against_the_pool_vocabulary():
  """An answer stopped by a token limit ends inside a word ("... and th"); the pool's own
  vocabulary tells it from answers that end on a real word, a name or a rare word."""
  body = ("The garden needs water in the morning and the soil should stay moist while the "
          "seeds grow, so check the original planting notes for the right amount of water")
  pool = [rec("q", f"{body} {i}.") for i in range(6)]
  cases = {
      "cut_the": f"{body} and th",
      "cut_original": "Read the orig",
      "cut_garden": "Water the garde",
      "name": "We flew from London to Kyiv",  # capitalised: a name, never flagged
      "rare": "Biologists call the fertilised cell a zygote",  # begins no pool word
      "real_word": "Plants love a sunny garden",  # the pool knows the word
  }
  records = pool + [rec("q", r) for r in cases.values()]
  assert not filters.truncated(records).removed  # opt-in
  result = filters.truncated(records, mid_word=True)
  removed = {r.conversations[1]: why for r, why in result.removed}
  assert {k for k, v in cases.items() if v in removed} == {"cut_the", "cut_original",
                                                           "cut_garden"}
  assert all(why.startswith("ends mid-word") for why in removed.values())
  # Alone (no pool to learn words from) nothing is judged mid-word.
  assert filters.truncation_reason(cases["cut_the"]) == ""
