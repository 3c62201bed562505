"""--config.checkpoint: answers generated first (k samples, MT-Bench's two turns), then scored."""
import json
import sys

import pytest

from conftest import _REPO, random_tiny_model

sys.path.insert(0, str(_REPO))
from configs import eval as eval_configs  # noqa: E402
from lima_jax.formats import checkpoint  # noqa: E402
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


def test_expected_and_tags_flow_from_prompts_to_answers_and_exact_rate(ckpt, tmp_path):
  root, _ = ckpt
  rows = [{"id": "a", "conversations": ["Where was Ada born?"], "expected": "?",
           "tags": ["set=test", "attr=birth_city"]},
          {"id": "b", "conversations": ["Where did Bo study?"], "expected": "?",
           "tags": ["set=dev"]},
          {"id": "c", "conversations": ["Say hi."]}]
  prompts = tmp_path / "p.jsonl"
  prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
  c = _config("judge_free", root, prompts)
  c.generate.samples = 2
  lima_eval.evaluate(c, tmp_path / "first")
  first = [json.loads(l) for l in (tmp_path / "first/answers.jsonl").read_text().splitlines()]
  assert [(x["id"], x.get("expected"), x.get("tags")) for x in first] == [
      (r["id"], r.get("expected"), r.get("tags")) for r in rows] * 2
  # An answer depends only on the seed and the prompt's index: make a's expected its sample 0
  # answer (with other whitespace), so a is exact on sample 0 and b never is.
  answer_a0 = next(x["answer"] for x in first if x["id"] == "a" and x["sample"] == 0)
  rows[0]["expected"] = "  " + " \n ".join(answer_a0.split()) + "\n"
  rows[1]["expected"] = answer_a0 + " and more"
  prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
  r = lima_eval.evaluate(c, tmp_path / "second")
  got = answers_lib.read(tmp_path / "second/answers.jsonl")
  assert [(a.key, a.expected is not None, a.tags) for a in got[:3]] == [
      ("a", True, ("set=test", "attr=birth_city")), ("b", True, ("set=dev",)), ("c", False, ())]
  a1 = next(x.answer[0] for x in got if x.key == "a" and x.sample == 1)
  a_right = 1 + (answers_lib.normalized(a1) == answers_lib.normalized(answer_a0))
  assert (r["exact_n"], r["exact_n:set=test"], r["exact_n:set=dev"]) == (4, 2, 2)
  assert r["exact_rate"] == pytest.approx(a_right / 4)
  assert r["exact_rate:set=test"] == pytest.approx(a_right / 2)
  assert r["exact_rate:attr=birth_city"] == r["exact_rate:set=test"]
  assert r["exact_rate:set=dev"] == 0.0
  per = json.loads((tmp_path / "second/per_prompt.json").read_text())
  assert per == {"a": a_right / 2, "b": 0.0}


def test_badly_typed_prompt_labels_stop_before_anything_is_written(ckpt, tmp_path):
  root, _ = ckpt
  prompts = tmp_path / "p.jsonl"
  prompts.write_text(json.dumps({"id": "a", "conversations": ["Q?"]}) + "\n"
                     + json.dumps({"id": "b", "conversations": ["Q?"], "tags": "set=test"}) + "\n")
  from lima_jax.errors import UserError
  with pytest.raises(UserError, match=rf"^{prompts}:2: 'tags' must be a list of non-empty"):
    lima_eval.evaluate(_config("judge_free", root, prompts), tmp_path / "run")
  assert not (tmp_path / "run").exists()


def test_greedy_answers_are_lima_jax_generate_greedy(ckpt, tmp_path):
  # generate.greedy: argmax, the same for every seed and sample, equal to lima_jax.generate's.
  from lima_jax.decode import answer
  from lima_jax.formats import model_file
  root, _ = ckpt
  prompts = tmp_path / "p.jsonl"
  questions = ["What is the capital of France?", "Name a colour."]
  prompts.write_text("".join(json.dumps({"id": str(i), "conversations": [q]}) + "\n"
                             for i, q in enumerate(questions)))
  c = _config("judge_free", root, prompts)
  c.generate.greedy, c.generate.repetition_penalty, c.generate.samples = True, 1.0, 2
  lima_eval.evaluate(c, tmp_path / "run")
  rows = [json.loads(l) for l in (tmp_path / "run/answers.jsonl").read_text().splitlines()]
  m = model_file.open(root)
  want = answer.generate(m.params, m.config, m.tokenizer, [[q] for q in questions],
                         max_new_tokens=8)
  assert [r["answer"] for r in rows] == want * 2


