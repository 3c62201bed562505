"""Tokenizer: the contract (EOT after the base vocabulary), added special ids, text safety, meta
round trip, the one loader, llama2.c import."""
import base64
import json
import random
import struct

import pytest
from sentencepiece import sentencepiece_model_pb2 as sp_pb2

from lima_jax.errors import UserError
from lima_jax.tokenizer import Tokenizer, train_sentencepiece
from lima_jax.tokenizer import load as load_tokenizer, from_meta as tokenizer_from_meta
from lima_jax.tokenizer.sentencepiece import SentencePieceTokenizer, parse_llama2c_tokenizer
from tests.conftest import shared_file

_WORDS = ("the a cat dog sat on mat ran to park and saw big red ball she he loved play outside "
          "in what is your name my happy day one time there was little girl named lily tom").split()
STORY = ("Once upon a time, there was a little girl named Lily. She loved to play outside in "
         "the park. One day, she saw a big, red ball.")


def corpus(n=300, seed=0):
  rng = random.Random(seed)
  return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 12))) + "."
          for _ in range(n)]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  return train_sentencepiece(corpus(), 400, tmp_path_factory.mktemp("tok") / "t.model")


def llama2c_merge_encode(tokens, text):
  """llama2.c's encoder, as SOURCES.md describes it: an independent reference."""
  vocab = {piece: i for i, (_, piece) in enumerate(tokens)}
  ids = []
  for ch in (" " + text if text else ""):
    b = ch.encode("utf-8")
    ids.extend([vocab[b]] if b in vocab else [x + 3 for x in b])
  while True:
    best, where = None, -1
    for i in range(len(ids) - 1):
      j = vocab.get(tokens[ids[i]][1] + tokens[ids[i + 1]][1])
      if j is not None and (best is None or tokens[j][0] > tokens[best][0]):
        best, where = j, i
    if best is None:
      return ids
    ids[where:where + 2] = [best]


def write_llama2c(path, pieces):
  """A llama2.c tokenizer file from (score, bytes) pairs."""
  out = [struct.pack("<I", max(len(p) for _, p in pieces))]
  for score, piece in pieces:
    out.append(struct.pack("<fi", score, len(piece)) + piece)
  path.write_bytes(b"".join(out))


def test_training_is_deterministic_and_atomic(tmp_path):
  a = train_sentencepiece(corpus(), 400, tmp_path / "a.model")
  b = train_sentencepiece(corpus(), 400, tmp_path / "b.model")
  assert (tmp_path / "a.model").read_bytes() == (tmp_path / "b.model").read_bytes()
  assert a.encode(" ".join(_WORDS)) == b.encode(" ".join(_WORDS))
  assert sorted(p.name for p in tmp_path.iterdir()) == ["a.model", "b.model"]


class _Letters(Tokenizer):
  """A minimal backend: ids 0..2 are BOS, EOS, PAD; 3.. are the letters a..e."""

  def __init__(self):
    super().__init__(8, bos_id=0, eos_id=1, pad_id=2)

  def encode(self, text):
    return [ord(c) - ord("a") + 3 for c in text]

  def _decode_run(self, ids):
    return "".join(chr(i - 3 + ord("a")) for i in ids)

  def _base_piece(self, i):
    return self._decode_run([i])


def test_a_backend_gets_eot_pad_and_decoding_from_the_contract():
  tok = _Letters()
  assert (tok.eot_id, tok.pad_id, tok.vocab_size, tok.base_vocab_size) == (8, 2, 9, 8)
  assert tok.encode_batch(["ab", "e"]) == [[3, 4], [7]]
  assert tok.decode([0, 3, 4, 8, 5, 2, 1]) == "abc"
  assert tok.decode([0, 3, 8, 2, 1], render_special=True) == "<s>a<eot><pad></s>"
  assert [tok.id_to_piece(i) for i in (8, 4)] == ["<eot>", "b"]
  with pytest.raises(UserError, match="PAD id 9 is not in the vocabulary of 8"):
    Tokenizer.__init__(tok, 8, 0, 1, 9)


def test_the_loader_returns_the_backend_the_file_or_meta_names(tok, tmp_path):
  assert isinstance(tok, SentencePieceTokenizer) and isinstance(tok, Tokenizer)
  path = tmp_path / "t.model"
  path.write_bytes(base64.b64decode(tok.to_meta()["model"]))
  assert type(load_tokenizer(path)) is SentencePieceTokenizer
  assert type(tokenizer_from_meta(tok.to_meta())) is SentencePieceTokenizer


def test_added_ids_without_model_pad(tok):
  assert tok.sp_vocab_size == 400
  assert (tok.bos_id, tok.eos_id) == (1, 2)
  assert tok.eot_id == 400 and tok.pad_id == 401 and tok.vocab_size == 402
  assert tok.padded_vocab_size() == 512 and tok.padded_vocab_size(64) == 448
  assert tok.padded_vocab_size(2) == 402


def test_pad_taken_from_model_when_it_has_one(tok):
  proto = sp_pb2.ModelProto()
  proto.ParseFromString(base64.b64decode(tok.to_meta()["model"]))
  piece = proto.pieces.add()
  piece.piece, piece.type = "<pad>", sp_pb2.ModelProto.SentencePiece.CONTROL
  proto.trainer_spec.pad_id = len(proto.pieces) - 1
  padded = SentencePieceTokenizer(proto.SerializeToString())
  assert padded.pad_id == 400 and padded.eot_id == 401 and padded.vocab_size == 402


