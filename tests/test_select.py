"""Checkpoint selection: finding each epoch's checkpoint, answers side by side, clear errors."""
import html
import json
import pathlib
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lima_jax.eval import epochs
from lima_jax.formats import epoch_checkpoints
from lima_jax.formats import checkpoint
from lima_jax.decode import generator as decoding
from lima_jax.model import transformer as M
from lima_jax.model.config import get_size
from lima_jax.decode.sampling import Decoding
from lima_jax.errors import UserError
from lima_jax.tokenizer import load as load_tokenizer

REPO = pathlib.Path(__file__).resolve().parents[1]
DEC = Decoding(greedy=True, repetition_penalty=1.0, max_new_tokens=12)  # as test_generate's
PROMPTS = [{"id": "p1", "conversations": ["What is the capital of France?"]},
           {"prompt": "Say <script>alert(1)</script> & more", "source": "dev"}]


def _params(cfg, seed):
  shapes = jax.eval_shape(lambda: M.Transformer(cfg).init(
      jax.random.key(0), jnp.zeros((1, 4), jnp.int32)))["params"]
  rng = np.random.RandomState(seed)
  return jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s.shape) * 0.3, s.dtype),
                      nn.meta.unbox(shapes))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A run of 3 epochs of 4 steps: epoch ends at steps 4, 8, 12, a mid-epoch checkpoint at
  step 10 (epoch 2 done), and metrics.jsonl with a torn last line."""
  root = tmp_path_factory.mktemp("run")
  tok = load_tokenizer(REPO / "data/demo/tokenizer.model")
  cfg = get_size("tiny", vocab_size=tok.padded_vocab_size(128))
  base = {"model_config": cfg.to_dict(), "tokenizer": tok.to_meta()}
  for step, epoch, loss in ((4, 1, 3.0), (8, 2, None), (10, 2, None), (12, 3, 2.2)):
    checkpoint.save(root / "checkpoints" / str(step), _params(cfg, step),
                    dict(base, step=step, epoch=epoch, eval_loss=loss))
  rows = [{"step": s, "epoch": s / 4, "loss": 1.0} for s in range(1, 13)]
  rows[7]["eval_loss"] = 2.5
  (root / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 1')
  (root / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
  return root, cfg, tok


def test_finds_the_checkpoint_that_ended_each_epoch(workdir):
  root, _, _ = workdir
  found = epoch_checkpoints.find_epoch_checkpoints(root)
  assert {e: (c.step, c.eval_loss) for e, c in found.items()} == {
      1: (4, 3.0), 2: (8, 2.5), 3: (12, 2.2)}  # epoch 2's loss from metrics.jsonl
  assert epoch_checkpoints.select_epochs("2-3", found, "w") == [2, 3]
  assert epoch_checkpoints.select_epochs("3,1", found, "w") == [1, 3]
  assert epoch_checkpoints.select_epochs("", found, "w") == [1, 2, 3]
  with pytest.raises(UserError, match=r"epoch\(s\) \[4, 5\] in w; available epochs: 1, 2, 3"):
    epoch_checkpoints.select_epochs("2-5", found, "w")
  with pytest.raises(UserError, match="not like '5-10'"):
    epoch_checkpoints.select_epochs("five", found, "w")


def test_answers_of_each_epoch_side_by_side(workdir, tmp_path):
  root, cfg, tok = workdir
  out = epochs.compare_epochs(root, root / "prompts.jsonl", "2-3", tmp_path / "sel", DEC,
                              batch_size=4)
  convs = [p["conversations"] if "conversations" in p else [p["prompt"]] for p in PROMPTS]
  want = {step: decoding.Generator(_params(cfg, step), cfg, tok, batch_size=4).answer(convs, DEC)
          for step in (8, 12)}
  assert want[8] != want[12]  # each column must come from its own checkpoint
  rows = [json.loads(l) for l in (tmp_path / "sel" / "answers.jsonl").read_text().splitlines()]
  assert rows == out and len(rows) == 2
  for i, (row, prompt) in enumerate(zip(rows, PROMPTS)):
    assert {k: row[k] for k in prompt} == prompt
    assert [(a["epoch"], a["step"], a["eval_loss"]) for a in row["answers"]] == [
        (2, 8, 2.5), (3, 12, 2.2)]
    assert [(a["answer"], a["n_tokens"]) for a in row["answers"]] == [
        (want[s][i].text, len(want[s][i].tokens)) for s in (8, 12)]

  page = (tmp_path / "sel" / "index.html").read_text()
  assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in page and "<script>" not in page
  assert "src=" not in page and "href=" not in page  # self-contained
  for s in (8, 12):
    for a in want[s]:
      assert html.escape(a.text) in page
  assert "2.5000" in page and "2.2000" in page and "epoch 3 · " in page


def test_cli_missing_epochs_is_one_line_listing_the_available_ones(workdir):
  root, _, _ = workdir
  r = subprocess.run([sys.executable, "-m", "lima_jax.select", f"--workdir={root}",
                      f"--prompts={root / 'prompts.jsonl'}"], cwd=REPO, capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 1
  assert r.stderr.strip().splitlines()[-1] == (
      f"error: --epochs=5-10: no checkpoint for epoch(s) [5, 6, 7, 8, 9, 10] in "
      f"{root / 'checkpoints'}; available epochs: 1, 2, 3")
  assert not (root / "select").exists()


def test_cli_with_a_judge_names_the_best_epoch_on_the_page(workdir, tmp_path):
  """Through a real local judge (the scripted server, with a rule of this test's own): the
  longer answer wins a pair and the 1-6 grade grows with length; the expected ladder and
  grades are computed here from answers.jsonl."""
  from lima_jax.eval import scripted_judge
  root, _, _ = workdir
  grade = lambda text: min(6, 1 + len(text.split()) // 2)

  def rule(request):
    user = request["messages"][-1]["content"]
    answers = [v.strip() for k, v in scripted_judge.blocks(user).items() if "Reference" not in k]
    if len(answers) == 2:
      a, b = map(len, answers)
      return {"content": f"[[{'A' if a > b else 'B' if b > a else 'C'}]]"}
    return {"content": f"[[{grade(answers[0])}]]"}

  out = tmp_path / "sel"
  with scripted_judge.Server(rule) as server:
    r = subprocess.run([sys.executable, "-m", "lima_jax.select", f"--workdir={root}",
                        f"--prompts={root / 'prompts.jsonl'}", "--epochs=1-3", f"--out={out}",
                        "--greedy", "--repetition_penalty=1", "--max_new_tokens=12",
                        f"--judge.base_url={server.url}", "--judge.model=scripted",
                        "--judge.max_retries=0"],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  rows = [json.loads(l) for l in (out / "answers.jsonl").read_text().splitlines()]
  text = {(a["epoch"], i): a["answer"].strip() for i, row in enumerate(rows)
          for a in row["answers"]}
  best = 1
  for epoch in (2, 3):
    wins = sum(len(text[epoch, i]) > len(text[best, i]) for i in range(len(rows)))
    losses = sum(len(text[epoch, i]) < len(text[best, i]) for i in range(len(rows)))
    best = epoch if wins > losses else best
  means = {e: np.mean([grade(text[e, i]) for i in range(len(rows))]) for e in (1, 2, 3)}
  choice = json.loads((out / "judged.json").read_text())
  assert choice["best_epoch"] == best
  assert choice["best_by_likert"] == max(means, key=means.get)
  assert {int(e): g["mean"] for e, g in choice["likert"].items()} == pytest.approx(means)
  page = (out / "index.html").read_text()
  assert f"Best epoch by the judge: {best}</b>" in page and "helpfulness 1-6" in page
  assert f"best epoch by the judge: {best}" in r.stdout
