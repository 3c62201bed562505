"""Tokenizers with LIMA's end-of-turn token: the contract (`base`), its SentencePiece
(`sentencepiece`) and tokenizer.json (`tokenizer_json`) backends, the one loader (`loader`:
`load(path)`, `from_meta(meta)`) and the one home of conversation formats (`chat`: LIMA's,
and a model's own chat template rendered by `template`)."""
from lima_jax.tokenizer.base import Tokenizer
from lima_jax.tokenizer.loader import from_meta, load
from lima_jax.tokenizer.sentencepiece import train_sentencepiece

__all__ = ["Tokenizer", "from_meta", "load", "train_sentencepiece"]
