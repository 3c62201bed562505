"""The run fingerprint: what a resume may not silently change.

Every checkpoint's meta holds `fingerprint`, a flat dict of the fields that change what is
trained: the model (architecture, vocabulary, dropout, dtypes), the content of every data file,
the tokenizer, and the recipe (batch, epochs, schedule, optimizer, seed, packing, length,
subset, examples per epoch), and for a LoRA run its `train.lora` settings and its base's identity
(`base_identity`: the checkpoints hold only adapters). The mesh, logging, checkpoint cadence,
remat policy and attention blocking are not in it: they change how a step runs, not what it
computes. `code_version` is recorded beside it and only reported, since any commit would
otherwise block a resume.

Rerunning a workdir with a different recipe stops with one line naming the fields, unless
`checkpoint.allow_recipe_change` is set.
"""
import hashlib
import json
import pathlib
import subprocess
import time
from typing import Any

from etils import epath

import lima_jax
from lima_jax.parallel import distributed
from lima_jax.errors import UserError

CONFIG_FIELDS = (
    "seed", "data.max_len", "data.pack", "data.subset_size", "data.eval_fraction",
    "data.on_error", "train.epochs", "train.batch_size", "train.grad_accum_steps",
    "train.learning_rate", "train.end_learning_rate", "train.schedule", "train.warmup_steps",
    "train.b1", "train.b2", "train.eps", "train.weight_decay", "train.grad_clip")
# ModelConfig fields that change the function trained (not scan/remat/attention blocking).
MODEL_FIELDS = (
    "vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "hidden_dim", "head_dim",
    "norm_eps", "rope_theta", "rope_scaling", "tie_embeddings", "attention_bias", "mlp_bias",
    "dtype", "param_dtype", "dropout_top", "dropout_schedule")


def file_sha256(path: str) -> str:
  h = hashlib.sha256()
  try:
    with epath.Path(path).open("rb") as f:
      while chunk := f.read(1 << 22):
        h.update(chunk)
  except OSError as e:
    raise UserError(f"{path}: cannot read ({e.strerror or e})") from None
  return h.hexdigest()


def _files(spec: str) -> list[str]:
  return [f.strip() for f in spec.split(",") if f.strip()]


def fingerprint(config, model_cfg, tok, format_meta: dict | None = None) -> dict[str, Any]:
  """The run's recipe as a flat JSON-safe dict (see the module docstring). format_meta: a chat
  template run's format and template (absent in LIMA's format, so its fingerprints stay)."""
  out: dict[str, Any] = {}
  for field in CONFIG_FIELDS:
    node = config
    for part in field.split("."):
      node = node[part]
    out[field] = node
  model = model_cfg.to_dict()
  for field in MODEL_FIELDS:
    out[f"model.{field}"] = model.get(field)
  for key in ("train_files", "eval_files"):
    out[f"data.{key}"] = [file_sha256(f) for f in _files(config.data[key])]
  out["tokenizer"] = distributed.digest(tok.to_meta())
  if config.data.epoch_examples:  # only then, so earlier runs' fingerprints stay
    out["data.epoch_examples"] = config.data.epoch_examples
  if format_meta:
    out["data.format"] = format_meta["format"]
    out["data.chat_template"] = hashlib.sha256(format_meta["chat_template"].encode()).hexdigest()
  if model_cfg.lora is not None:  # only then: full fine-tuning's fingerprints stay as they were
    out["train.lora"] = model_cfg.lora.to_dict()
    # The checkpoints hold adapters only, so the base they adapt is part of the recipe.
    out["model.init"] = base_identity(config.model.init) if config.model.init else \
        f"random init, seed {config.seed}"
  return json.loads(json.dumps(out))  # Tuples as lists, as they come back from a checkpoint.


def base_identity(path: str) -> str:
  """A digest naming the model files at `path` (a file, or every file under a directory): each
  file's relative name, size, and SHA-256 of its first and last MiB. Cheap at 65B (a full hash
  reads 130 GB) and changed by any other export, quantization or fine-tune of it; the path itself
  is not in it, so a base may move. A LoRA run's fingerprint and checkpoints carry it."""
  root = epath.Path(path)
  if not root.exists():
    raise UserError(f"{path}: the base model does not exist")
  def walk(d):  # epath has no recursive glob on gs://
    for p in sorted(d.iterdir()):
      yield from walk(p) if p.is_dir() else (p,)
  files = [root] if root.is_file() else list(walk(root))
  h = hashlib.sha256()
  for f in files:
    try:
      with f.open("rb") as fh:
        head = fh.read(1 << 20)
        size = f.stat().length
        fh.seek(max(size - (1 << 20), 0))
        tail = fh.read(1 << 20)
    except OSError as e:
      raise UserError(f"{f}: cannot read ({e.strerror or e})") from None
    rel = "" if f == root else str(f.relative_to(root))
    h.update(json.dumps([rel, size]).encode() + hashlib.sha256(head + tail).digest())
  return h.hexdigest()


def code_version() -> str:
  """lima_jax's version, plus the git commit when running from a checkout."""
  here = pathlib.Path(lima_jax.__file__).resolve().parent
  try:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, text=True,
                            capture_output=True, timeout=10).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    commit = ""
  return f"{lima_jax.__version__}+{commit}" if commit else lima_jax.__version__


def differences(stored: dict, current: dict) -> list[str]:
  """'field: stored -> current' for every field that differs (file hashes shortened)."""
  def show(v):
    if isinstance(v, list) and v and all(isinstance(x, str) and len(x) == 64 for x in v):
      return "[" + ", ".join(x[:8] for x in v) + "]"
    return v[:8] if isinstance(v, str) and len(v) == 64 else json.dumps(v)
  return [f"{k}: {show(stored.get(k))} -> {show(current.get(k))}"
          for k in sorted(set(stored) | set(current)) if stored.get(k) != current.get(k)]


def check_resume(meta: dict, current: dict, allow: bool, where) -> list[str]:
  """Refuses to resume checkpoint `where` under another recipe (unless `allow`); returns the
  differences (empty when the recipe is the same)."""
  stored = meta.get("fingerprint")
  if stored is None:
    diffs = ["(no fingerprint: the checkpoint predates them)"]
  else:
    diffs = differences(stored, current)
  if diffs and not allow:
    raise UserError(f"{where} was trained with another recipe: {'; '.join(diffs)}. Use a new "
                    "workdir, or set --config.checkpoint.allow_recipe_change=True to continue "
                    "it under the new one")
  return diffs


def write_config(workdir: epath.Path, config, start_step: int) -> None:
  """config.json holds this run's config; config_history.jsonl one line per start, so a
  workdir continued under a changed config keeps what every earlier start used."""
  text = config.to_json_best_effort(indent=2)
  history = workdir / "config_history.jsonl"
  line = json.dumps({"start_step": start_step, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                     "code_version": code_version(), "config": json.loads(text)}) + "\n"
  # Whole-file rewrites through a temporary file: gs:// has no append, and a crash mid-write
  # must not leave a truncated config.json over a good one.
  for path, content in ((history, (history.read_text() if history.exists() else "") + line),
                        (workdir / "config.json", text)):
    tmp = path.parent / (path.name + ".tmp")
    tmp.write_text(content)
    tmp.replace(path)
