"""One way to open a model file: a lima_jax checkpoint, a Hugging Face directory, a GGUF file or a
llama2.c `.bin` -> its config, tokenizer and params, with the same checks for every caller.

    from lima_jax.formats import model_file
    m = model_file.open(path, mesh=mesh, dtype="bfloat16")    # m.config, m.tokenizer, m.params

`read` gives the same without any array (training reads the architecture first). A lima_jax
checkpoint restores straight into its shardings on `mesh`; the other kinds are read on every host
and each host places only its own devices' shards. A LoRA run's checkpoint (adapters only) opens
as the plain model: its base is found, checked and merged with the adapters once, at load
(formats/lora_checkpoint).
"""
import dataclasses
import json
from typing import Any, Optional

import jax
import numpy as np
from etils import epath

from lima_jax.errors import UserError
from lima_jax.formats import checkpoint
from lima_jax.formats import lora_checkpoint
from lima_jax.model import transformer as model_lib
from lima_jax.model.config import ModelConfig
from lima_jax.parallel import sharding
from lima_jax.tokenizer import Tokenizer
from lima_jax.tokenizer import load as load_tokenizer, from_meta as tokenizer_from_meta

KINDS = ("lima", "hf", "gguf", "llama2c")
_DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class ModelFile:
  """What `open` (or `read`, without params) found at `path`."""
  path: str
  kind: str  # one of KINDS
  config: ModelConfig  # param_dtype as loaded; vocab_size as grown
  tokenizer: Optional[Tokenizer]  # None: the file holds none (llama2.c, HF without its files)
  tokenizer_meta: Optional[dict]  # as stored (training compares it with data.tokenizer's)
  meta: dict  # a lima_jax checkpoint's meta (step, epoch, eval_loss, ...); {} for other kinds
  params: Any = None  # None from `read`
  chat_template: Optional[str] = None  # the model's own Jinja chat template, if it has one
  template_name: str = ""  # where it came from, for error messages

  @property
  def format(self) -> str:
    """The conversation format it answers in by default: what it was trained in (meta
    'format'), else its own chat template when it carries one (a converted model), else
    LIMA's."""
    if self.meta.get("format"):
      return self.meta["format"]
    # A template over a SentencePiece model (Llama-2 chat) is not rendered here (template.py)
    # nor is our own LIMA export's (it is LIMA's format, which answers the same)
    usable = (self.chat_template and hasattr(self.tokenizer, "encode_rendered")
              and not getattr(self.tokenizer, "exported", False))
    return "chat_template" if usable else "lima"


def resolve_run(path) -> str:
  """A training run's directory (WORKDIR with checkpoints/<step>/, not itself a checkpoint)
  stands for its latest checkpoint, so a study can name a run before it knows the step."""
  p = epath.Path(path)
  if (p / "meta").exists() or not (p / "checkpoints").is_dir():
    return str(path)
  steps = [int(c.name) for c in (p / "checkpoints").iterdir() if c.name.isdigit()
           and (c / "meta").exists()]
  if not steps:
    raise UserError(f"{path}: a training run with no finished checkpoint in checkpoints/")
  return str(p / "checkpoints" / str(max(steps)))


def kind_of(path) -> str:
  """'lima', 'hf', 'gguf' or 'llama2c', from what is at `path` (reads no file's content)."""
  p = epath.Path(path)  # local or gs://: a lima_jax checkpoint may live in a bucket
  if (p / "meta").exists():
    return "lima"
  if (p / "config.json").exists():
    return "hf"
  if p.is_file():
    return "gguf" if p.suffix == ".gguf" else "llama2c"
  if not p.exists():
    raise UserError(f"{path}: no such checkpoint directory or model file")
  raise UserError(f"{path}: not a lima_jax checkpoint (no meta/), a Hugging Face directory (no "
                  "config.json), a .gguf file or a llama2.c .bin file")


def _lima_config(path, meta: dict) -> ModelConfig:
  try:
    return ModelConfig.from_dict(meta["model_config"])
  except (KeyError, TypeError, UserError) as e:
    raise UserError(f"{path}: bad or missing model_config in meta ({e})") from None


def _from_meta(path, tok_meta: dict) -> Tokenizer:
  try:
    return tokenizer_from_meta(tok_meta)
  except UserError as e:
    raise UserError(f"{path}: {e}") from None


