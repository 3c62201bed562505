"""TFDS builder `lima`: LIMA's conversations as array_record files, built and read without TF.

The data cannot be downloaded by the builder (licence terms; see shared/data/SOURCES.md), so
it is a manual-download dataset: put `train.jsonl` (and, if you have it, `test.jsonl`) in a
folder and pass it as `manual_dir`:

    builder = lima_tfds.prepare(manual_dir="path/to/lima", data_dir="~/tensorflow_datasets")
    source = builder.as_data_source("train")   # random access, no TensorFlow
    records = lima_tfds.as_records(source)

What works without TensorFlow in tensorflow-datasets 4.9.10 (checked, TF is not installed):
`GeneratorBasedBuilder.download_and_prepare(file_format="array_record")` writes the shards
with the pure-Python array_record writer (no Beam), and `as_data_source` reads them back
(grain-compatible random access). `as_dataset` (tf.data) needs TensorFlow and is not used.
Two 4.9.10 quirks are worked around: `code_path` is set by hand (see `Lima`), and
`dataset_info_from_configs` is avoided because it looks for metadata files beside a builder
*package*; this builder is a module, so `_info` builds `DatasetInfo` itself.

Splits: `train` holds training-ready conversations (a trailing user turn dropped, as
`read_records` does); `test` holds prompts as they are (one user turn each). Text comes back
from `as_data_source` as UTF-8 bytes; `as_records` decodes it. TFDS orders examples by a hash
of their key, not by line: use `as_records` and sort by origin if file order matters.
"""
import os
import pathlib

import tensorflow_datasets as tfds
from etils import epath

from lima_jax.datasets.sources import Record, read_records
from lima_jax.errors import UserError

_SPLITS = {"train": ("train.jsonl", False), "test": ("test.jsonl", True)}


class Lima(tfds.core.GeneratorBasedBuilder):
  """LIMA (Zhou et al. 2023): 1,030 curated conversations and 300 test prompts."""

  name = "lima"
  # tfds 4.9.10 computes `code_path` for a builder inside a package through the
  # `importlib_resources` backport, which it declares only for Python < 3.9, so on 3.11 it
  # fails with ModuleNotFoundError. The path only locates an optional checksums file (none
  # here: nothing is downloaded), so it is given directly instead of adding a dependency.
  code_path = epath.Path(__file__)
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Conversations and source labels from train.jsonl / test.jsonl."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Place LIMA's train.jsonl (and optionally test.jsonl), one JSON object per line with "
      "'conversations' (list of strings) and optionally 'source', in the manual dir.")

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="LIMA: Less Is More for Alignment. Utterances alternate user, assistant.",
        features=tfds.features.FeaturesDict({
            "conversations": tfds.features.Sequence(tfds.features.Text()),
            "source": tfds.features.Text(),
            "origin": tfds.features.Text(),
        }),
        homepage="https://huggingface.co/datasets/GAIR/lima",
        citation="Zhou et al., LIMA: Less Is More for Alignment, NeurIPS 2023.",
        license="CC BY-NC-SA 4.0",
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual = pathlib.Path(dl_manager.manual_dir)
    return {split: self._generate_examples(manual / name, keep)
            for split, (name, keep) in _SPLITS.items() if (manual / name).is_file()}

  def _generate_examples(self, path: pathlib.Path, keep_trailing_user: bool):
    records, _ = read_records(path, keep_trailing_user=keep_trailing_user)
    for i, r in enumerate(records):
      yield i, {"conversations": list(r.conversations), "source": r.source,
                "origin": r.origin}


def prepare(manual_dir: str | os.PathLike, data_dir: str | os.PathLike) -> Lima:
  """Builds (once; later calls reuse the files) and returns the `lima` builder.

  TFDS writes into a temporary folder and renames it when done, so a failed build leaves no
  half-written dataset behind.
  """
  train = pathlib.Path(manual_dir) / "train.jsonl"
  if not train.is_file():  # checked here: TFDS would raise a multi-line AssertionError
    raise UserError(f"{train}: missing (LIMA's manual dir needs it)")
  builder = Lima(data_dir=os.fspath(data_dir), file_format="array_record")
  config = tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir))
  builder.download_and_prepare(download_config=config)
  return builder


def as_records(source) -> list[Record]:
  """Records from `builder.as_data_source(split)`, decoded, in the original file order."""
  records = []
  for i in range(len(source)):
    ex = source[i]
    records.append(Record(tuple(t.decode("utf-8") for t in ex["conversations"]),
                          ex["source"].decode("utf-8"), ex["origin"].decode("utf-8")))
  return sorted(records, key=lambda r: int(r.origin.rsplit(":", 1)[1]))
