"""Conversation sources: file readers, the TFDS builder and converters of public data dumps.

`sources` reads LIMA-style JSONL and Alpaca/Dolly JSON or JSONL into `Record`s; `lima_tfds`
is the TFDS builder `lima`; `stackexchange` and `wikihow` turn the public dumps into LIMA-style
pools (`python -m lima_jax.datasets.stackexchange`, `python -m lima_jax.datasets.wikihow`).
"""
from lima_jax.datasets.sources import FORMATS, Record, read_files, read_records

__all__ = ["FORMATS", "Record", "read_files", "read_records"]