def test_alpaca_eval_model_outputs_beside_the_answers_and_its_annotations_read(ckpt, tmp_path):
  """AlpacaEval's `--model_outputs` format is written next to answers.jsonl (sample 0 of k, one
  per instruction); its annotations.json is read into its plain win rate with an interval."""
  import subprocess
  from lima_jax.eval import alpaca
  root, _ = ckpt
  prompts = tmp_path / "p.jsonl"
  prompts.write_text("".join(json.dumps(r) + "\n" for r in [
      {"id": "a", "conversations": ["What is the capital of France?"]},
      {"id": "b", "conversations": ["Name a fruit."]}]))
  c = _config("judge_free", root, prompts)
  c.generate.samples = 2
  lima_eval.evaluate(c, tmp_path / "run")
  rows = [json.loads(l) for l in (tmp_path / "run/answers.jsonl").read_text().splitlines()]
  outputs = json.loads((tmp_path / "run/answers.alpaca_eval.json").read_text())
  assert outputs == [{"instruction": r["conversations"][0], "output": r["answer"],
                      "generator": f"lima_jax-{root.parent.parent.name}-step"}
                     for r in rows if r["sample"] == 0]
  back = answers_lib.read(tmp_path / "run/answers.alpaca_eval.json")  # our reader takes it too
  assert [b.answer[0] for b in back] == [o["output"] for o in outputs]
  # annotations.json as alpaca_eval writes it: preference 1 = output_1 (the reference) wins.
  ann = [{"instruction": "i1", "output_1": "r", "generator_1": "ref", "output_2": "m",
          "generator_2": "lima", "annotator": "x", "preference": 2.0},
         {"instruction": "i2", "output_1": "r", "generator_1": "ref", "output_2": "m",
          "generator_2": "lima", "annotator": "x", "preference": 1.0},
         {"instruction": "i3", "output_1": "r", "generator_1": "ref", "output_2": "m",
          "generator_2": "lima", "annotator": "x", "preference": 1.5},
         {"instruction": "i4", "output_1": "r", "generator_1": "ref", "output_2": "m",
          "generator_2": "lima", "annotator": "x", "preference": 1.9},
         {"instruction": "i5", "output_1": "r", "generator_1": "ref", "output_2": "m",
          "generator_2": "lima", "annotator": "x", "preference": None}]
  (tmp_path / "annotations.json").write_text(json.dumps(ann))
  got = alpaca.read_annotations(tmp_path / "annotations.json", rounds=200)
  assert abs(got["win_rate"] - (1 + 0 + 0.5 + 0.9) / 4) < 1e-12
  assert (got["n"], got["n_draws"], got["generator"], got["reference"]) == (4, 1, "lima", "ref")
  assert got["win_rate_ci95"][0] < got["win_rate"] < got["win_rate_ci95"][1]
  r = subprocess.run([sys.executable, "-m", "lima_jax.eval", "annotations",
                      str(tmp_path / "annotations.json"), f"--workdir={tmp_path / 'ann'}"],
                     cwd=_REPO, capture_output=True, text=True, timeout=120)
  assert r.returncode == 0 and "win rate 0.600" in r.stdout, r.stderr
  assert json.loads((tmp_path / "ann/results.json").read_text())["win_rate"] == got["win_rate"]
  (tmp_path / "bad.json").write_text(json.dumps([{"instruction": "i", "preference": 3}]))
  r = subprocess.run([sys.executable, "-m", "lima_jax.eval", "annotations",
                      str(tmp_path / "bad.json")], cwd=_REPO, capture_output=True, text=True,
                     timeout=120)
  assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1
  assert "row 0" in r.stderr
