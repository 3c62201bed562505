"""Conversation readers (every bad-input case names file and line) and the TFDS builder."""
import json

import pytest

from lima_jax.datasets import Record, read_records
from lima_jax.errors import UserError
from tests.conftest import shared_file


def write_lines(path, rows):
  """JSONL from objects (dumped) or raw lines (str / bytes written as they are)."""
  out = []
  for row in rows:
    if isinstance(row, bytes):
      out.append(row)
    elif isinstance(row, str):
      out.append(row.encode("utf-8"))
    else:
      out.append(json.dumps(row).encode("utf-8"))
  path.write_bytes(b"\n".join(out) + b"\n")
  return path


GOOD = {"conversations": ["Q?", "A."], "source": "s"}


def test_lima_jsonl(tmp_path):
  path = write_lines(tmp_path / "mine.jsonl", [
      {"conversations": ["What is 2+2?", "4."], "source": "math"},
      "",  # blank lines are allowed and still counted for line numbers
      {"conversations": ["Hi", "Hello!", "How are you?", "Fine."]},
      {"conversations": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
  ])
  records, problems = read_records(path)
  assert problems == []
  assert records == [
      Record(("What is 2+2?", "4."), "math", f"{path}:1"),
      Record(("Hi", "Hello!", "How are you?", "Fine."), "mine", f"{path}:3"),
      Record(("a", "b"), "mine", f"{path}:4"),
  ]


def test_alpaca_json_list_and_jsonl(tmp_path):
  rows = [{"instruction": "Sum these.", "input": "1, 2", "output": "3", "category": "closed_qa"},
          {"instruction": "Say hi.", "input": "", "output": "Hi!"},
          {"instruction": "Say hi.", "input": None, "output": "Hi!"},
          {"instruction": "Say hi.", "output": "Hi!", "source": "dolly"}]
  as_list = tmp_path / "alp.json"
  as_list.write_text(json.dumps(rows, indent=2))
  records, _ = read_records(as_list)
  assert [r.conversations for r in records] == [("Sum these.\n\n1, 2", "3")] + [
      ("Say hi.", "Hi!")] * 3
  assert [r.source for r in records] == ["alp", "alp", "alp", "dolly"]  # category is not a source
  assert [r.origin for r in records] == [f"{as_list}:#{i}" for i in range(4)]
  as_jsonl = write_lines(tmp_path / "alp.jsonl", rows)
  assert [r.conversations for r in read_records(as_jsonl)[0]] == [r.conversations
                                                                  for r in records]


def test_trailing_user_turn_is_dropped_and_counted(tmp_path):
  path = write_lines(tmp_path / "odd.jsonl", [GOOD, {"conversations": ["q", "a", "more?"]}])
  records, problems = read_records(path)
  assert problems == []
  assert records[1].conversations == ("q", "a") and records[1].dropped_turns == 1
  assert records[0].dropped_turns == 0
  kept, _ = read_records(path, keep_trailing_user=True)
  assert kept[1].conversations == ("q", "a", "more?") and kept[1].dropped_turns == 0


BAD_ROWS = [
    ('{"conversations": ["q", "a"]', "malformed JSON"),
    (b'{"conversations": ["caf\xe9", "a"]}', "not valid UTF-8 (byte 0xe9 at column 24)"),
    ({"source": "x"}, "missing field 'conversations'"),
    ({"conversations": "q a"}, "field 'conversations' must be a list, got a string"),
    ({"conversations": []}, "field 'conversations' is empty"),
    ({"conversations": ["q", 3]}, "conversations[1] must be a string, got a number"),
    ({"conversations": ["q", "  \n"]}, "conversations[1] is empty"),
    ({"conversations": ["only a question"]}, "a single user turn, with no assistant reply"),
    ({"conversations": ["q", "a"], "source": 7}, "field 'source' must be a non-empty string"),
    ({"conversations": [{"role": "user", "content": "q"}, {"role": "user", "content": "q2"}]},
     "conversations[1]: role 'user' where 'assistant' was expected"),
    ({"conversations": [{"role": "user"}, {"role": "assistant", "content": "a"}]},
     "conversations[0]: missing field 'content'"),
    ('["q", "a"]', "expected a JSON object, got a list"),
]


@pytest.mark.parametrize("bad, message", BAD_ROWS)
def test_bad_lima_row_names_file_and_line(tmp_path, bad, message):
  path = write_lines(tmp_path / "bad.jsonl", [GOOD, GOOD, bad, GOOD])
  with pytest.raises(UserError) as e:
    read_records(path)
  line = str(e.value)
  assert line.startswith(f"{path}:3: ") and message in line and "\n" not in line
  records, problems = read_records(path, on_error="skip")
  assert [r.origin for r in records] == [f"{path}:{i}" for i in (1, 2, 4)]
  assert problems == [line]


@pytest.mark.parametrize("bad, message", [
    ({"instruction": "do", "input": ""}, "missing field 'output'"),
    ({"input": "x", "output": "y"}, "missing field 'instruction'"),
    ({"instruction": "do", "output": ""}, "output is empty"),
    ({"instruction": ["do"], "output": "y"}, "instruction must be a string, got a list"),
    ({"instruction": "do", "input": 3, "output": "y"}, "field 'input' must be a string"),
])
def test_bad_alpaca_item_names_file_and_index(tmp_path, bad, message):
  good = {"instruction": "do", "input": "", "output": "done"}
  path = tmp_path / "alp.json"
  path.write_text(json.dumps([good, bad, good]))
  with pytest.raises(UserError, match=rf"^{path}:#1: .*{message}"):
    read_records(path)
  records, problems = read_records(path, on_error="skip")
  assert len(records) == 2 and len(problems) == 1


def test_skip_mode_counts_every_bad_row(tmp_path):
  path = write_lines(tmp_path / "mixed.jsonl",
                     [GOOD, "{oops", GOOD, {"conversations": ["q", ""]}, {"conv": 1}, GOOD])
  records, problems = read_records(path, on_error="skip")
  assert len(records) == 3
  assert [p.split(": ")[0] for p in problems] == [f"{path}:{i}" for i in (2, 4, 5)]


def test_format_is_decided_by_the_first_object(tmp_path):
  neither = write_lines(tmp_path / "neither.jsonl", [{"prompt": "q", "answer": "a"}])
  with pytest.raises(UserError) as e:
    read_records(neither)
  assert str(e.value) == (f"{neither}:1: expected a 'conversations' list (LIMA), 'messages', "
                          "'instruction' and 'output' (Alpaca/Dolly) or 'text' (a plain "
                          "document); fields found: answer, prompt")
  path = write_lines(tmp_path / "mix.jsonl", [GOOD, {"instruction": "i", "output": "o"}])
  with pytest.raises(UserError, match=rf"{path}:2: missing field 'conversations'"):
    read_records(path)
  assert len(read_records(path, fmt="alpaca", on_error="skip")[0]) == 1


def test_whole_file_problems(tmp_path):
  missing = tmp_path / "missing.jsonl"
  with pytest.raises(UserError, match=f"^{missing}: cannot read"):
    read_records(missing, on_error="skip")
  broken = tmp_path / "broken.json"
  broken.write_text('[\n  {"instruction": "a", "output": "b"},\n  {"instruction": }\n]')
  with pytest.raises(UserError, match=rf"^{broken}:3: malformed JSON"):
    read_records(broken, on_error="skip")  # a broken JSON list cannot be read in part
  latin = tmp_path / "latin.json"
  latin.write_bytes(b'[\n{"instruction": "caf\xe9", "output": "b"}]')
  with pytest.raises(UserError, match=rf"^{latin}:2: not valid UTF-8 \(byte 0xe9\)"):
    read_records(latin)
  obj = tmp_path / "obj.json"
  obj.write_text("  [ ]")  # an empty list reads as no records, not an error here
  assert read_records(obj) == ([], [])
  with pytest.raises(ValueError, match="on_error"):
    read_records(obj, on_error="ignore")


def test_real_lima_train():
  path = shared_file("lima/train.jsonl")
  records, problems = read_records(path)
  assert len(records) == 1030 and problems == []
  counts = {}
  for r in records:
    counts[r.source] = counts.get(r.source, 0) + 1
  assert counts == {"stackexchange": 400, "authors": 200, "wikihow": 200, "nlp": 50,
                    "writingprompts": 150, "multi_turn": 30}
  dropped = [r for r in records if r.dropped_turns]
  assert [r.origin for r in dropped] == [f"{path}:1022"]  # row 1021, 0-based (SOURCES.md)
  assert len(dropped[0].conversations) == 4
  assert all(len(r.conversations) % 2 == 0 for r in records)


def test_real_instruction_sets():
  alpaca = shared_file("instruct/alpaca_random_9k.json")
  records, problems = read_records(alpaca, on_error="skip")
  # The released subset has 9,229 rows; 4 have an empty output (a real-data finding).
  assert len(records) + len(problems) == 9229 and len(problems) == 4
  assert all(p.endswith("output is empty") for p in problems)
  dolly, _ = read_records(shared_file("instruct/dolly_filtered_3k.json"))
  assert len(dolly) == 2996 and {r.source for r in dolly} == {"dolly_filtered_3k"}


def test_tfds_builder_round_trip(tmp_path):
  from lima_jax.datasets import lima_tfds

  manual = tmp_path / "manual"
  manual.mkdir()
  train = [{"conversations": [f"q{i} é", f"a{i}"], "source": "s" if i % 2 else "t"}
           for i in range(7)] + [{"conversations": ["q", "a", "dangling"], "source": "s"}]
  write_lines(manual / "train.jsonl", train)
  write_lines(manual / "test.jsonl", [{"id": "lima-0", "conversations": ["prompt only"]}])
  builder = lima_tfds.prepare(manual, tmp_path / "data")
  assert builder.info.splits["train"].num_examples == 8
  assert list(builder.data_path.glob("*.array_record*"))  # array_record, no TFRecord
  source = builder.as_data_source("train")
  assert len(source) == 8
  raw = source[0]
  assert isinstance(raw["conversations"][0], bytes)
  records = lima_tfds.as_records(source)
  assert [r.conversations for r in records] == [(f"q{i} é", f"a{i}") for i in range(7)] + [
      ("q", "a")]
  assert [r.source for r in records] == [row["source"] for row in train]
  test = lima_tfds.as_records(builder.as_data_source("test"))
  assert [r.conversations for r in test] == [("prompt only",)]
  assert [r.source for r in test] == ["test"]


def test_tfds_builder_errors(tmp_path):
  from lima_jax.datasets import lima_tfds

  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(UserError, match="train.jsonl: missing"):
    lima_tfds.prepare(empty, tmp_path / "data")
  bad = tmp_path / "bad"
  bad.mkdir()
  write_lines(bad / "train.jsonl", [GOOD, {"conversations": ["q", ""]}])
  with pytest.raises(UserError, match=r"train.jsonl:2: conversations\[1\] is empty"):
    lima_tfds.prepare(bad, tmp_path / "data2")
  assert not (tmp_path / "data2" / "lima" / "1.0.0").exists()  # nothing half-written