def read(path, *, kind: Optional[str] = None, tokenizer: str = "",
         need_tokenizer: bool = False) -> ModelFile:
  """The config and tokenizer of a model file, no array read. kind: what the caller was told
  the file is (then its reader names what is wrong), else `kind_of(path)`. tokenizer: a
  SentencePiece `.model`, llama2.c `.bin` or tokenizer.json that replaces the file's own.
  A training run's directory opens its latest checkpoint (`resolve_run`)."""
  path = resolve_run(path)
  k = kind or kind_of(path)
  if k not in KINDS:
    raise ValueError(f"kind must be one of {KINDS}, got {k!r}")
  meta, tok_meta, template, template_name = {}, None, None, ""
  if k == "lima":
    meta = checkpoint.read_meta(path)
    cfg, tok_meta = _lima_config(path, meta), meta.get("tokenizer") or None
    template, template_name = meta.get("chat_template"), f"{path}/meta chat_template"
    if lora_checkpoint.is_lora(meta):  # adapters: opened as the plain model they merge into
      cfg = lora_checkpoint.merged_config(cfg)
  elif k == "hf":
    from lima_jax.formats import hf
    cfg = hf.read_hf_config(path)
    if not tokenizer and any((epath.Path(path) / f).exists()
                             for f in ("tokenizer.model", "tokenizer.json")):
      tok_meta = load_tokenizer(path).to_meta()
    template, template_name = hf_chat_template(path)
  elif k == "gguf":
    from lima_jax.formats import gguf
    reader = gguf.open_reader(path)  # parsed once for all three
    cfg, tok_meta = gguf.read_config(path, reader), gguf.read_tokenizer_meta(path, reader)
    template = gguf.read_chat_template(path, reader)
    template_name = f"{epath.Path(path).name}'s tokenizer.chat_template"
  else:
    from lima_jax.formats import llama2c
    cfg = llama2c.read_config(path)
  if tokenizer:
    tok = load_tokenizer(tokenizer)
    tok_meta = tok.to_meta()
  else:
    tok = _from_meta(path, tok_meta) if tok_meta else None
  if tok is None and need_tokenizer:
    raise UserError(f"{path}: " + {
        "lima": "the checkpoint holds no tokenizer (meta 'tokenizer' is empty)",
        "hf": "a Hugging Face directory needs tokenizer.model (SentencePiece) or tokenizer.json "
              "beside config.json",
        "llama2c": "a llama2.c checkpoint holds no tokenizer; convert it with one "
                   "(python -m lima_jax.convert from-llama2c --tokenizer=T.bin)"}[k])
  return ModelFile(path, k, cfg, tok, tok_meta, meta, chat_template=template or None,
                   template_name=template_name)


def hf_chat_template(path) -> tuple[Optional[str], str]:
  """(template, where) of a Hugging Face directory: chat_template.jinja (transformers 5 saves
  it there), else tokenizer_config.json's chat_template (a string, or named templates of which
  'default' is the one transformers uses); (None, '') when it has none."""
  d = epath.Path(path)
  if (d / "chat_template.jinja").exists():
    return (d / "chat_template.jinja").read_text(), str(d / "chat_template.jinja")
  config = d / "tokenizer_config.json"
  if not config.exists():
    return None, ""
  try:
    value = json.loads(config.read_text()).get("chat_template")
  except (ValueError, AttributeError):
    raise UserError(f"{config}: not a JSON object") from None
  if isinstance(value, list):
    value = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}.get("default")
  return (value, f"{config} chat_template") if isinstance(value, str) else (None, "")


def place(host_tree, shardings):
  """Host (numpy) arrays -> global arrays: each process puts only its own devices' shards."""
  return jax.tree.map(lambda x, s: jax.make_array_from_callback(x.shape, s, lambda i: x[i]),
                      host_tree, shardings)


