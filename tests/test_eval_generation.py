"""--config.checkpoint: answers generated first (k samples, MT-Bench's two turns), then scored."""
import json
import sys

import pytest

from conftest import _REPO, random_tiny_model

sys.path.insert(0, str(_REPO))
from configs import eval as eval_configs  # noqa: E402
from lima_jax import checkpoint  # noqa: E402
from lima_jax import eval as lima_eval  # noqa: E402
from lima_jax.eval import answers as answers_lib  # noqa: E402


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
  root = tmp_path_factory.mktemp("ckpt") / "step"
  params, cfg, tok = random_tiny_model()
  checkpoint.save(root, params, {"model_config": cfg.to_dict(), "tokenizer": tok.to_meta(),
                                 "step": 1, "epoch": 1})
  return root, cfg


def _config(protocol, ckpt, prompts):
  c = eval_configs.get_config(protocol)
  c.checkpoint, c.prompts = str(ckpt), str(prompts)
  c.generate.max_new_tokens, c.generate.batch_size = 8, 4
  c.bootstrap.rounds = 100
  return c


def test_checkpoint_to_judge_free_score_with_k_samples(ckpt, tmp_path):
  root, cfg = ckpt
  prompts = tmp_path / "p.jsonl"
  long = "word " * (2 * cfg.max_seq_len)  # Longer than the context: cut, not an error.
  prompts.write_text("".join(json.dumps(r) + "\n" for r in [
      {"id": "a", "conversations": ["What is the capital of France?"]},
      {"id": "b", "prompt": long}]))
  c = _config("judge_free", root, prompts)
  c.generate.samples = 3
  r = lima_eval.evaluate(c, tmp_path / "run")
  rows = [json.loads(l) for l in (tmp_path / "run/answers.jsonl").read_text().splitlines()]
  assert [(x["id"], x["sample"]) for x in rows] == [(i, s) for s in range(3) for i in "ab"]
  assert [x["prompt_truncated"] for x in rows] == [False, True] * 3
  assert all(isinstance(x["answer"], str) and isinstance(x["stopped"], bool) for x in rows)
  # Samples differ by seed (LIMA's sampling): not all three answers to a prompt are equal.
  assert len({x["answer"] for x in rows if x["id"] == "a"}) > 1
  assert (r["n"], r["n_prompts"], r["samples_per_prompt"]) == (6, 2, 3)
  assert len(answers_lib.read(tmp_path / "run/answers.jsonl")) == 6
  # A rerun reuses the answers (same checkpoint, prompts, decoding); other settings do not.
  before = (tmp_path / "run/answers.jsonl").stat().st_mtime_ns
  lima_eval.evaluate(c, tmp_path / "run")
  assert (tmp_path / "run/answers.jsonl").stat().st_mtime_ns == before
  c.generate.seed = 1
  lima_eval.evaluate(c, tmp_path / "run")
  assert (tmp_path / "run/answers.jsonl").stat().st_mtime_ns != before


def test_mt_bench_and_alpaca_prompts_are_generated_in_their_formats(ckpt, tmp_path):
  root, _ = ckpt
  mt = tmp_path / "mt.jsonl"
  mt.write_text(json.dumps({"question_id": 81, "category": "writing",
                            "turns": ["Write a haiku.", "Now another one."]}) + "\n")
  c = _config("judge_free", root, mt)
  c.protocol = "mt_bench"
  from lima_jax.eval import generation
  generation.generate_answers(c, tmp_path / "mt_answers.jsonl")
  (a,) = answers_lib.read(tmp_path / "mt_answers.jsonl")
  assert a.id == "81" and len(a.turns) == 2 and len(a.answer) == 2
  alpaca = tmp_path / "alpaca.jsonl"
  alpaca.write_text(json.dumps({"idx": 0, "dataset": "x", "instruction": "Name a color."}) + "\n")
  c = _config("judge_free", root, alpaca)
  generation.generate_answers(c, tmp_path / "alpaca_answers.jsonl")
  (b,) = answers_lib.read(tmp_path / "alpaca_answers.jsonl")
  assert b.turns == ("Name a color.",) and b.id == "0"
