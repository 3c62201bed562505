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
from lima_jax.data import batches as data
from lima_jax.decode import generator as decoding
from lima_jax.formats import hf_tokenizer_files as hf_tokenizer
from lima_jax.formats import model_file
from lima_jax.decode.sampling import Decoding
from lima_jax.tokenizer import load as load_tokenizer

REPO = pathlib.Path(__file__).resolve().parents[1]
PROMPTS = [["What is the capital of France?"], ["How many legs does a spider have?"],
           ["Write a short poem about the sea."],
           ["What is 2 + 2?", "4.", "And 3 + 3?"]]


def _messages(turns):
  return [{"role": "user" if i % 2 == 0 else "assistant", "content": t}
          for i, t in enumerate(turns)]


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
  """(checkpoint, exported HF dir, the same in float32): the tiny model fine-tuned on 64 demo
  conversations."""
  from lima_jax.train import loop as train
  c = tiny_config(**{"data.subset_size": 64, "data.eval_fraction": 0.0})
  workdir = tmp_path_factory.mktemp("finetune")
  train.train_and_evaluate(c, str(workdir))
  ckpt = max((workdir / "checkpoints").iterdir(), key=lambda p: int(p.name))
  out, out32 = workdir / "hf", workdir / "hf32"
  for flags in ([f"--out={out}"], [f"--out={out32}", "--dtype=float32"]):
    r = subprocess.run([sys.executable, "-m", "lima_jax.convert", "to-hf",
                        f"--checkpoint={ckpt}", *flags],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
  return ckpt, out, out32


def test_export_loads_as_is_with_eot_as_special_end_of_turn(finetuned):
  ckpt, out, _ = finetuned
  m = model_file.read(ckpt)
  cfg, tok = m.config, m.tokenizer
  assert cfg.vocab_size > tok.vocab_size
  hf_tok = AutoTokenizer.from_pretrained(out)
  AutoModelForCausalLM.from_pretrained(out)
  assert hf_tok.convert_tokens_to_ids(hf_tokenizer.EOT_TEXT) == tok.eot_id
  assert hf_tok.eos_token_id == tok.eot_id and hf_tokenizer.EOT_TEXT in hf_tok.all_special_tokens
  assert tok.eos_id in hf_tok.all_special_ids  # the pretraining EOS stays special
  ids = data.encode_conversation(["Hi there", "Hello!"], tok, 64).tokens.tolist()
  assert hf_tok.decode(ids, skip_special_tokens=True) == "Hi there Hello!"

  gen = GenerationConfig.from_pretrained(out)
  # LIMA's sampling, but no penalty: transformers' would count the prompt too (model card).
  assert (gen.do_sample, gen.top_p, gen.temperature, gen.repetition_penalty,
          gen.max_new_tokens) == (True, 0.9, 0.7, 1.0, 2048)
  card = (out / "README.md").read_text()
  assert "repetition_penalty 1.0" in card and "prompt_ignore_length=len(prompt)" in card
  config = json.loads((out / "config.json").read_text())
  assert config["dtype"] == config["torch_dtype"] == "bfloat16"  # the default export
  assert tok.eot_id in gen.eos_token_id and tok.eos_id in gen.eos_token_id
  # Never an answer's token, as in lima_jax: BOS, PAD and the vocabulary padding rows.
  assert gen.suppress_tokens == [tok.bos_id, tok.pad_id, *range(tok.vocab_size, cfg.vocab_size)]
  assert config["eos_token_id"] == tok.eos_id


def test_chat_template_tokenizes_as_training(finetuned):
  ckpt, out, _ = finetuned
  tok = model_file.read(ckpt).tokenizer
  hf_tok = AutoTokenizer.from_pretrained(out)
  rows = [json.loads(l) for l in (REPO / "data/demo/train.jsonl").read_text().splitlines()]
  # The demo tokenizer strips and collapses spaces; SentencePiece adds its prefix space even
  # before a leading space or to a segment right after a special token.
  odd = [["  two  spaces ", "x\n\ny"], [" lead", "trail "], ["é ü 中文 🙂", "a\tb"],
         ["", "x"]]
  for turns in [r["conversations"] for r in rows[:60]] + odd:
    want = data.encode_conversation(turns, tok, 10**6).tokens.tolist()
    assert hf_tok.apply_chat_template(_messages(turns), tokenize=True, return_dict=False) == want
  for turns in PROMPTS:
    got = hf_tok.apply_chat_template(_messages(turns), tokenize=True, return_dict=False,
                                     add_generation_prompt=True)
    assert got == decoding.render_prompt(turns, tok)
  # Training never parses text for special tokens; neither does the export's tokenizer.
  typed = ["Say <eot> then </s>, <s>, <unk> and <pad>", "<eot><eot> </s>"]
  assert hf_tok.apply_chat_template(_messages(typed), tokenize=True, return_dict=False) == \
      data.encode_conversation(typed, tok, 10**6).tokens.tolist()
  with pytest.raises(Exception, match="alternate user and assistant"):
    hf_tok.apply_chat_template([{"role": "system", "content": "x"}], tokenize=True)


def test_chat_template_matches_sentencepiece_on_lima_with_the_llama_tokenizer(tmp_path):
  # transformers' own conversion of this tokenizer differs on 323 of these conversations
  # (runs of spaces); the exported tokenizer.json must not.
  tok = load_tokenizer(shared_file("llama2c/llama_tokenizer/tokenizer.model"))
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


def _hf_prompt(hf_tok, turns):
  return hf_tok.apply_chat_template(_messages(turns), tokenize=True, return_dict=False,
                                    add_generation_prompt=True)


def _ours(params, cfg, tok, penalty, max_new_tokens):
  dec = Decoding(greedy=True, repetition_penalty=penalty, max_new_tokens=max_new_tokens)
  return decoding.Generator(params, cfg, tok, batch_size=4).answer_ids(
      [decoding.render_prompt(p, tok) for p in PROMPTS], dec)


def test_shipped_generation_config_greedy_is_lima_jax_greedy(finetuned):
  """transformers with the shipped generation_config.json and nothing overridden but
  do_sample=False decodes as lima_jax greedy with the penalty the card says it applies (1.0).
  The float32 export: lima_jax and torch cannot round bfloat16 arithmetic alike."""
  ckpt, _, out = finetuned
  m = model_file.open(ckpt)
  params, cfg, tok = m.params, m.config, m.tokenizer
  model = AutoModelForCausalLM.from_pretrained(out).eval()
  hf_tok = AutoTokenizer.from_pretrained(out)
  ours = _ours(params, cfg, tok, 1.0, cfg.max_seq_len)
  assert any(stopped for _, stopped in ours) and any(len(ids) > 3 for ids, _ in ours)
  for turns, (want, stopped) in zip(PROMPTS, ours):
    prompt = _hf_prompt(hf_tok, turns)
    with torch.no_grad():
      seq = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt)),
                           do_sample=False)[0, len(prompt):].tolist()
    if stopped:  # ended with EOT/EOS: transformers stops there too
      assert seq[-1] in (tok.eot_id, tok.eos_id) and seq[:-1] == want, turns
    else:  # lima_jax stops at the model's context; transformers may go on
      assert seq[:len(want)] == want, turns


def test_model_card_recipe_reproduces_lima_penalty(finetuned):
  """The card's recipe for LIMA's penalty (generated tokens only) equals lima_jax --greedy."""
  ckpt, _, out = finetuned
  m = model_file.open(ckpt)
  params, cfg, tok = m.params, m.config, m.tokenizer
  model = AutoModelForCausalLM.from_pretrained(out).eval()
  hf_tok = AutoTokenizer.from_pretrained(out)
  ours = _ours(params, cfg, tok, 1.2, 24)
  assert "RepetitionPenaltyLogitsProcessor(1.2, prompt_ignore_length=len(prompt))" in \
      (out / "README.md").read_text()
  for turns, (want, _) in zip(PROMPTS, ours):
    prompt = _hf_prompt(hf_tok, turns)
    processors = [RepetitionPenaltyLogitsProcessor(1.2, prompt_ignore_length=len(prompt))]
    with torch.no_grad():
      seq = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt)),
                           do_sample=False, max_new_tokens=24, logits_processor=processors)
    got = seq[0, len(prompt):].tolist()
    if got and got[-1] in (tok.eot_id, tok.eos_id):
      got = got[:-1]
    assert got == want, turns
