"""The Hugging Face tokenizer files of an exported model, tokenizing exactly as training did.

Training encodes with SentencePiece (`lima_jax.tokenizer.sentencepiece`). transformers' own
conversion of a LLaMA SentencePiece model ranks BPE merges by piece id, not score, so runs of
spaces come out differently (LLaMA's whitespace-only pieces were appended with score -1e9:
SentencePiece merges them last, the conversion first; 323 of LIMA's 1,030 training
conversations are affected). It also ignores `remove_extra_whitespaces`. So the export writes
its own tokenizer.json, loaded as it is (`PreTrainedTokenizerFast`):

- BPE over the SentencePiece pieces, merges ranked by the merged piece's score, byte fallback;
- SentencePiece's normalisation (stripping and collapsing spaces when the model does, and
  the dummy-prefix space) applied to every text segment between special tokens, as
  SentencePiece applies it to every separately encoded utterance, so the chat template is
  just BOS, then each utterance followed by EOT (`lima_jax.tokenizer.chat`);
- EOT (and PAD) as special tokens; EOT is the eos_token, the pretraining EOS stays special.

tokenizer.model is written too, for SentencePiece users.

A `tokenizers` model (`lima_jax.tokenizer.tokenizer_json`) is exported as the tokenizer.json
it came with, less what training does not parse (its added tokens, the merges that spell a
special token), plus its special tokens under marked names, EOT (and PAD), and BOS added by
the post-processor: the same ids as training, with the same chat template.
"""
import base64
import json

from sentencepiece import sentencepiece_model_pb2 as sp_pb2

from lima_jax.tokenizer import base, chat, loader, tokenizer_json
from lima_jax.tokenizer.sentencepiece import SentencePieceTokenizer

_SPACE = "\u2581"
# The text form of every special token in the export. tokenizers always matches an added
# token's text in the input, but training never parses text for special tokens: a user who
# types "<eot>" or "</s>" gets ordinary text there. A private-use character (U+E000) inside
# the name keeps that true of the export for any text short of the marker itself.
_MARK = base.EXPORT_MARK
EOT_TEXT = base.EXPORTED_EOT


def special_text(piece: str) -> str:
  """'<eot>' -> '<eot\ue000>', '</s>' -> '</s\ue000>'."""
  return piece[:-1] + _MARK + ">" if piece.startswith("<") and piece.endswith(">") else piece


