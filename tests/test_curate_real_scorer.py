"""Model-based selectors with a real pretrained base (llama2.c's stories260K) as the scorer.

The pool: six natural TinyStories-like answers and the same six spoiled, two each with a
content word swapped for an unrelated one, with the words shuffled, and cut mid-word.
Measured (AUROC of natural over spoiled, lower score better; see agreement.auroc):

  loss                         0.972
  consistency, end 'none'      0.972 (1.0 on swaps and shuffles; the cut answers are judged
                                       only by the piece the cut leaves)
  consistency, end 'bos'       0.861 (llama2.c's own document separator: a one-sentence
                                       answer is not a whole story, so its end is itself as
                                       surprising, 9-15 nats, as a swapped word)
  consistency, end 'eos'       0.75  (the default; stories260K never saw EOS: 22-25 nats on
                                       every row, the worst token of every natural one)
  ifd (higher better)          0.36  (IFD favours hard examples; it is no noise detector)
"""
import json
import subprocess
import sys

import pytest

from configs import curate as curate_config
from lima_jax.curate import agreement, model_scores, plain_text
from lima_jax.datasets import Record
from lima_jax.errors import UserError
from tests.conftest import _REPO as REPO, shared_file

NATURAL = [
    ("Once upon a time, there was a little girl named Lily.",
     "She loved to play outside in the sun with her friends."),
    ("One day, Tom went to the park with his mom.",
     "He saw a big dog and wanted to play with it."),
    ("Once upon a time, there was a little cat.",
     "The cat liked to sleep in the warm sun all day."),
    ("Lily and Ben were best friends.",
     "They liked to play with their toys in the garden."),
    ("One day, a little bird was flying in the sky.",
     "The bird saw a big tree and sat on a branch."),
    ("Tim had a red ball.",
     "He liked to throw the ball to his dog every day."),
]
SPOILED = [  # the same answers, in order
    "She loved to play outside in the senate with her friends.",  # a word swapped
    "He saw a big invoice and wanted to play with it.",
    "sleep the in all cat day. warm The liked to sun",  # shuffled
    "play their garden. They in toys to the with liked",
    "The bird saw a big tree and sa",  # cut mid-word
    "He liked to throw the ball to his d",
]
POOL = ([Record(turns, "natural", f"good{i}") for i, turns in enumerate(NATURAL)]
        + [Record((p, a), "spoiled", f"bad{i}") for i, ((p, _), a) in enumerate(zip(NATURAL,
                                                                                     SPOILED))])


@pytest.fixture(scope="module")
def stories():
  return (shared_file("llama2c/stories260K/stories260K.bin"),
          shared_file("llama2c/stories260K/tok512.bin"))


def auroc(values):
  return agreement.auroc(values[:6], values[6:], higher_is_better=False)


def test_loss_and_consistency_rank_natural_answers_first(stories):
  model, tokenizer = stories
  scorer = model_scores.load_scorer(str(model), tokenizer=str(tokenizer), max_len=128)
  loss = model_scores.answer_loss(scorer, POOL, batch_size=12)
  assert auroc(loss) >= 0.9

  plain = model_scores.consistency(scorer, POOL, batch_size=12, end="none")
  assert auroc([p["consistency"] for p in plain]) >= 0.9
  # Each swapped or shuffled answer is worse than every natural one.
  assert min(p["consistency"] for p in plain[6:10]) > max(p["consistency"] for p in plain[:6])

  # With EOS judged, this base (trained without EOS) finds the end the worst token of every
  # natural row: why consistency.end must be the base's own document end.
  with_eos = model_scores.consistency(scorer, POOL, batch_size=12, end="eos")
  for record, part in zip(POOL[:6], with_eos[:6]):
    n = plain_text.encode(record, scorer.tok, 128, end="eos").n_loss_tokens
    assert part["worst_token"] == n - 1 and part["consistency"] > 15


