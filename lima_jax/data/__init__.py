"""Training data: `batches` turns conversations into shifted, masked, packed rows and each
process's share of a global batch; `stats` is what `python -m lima_jax.data` prints.

`packing` plans which examples share a row and fills the rows' arrays, for `batches`."""
from lima_jax.data.batches import (BATCH_KEYS, Encoded, SFTDataset, encode_conversation,
                                   load_sft_data)

__all__ = ["BATCH_KEYS", "Encoded", "SFTDataset", "encode_conversation", "load_sft_data"]
