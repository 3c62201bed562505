"""lm-evaluation-harness 0.4.13 against the project's own server (a tiny random checkpoint
with the demo tokenizer, served by `python -m lima_jax.serve` through the harness protocol's
own `served`), with local task files (no hub): generate_until through local-chat-completions
with a system instruction and through local-completions with 5 stop strings, a multiple-
choice task whose per-choice loglikelihoods must equal the model's own (a log-softmax of its
logits, computed here), and the `harness` protocol against lm-eval run by hand."""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import openai
import pytest

from conftest import random_tiny_model
from lima_jax.errors import UserError
from lima_jax.formats import checkpoint

REPO = pathlib.Path(__file__).resolve().parents[1]

lm_eval = pytest.importorskip("lm_eval")  # requirements-eval.txt (CI installs it)
pytestmark = pytest.mark.slow  # a served checkpoint and lm-eval runs: ~2 minutes on 2 cores
from lm_eval.tasks import TaskManager  # noqa: E402

GEN = [{"question": "What is 2 plus 3?", "answer": "5"},
       {"question": "What colour is the sky?", "answer": "blue"},
       {"question": "Name a fruit.", "answer": "apple"}]
MC = [{"question": "What is 2 plus 3?", "choices": ["5", "7", "twelve"], "label": 0},
      {"question": "What colour is the sky?", "choices": ["green", "blue"], "label": 1},
      {"question": "Which one is a fruit?", "choices": ["apple", "stone", "cloud"], "label": 0},
      {"question": "How many legs has a cat?", "choices": ["four", "two"], "label": 0}]
TEXT = "Question: {{question}}\\nAnswer:"
MAX_GEN = 8


def _task(dirpath, name, rows, body):
  (dirpath / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  (dirpath / f"{name}.yaml").write_text(
      f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
      f"    test: {dirpath / f'{name}.jsonl'}\ntest_split: test\n"
      f"doc_to_text: \"{TEXT}\"\n" + body)


def _gen_task(dirpath, name, until):
  _task(dirpath, name, GEN, "output_type: generate_until\ndoc_to_target: \"{{answer}}\"\n"
        f"generation_kwargs:\n  until: {json.dumps(until)}\n  max_gen_toks: {MAX_GEN}\n"
        "  temperature: 0\nmetric_list:\n  - metric: exact_match\n"
        "    aggregation: mean\n    higher_is_better: true\n")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
  """(url, (params, cfg, tok), task dir) of a tiny checkpoint served for the module."""
  from lima_jax.eval.harness import served as serve
  params, cfg, tok = random_tiny_model(seed=1)
  root = tmp_path_factory.mktemp("harness")
  ckpt = root / "ckpt"
  checkpoint.save(ckpt, params, {"model_config": cfg.to_dict(), "tokenizer": tok.to_meta(),
                                 "step": 0, "epoch": 0})
  tasks = root / "tasks"
  tasks.mkdir()
  _task(tasks, "local_mc", MC, "output_type: multiple_choice\ndoc_to_choice: \"{{choices}}\"\n"
        "doc_to_target: label\nmetric_list:\n  - metric: acc\n    aggregation: mean\n"
        "    higher_is_better: true\n")
  env = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "OPENAI_API_KEY": "none",
         "HF_DATASETS_CACHE": str(root / "hf_cache")}
  old = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  try:
    with serve(str(ckpt), slots=4) as url:
      yield url, (params, cfg, tok), tasks, ckpt
  finally:
    for k, v in old.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v


def _by_hand(url, model, tasks, include, **kw):
  route = "/v1/chat/completions" if model == "local-chat-completions" else "/v1/completions"
  return lm_eval.simple_evaluate(
      model=model, model_args={"model": "lima_jax", "base_url": url + route, "max_retries": 1,
                               "num_concurrent": 1, "max_length": 2048},
      tasks=tasks, task_manager=TaskManager(include_path=str(include)), log_samples=True, **kw)


def _client(url):
  return openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=60)


def _prompt(doc):
  return f"Question: {doc['question']}\nAnswer:"


def test_generate_until_through_chat_with_a_system_instruction(served):
  url, _, tasks, _ = served
  until = ["Question:", "</s>", "<|im_end|>", "\n\n", "<|eot_id|>"]
  _gen_task(tasks, "local_gen_chat", until)
  system = "You are a helpful assistant."
  r = _by_hand(url, "local-chat-completions", ["local_gen_chat"], tasks,
               apply_chat_template=True, system_instruction=system)
  got = [s["resps"][0][0] for s in sorted(r["samples"]["local_gen_chat"],
                                          key=lambda s: s["doc_id"])]
  client = _client(url)
  want = [client.chat.completions.create(
      model="lima_jax", max_tokens=MAX_GEN, temperature=0, seed=1234, stop=until[:4],
      messages=[{"role": "system", "content": system}, {"role": "user", "content": _prompt(d)}]
  ).choices[0].message.content for d in GEN]
  assert got == want
  assert r["results"]["local_gen_chat"]["exact_match,none"] == np.mean(
      [w.strip() == d["answer"] for w, d in zip(want, GEN)])


