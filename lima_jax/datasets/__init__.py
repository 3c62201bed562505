"""Conversation sources: file readers (`sources`) and the TFDS builder (`lima_tfds`)."""
from lima_jax.datasets.sources import FORMATS, Record, read_files, read_records

__all__ = ["FORMATS", "Record", "read_files", "read_records"]
