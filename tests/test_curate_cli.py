"""`python -m lima_jax.curate` end to end: outputs, report, and bad input."""
import html.parser
import json
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
TOPICS = ("bread oven flour dough yeast", "planet orbit telescope galaxy comet",
          "goal striker penalty referee league")


def write_pool(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def pool_rows():
  rows = []
  for t, words in enumerate(TOPICS):
    for k in range(6):
      prompt = f"Question {k} about {words}?"
      answer = f"A careful answer number {k} about {words.split()[0]}, in {10 + k} words."
      rows.append({"conversations": [prompt, answer], "source": f"topic{t}"})
  return rows


def curate(tmp_path, *args):
  return subprocess.run(
      [sys.executable, "-m", "lima_jax.curate", "--config=configs/curate.py:diverse", *args],
      cwd=REPO, capture_output=True, text=True, timeout=300)


class _Checker(html.parser.HTMLParser):
  """Fails on unbalanced tags and on anything that would load from outside the page."""
  VOID = {"meta", "br", "hr", "img", "input", "link", "rect", "line"}

  def __init__(self):
    super().__init__()
    self.stack, self.errors, self.tags = [], [], set()

  def handle_starttag(self, tag, attrs):
    self.tags.add(tag)
    for name, value in attrs:
      if name in ("src", "href") or (value or "").startswith(("http:", "https:", "//")):
        if tag != "svg":  # the SVG namespace URI is an identifier, not a fetch
          self.errors.append(f"external reference {tag} {name}={value}")
    if tag not in self.VOID:
      self.stack.append(tag)

  def handle_startendtag(self, tag, attrs):
    self.tags.add(tag)

  def handle_endtag(self, tag):
    if tag in self.VOID:
      return
    if not self.stack or self.stack[-1] != tag:
      self.errors.append(f"unexpected </{tag}> with open {self.stack[-3:]}")
    else:
      self.stack.pop()


def test_cli_writes_chosen_jsonl_and_a_self_contained_report(tmp_path):
  pool = tmp_path / "pool.jsonl"
  write_pool(pool, pool_rows() + [pool_rows()[0]])  # one exact duplicate
  out, page = tmp_path / "chosen.jsonl", tmp_path / "report.html"
  result = curate(tmp_path, f"--config.pool={pool}", "--config.n=3", f"--out={out}",
                  f"--report={page}", "--config.report.clusters=3")
  assert result.returncode == 0, result.stderr[-2000:]
  chosen = [json.loads(line) for line in out.read_text().splitlines()]
  assert len(chosen) == 3
  for row in chosen:
    assert set(row) == {"conversations", "source", "origin", "score", "scores"}
    assert row["origin"].startswith(f"{pool}:")
    assert set(row["scores"]) == {"cluster", "cluster_size", "centroid_similarity"}
  assert sorted(row["source"] for row in chosen) == ["topic0", "topic1", "topic2"]

  fig = json.loads(page.with_suffix(".json").read_text())
  assert fig["pool"]["records"] == 19 and fig["duplicates"]["exact_dedup"] == 1
  assert fig["chosen"]["per_source"] == {"topic0": 1, "topic1": 1, "topic2": 1}
  assert sum(fig["lengths"]["chosen"]) == 3 and sum(fig["lengths"]["pool"]) == 19
  assert fig["diversity"]["chosen"]["cluster_coverage"] == 1.0
  assert "--config.n=3" in fig["command"]
  checker = _Checker()
  checker.feed(page.read_text())
  checker.close()
  assert not checker.errors and not checker.stack
  assert {"svg", "table", "style"} <= checker.tags
  assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind


def test_cli_malformed_pool_line_is_one_clear_error_and_writes_nothing(tmp_path):
  pool = tmp_path / "pool.jsonl"
  rows = [json.dumps(r) for r in pool_rows()]
  rows[1] = rows[1][:-5]  # cut mid-object
  pool.write_text("\n".join(rows) + "\n")
  out, page = tmp_path / "chosen.jsonl", tmp_path / "report.html"
  out.write_text("a good earlier result\n")
  result = curate(tmp_path, f"--config.pool={pool}", "--config.n=3", f"--out={out}",
                  f"--report={page}")
  assert result.returncode != 0
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, result.stderr
  assert lines[0].startswith(f"error: {pool}:2: malformed JSON")
  assert "Traceback" not in result.stderr
  assert out.read_text() == "a good earlier result\n"
  assert not page.exists() and not page.with_suffix(".json").exists()
  assert not list(tmp_path.glob(".*.tmp"))


def test_cli_misspelled_config_override_is_one_line(tmp_path):
  result = curate(tmp_path, "--config.nn=3", f"--out={tmp_path / 'x.jsonl'}")
  assert result.returncode == 1
  assert result.stderr.strip() == "error: unknown config field nn"