def test_generate_until_through_completions_with_five_stop_strings(served):
  url, (_, _, tok), tasks, _ = served
  client = _client(url)
  ids = [tok.encode(_prompt(d)) for d in GEN]  # as lm-eval's remote tokenizer sends them
  full = client.completions.create(model="lima_jax", prompt=ids[0], max_tokens=MAX_GEN,
                                   temperature=0, seed=1234).choices[0].text
  stop = full.strip()[2:4]
  assert len(stop) == 2 and full.index(stop) > 0
  until = ["Question:", "<|im_end|>", "\n\n", "<|eot_id|>", stop]
  _gen_task(tasks, "local_gen5", until)
  r = _by_hand(url, "local-completions", ["local_gen5"], tasks)
  got = [s["resps"][0][0] for s in sorted(r["samples"]["local_gen5"], key=lambda s: s["doc_id"])]
  want = [client.completions.create(model="lima_jax", prompt=p, max_tokens=MAX_GEN,
                                    temperature=0, seed=1234, stop=until + ["</s>"]
                                    ).choices[0].text for p in ids]
  assert got == want and got[0] == full[:full.index(stop)]


def _loglikelihoods(model, pairs):
  """The model's own log-likelihood of each continuation after its context, token ids as
  lm-eval makes them (context and context+continuation encoded apart, no BOS). One forward
  pass over rows padded at the end (causal: padding never reaches the earlier positions)."""
  import jax
  import jax.numpy as jnp
  from lima_jax.model.transformer import Transformer
  params, cfg, tok = model
  rows = []
  for context, continuation in pairs:
    ctx = tok.encode(context)
    rows.append((len(ctx), ctx + tok.encode(context + continuation)[len(ctx):]))
  width = max(len(ids) for _, ids in rows)
  batch = np.zeros((len(rows), width), np.int32)
  for i, (_, ids) in enumerate(rows):
    batch[i, :len(ids)] = ids
  logits = Transformer(cfg).apply({"params": params}, jnp.asarray(batch))
  lp = np.asarray(jax.nn.log_softmax(logits[..., :tok.vocab_size].astype(jnp.float32), -1))
  return [float(sum(lp[i, t - 1, ids[t]] for t in range(n, len(ids))))
          for i, (n, ids) in enumerate(rows)]


def test_multiple_choice_loglikelihoods_are_the_models_own(served):
  url, model, tasks, _ = served
  r = _by_hand(url, "local-completions", ["local_mc"], tasks)
  samples = sorted(r["samples"]["local_mc"], key=lambda s: s["doc_id"])
  assert len(samples) == len(MC)
  right = []
  flat = iter(_loglikelihoods(model, [(_prompt(d), " " + c) for d in MC for c in d["choices"]]))
  for doc, s in zip(MC, samples):
    want = [next(flat) for _ in doc["choices"]]
    got = [resp[0][0] for resp in s["resps"]]
    assert [a for a, _ in s["arguments"]] == [_prompt(doc)] * len(doc["choices"])
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    right.append(int(np.argmax(want)) == doc["label"])
  assert r["results"]["local_mc"]["acc,none"] == np.mean(right)
  served_acc = r["results"]["local_mc"]["acc,none"]
  # The harness protocol: the same task through the command a user runs.
  workdir = tasks.parent / "harness_run"
  proc = subprocess.run(
      [sys.executable, "-m", "lima_jax.eval", "--config=configs/eval.py:harness",
       f"--workdir={workdir}", f"--config.harness.tasks={tasks / 'local_mc.yaml'}",
       f"--config.harness.base_url={url}"], cwd=REPO, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-2000:]
  out = json.loads((workdir / "results.json").read_text())
  fig = out["tasks"]["local_mc"]
  assert fig["acc"] == served_acc and fig["n"] == len(MC)
  assert fig["acc_ci95"][0] <= fig["acc"] <= fig["acc_ci95"][1]
  lo, hi = fig["acc_ci95"]
  assert f"local_mc: acc {served_acc:.3f} [{lo:.3f}, {hi:.3f}] (n={len(MC)})" in proc.stdout


def test_harness_bad_config_is_one_clear_line(tmp_path):
  from configs.eval import get_config
  from lima_jax.eval import run
  config = get_config("harness")
  for field, value, message in (("tasks", "", "harness.tasks"),
                                ("tasks", str(tmp_path / "nope.yaml"), "no such task file"),
                                ("model", "openai-completions", "harness.model")):
    c = get_config("harness")
    c.harness.base_url = "http://127.0.0.1:9"
    setattr(c.harness, field, value)
    if field != "tasks":
      c.harness.tasks = "x"
    with pytest.raises(UserError, match=message):
      run.evaluate(c, tmp_path)
  with pytest.raises(UserError, match="config checkpoint"):
    config.harness.tasks = "x"
    run.evaluate(config, tmp_path)
  assert not (tmp_path / "results.json").exists()
