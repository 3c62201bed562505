"""A LoRA checkpoint as a PEFT adapter: `python -m lima_jax.convert to-peft --checkpoint=C --out=D`.

    D/adapter_config.json        peft_type LORA, r, lora_alpha, target_modules (q_proj, ...)
    D/adapter_model.safetensors  base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight
                                 [r, in] and ...lora_B.weight [out, r], for each target
    D/base/                      the base as the run held it, in Hugging Face format (grown for EOT,
                                 dequantized from int8 where it was), with the run's tokenizer

`PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("D/base"), "D")` then computes
what lima_jax computes (tests/test_lora.py compares logits). PEFT's scaling is lora_alpha / r, as
ours; lora_B @ lora_A is our (A @ B) transposed, in HF's [out, in] layout of the same 2-D view.
"""
import json
import os
import pathlib
import shutil

import jax
import numpy as np

from lima_jax.errors import UserError
from lima_jax.formats import checkpoint, lora_checkpoint, model_file
from lima_jax.model import lora

HF_MODULE = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
             "o": "self_attn.o_proj", "gate": "mlp.gate_proj", "up": "mlp.up_proj",
             "down": "mlp.down_proj"}


def adapter_tensors(adapters: dict, spec: lora.LoraSpec) -> dict[str, np.ndarray]:
  """PEFT's tensor names -> float32 arrays, from our stacked adapters."""
  out = {}
  for name in spec.targets:
    node = adapters["layers"][lora.MODULE[name]]
    a, b = (np.asarray(node[name + s], np.float32) for s in lora.SUFFIXES)
    L, r = a.shape[0], a.shape[-1]
    for i in range(L):
      key = f"base_model.model.model.layers.{i}.{HF_MODULE[name]}"
      out[f"{key}.lora_A.weight"] = np.ascontiguousarray(a[i].reshape(-1, r).T)  # [r, in]
      out[f"{key}.lora_B.weight"] = np.ascontiguousarray(b[i].reshape(r, -1).T)  # [out, r]
  return out


def adapter_config(spec: lora.LoraSpec, base_path: str) -> dict:
  return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_path,
          "r": spec.rank, "lora_alpha": spec.alpha, "lora_dropout": spec.dropout,
          "target_modules": sorted(HF_MODULE[t].split(".")[1] for t in spec.targets),
          "bias": "none", "fan_in_fan_out": False, "inference_mode": True,
          "init_lora_weights": True, "use_rslora": False, "use_dora": False,
          "modules_to_save": None, "layers_to_transform": None, "revision": None}


def export(ckpt, out_dir, dtype: str = "float32", max_shard_bytes: int = 5 * 10**9) -> None:
  """Writes the adapter and its base (see the module docstring); out_dir must not exist."""
  from safetensors.numpy import save_file
  from lima_jax.formats import hf_export
  out_dir = pathlib.Path(out_dir)
  if out_dir.exists():
    raise UserError(f"{out_dir}: already exists; refusing to overwrite")
  meta = checkpoint.read_meta(ckpt)
  if not lora_checkpoint.is_lora(meta):
    raise UserError(f"{ckpt}: not a LoRA checkpoint (its meta has no 'lora'); to-peft exports "
                    "the adapters of a run with train.lora.rank > 0 (use to-hf for full weights)")
  cfg = lora_checkpoint.trained_config(ckpt, meta)
  base = lora_checkpoint.base_params(ckpt, meta, cfg, model_file.open)
  base = lora.dequantize(base, cfg.lora)  # the base the adapters saw: int8 times its scales
  adapters, _ = checkpoint.load(ckpt)
  tmp = out_dir.with_name(f".{out_dir.name}.tmp{os.getpid()}")
  tmp.mkdir(parents=True)
  try:
    hf_export.save_hf(lora_checkpoint.merged_config(cfg), jax.tree.map(np.asarray, base),
                      tmp / "base", meta.get("tokenizer"), dtype, max_shard_bytes)
    save_file(adapter_tensors(adapters, cfg.lora), str(tmp / "adapter_model.safetensors"),
              metadata={"format": "pt"})
    (tmp / "adapter_config.json").write_text(json.dumps(
        adapter_config(cfg.lora, str((out_dir / "base").resolve())), indent=2))
    os.rename(tmp, out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
