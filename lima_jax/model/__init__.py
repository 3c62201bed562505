"""The LLaMA-family decoder in rooms: `config` (ModelConfig and named sizes), `axes` (logical
axis names), `attention` (XLA kernels), `splash` (Pallas splash attention, and which attention a
run uses), `lora` (low-rank adapters), `layers` (norm, RoPE, attention, MLP, embeddings) and
`transformer` (the scanned stack). The face re-exports what users build a model from."""
from lima_jax.model.config import ARCHS, SIZES, ModelConfig, get_size
from lima_jax.model.transformer import (Transformer, abstract_params, init_cache, param_count,
                                        resize_vocab)

__all__ = ["ARCHS", "SIZES", "ModelConfig", "Transformer", "abstract_params", "get_size",
           "init_cache", "param_count", "resize_vocab"]
