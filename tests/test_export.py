"""A fine-tuned checkpoint exported with `convert to-hf` works in transformers as it is: model and
tokenizer load, EOT ends a turn, the chat template tokenizes as training did, the generation
config carries LIMA's decoding, and greedy `generate` gives lima_jax's tokens."""
import json
import pathlib
import subprocess
import sys

import pytest
import torch
from transformers import (AutoModelForCausalLM, AutoTokenizer, GenerationConfig,
                          RepetitionPenaltyLogitsProcessor)

from conftest import shared_file, tiny_config
from lima_jax import data, decoding, generate, hf_tokenizer
from lima_jax.sampling import Decoding
from lima_jax.tokenizer import Tokenizer

REPO = pathlib.Path(__file__).resolve().parents[1]
PROMPTS = [["What is the capital of France?"], ["How many legs does a spider have?"],
           ["Write a short poem about the sea."],
           ["What is 2 + 2?", "4.", "And 3 + 3?"]]


def _messages(turns):
  return [{"role": "user" if i % 2 == 0 else "assistant", "content": t}
          for i, t in enumerate(turns)]


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
  """(checkpoint, exported HF dir): the tiny model fine-tuned on 64 demo conversations."""
  from lima_jax import train
  c = tiny_config(**{"data.subset_size": 64, "data.eval_fraction": 0.0})
  workdir = tmp_path_factory.mktemp("finetune")
  train.train_and_evaluate(c, str(workdir))
  ckpt = max((workdir / "checkpoints").iterdir(), key=lambda p: int(p.name))
  out = workdir / "hf"
  r = subprocess.run([sys.executable, "-m", "lima_jax.convert", "to-hf", f"--checkpoint={ckpt}",
                      f"--out={out}"], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr
  return ckpt, out


def test_export_loads_as_is_with_eot_as_special_end_of_turn(finetuned):
  ckpt, out = finetuned
  _, cfg, tok, _ = generate.load(ckpt)
  assert cfg.vocab_size > tok.vocab_size
  hf_tok = AutoTokenizer.from_pretrained(out)
  AutoModelForCausalLM.from_pretrained(out)
  assert hf_tok.convert_tokens_to_ids("<eot>") == tok.eot_id
  assert hf_tok.eos_token_id == tok.eot_id and "<eot>" in hf_tok.all_special_tokens
  assert "</s>" in hf_tok.all_special_tokens  # the pretraining EOS stays special
  ids = data.encode_conversation(["Hi there", "Hello!"], tok, 64).tokens.tolist()
  assert hf_tok.decode(ids, skip_special_tokens=True) == "Hi there Hello!"

  gen = GenerationConfig.from_pretrained(out)
  assert (gen.do_sample, gen.top_p, gen.temperature, gen.repetition_penalty,
          gen.max_new_tokens) == (True, 0.9, 0.7, 1.2, 2048)
  assert tok.eot_id in gen.eos_token_id and tok.eos_id in gen.eos_token_id
  assert gen.suppress_tokens == list(range(tok.vocab_size, cfg.vocab_size))  # padding rows
  assert json.loads((out / "config.json").read_text())["eos_token_id"] == tok.eos_id


def test_chat_template_tokenizes_as_training(finetuned):
  ckpt, out = finetuned
  _, _, tok, _ = generate.load(ckpt)
  hf_tok = AutoTokenizer.from_pretrained(out)
  rows = [json.loads(l) for l in (REPO / "data/demo/train.jsonl").read_text().splitlines()]
  # The demo tokenizer strips and collapses spaces; SentencePiece adds its prefix space even
  # before a leading space or to a segment right after a special token.
  odd = [["  two  spaces ", "x\n\ny"], [" lead", "trail "], ["é ü 中文 🙂", "a\tb"], ["", "x"]]
  for turns in [r["conversations"] for r in rows[:60]] + odd:
    want = data.encode_conversation(turns, tok, 10**6).tokens.tolist()
    assert hf_tok.apply_chat_template(_messages(turns), tokenize=True, return_dict=False) == want
  for turns in PROMPTS:
    got = hf_tok.apply_chat_template(_messages(turns), tokenize=True, return_dict=False,
                                     add_generation_prompt=True)
    assert got == decoding.render_prompt(turns, tok)
  with pytest.raises(Exception, match="alternate user and assistant"):
    hf_tok.apply_chat_template([{"role": "system", "content": "x"}], tokenize=True)


def test_chat_template_matches_sentencepiece_on_lima_with_the_llama_tokenizer(tmp_path):
  # transformers' own conversion of this tokenizer differs on 323 of these conversations
  # (runs of spaces); the exported tokenizer.json must not.
  tok = Tokenizer.load(shared_file("llama2c/llama_tokenizer/tokenizer.model"))
  rows = [json.loads(l) for l in shared_file("lima/train.jsonl").read_text().splitlines()]
  rows = rows[::3]  # 344 conversations (~5 s), 112 of them with runs of spaces
  _, files = hf_tokenizer.tokenizer_files(tok.to_meta(), tok.padded_vocab_size(), 2048)
  for name, blob in files.items():
    (tmp_path / name).write_bytes(blob)
  hf_tok = AutoTokenizer.from_pretrained(tmp_path)
  bad = [i for i, r in enumerate(rows)
         if hf_tok.apply_chat_template(_messages(r["conversations"]), tokenize=True,
                                       return_dict=False)
         != data.encode_conversation(r["conversations"], tok, 10**6).tokens.tolist()]
  assert not bad, f"{len(bad)} conversations differ, e.g. row {bad[0]}"


def test_transformers_greedy_generate_gives_lima_jax_tokens(finetuned):
  ckpt, out = finetuned
  params, cfg, tok, _ = generate.load(ckpt)
  model = AutoModelForCausalLM.from_pretrained(out).eval()
  hf_tok = AutoTokenizer.from_pretrained(out)
  for penalty in (1.0, 1.2):
    dec = Decoding(greedy=True, repetition_penalty=penalty, max_new_tokens=24)
    ours = [ids for ids, _ in decoding.Generator(params, cfg, tok, batch_size=4).answer_ids(
        [decoding.render_prompt(p, tok) for p in PROMPTS], dec)]
    assert any(len(ids) < 24 for ids in ours)  # some answers end with EOT ...
    assert any(len(ids) > 3 for ids in ours)  # ... and some say something first
    for turns, want in zip(PROMPTS, ours):
      prompt = hf_tok.apply_chat_template(_messages(turns), tokenize=True, return_dict=False,
                                          add_generation_prompt=True)
      # LIMA penalises only generated tokens; transformers counts the prompt unless told not to.
      processors = [RepetitionPenaltyLogitsProcessor(penalty, prompt_ignore_length=len(prompt))]
      with torch.no_grad():
        seq = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt)),
                             do_sample=False, max_new_tokens=24, repetition_penalty=1.0,
                             logits_processor=processors if penalty != 1.0 else None)
      got = seq[0, len(prompt):].tolist()
      if got and got[-1] in (tok.eot_id, tok.eos_id):
        got = got[:-1]
      assert got == want, (penalty, turns)
