"""What a run starts from: the architecture, tokenizer and weights named by `model.init`.

`model.init` is a lima_jax checkpoint (restored straight into its shardings), a Hugging Face
directory, a GGUF file (dequantized to float32) or a llama2.c `.bin` (read on every host, then
each host places only its own devices' shards). The vocabulary grows by EOT, padded to
`model.vocab_multiple`, and new rows start at the mean embedding (`model.resize_vocab`).
"""
import dataclasses
import warnings
from typing import Optional

import jax
import numpy as np

from lima_jax.formats import model_file
from lima_jax.model import lora
from lima_jax.model import transformer as model_lib
from lima_jax import tokenizer as tokenizer_lib
from lima_jax.errors import UserError
from lima_jax.model.config import ModelConfig, get_size

_ARCH_FIELDS = ("dim", "n_layers", "n_heads", "n_kv_heads", "hidden_dim", "head_dim")


def read_init(path: str) -> tuple[Optional[ModelConfig], Optional[dict], str]:
  """(architecture, tokenizer meta, kind) of `model.init` without loading any array."""
  if not path:
    return None, None, ""
  try:
    m = model_file.read(path)
  except UserError as e:
    raise UserError(f"model.init: {e}") from None
  return m.config, m.tokenizer_meta, m.kind


def model_config(config, init_cfg: Optional[ModelConfig],
                 tok: tokenizer_lib.Tokenizer) -> ModelConfig:
  """The architecture from `init` (or `model.size`), the training knobs from the config (LoRA's
  adapters included), and the vocabulary grown to hold EOT (padded to `model.vocab_multiple`); in a
  chat template's format (`data.format`) weights from `init` keep their rows: its end of turn is
  its own."""
  m = config.model
  if m.size:
    sized = get_size(m.size)
    if init_cfg is not None:
      wrong = [f"{f}: config {getattr(sized, f)} vs init {getattr(init_cfg, f)}"
               for f in _ARCH_FIELDS if getattr(sized, f) != getattr(init_cfg, f)]
      if wrong:
        raise UserError(f"model.size={m.size!r} does not match model.init={m.init}: "
                        + "; ".join(wrong))
  base = init_cfg if init_cfg is not None else get_size(m.size) if m.size else None
  if base is None:
    raise UserError("model: set model.size (random init) or model.init (weights to start from)")
  vocab = base.vocab_size
  grow = config.data.get("format", "lima") == "lima"
  if init_cfg is None or (grow and tok.vocab_size > vocab):
    if init_cfg is not None and tok.eot_id > vocab:
      raise UserError(f"data.tokenizer has {tok.eot_id} pieces but model.init has only {vocab} "
                      "embedding rows: the tokenizer does not belong to these weights")
    vocab = tok.padded_vocab_size(m.vocab_multiple)
  if init_cfg is not None and config.data.max_len > init_cfg.max_seq_len:
    warnings.warn(f"data.max_len={config.data.max_len} is longer than model.init's context of "
                  f"{init_cfg.max_seq_len} tokens: positions past {init_cfg.max_seq_len} extend "
                  "RoPE beyond what the weights were trained on", stacklevel=2)
  return with_lora(config, dataclasses.replace(
      base, vocab_size=vocab, dropout_top=m.dropout_top, dropout_schedule=m.dropout_schedule,
      dtype=m.dtype, param_dtype=m.param_dtype, scan_layers=m.scan_layers,
      remat_policy=m.remat_policy, attention_block=m.attention_block,
      attention_impl=m.attention_impl, splash_block=m.get("splash_block", 0),
      max_seq_len=max(base.max_seq_len, config.data.max_len)))


def lora_spec(config) -> lora.LoraSpec | None:
  """train.lora as a LoraSpec, or None when off (rank 0, or a config without train.lora)."""
  c = config.train.get("lora")
  if c is None or not c.rank:
    return None
  targets = tuple(t.strip() for t in c.targets.split(",") if t.strip())
  s = lora.LoraSpec(rank=c.rank, alpha=float(c.alpha), dropout=float(c.dropout),
                    targets=targets, base_dtype=c.base_dtype)
  wrong = lora.problems(s)
  if wrong:
    raise UserError("; ".join(wrong))
  return s


def with_lora(config, cfg):
  """The model config of a run: `cfg` with the run's adapters (a bfloat16 base stores every
  frozen parameter in bfloat16)."""
  s = lora_spec(config)
  if s is None:
    return cfg
  dtype = "bfloat16" if s.base_dtype == "bfloat16" else cfg.param_dtype
  return dataclasses.replace(cfg, lora=s, param_dtype=dtype)



