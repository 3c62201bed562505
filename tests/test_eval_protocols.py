"""Reading judges' replies and answer files: the cases a real judge or user produces."""
import json
import math

import pytest

from lima_jax.errors import UserError
from lima_jax.eval import answers, protocols


@pytest.mark.parametrize("text,label", [
    ("A is better.\n[[A]]", "A"),
    # The judge restates the instructions first: the verdict is the last one written.
    ('Options: "[[A]]", "[[B]]" or "[[C]]". Both are weak.\n[[C]]', "C"),
    ("[[b]]", None), ("Answer B is better.", None), ("", None)])
def test_pairwise_verdicts(text, label):
  v = protocols.parse("abc-v1", text)
  assert (v or {}).get("label") == label


@pytest.mark.parametrize("parser,text,score", [
    ("likert6-v1", "Helpful.\n[[5]]", 5), ("likert6-v1", "[[7]]", None),
    ("likert6-v1", "Rating: 4", None),
    ("score10-v1", "Rating: [[8]]", 8.0), ("score10-v1", "Rating: [7.5]", 7.5),
    ("score10-v1", "[[11]]", None), ("score10-v1", "no rating", None)])
def test_grades_in_range_or_unparsed(parser, text, score):
  v = protocols.parse(parser, text)
  assert (v or {}).get("score") == score


def test_alpaca_preference_from_logprobs_else_the_letter():
  top = [{"token": "B", "logprob": math.log(0.6),
          "top": [["B", math.log(0.6)], [" A", math.log(0.3)], ["C", math.log(0.1)]]}]
  v = protocols.parse("ab-v1", "B", top)
  assert v["p_a"] == pytest.approx(0.3 / 0.9) and v["from_logprobs"] and v["label"] == "B"
  v = protocols.parse("ab-v1", "A", None)  # An endpoint without logprobs: the verdict.
  assert v == {"label": "A", "p_a": 1.0, "from_logprobs": False}
  assert protocols.parse("ab-v1", "Both are fine.", None) is None


def test_an_edited_prompt_is_a_new_request():
  a = answers.Answer("p", "p", ("Q?",), ("x",), 0, "f:1")
  b = answers.Answer("p", "p", ("Q?",), ("y",), 0, "g:1")
  from lima_jax.eval.store import request_key
  params = {"model": "m", "temperature": 0.0}
  jobs = protocols.pairwise_jobs("lima_pairwise", [(a, b)])
  keys = {request_key(j.messages, params, j.parser) for j in jobs}
  assert len(keys) == 2  # both orders
  edited = [dict(m, content=m["content"] + " ") for m in jobs[0].messages]
  assert request_key(edited, params, jobs[0].parser) not in keys
  assert request_key(jobs[0].messages, {**params, "seed": 1}, jobs[0].parser) not in keys
  assert request_key(jobs[0].messages, params, "abc-v2") not in keys


@pytest.mark.parametrize("rows,message", [
    ([{"id": "a", "prompt": "Q", "answer": "x"}, {"id": "a", "prompt": "Q", "answer": "y"}],
     "{f}:2: prompt 'a' sample 0 is also at {f}:1"),
    ([{"id": "a", "prompt": "Q"}], "{f}:1: missing or non-string 'answer'"),
    ([{"id": "a", "answer": "x"}], "{f}:1: needs 'conversations', 'turns' or 'prompt'"),
    ([{"prompt": "Q", "answer": "x", "sample": -1}], "{f}:1: 'sample' must be"),
    # A file that starts with '[' is an AlpacaEval-style JSON list: rows are numbered [i].
    ([["not", "an", "object"]], "{f}:[0]: a row must be a JSON object, got str"),
    ([{"conversations": ["Q", "A", "Q2"], "answer": "x"}], "{f}:1: a conversation of 3")])
def test_bad_rows_name_file_and_row(tmp_path, rows, message):
  path = tmp_path / "f.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  with pytest.raises(UserError) as e:
    answers.read(path)
  assert str(e.value).startswith(message.format(f=path))