def _read_params(m: ModelFile, dtype: Optional[str], shardings):
  """(config, params): a checkpoint into `shardings` (or one device), other kinds as numpy."""
  cfg = m.config
  if m.kind == "lima" and lora_checkpoint.is_lora(m.meta):
    return lora_checkpoint.load_merged(m.path, m.meta, dtype, open)  # host arrays
  if m.kind == "lima":
    try:
      params, _ = checkpoint.load(m.path, shardings, dtype)
    except (ValueError, KeyError, OSError) as e:
      raise UserError(f"{m.path}: cannot restore the parameters ({type(e).__name__}: "
                      f"{e})") from None
    return (dataclasses.replace(cfg, param_dtype=dtype) if dtype else cfg), params
  if m.kind == "hf":
    from lima_jax.formats import hf
    return hf.load_hf(m.path, dtype)
  if m.kind == "gguf":
    from lima_jax.formats import gguf
    return gguf.load_gguf(m.path, dtype or "float32")  # dequantized: float32 unless asked
  from lima_jax.formats import llama2c
  cfg, params = llama2c.load_llama2c(m.path)
  if dtype and dtype != cfg.param_dtype:
    from lima_jax.model import layers
    params = jax.tree.map(lambda x: x.astype(layers.as_dtype(dtype)), params)
    cfg = ModelConfig.from_dict({**cfg.to_dict(), "param_dtype": dtype, "dtype": dtype})
  return cfg, params


def open(path, *, mesh=None, dtype: Optional[str] = None, kind: Optional[str] = None,  # noqa: A001
         tokenizer: str = "", need_tokenizer: bool = True, check_vocab: bool = True,
         vocab_multiple: Optional[int] = None, on_host: bool = False) -> ModelFile:
  """A model file with its params.

  mesh: params go into their logical shardings on it (a checkpoint restores straight into
  them); without one, onto the first local device. on_host: numpy arrays instead, as read
  (not for a lima_jax checkpoint, which restores onto devices). dtype ('float32' or
  'bfloat16'): cast while reading; default as stored (GGUF: float32). check_vocab: the
  tokenizer (EOT included) must fit the embedding rows, as after fine-tuning; vocab_multiple:
  instead grow a base model without EOT rows to the tokenizer's size padded to this multiple,
  new rows at the mean embedding, as training does (`model.vocab_multiple`).
  """
  if dtype is not None and dtype not in _DTYPES:
    raise UserError(f"dtype: {dtype!r} is not 'float32' or 'bfloat16'")
  m = read(path, kind=kind, tokenizer=tokenizer, need_tokenizer=need_tokenizer)
  tok, cfg = m.tokenizer, m.config
  if tok is not None and vocab_multiple is not None and tok.sp_vocab_size > cfg.vocab_size:
    raise UserError(f"{tokenizer or path}: the tokenizer has {tok.sp_vocab_size} pieces but "
                    f"{path} has only {cfg.vocab_size} embedding rows: it does not belong to it")
  if tok is not None and vocab_multiple is None and check_vocab \
      and tok.vocab_size > cfg.vocab_size:
    raise UserError(f"{path}: tokenizer has {tok.vocab_size} ids but the model only "
                    f"{cfg.vocab_size} embedding rows")
  shardings = None
  if mesh is not None:
    loaded = dataclasses.replace(cfg, param_dtype=dtype) if dtype else cfg
    shardings = sharding.logical_shardings(model_lib.abstract_params(loaded), mesh)
  cfg, params = _read_params(m, dtype, None if on_host else shardings)
  on_device = m.kind == "lima" and not lora_checkpoint.is_lora(m.meta)  # as _read_params left them
  if not on_device and not on_host:
    params = place(params, shardings) if shardings is not None else jax.device_put(params)
  elif on_device and on_host:
    params = jax.tree.map(np.asarray, params)
  if tok is not None and vocab_multiple is not None and tok.vocab_size > cfg.vocab_size:
    params = model_lib.resize_vocab(params, tok.padded_vocab_size(vocab_multiple))
    cfg = dataclasses.replace(cfg, vocab_size=tok.padded_vocab_size(vocab_multiple))
  return dataclasses.replace(m, config=cfg, params=params)


def to_checkpoint(path, out, *, kind: Optional[str] = None, dtype: Optional[str] = None,
                  tokenizer: str = "") -> None:
  """Stores a model file as a lima_jax checkpoint at `out` (step 0, epoch 0) with its tokenizer
  (or `tokenizer`'s), as read: no vocabulary growth. dtype as for `open`."""
  m = open(path, kind=kind, dtype=dtype, tokenizer=tokenizer, need_tokenizer=False,
           check_vocab=False, on_host=True)
  meta = {"model_config": m.config.to_dict(), "tokenizer": m.tokenizer_meta, "step": 0,
          "epoch": 0}
  if m.chat_template:  # the model's own format, what it answers in by default
    meta["chat_template"] = m.chat_template
  checkpoint.save(out, m.params, meta)