def _bos_first(bos: str, bos_id: int) -> dict:
  """The post-processor that puts BOS before each sequence, as training renders text."""
  return {"type": "TemplateProcessing",
          "single": [{"SpecialToken": {"id": bos, "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}}],
          "pair": [{"SpecialToken": {"id": bos, "type_id": 0}},
                   {"Sequence": {"id": "A", "type_id": 0}},
                   {"SpecialToken": {"id": bos, "type_id": 1}},
                   {"Sequence": {"id": "B", "type_id": 1}}],
          "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}}}


def _merges(proto) -> list[list[str]]:
  """Every split of a normal piece into two pieces, best-scoring merged piece first, which
  makes HF's rank-ordered BPE pick the merges SentencePiece picks by score."""
  normal = sp_pb2.ModelProto.SentencePiece.NORMAL
  vocab = {p.piece for p in proto.pieces}
  ranked = []
  for i, p in enumerate(proto.pieces):
    if p.type != normal:
      continue
    for k in range(1, len(p.piece)):
      if p.piece[:k] in vocab and p.piece[k:] in vocab:
        ranked.append((-p.score, i, k, [p.piece[:k], p.piece[k:]]))
  return [m for *_, m in sorted(ranked)]


def _normalizer(spec) -> dict:
  """SentencePiece's normalisation, applied by `tokenizers` to each text segment between
  special tokens, as SentencePiece is applied to each utterance."""
  steps = []
  if spec.remove_extra_whitespaces:  # leading/trailing spaces go, runs collapse (spaces only)
    steps += [{"type": "Replace", "pattern": {"Regex": "^ +| +$"}, "content": ""},
              {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "}]
  if spec.add_dummy_prefix:  # unconditionally, unlike Metaspace's prepend_scheme
    steps.append({"type": "Prepend", "prepend": _SPACE})
  steps.append({"type": "Replace", "pattern": {"String": " "}, "content": _SPACE})
  return {"type": "Sequence", "normalizers": steps}


def sentencepiece_json(tok: SentencePieceTokenizer, proto) -> dict:
  """A `tokenizers` JSON description equivalent to `tok.encode` (see the module docstring)."""
  specials = sorted({proto.trainer_spec.unk_id, tok.bos_id, tok.eos_id, tok.eot_id,
                     tok.pad_id} - {-1})
  added = [{"id": i, "content": special_text(tok.id_to_piece(i)), "single_word": False,
            "lstrip": False, "rstrip": False, "normalized": False, "special": True}
           for i in specials]
  dummy = proto.normalizer_spec.add_dummy_prefix
  bos = special_text(tok.id_to_piece(tok.bos_id))
  decoders = [{"type": "Replace", "pattern": {"String": _SPACE}, "content": " "},
              {"type": "ByteFallback"}, {"type": "Fuse"}]
  if dummy:
    decoders.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
  return {
      "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
      "normalizer": _normalizer(proto.normalizer_spec), "pre_tokenizer": None,
      "post_processor": _bos_first(bos, tok.bos_id),
      "decoder": {"type": "Sequence", "decoders": decoders},
      "model": {"type": "BPE", "dropout": None,
                "unk_token": special_text(proto.pieces[proto.trainer_spec.unk_id].piece),
                "continuing_subword_prefix": None, "end_of_word_suffix": None,
                "fuse_unk": True, "byte_fallback": proto.trainer_spec.byte_fallback,
                "ignore_merges": False,
                # Special pieces under their exported text: an added token keeps its id only
                # when the model's vocabulary holds its text.
                "vocab": {special_text(p.piece) if i in specials else p.piece: i
                          for i, p in enumerate(proto.pieces)},
                "merges": _merges(proto)}}


def _hf_tokenizer_json(tok) -> dict:
  """The export of a `tokenizers` model (see the module docstring)."""
  spec = tokenizer_json.bare_spec(tok.spec)
  original = {int(t["id"]): t for t in tok.spec.get("added_tokens") or []}
  in_vocab = set(tokenizer_json.vocab_ids(spec["model"]).values())
  # Non-special added tokens that BPE can spell stay plain text, as in training; the others
  # (no piece of the vocabulary) are exported as special, so that their ids still decode.
  specials = sorted({i for i, t in original.items() if t.get("special") or i not in in_vocab}
                    | {tok.bos_id, tok.eos_id, tok.eot_id, tok.pad_id})
  names = {i: special_text(tok.id_to_piece(i)) for i in specials}
  added = [{"id": i, "content": names[i], "single_word": False, "lstrip": False,
            "rstrip": False, "normalized": False, "special": True} for i in specials]
  model = dict(spec["model"])
  if isinstance(model.get("vocab"), dict):  # an added token keeps its id when vocab holds it
    renamed = {i: names[i] for i in specials if i < tok.sp_vocab_size}
    model["vocab"] = {renamed.get(i, piece): i for piece, i in model["vocab"].items()}
  bos = names[tok.bos_id]
  return {**spec, "added_tokens": added, "post_processor": _bos_first(bos, tok.bos_id),
          "model": model}


def tokenizer_files(meta: dict, vocab_size: int, max_len: int) -> tuple[dict, dict]:
  """(ids for the configs, {file name: bytes}) for a checkpoint's tokenizer meta.

  ids: bos, eos, n_tokens (the tokenizer's size, added ids included), and eot and pad
  when the model has rows for them. With EOT (a LIMA-format model) the tokenizer's eos_token
  is EOT and the chat template is set.
  """
  tok = loader.from_meta(meta)
  if "model" in meta:  # SentencePiece
    raw = base64.b64decode(meta["model"])
    proto = sp_pb2.ModelProto.FromString(raw)
    unk = {"unk_token": special_text(proto.pieces[proto.trainer_spec.unk_id].piece)}
    files = {"tokenizer.model": raw, "tokenizer.json": sentencepiece_json(tok, proto)}
  else:
    unk, files = {}, {"tokenizer.json": _hf_tokenizer_json(tok)}
  files["tokenizer.json"] = json.dumps(files["tokenizer.json"], ensure_ascii=False).encode()
  ids = {"bos": tok.bos_id, "eos": tok.eos_id, "n_tokens": tok.vocab_size}
  for key, i in (("eot", tok.eot_id), ("pad", tok.pad_id)):
    if i < vocab_size:  # an id past the embedding could never be produced
      ids[key] = i
  name = lambda i: special_text(tok.id_to_piece(i))
  config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": name(tok.bos_id),
            "eos_token": name(tok.eos_id), **unk,
            "pad_token": name(tok.pad_id), "add_bos_token": True, "add_eos_token": False,
            "clean_up_tokenization_spaces": False, "model_max_length": max_len}
  if "eot" in ids:
    config.update(eos_token=name(tok.eot_id), additional_special_tokens=[name(tok.eos_id)],
                  chat_template=chat.chat_template(name(tok.eot_id)))
  files["tokenizer_config.json"] = json.dumps(config, indent=2).encode()
  return ids, files


def template_tokenizer_files(meta: dict, template: str, max_len: int) -> tuple[dict, dict]:
  """`tokenizer_files` of a model trained (or converted) in its own chat template: the
  tokenizer.json as the model ships it (its control tokens under their own names, so the
  template tokenizes in transformers as in training), tokenizer_config.json with the template
  and the model's own BOS/EOS/PAD, no EOT. ids: bos, eos, n_tokens, pad when the model has one,
  and end_of_turn, the template's end-of-turn token (generation stops there too)."""
  from lima_jax.tokenizer import template as template_lib
  tok = loader.from_meta(meta)
  eot = template_lib.ChatTemplate(template, tok, "the checkpoint's chat_template").eot_id
  n = tok.base_vocab_size
  ids = {"bos": tok.bos_id, "eos": tok.eos_id, "n_tokens": n, "end_of_turn": eot}
  config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": tok.own_piece(tok.bos_id),
            "eos_token": tok.own_piece(tok.eos_id), "clean_up_tokenization_spaces": False,
            "model_max_length": max_len, "chat_template": template}
  if tok.pad_id < n:
    ids["pad"] = tok.pad_id
    config["pad_token"] = tok.own_piece(tok.pad_id)
  files = {"tokenizer.json": json.dumps(tok.spec, ensure_ascii=False).encode(),
           "tokenizer_config.json": json.dumps(config, indent=2, ensure_ascii=False).encode()}
  return ids, files