def test_encode_adds_nothing_and_never_parses_specials(tok):
  ids = tok.encode("the cat sat")
  assert tok.bos_id not in ids and tok.eos_id not in ids and tok.eot_id not in ids
  assert tok.encode("") == []
  forged = tok.encode("<eot> <s> </s> <pad>")
  assert not {tok.bos_id, tok.eos_id, tok.eot_id, tok.pad_id} & set(forged)
  assert tok.decode(forged) == "<eot> <s> </s> <pad>"


def test_decode_skips_or_renders_specials(tok):
  text = "the cat sat on the mat"
  ids = [tok.bos_id] + tok.encode(text) + [tok.eot_id] + tok.encode("a dog") + [tok.eot_id,
                                                                               tok.pad_id]
  assert tok.decode(ids) == text + "a dog"
  assert tok.decode(ids, render_special=True) == f"<s>{text}<eot>a dog<eot><pad>"
  for text in ["Hello wörld 42, naïve café 日本 😀", "  two  spaces\nand a newline "]:
    assert tok.decode(tok.encode(text)) == text  # byte fallback covers unseen characters
  with pytest.raises(ValueError, match="outside the vocabulary"):
    tok.decode([tok.vocab_size])


def test_meta_round_trip_and_tamper_check(tok):
  meta = json.loads(json.dumps(tok.to_meta()))
  back = tokenizer_from_meta(meta)
  assert (back.eot_id, back.pad_id, back.vocab_size) == (tok.eot_id, tok.pad_id, tok.vocab_size)
  assert back.encode(STORY) == tok.encode(STORY)
  with pytest.raises(UserError, match="eot_id=7 but the model gives 400"):
    tokenizer_from_meta({**meta, "eot_id": 7})
  with pytest.raises(UserError, match="format"):
    tokenizer_from_meta({"model": meta["model"]})
  with pytest.raises(UserError, match="tokenizer meta: bad or missing field 'model'"):
    tokenizer_from_meta({**meta, "model": base64.b64encode(b"junk").decode()})


def test_model_without_bos_is_refused(tok):
  proto = sp_pb2.ModelProto()
  proto.ParseFromString(base64.b64decode(tok.to_meta()["model"]))
  proto.pieces[1].type = sp_pb2.ModelProto.SentencePiece.NORMAL  # "<s>" is no longer special
  proto.trainer_spec.bos_id = -1
  with pytest.raises(UserError, match="has no BOS piece"):
    SentencePieceTokenizer(proto.SerializeToString())


def test_load_dispatches_on_content(tok, tmp_path):
  model = tmp_path / "tok.bin"  # a SentencePiece model under a misleading name
  model.write_bytes(base64.b64decode(tok.to_meta()["model"]))
  assert load_tokenizer(model).encode(STORY) == tok.encode(STORY)
  garbage = tmp_path / "garbage.model"
  garbage.write_bytes(b"\x00not a tokenizer at all" * 10)
  with pytest.raises(UserError, match=f"{garbage}: neither a SentencePiece model nor a llama2.c"):
    load_tokenizer(garbage)
  with pytest.raises(UserError, match=f"{tmp_path / 'absent.model'}: cannot read"):
    load_tokenizer(tmp_path / "absent.model")


def test_llama2c_import_of_a_synthetic_vocabulary(tmp_path):
  merges = [b" t", b"he", b" the", b" c", b"at", b" cat", b" s", b" sat"]
  chars = sorted({bytes([c]) for c in b" thecatsn"})
  pieces = ([(0.0, b"<unk>"), (0.0, b"\n<s>\n"), (0.0, b"\n</s>\n")]
            + [(0.0, b"<0x%02X>" % i) for i in range(256)]
            + [(-float(r), m) for r, m in enumerate(merges)]
            + [(-100.0 - k, c) for k, c in enumerate(chars)])
  path = tmp_path / "tiny.bin"
  write_llama2c(path, pieces)
  tok = load_tokenizer(path)
  assert tok.sp_vocab_size == len(pieces) and tok.eot_id == len(pieces)
  for text in ["the cat sat", "the cat sat on the mat", "Zoë"]:
    ids = tok.encode(text)
    assert ids == llama2c_merge_encode(pieces, text)
    assert tok.decode(ids) == text
  assert tok.encode("the cat sat") == [259 + 2, 259 + 5, 259 + 7]  # " the", " cat", " sat"


def test_tok512_matches_llama2c_merges():
  path = shared_file("llama2c/stories260K/tok512.bin")
  tok = load_tokenizer(path)
  assert (tok.sp_vocab_size, tok.bos_id, tok.eos_id, tok.eot_id, tok.pad_id) == (
      512, 1, 2, 512, 513)
  pieces = parse_llama2c_tokenizer(path.read_bytes())
  for text in [STORY, 'Tom said: "Wow!  Look," and ran.\nThe end. Zoë 42', "a"]:
    ids = tok.encode(text)
    assert ids == llama2c_merge_encode(pieces, text)
    assert tok.decode(ids) == text
  assert len(tok.encode(STORY)) < len(STORY) / 2  # merges happened, not just characters


def test_llama_bin_agrees_with_llama_model():
  from_bin = load_tokenizer(shared_file("llama2c/llama_tokenizer/tokenizer.bin"))
  real = load_tokenizer(shared_file("llama2c/llama_tokenizer/tokenizer.model"))
  assert from_bin.sp_vocab_size == real.sp_vocab_size == 32000
  for text in [STORY, "Can brain cells move? By movement I mean long distance migration.",
               "def f(x):\n    return x ** 2  # 平方, naïve", "   spaces   ", "2023-05-18"]:
    assert from_bin.encode(text) == real.encode(text)