def curate_cli(*args):
  return subprocess.run([sys.executable, "-m", "lima_jax.curate", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=300)


def test_cli_scores_every_pool_row_by_origin(tmp_path, stories):
  model, tokenizer = stories
  rows = [{"conversations": list(r.conversations), "source": r.source} for r in POOL]
  rows.insert(3, dict(rows[1]))  # line 4 repeats line 2: exact_dedup removes it
  pool = tmp_path / "pool.jsonl"
  pool.write_text("".join(json.dumps(r) + "\n" for r in rows))
  out, scores = tmp_path / "chosen.jsonl", tmp_path / "scores.jsonl"
  result = curate_cli("--config=configs/curate.py:consistency", f"--config.pool={pool}",
                      f"--config.scorer={model}", f"--config.model.tokenizer={tokenizer}",
                      "--config.consistency.end=none", "--config.n=4",
                      "--config.report.diversity=False", f"--out={out}", f"--scores={scores}")
  assert result.returncode == 0, result.stderr[-2000:]
  lines = [json.loads(line) for line in scores.read_text().splitlines()]
  assert [l["origin"] for l in lines] == [f"{pool}:{i}" for i in range(1, 14)]
  for line, row in zip(lines, rows):
    assert line["source"] == row["source"]
  dup = lines[3]
  assert (dup["stage"], dup["score"], dup["chosen"]) == ("exact_dedup", None, False)
  assert all(l["stage"] is None and l["score"] > 0 for l in lines if l is not dup)
  chosen = [json.loads(line) for line in out.read_text().splitlines()]
  assert {c["origin"] for c in chosen} == {l["origin"] for l in lines if l["chosen"]}
  assert len(chosen) == 4 and all(c["source"] == "natural" for c in chosen)
  # The chosen are the four lowest scores, in order.
  ranked = sorted((l for l in lines if l["score"] is not None), key=lambda l: l["score"])
  assert [c["origin"] for c in chosen] == [l["origin"] for l in ranked[:4]]
  # The origins lead back to the rows: labels looked up by origin give the AUROC.
  text_at = {f"{pool}:{i + 1}": row["conversations"][1] for i, row in enumerate(rows)}
  natural = {a for _, a in NATURAL}
  good = [l["score"] for l in lines if l["score"] is not None and text_at[l["origin"]] in natural]
  bad = [l["score"] for l in lines
         if l["score"] is not None and text_at[l["origin"]] not in natural]
  assert len(good) == 6 and len(bad) == 6
  assert agreement.auroc(good, bad, higher_is_better=False) >= 0.9


def test_cli_bad_scorer_or_scores_path_is_one_line_before_any_work(tmp_path):
  pool = tmp_path / "pool.jsonl"
  pool.write_text(json.dumps({"conversations": list(POOL[0].conversations)}) + "\n")
  missing = tmp_path / "no_such_model.bin"
  common = ["--config=configs/curate.py:consistency", f"--config.pool={pool}",
            f"--out={tmp_path / 'out.jsonl'}"]
  for args, start in (([f"--config.scorer={missing}"], f"config scorer: {missing}: no such"),
                      ([f"--scores={tmp_path}"], f"--scores: {tmp_path} cannot be written")):
    result = curate_cli(*common, *args)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {start}"), lines
  assert not (tmp_path / "out.jsonl").exists()


def test_check_scorer_names_the_field_at_fault(tmp_path, stories):
  model, tokenizer = stories
  junk = tmp_path / "junk.bin"
  junk.write_text("not a model at all, not a tokenizer either\n")
  model_scores.check_scorer(str(model), str(tokenizer))  # the good pair passes
  for args, start in (((str(junk), str(tokenizer)), f"config scorer: {junk}: bad llama2.c"),
                      (("", ""), "config scorer: the ifd, loss, consistency and influence"),
                      ((str(model), ""), f"config model.tokenizer: required ({model} holds"),
                      ((str(model), str(junk)), f"config model.tokenizer: {junk}: neither")):
    with pytest.raises(UserError) as e:
      model_scores.check_scorer(*args)
    assert str(e.value).startswith(start), str(e.value)
