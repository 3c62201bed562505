"""The Stack Exchange dump reader, on small Posts.xml files in the dumps' own format."""
import collections
import html
import json
import pathlib
import subprocess
import sys

import pytest

from lima_jax.datasets import stackexchange as se
from lima_jax.errors import UserError

REPO = pathlib.Path(__file__).resolve().parents[1]


def write_posts(path: pathlib.Path, posts: list[dict]) -> pathlib.Path:
  """A Posts.xml as archive.org's dumps ship it: attributes HTML-escaped, bodies HTML."""
  path.parent.mkdir(parents=True, exist_ok=True)
  rows = "".join("  <row " + " ".join(f'{k}="{html.escape(str(v), quote=True)}"'
                                     for k, v in p.items()) + " />\n" for p in posts)
  path.write_text(f'<?xml version="1.0" encoding="utf-8"?>\n<posts>\n{rows}</posts>\n')
  return path


def site(path, n_questions, first_id=1):
  posts = []
  for i in range(first_id, first_id + n_questions):
    posts.append({"Id": i, "PostTypeId": 1, "Score": 5, "Body": "<p>body</p>",
                  "Title": f"How do I bake bread number {i}?"})
    posts.append({"Id": 10_000 + i, "PostTypeId": 2, "ParentId": i, "Score": 12,
                  "Body": f"<p>Answer {i} &amp; more</p>"})
  return write_posts(path, posts)


def test_lima_rules_keep_self_contained_titles_and_the_top_answer_scoring_10(tmp_path):
  posts = [
      {"Id": 1, "PostTypeId": 1, "Score": 3, "Title": "Why is the sky blue during the day?"},
      {"Id": 2, "PostTypeId": 2, "ParentId": 1, "Score": 9, "Body": "<p>lower</p>"},
      {"Id": 3, "PostTypeId": 2, "ParentId": 1, "Score": 25, "Body": "<p>Rayleigh &lt;3</p>"},
      {"Id": 4, "PostTypeId": 1, "Score": 8, "Title": "What is wrong with this code?"},
      {"Id": 5, "PostTypeId": 2, "ParentId": 4, "Score": 40, "Body": "<p>a typo</p>"},
      {"Id": 6, "PostTypeId": 1, "Score": 1, "Title": "How do magnets attract iron filings?"},
      {"Id": 7, "PostTypeId": 2, "ParentId": 6, "Score": 9, "Body": "<p>fields</p>"},
      {"Id": 8, "PostTypeId": 1, "Score": 2, "Title": "Help needed"},
      {"Id": 9, "PostTypeId": 2, "ParentId": 8, "Score": 50, "Body": "<p>sure</p>"},
      {"Id": 10, "PostTypeId": 1, "Score": 2, "Title": "Is there life on other planets?"},
  ]
  path = write_posts(tmp_path / "physics.stackexchange.com" / "Posts.xml", posts)
  rows = se.read_site(path)
  assert [r["conversations"] for r in rows] == [
      ["Why is the sky blue during the day?", "<p>Rayleigh &lt;3</p>"]]
  assert rows[0]["site"] == "physics.stackexchange.com" and rows[0]["answer_score"] == 25
  loose = se.read_site(path, filtered=False)  # the unfiltered arm: every answered question
  assert [r["id"] for r in loose] == [1, 4, 6, 8]
  assert loose[1]["conversations"][1] == "<p>a typo</p>"


@pytest.mark.parametrize("title, ok", [
    ("How long should I rest pizza dough?", True),
    ("Why does this not compile?", False),
    ("What does the following error mean?", False),
    ("Which is better?", False),  # three words: not enough to stand alone
    ("How do I sort a list in Python", False),  # not a question
    ("What happened this year in physics?", True),  # 'this year' is not the body
])
def test_self_contained_titles(title, ok):
  assert se.self_contained(title) is ok


def test_temperature_three_flattens_the_share_of_big_sites(tmp_path):
  big = se.read_site(site(tmp_path / "big" / "Posts.xml", 729))
  small = se.read_site(site(tmp_path / "small" / "Posts.xml", 27, first_id=1000))
  draws = collections.Counter()
  for seed in range(40):
    draws.update(r["site"] for r in se.sample({"big": big, "small": small}, 20, 3.0, seed))
  # size^(1/3): 9 against 3, so the small site gets a quarter of the draws (not 27/756 = 4%).
  share = draws["small"] / sum(draws.values())
  assert 0.2 < share < 0.3
  t1 = collections.Counter(r["site"] for seed in range(40)
                           for r in se.sample({"big": big, "small": small}, 20, 1.0, seed))
  assert t1["small"] / sum(t1.values()) < 0.08  # proportional to size
  once = se.sample({"big": big, "small": small}, 700, 3.0, 0)
  assert len({(r["site"], r["id"]) for r in once}) == 700  # no record twice


def test_cli_groups_and_errors(tmp_path):
  a = site(tmp_path / "math" / "Posts.xml", 30)
  b = site(tmp_path / "cooking" / "Posts.xml", 30, first_id=500)
  out = tmp_path / "pool.jsonl"
  cmd = [sys.executable, "-m", "lima_jax.datasets.stackexchange",
         f"--dumps=stem={a},other={b}", "--n=10", f"--out={out}"]
  r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stderr
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  assert collections.Counter(r["group"] for r in rows) == {"stem": 10, "other": 10}
  assert {r["site"] for r in rows if r["group"] == "stem"} == {"math"}
  r = subprocess.run(cmd[:-2] + ["--n=31", f"--out={tmp_path / 'x.jsonl'}"], cwd=REPO,
                     capture_output=True, text=True, timeout=120)
  assert r.returncode == 1 and not (tmp_path / "x.jsonl").exists()
  assert r.stderr.strip().splitlines() == [
      "error: group 'other': 30 questions pass the rules, fewer than --n=31 (sites: cooking)"]


def test_a_broken_dump_is_one_clear_error(tmp_path):
  bad = tmp_path / "s" / "Posts.xml"
  bad.parent.mkdir()
  bad.write_text('<posts><row Id="1" PostTypeId="1" Title="x?"')
  with pytest.raises(UserError, match=r"Posts.xml: not a Stack Exchange Posts.xml"):
    se.read_site(bad)


def test_wikihow_csv_titles_become_questions_and_openings_are_lima_s(tmp_path):
  import csv as csv_lib
  from lima_jax.datasets import wikihow
  path = tmp_path / "wikihowAll.csv"
  with open(path, "w", newline="", encoding="utf-8") as f:
    w = csv_lib.writer(f)
    w.writerow(["headline", "title", "text"])
    w.writerow(["Zest it.", "How to Zest a Lemon",
                "This article shows the way.\n Use a  grater, gently." + " x" * 250])
    w.writerow(["Short.", "How to Blink", "Close your eyes."])
  rows = wikihow.read_csv(path)
  assert len(rows) == 1
  prompt, answer = rows[0]["conversations"]
  assert prompt == "How to Zest a Lemon?"
  assert answer.startswith("The following answer shows the way.\nUse a grater, gently.")
  (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
  with pytest.raises(UserError, match="not wikihowAll.csv"):
    wikihow.read_csv(tmp_path / "bad.csv")
