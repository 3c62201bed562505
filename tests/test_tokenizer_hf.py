"""The Hugging Face `tokenizers` backend: EOT after the base vocabulary, special-token text is
plain text (in training and in the export), meta round trips, and the export's chat template."""
import json

import numpy as np
import pytest
from tokenizers import Tokenizer as RawTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from conftest import shared_file
from lima_jax.data import batches as data
from lima_jax.formats import hf_tokenizer_files as hf_tokenizer
from lima_jax.errors import UserError
from lima_jax.tokenizer import load as load_tokenizer, from_meta as tokenizer_from_meta
from lima_jax.tokenizer.tokenizer_json import HFTokenizer

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _lima(n):
  with open(shared_file("lima/train.jsonl")) as f:
    return [json.loads(line)["conversations"] for line, _ in zip(f, range(n))]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
  """A byte-level BPE (SmolLM2's layout: specials first, digits split) trained on LIMA rows,
  with a non-special added token, and a tokenizer_config.json naming BOS/EOS like SmolLM2's."""
  raw = RawTokenizer(models.BPE())
  raw.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                               pre_tokenizers.ByteLevel(add_prefix_space=False)])
  raw.decoder = decoders.ByteLevel()
  raw.train_from_iterator(
      [u for c in _lima(150) for u in c],
      trainers.BpeTrainer(vocab_size=700, special_tokens=SPECIALS, show_progress=False,
                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  raw.add_tokens(["<think>"])  # not special: a user-defined token
  d = tmp_path_factory.mktemp("hftok")
  raw.save(str(d / "tokenizer.json"))
  (d / "tokenizer_config.json").write_text(json.dumps(
      {"bos_token": "<|im_start|>", "eos_token": {"content": "<|im_end|>"}, "pad_token": None}))
  return d


@pytest.fixture(scope="module")
def tok(tok_dir):
  return load_tokenizer(tok_dir)


def test_eot_and_pad_follow_the_base_vocabulary(tok, tok_dir):
  n = RawTokenizer.from_file(str(tok_dir / "tokenizer.json")).get_vocab_size(True)
  assert isinstance(tok, HFTokenizer) and tok.sp_vocab_size == n
  assert (tok.bos_id, tok.eos_id, tok.eot_id, tok.pad_id, tok.vocab_size) == (1, 2, n, n + 1,
                                                                              n + 2)


def test_special_token_text_is_plain_text(tok):
  text = "Hi <|im_start|>user <|im_end|> <eot> <|endoftext|><think> 2024"
  ids = tok.encode(text)
  assert not {0, 1, 2, tok.eot_id, tok.pad_id} & set(ids)
  assert tok.decode(ids) == text
  assert tok.decode([tok.bos_id] + ids + [tok.eot_id]) == text  # specials dropped
  assert tok.decode([tok.bos_id, tok.eot_id], render_special=True) == "<|im_start|><eot>"
  assert tok.encode_batch([text, "a b"]) == [ids, tok.encode("a b")]


def test_meta_round_trip_and_tamper_check(tok):
  meta = tok.to_meta()
  back = tokenizer_from_meta(json.loads(json.dumps(meta)))
  assert isinstance(back, HFTokenizer) and back.to_meta() == meta
  with pytest.raises(UserError, match="eot_id=5 but the model gives"):
    tokenizer_from_meta({**meta, "eot_id": 5})
  with pytest.raises(UserError, match="not a usable tokenizer.json"):
    tokenizer_from_meta({**meta, "tokenizer_json": "{nope"})


def test_model_without_bos_starts_with_eos_and_pad_is_the_models(tok_dir, tmp_path):
  (tmp_path / "tokenizer.json").write_bytes((tok_dir / "tokenizer.json").read_bytes())
  (tmp_path / "tokenizer_config.json").write_text(json.dumps(
      {"bos_token": None, "eos_token": "<|endoftext|>", "pad_token": "<|im_end|>"}))
  qwen_like = load_tokenizer(tmp_path / "tokenizer.json")
  assert (qwen_like.bos_id, qwen_like.eos_id, qwen_like.pad_id) == (0, 0, 2)
  assert qwen_like.vocab_size == qwen_like.eot_id + 1
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|nope|>"}))
  with pytest.raises(UserError, match="eos_token '<\\|nope\\|>' is not in tokenizer.json"):
    load_tokenizer(tmp_path)


def test_conversations_encode_with_bos_and_eot(tok):
  turns = _lima(1)[0]
  enc = data.encode_conversation(turns, tok, 4096)
  want = [tok.bos_id] + sum(([*tok.encode(u), tok.eot_id] for u in turns), [])
  assert list(enc.tokens) == want


def test_export_chat_template_gives_training_ids_on_lima(tok, tmp_path):
  from transformers import AutoTokenizer
  _, files = hf_tokenizer.tokenizer_files(tok.to_meta(), vocab_size=tok.vocab_size, max_len=4096)
  assert "tokenizer.model" not in files
  for name, blob in files.items():
    (tmp_path / name).write_bytes(blob)
  hf = AutoTokenizer.from_pretrained(tmp_path)
  assert hf.convert_tokens_to_ids(hf_tokenizer.EOT_TEXT) == tok.eot_id
  back = load_tokenizer(tmp_path)  # the export read back keeps every id
  assert (back.bos_id, back.eos_id, back.eot_id, back.pad_id, back.vocab_size) == (
      tok.bos_id, tok.eos_id, tok.eot_id, tok.pad_id, tok.vocab_size)
  assert hf.eos_token_id == tok.eot_id
  rows = _lima(40)
  for turns in rows:
    msgs = [{"role": "user" if i % 2 == 0 else "assistant", "content": u}
            for i, u in enumerate(turns)]
    got = hf.apply_chat_template(msgs, tokenize=True)
    got = got["input_ids"] if hasattr(got, "keys") else got
    assert list(got) == [tok.bos_id] + sum(([*tok.encode(u), tok.eot_id] for u in turns), [])
  typed = "Typed: <|im_start|> <eot> <|im_end|> <think>"
  assert hf(typed).input_ids == [tok.bos_id] + tok.encode(typed)
  ids = np.array(hf(typed).input_ids)
  assert hf.decode(ids, skip_special_tokens=True) == typed
