"""ModelConfig, the architecture and numerics of a LLaMA-family model, and its named sizes.

A module of its own so that layers.py can type its modules' `cfg` without importing the model
that stacks them. lima_jax.model re-exports ModelConfig, SIZES and get_size (the names
docs/INTERFACES.md documents) and REMAT_POLICIES, DROPOUT_SCHEDULES, ATTENTION_IMPLS, ARCHS.
"""
import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from lima_jax.errors import UserError
from lima_jax.model.lora import LoraSpec, problems as lora_problems

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
ROPE_SCALING_KEYS = ("factor", "low_freq_factor", "high_freq_factor",
                     "original_max_position_embeddings")

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "save_dots": jax.checkpoint_policies.dots_saveable,
    "save_dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    # Keeps what is costly to recompute (the q/k/v and MLP matmuls, attention's output and
    # log-sum-exp, the residual stream between attention and MLP); recomputes only elementwise
    # work (RMSNorms, RoPE, SwiGLU's activation), which on CPU is cheaper than writing it to
    # and reading it back from the scan's per-layer stacks.
    "elementwise": jax.checkpoint_policies.save_only_these_names(
        "qkv", "attention", "mlp", "residual"),
}
DROPOUT_SCHEDULES = ("linear", "constant", "none")
ATTENTION_IMPLS = ("auto", "xla", "splash", "cudnn")
ARCHS = ("llama", "mistral", "qwen2")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture and numerics of a LLaMA-family model (hashable: usable as a static arg).

  `rope_scaling` is None or Llama-3 scaling given as a mapping with keys factor,
  low_freq_factor, high_freq_factor, original_max_position_embeddings; it is stored as a
  sorted tuple of pairs so the config stays hashable. `n_kv_heads` and `head_dim` default to
  n_heads and dim // n_heads.
  """
  vocab_size: int = 32000
  dim: int = 4096
  n_layers: int = 32
  n_heads: int = 32
  n_kv_heads: int | None = None
  hidden_dim: int = 11008
  head_dim: int | None = None
  max_seq_len: int = 2048
  norm_eps: float = 1e-6
  rope_theta: float = 10000.0
  rope_scaling: Any = None
  tie_embeddings: bool = False
  attention_bias: bool = False  # q, k, v and o (HF Llama's attention_bias)
  qkv_bias: bool = False  # q, k and v only (Qwen2)
  mlp_bias: bool = False
  arch: str = "llama"
  dtype: str = "float32"
  param_dtype: str = "float32"
  scan_layers: bool = True
  remat_policy: str = "none"
  # Query block of causal self-attention without a cache: block i meets keys up to its end only
  # (0: one block). Smaller skips more of the masked half; larger makes bigger matmuls.
  attention_block: int = 128
  # Attention without a cache (training, scoring): 'xla', lima_jax's blocked attention (every
  # backend); 'splash', the Pallas splash kernel (TPU; interpreted, slowly, elsewhere); 'cudnn',
  # jax.nn.dot_product_attention on cuDNN (NVIDIA GPUs, bfloat16); 'auto': splash on TPU, cuDNN
  # on GPU in bfloat16, else xla. Prefill and decoding steps use the cached XLA attention.
  attention_impl: str = "auto"
  # Splash's query and key block in tokens, a multiple of 128 (0: the TPU generation's default,
  # lima_jax.model.splash.BLOCKS).
  splash_block: int = 0
  dropout_top: float = 0.0
  dropout_schedule: str = "linear"
  # Low-rank adapters on the projections (lima_jax.model.lora.LoraSpec, or its dict); None: the
  # plain model, whose to_dict() has no 'lora' key (so full fine-tuning's meta is unchanged).
  lora: Any = None

  def __post_init__(self):
    set_ = lambda k, v: object.__setattr__(self, k, v)
    if self.n_kv_heads is None:
      set_("n_kv_heads", self.n_heads)
    if self.head_dim is None:
      set_("head_dim", self.dim // self.n_heads)
    if isinstance(self.rope_scaling, Mapping):
      set_("rope_scaling", tuple(sorted(self.rope_scaling.items())))
    elif self.rope_scaling is not None:
      set_("rope_scaling", tuple(sorted(tuple(p) for p in self.rope_scaling)))
    if isinstance(self.lora, Mapping):
      set_("lora", LoraSpec(**self.lora))
    problems = [] if self.lora is None else lora_problems(self.lora)
    if self.n_heads % self.n_kv_heads:
      problems.append(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
    for field in ("dtype", "param_dtype"):
      if getattr(self, field) not in DTYPES:
        problems.append(f"{field}={getattr(self, field)!r} is not one of {sorted(DTYPES)}")
    if self.remat_policy not in REMAT_POLICIES:
      problems.append(f"remat_policy={self.remat_policy!r} is not one of {list(REMAT_POLICIES)}")
    if self.dropout_schedule not in DROPOUT_SCHEDULES:
      problems.append(
          f"dropout_schedule={self.dropout_schedule!r} is not one of {list(DROPOUT_SCHEDULES)}")
    if self.attention_impl not in ATTENTION_IMPLS:
      problems.append(
          f"attention_impl={self.attention_impl!r} is not one of {list(ATTENTION_IMPLS)}")
    if self.arch not in ARCHS:
      problems.append(f"arch={self.arch!r} is not one of {list(ARCHS)}")
    if self.splash_block < 0 or self.splash_block % 128:
      problems.append(f"splash_block={self.splash_block} is not a multiple of 128 (the "
                      "kernel's lanes; 0: the TPU generation's block)")
    if self.attention_block < 0:
      problems.append(f"attention_block={self.attention_block} is negative")
    if not 0.0 <= self.dropout_top < 1.0:
      problems.append(f"dropout_top={self.dropout_top} is not in [0, 1)")
    if self.rope_scaling is not None:
      keys = {k for k, _ in self.rope_scaling} - {"rope_type"}
      if keys != set(ROPE_SCALING_KEYS):
        problems.append(f"rope_scaling needs exactly the keys {list(ROPE_SCALING_KEYS)} "
                        f"(Llama-3 scaling), got {sorted(keys)}")
    if problems:
      raise UserError("model_config: " + "; ".join(problems))

  @property
  def rope_scaling_dict(self) -> dict | None:
    return None if self.rope_scaling is None else dict(self.rope_scaling)

  def to_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d["rope_scaling"] = self.rope_scaling_dict
    if self.lora is None:
      del d["lora"]
    else:
      d["lora"] = self.lora.to_dict()
    return d

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "ModelConfig":
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
      raise UserError(f"model_config: unknown key(s) {unknown}; known keys: {sorted(known)}")
    return cls(**d)


def _llama(**kw) -> ModelConfig:
  return ModelConfig(**kw)


def _llama3(factor, **kw) -> ModelConfig:
  """Llama-3.1/3.2: Llama-3 with RoPE scaling from an 8K original context to 128K."""
  scaling = {"factor": factor, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
             "original_max_position_embeddings": 8192}
  return ModelConfig(vocab_size=128256, n_kv_heads=8, max_seq_len=131072, norm_eps=1e-5,
                     rope_theta=500000.0, rope_scaling=scaling, **kw)


def _qwen2(**kw) -> ModelConfig:
  return ModelConfig(arch="qwen2", qkv_bias=True, norm_eps=1e-6, rope_theta=1e6,
                     max_seq_len=32768, **kw)


def _smollm2(**kw) -> ModelConfig:
  return ModelConfig(vocab_size=49152, norm_eps=1e-5, max_seq_len=8192, tie_embeddings=True, **kw)


SIZES: dict[str, ModelConfig] = {
    # Published LLaMA architectures (Meta's params.json / HF config.json).
    "llama1-7b": _llama(dim=4096, n_layers=32, n_heads=32, hidden_dim=11008),
    "llama1-13b": _llama(dim=5120, n_layers=40, n_heads=40, hidden_dim=13824),
    "llama1-33b": _llama(dim=6656, n_layers=60, n_heads=52, hidden_dim=17920),
    "llama1-65b": _llama(dim=8192, n_layers=80, n_heads=64, hidden_dim=22016),
    "llama2-7b": _llama(dim=4096, n_layers=32, n_heads=32, hidden_dim=11008, max_seq_len=4096,
                        norm_eps=1e-5),
    "llama2-13b": _llama(dim=5120, n_layers=40, n_heads=40, hidden_dim=13824, max_seq_len=4096,
                         norm_eps=1e-5),
    "llama2-70b": _llama(dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, hidden_dim=28672,
                         max_seq_len=4096, norm_eps=1e-5),
    "llama3-8b": _llama(vocab_size=128256, dim=4096, n_layers=32, n_heads=32, n_kv_heads=8,
                        hidden_dim=14336, max_seq_len=8192, norm_eps=1e-5, rope_theta=500000.0),
    "llama3-70b": _llama(vocab_size=128256, dim=8192, n_layers=80, n_heads=64, n_kv_heads=8,
                         hidden_dim=28672, max_seq_len=8192, norm_eps=1e-5, rope_theta=500000.0),
    "llama3.1-8b": _llama3(8.0, dim=4096, n_layers=32, n_heads=32, hidden_dim=14336),
    "llama3.1-70b": _llama3(8.0, dim=8192, n_layers=80, n_heads=64, hidden_dim=28672),
    "llama3.2-1b": _llama3(32.0, dim=2048, n_layers=16, n_heads=32, hidden_dim=8192,
                           head_dim=64, tie_embeddings=True),
    "llama3.2-3b": _llama3(32.0, dim=3072, n_layers=28, n_heads=24, hidden_dim=8192,
                           head_dim=128, tie_embeddings=True),
    "mistral-7b-v0.3": _llama(arch="mistral", vocab_size=32768, dim=4096, n_layers=32,
                              n_heads=32, n_kv_heads=8, hidden_dim=14336, max_seq_len=32768,
                              norm_eps=1e-5, rope_theta=1e6),
    "qwen2.5-0.5b": _qwen2(vocab_size=151936, dim=896, n_layers=24, n_heads=14, n_kv_heads=2,
                           hidden_dim=4864, tie_embeddings=True),
    "qwen2.5-7b": _qwen2(vocab_size=152064, dim=3584, n_layers=28, n_heads=28, n_kv_heads=4,
                         hidden_dim=18944),
    "qwen2.5-72b": _qwen2(vocab_size=152064, dim=8192, n_layers=80, n_heads=64, n_kv_heads=8,
                          hidden_dim=29568),
    "smollm2-135m": _smollm2(dim=576, n_layers=30, n_heads=9, n_kv_heads=3, hidden_dim=1536,
                             rope_theta=1e5),
    "smollm2-360m": _smollm2(dim=960, n_layers=32, n_heads=15, n_kv_heads=5, hidden_dim=2560,
                             rope_theta=1e5),
    "smollm2-1.7b": _smollm2(dim=2048, n_layers=24, n_heads=32, hidden_dim=8192,
                             rope_theta=130000.0),
    # Small ones: unit tests, the CPU demo, and benchmarks.
    "tiny": _llama(vocab_size=256, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=128,
                   max_seq_len=128),
    "demo": _llama(vocab_size=4096, dim=256, n_layers=4, n_heads=8, n_kv_heads=4,
                   hidden_dim=768, max_seq_len=512),
    # The bioworld testbed's base (configs/bioworld.py); the vocabulary follows its tokenizer.
    "bioworld": _llama(vocab_size=1024, dim=192, n_layers=4, n_heads=4, n_kv_heads=4,
                       hidden_dim=512, max_seq_len=256),
    # Its small scorer (Superfiltering) and the larger bases of the scale experiment (issue 36).
    "bioworld_s": _llama(vocab_size=1024, dim=128, n_layers=2, n_heads=4, n_kv_heads=4,
                         hidden_dim=384, max_seq_len=256),
    "bioworld_m": _llama(vocab_size=1024, dim=256, n_layers=6, n_heads=4, n_kv_heads=4,
                         hidden_dim=1024, max_seq_len=256),
    "bioworld_l": _llama(vocab_size=1024, dim=384, n_layers=8, n_heads=6, n_kv_heads=6,
                         hidden_dim=1024, max_seq_len=256),
    "bench-20m": _llama(dim=320, n_layers=8, n_heads=5, hidden_dim=864, max_seq_len=1024,
                        tie_embeddings=True),
    "bench-200m": _llama(dim=1024, n_layers=12, n_heads=16, hidden_dim=2816, max_seq_len=2048),
    "bench-1b": _llama(dim=2048, n_layers=22, n_heads=32, n_kv_heads=4, hidden_dim=5632,
                       max_seq_len=2048, norm_eps=1e-5),
}


def get_size(name: str, **overrides) -> ModelConfig:
  """The named size with some fields replaced, e.g. get_size('llama1-7b', dropout_top=0.2)."""
  if name not in SIZES:
    raise UserError(f"model size {name!r} is not one of {sorted(SIZES)}")
  return ModelConfig.from_dict({**SIZES[name].to_dict(), **overrides})