def planned_model_config(config) -> ModelConfig:
  """The model a run of `config` would train, from `model.size` alone (for the planner): the
  named size's vocabulary plus EOT, padded, and the config's training knobs."""
  if not config.model.size:
    raise UserError("model.size: the planner needs a named size (it does not read model.init)")
  base = get_size(config.model.size)
  if config.model.attention_impl == "cudnn":
    raise UserError("model.attention_impl='cudnn' is for NVIDIA GPUs; the planner compiles for "
                    "TPU: use 'auto' (splash there) or 'xla'")
  return model_config(config, None, _PlannedTokenizer(base.vocab_size + 1, base.vocab_size))


class _PlannedTokenizer(tokenizer_lib.base.Tokenizer):
  """What the planner knows of a tokenizer: its size with EOT (no model file to load)."""

  def __init__(self, vocab_size: int, eot_id: int):
    # Only the sizes shape a plan: id 0 stands in for BOS and EOS, and for the model's own PAD
    # when EOT is the one id added (vocab_size = eot_id + 1).
    super().__init__(eot_id, 0, 0, 0 if vocab_size == eot_id + 1 else None)
    if self.vocab_size != vocab_size:
      raise ValueError(f"vocab_size {vocab_size} is not eot_id {eot_id} + 1 or + 2")


def load_tokenizer(config, init_tok_meta: Optional[dict], init_kind: str
                   ) -> tokenizer_lib.Tokenizer:
  """`data.tokenizer`, else the one stored with `model.init`. When both exist they must be the
  same model: other pieces under the same ids would train on garbage with a finite loss."""
  path, init = config.data.tokenizer, config.model.init
  if not path:
    if init_tok_meta:
      return tokenizer_lib.from_meta(init_tok_meta)
    raise UserError("data.tokenizer: required (model.init holds no tokenizer)")
  tok = tokenizer_lib.load(path)
  if (init_tok_meta and init_tok_meta != tok.to_meta()
      and not config.model.allow_tokenizer_mismatch):
    raise UserError(f"data.tokenizer={path} is not the tokenizer stored with model.init={init}: "
                    "drop data.tokenizer to use the stored one, or set "
                    "--config.model.allow_tokenizer_mismatch=True if the ids really agree")
  return tok


def load_init_params(config, kind: str, cfg: ModelConfig, param_sh, mesh):
  """Starting weights placed straight into their shardings (resized for EOT if needed)."""
  path = config.model.init
  if kind == "lima":  # restored into the stored model's shardings, then grown on the devices
    params = model_file.open(path, mesh=mesh, kind=kind, need_tokenizer=False,
                             check_vocab=False).params
    params = jax.tree.map(lambda x: x.astype(cfg.param_dtype), params)
    return jax.jit(lambda p: model_lib.resize_vocab(p, cfg.vocab_size), out_shardings=param_sh)(
        params)
  # A Hugging Face, GGUF or llama2.c file: read on every host, grown there, then each host
  # places its own shards.
  params = model_file.open(path, kind=kind, on_host=True, need_tokenizer=False,
                           check_vocab=False).params
  params = model_lib.resize_vocab(jax.tree.map(lambda x: x.astype(cfg.param_dtype), params),
                                  cfg.vocab_size)
  return model_file.place(jax.tree.map(np.asarray, params), param_sh)


def conversation_format(config, tok: tokenizer_lib.Tokenizer):
  """(renderer, checkpoint meta fields) of `data.format`: LIMA's format (no field: checkpoints
  and fingerprints stay as they were), or the chat template of the file `data.chat_template`,
  else the one `model.init` carries (meta 'format' and 'chat_template', so that the checkpoint
  answers in it)."""
  from lima_jax.tokenizer import chat
  fmt = config.data.get("format", "lima")
  if fmt == "lima":
    return chat.Lima(tok), {}
  path, template, name = config.data.get("chat_template", ""), None, "model.init"
  if path:
    try:
      template, name = open(path, encoding="utf-8").read(), path
    except (OSError, UnicodeDecodeError) as e:
      raise UserError(f"data.chat_template: {path}: cannot read "
                      f"({getattr(e, 'strerror', None) or e})") from None
  elif config.model.init:
    m = model_file.read(config.model.init)
    template, name = m.chat_template, m.template_name or f"model.init={config.model.init}"
  renderer = chat.renderer(fmt, tok, template, name)
  return renderer, {"format": fmt, "chat_template": template}

