"""LIMA fine-tuning: `train_and_evaluate(config, workdir)`, read top to bottom.

1. processes and mesh;  2. tokenizer, model config and data;  3. optimizer and schedule;
4. the pure, jitted `train_step(state, batch, rng)`;  5. state: resume, or init / load weights
straight into their shardings;  6. the loop: log, evaluate and checkpoint each epoch.

Resuming is exact: the batch of step N and the dropout key of step N are pure functions of
(seed, N), and a checkpoint holds params, optimizer state and step.
"""
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Optional

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from etils import epath
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm import tqdm

from lima_jax import checkpoint, data, sharding
from lima_jax import loss as loss_lib
from lima_jax import metrics_log as metrics_log_lib
from lima_jax import tokenizer as tokenizer_lib
from lima_jax import model as model_lib
from lima_jax.errors import UserError


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


# ----------------------------------------------------------------------------------------------
# 1. Processes and mesh.
# ----------------------------------------------------------------------------------------------

_ENV_RANK, _ENV_WORLD, _ENV_COORD = "LIMA_JAX_PROCESS_ID", "LIMA_JAX_NUM_PROCESSES", "LIMA_JAX_COORD"


def _start_local_processes(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Runs this job as N local CPU processes talking through jax.distributed (for testing)."""
  n = config.distributed.local_processes
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  child_config = config.to_dict()
  child_config["distributed"]["local_processes"] = 0
  code = ("import json,sys,ml_collections; from lima_jax import train; "
          "train.train_and_evaluate(ml_collections.ConfigDict(json.loads(sys.argv[1])), sys.argv[2])")
  procs = []
  for rank in range(n):
    env = dict(os.environ, JAX_PLATFORMS="cpu", **{
        _ENV_RANK: str(rank), _ENV_WORLD: str(n), _ENV_COORD: f"localhost:{port}"})
    if config.distributed.local_devices:
      env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count="
                          f"{config.distributed.local_devices}")
    procs.append(subprocess.Popen(
        [sys.executable, "-c", code, json.dumps(child_config), workdir], env=env))
  codes = [p.wait() for p in procs]
  if any(codes):
    raise UserError(f"local processes exited with codes {codes} (see their output above)")


def _init_distributed(config: ml_collections.ConfigDict) -> None:
  if _ENV_RANK in os.environ:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(os.environ[_ENV_COORD], int(os.environ[_ENV_WORLD]),
                               int(os.environ[_ENV_RANK]))
  elif config.distributed.initialize:
    jax.distributed.initialize()


# ----------------------------------------------------------------------------------------------
# 3. Optimizer and schedule.
# ----------------------------------------------------------------------------------------------

def make_schedule(c: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """LIMA: lr at step 0, decaying linearly to end_learning_rate at the last step."""
  decay_steps = max(total_steps - 1 - c.warmup_steps, 1)
  if c.schedule == "linear":
    decay = optax.linear_schedule(c.learning_rate, c.end_learning_rate, decay_steps)
  elif c.schedule == "cosine":
    decay = optax.cosine_decay_schedule(
        c.learning_rate, decay_steps, alpha=c.end_learning_rate / c.learning_rate)
  elif c.schedule == "constant":
    decay = optax.constant_schedule(c.learning_rate)
  else:
    raise UserError(f"train.schedule: {c.schedule!r} is not one of linear, cosine, constant")
  if not c.warmup_steps:
    return decay
  warmup = optax.linear_schedule(0.0, c.learning_rate, c.warmup_steps)
  return optax.join_schedules([warmup, decay], [c.warmup_steps])


def _decay_mask(params: Any) -> Any:
  """Weight decay on weight matrices only, as LIMA's trainer did: not norms, not biases."""
  def keep(path, _):
    names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
    return not any("norm" in n or n.endswith("bias") for n in names)
  return jax.tree_util.tree_map_with_path(keep, params)


def make_optimizer(c: ml_collections.ConfigDict, schedule: optax.Schedule):
  adamw = optax.adamw(schedule, b1=c.b1, b2=c.b2, eps=c.eps, weight_decay=c.weight_decay,
                      mask=_decay_mask)
  return optax.chain(optax.clip_by_global_norm(c.grad_clip), adamw) if c.grad_clip else adamw


# ----------------------------------------------------------------------------------------------
# 4. The step.
# ----------------------------------------------------------------------------------------------

def loss_sums(model: nn.Module, params, batch, rng, deterministic: bool, loss_chunk: int = 0,
              groups: int = 1):
  """(sum of next-token NLL over loss tokens, number of loss tokens), in float32.

  loss_chunk > 0 fuses the output projection into the loss over loss tokens only (lima_jax.loss,
  which joins the rows of each of the `groups` batch shards); 0 takes the plain route through
  [B, T, V] logits.
  """
  # Inside the rules, the model's activation constraints shard activations like the batch.
  with nn.logical_axis_rules(sharding.RULES):
    out = model.apply({"params": params}, batch["inputs"], positions=batch["positions"],
                      segment_ids=batch["segment_ids"], deterministic=deterministic,
                      rngs=None if deterministic else {"dropout": rng},
                      return_hidden=bool(loss_chunk))
    if loss_chunk:
      tied = model.cfg.tie_embeddings
      w = params["embed"]["embedding"] if tied else params["lm_head"]["kernel"]
      # Gathered over 'fsdp' once, before the chunk loop, rather than once per chunk.
      w = nn.with_logical_constraint(w, ("vocab", None) if tied else (None, "vocab"))
      return loss_lib.nll_sums(out, w, batch["targets"], batch["loss_mask"], chunk=loss_chunk,
                               vocab_first=tied, groups=groups)
  nll = optax.softmax_cross_entropy_with_integer_labels(out, batch["targets"])
  mask = batch["loss_mask"]
  return jnp.sum(jnp.where(mask, nll, 0.0)), jnp.sum(mask).astype(jnp.float32)


def make_train_step(model: nn.Module, tx, schedule, grad_accum: int, deterministic: bool,
                    loss_chunk: int = 0, groups: int = 1):
  """The pure step. With accumulation the batch is [A, B/A, T] and the loss stays exact:
  NLL sums and token counts are added over micro-batches before the one division."""
  grad_fn = jax.value_and_grad(
      lambda p, b, r: loss_sums(model, p, b, r, deterministic, loss_chunk, groups), has_aux=True)

  def train_step(state: TrainState, batch, rng):
    rng = jax.random.fold_in(rng, state.step)
    if grad_accum == 1:
      (nll, count), grads = grad_fn(state.params, batch, rng)
    else:
      def micro(carry, xs):
        (n, c), g = grad_fn(state.params, xs[0], jax.random.fold_in(rng, xs[1]))
        return jax.tree.map(jnp.add, carry, (n, c, g)), None
      zeros = (jnp.float32(0), jnp.float32(0), jax.tree.map(jnp.zeros_like, state.params))
      (nll, count, grads), _ = jax.lax.scan(micro, zeros, (batch, jnp.arange(grad_accum)))
    grads = jax.tree.map(lambda g: (g / count).astype(g.dtype), grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    seg = batch["segment_ids"]
    metrics = {"loss": nll / count, "loss_tokens": count,
               "tokens": jnp.sum(seg > 0), "examples": jnp.sum(jnp.max(seg, axis=-1)),
               "grad_norm": optax.global_norm(grads), "param_norm": optax.global_norm(params),
               "learning_rate": schedule(state.step)}
    return TrainState(state.step + 1, params, opt_state), metrics

  return train_step


def make_eval_step(model: nn.Module, loss_chunk: int = 0, groups: int = 1):
  return lambda params, batch: loss_sums(model, params, batch, None, True, loss_chunk, groups)


@dataclasses.dataclass
class Built:
  """Everything the loop (and the planner) needs about a compiled step on a mesh."""
  model: nn.Module
  train_step: Any  # jitted (state, batch, rng) -> (state, metrics); state donated
  eval_step: Any  # jitted (params, batch) -> (nll_sum, count)
  abstract_state: TrainState  # ShapeDtypeStructs carrying their shardings
  state_shardings: TrainState
  abstract_batch: dict  # global shapes, with shardings
  tx: Any
  schedule: Any


# XLA:CPU hands most matmuls to YNNPACK and those with a transposed operand (the weight
# gradients) to Eigen. All-Eigen made a bench-20m step 15% faster on a 2-core AMD EPYC (AVX2)
# and 11% on a 2-core Xeon with AVX-512, with loss.py's vocab-major head (README "Performance").
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


def check_platform(cfg: model_lib.ModelConfig, platform: str) -> None:
  if cfg.attention_impl == "cudnn" and (platform != "gpu" or cfg.dtype != "bfloat16"):
    raise UserError(f"model.attention_impl='cudnn' needs NVIDIA GPUs and model.dtype='bfloat16' "
                    f"(this run: {platform}, {cfg.dtype}); use 'xla'")


def build_train_step(config, mesh, cfg: model_lib.ModelConfig, total_steps: int) -> Built:
  """Builds the jitted step and the abstract sharded state without allocating anything."""
  platform = mesh.devices.flat[0].platform
  check_platform(cfg, platform)
  model = model_lib.Transformer(cfg)
  schedule = make_schedule(config.train, total_steps)
  tx = make_optimizer(config.train, schedule)
  boxed = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32)))["params"]
  param_sh = sharding.logical_shardings(boxed, mesh)
  opt_sh = sharding.logical_shardings(jax.eval_shape(tx.init, boxed), mesh)
  replicated = NamedSharding(mesh, P())
  state_sh = TrainState(step=replicated, params=param_sh, opt_state=opt_sh)
  abstract = jax.eval_shape(lambda: TrainState(
      jnp.zeros((), jnp.int32), nn.meta.unbox(boxed), nn.meta.unbox(jax.eval_shape(tx.init, boxed))))
  abstract_state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                abstract, state_sh)
  accum = config.train.grad_accum_steps
  b, t = config.train.batch_size, config.data.max_len
  shape = (accum, b // accum, t) if accum > 1 else (b, t)
  batch_sh = sharding.batch_sharding(mesh, accum)
  dtypes = {"inputs": jnp.int32, "targets": jnp.int32, "loss_mask": jnp.bool_,
            "segment_ids": jnp.int32, "positions": jnp.int32}
  abstract_batch = {k: jax.ShapeDtypeStruct(shape, d, sharding=batch_sh) for k, d in dtypes.items()}
  deterministic = cfg.dropout_schedule == "none" or cfg.dropout_top == 0.0
  chunk = config.train.get("loss_chunk", 0)
  if chunk < 0:
    raise UserError(f"train.loss_chunk={chunk}: must be >= 0 (0: plain logits)")
  options = CPU_COMPILER_OPTIONS if platform == "cpu" else None
  groups = sharding.batch_shards(mesh)
  step = jax.jit(make_train_step(model, tx, schedule, accum, deterministic, chunk, groups),
                 in_shardings=(state_sh, batch_sh, replicated),
                 out_shardings=(state_sh, replicated), donate_argnums=(0,),
                 compiler_options=options)
  eval_sh = sharding.batch_sharding(mesh)
  eval_step = jax.jit(make_eval_step(model, chunk, groups), in_shardings=(param_sh, eval_sh),
                      out_shardings=replicated, compiler_options=options)
  return Built(model, step, eval_step, abstract_state, state_sh, abstract_batch, tx, schedule)


# ----------------------------------------------------------------------------------------------
# 2. Tokenizer, model config, starting weights.
# ----------------------------------------------------------------------------------------------

_ARCH_FIELDS = ("dim", "n_layers", "n_heads", "n_kv_heads", "hidden_dim", "head_dim")


def read_init(path: str) -> tuple[Optional[model_lib.ModelConfig], Optional[dict], str]:
  """(architecture, tokenizer meta, kind) of `model.init` without loading any array."""
  if not path:
    return None, None, ""
  p = epath.Path(path)
  if (p / "meta").exists():
    meta = checkpoint.read_meta(p)
    return model_lib.ModelConfig.from_dict(meta["model_config"]), meta.get("tokenizer"), "lima"
  from lima_jax import convert  # Imports safetensors/HF helpers only when needed.
  if (p / "config.json").exists():
    return convert.read_hf_config(p), None, "hf"
  if p.is_file():
    return convert.read_llama2c_config(p), None, "llama2c"
  raise UserError(f"model.init: {path}: not a lima_jax checkpoint, a Hugging Face directory "
                  "or a llama2.c .bin file")


def model_config(config, init_cfg: Optional[model_lib.ModelConfig],
                 tok: tokenizer_lib.Tokenizer) -> model_lib.ModelConfig:
  """The architecture from `init` (or `model.size`), the training knobs from the config, and
  the vocabulary grown to hold EOT (padded to `model.vocab_multiple`)."""
  m = config.model
  if m.size:
    sized = model_lib.get_size(m.size)
    if init_cfg is not None:
      wrong = [f"{f}: config {getattr(sized, f)} vs init {getattr(init_cfg, f)}"
               for f in _ARCH_FIELDS if getattr(sized, f) != getattr(init_cfg, f)]
      if wrong:
        raise UserError(f"model.size={m.size!r} does not match model.init={m.init}: "
                        + "; ".join(wrong))
  base = init_cfg if init_cfg is not None else model_lib.get_size(m.size) if m.size else None
  if base is None:
    raise UserError("model: set model.size (random init) or model.init (weights to start from)")
  vocab = base.vocab_size
  if init_cfg is None or tok.vocab_size > vocab:
    if init_cfg is not None and tok.eot_id > vocab:
      raise UserError(f"data.tokenizer has {tok.eot_id} pieces but model.init has only {vocab} "
                      "embedding rows: the tokenizer does not belong to these weights")
    mult = m.vocab_multiple
    vocab = -(-tok.vocab_size // mult) * mult
  return dataclasses.replace(
      base, vocab_size=vocab, dropout_top=m.dropout_top, dropout_schedule=m.dropout_schedule,
      dtype=m.dtype, param_dtype=m.param_dtype, scan_layers=m.scan_layers,
      remat_policy=m.remat_policy, attention_block=m.attention_block,
      attention_impl=m.attention_impl, max_seq_len=max(base.max_seq_len, config.data.max_len))


def planned_model_config(config) -> model_lib.ModelConfig:
  """The model a run of `config` would train, from `model.size` alone (for the planner): the
  named size's vocabulary plus EOT, padded, and the config's training knobs."""
  if not config.model.size:
    raise UserError("model.size: the planner needs a named size (it does not read model.init)")
  base = model_lib.get_size(config.model.size)
  if config.model.attention_impl == "cudnn":
    raise UserError("model.attention_impl='cudnn' is for NVIDIA GPUs; the planner compiles for "
                    "TPU: use 'xla'")
  eot = type("PlannedTokenizer", (), {"vocab_size": base.vocab_size + 1,
                                      "eot_id": base.vocab_size})
  return model_config(config, None, eot)


def load_tokenizer(config, init_tok_meta: Optional[dict]) -> tokenizer_lib.Tokenizer:
  if config.data.tokenizer:
    return tokenizer_lib.Tokenizer.load(config.data.tokenizer)
  if init_tok_meta:
    return tokenizer_lib.Tokenizer.from_meta(init_tok_meta)
  raise UserError("data.tokenizer: required (model.init holds no tokenizer)")


def _load_init_params(config, kind: str, cfg: model_lib.ModelConfig, built: Built, mesh):
  """Starting weights placed straight into their shardings (resized for EOT if needed)."""
  path = config.model.init
  if kind == "lima":
    stored = checkpoint.params_metadata(path)
    stored_cfg = dataclasses.replace(cfg, vocab_size=stored["embed"]["embedding"].shape[0])
    boxed = jax.eval_shape(lambda: model_lib.Transformer(stored_cfg).init(
        jax.random.key(0), jnp.zeros((1, 8), jnp.int32)))["params"]
    params, _ = checkpoint.load(path, sharding.logical_shardings(boxed, mesh))
  else:
    from lima_jax import convert
    _, params = convert.load_hf(path) if kind == "hf" else convert.load_llama2c(path)
  params = jax.tree.map(lambda x: x.astype(cfg.param_dtype), params)
  param_sh = built.state_shardings.params
  return jax.jit(lambda p: model_lib.resize_vocab(p, cfg.vocab_size), out_shardings=param_sh)(
      params)


# ----------------------------------------------------------------------------------------------
# 6. The loop, and what it writes.
# ----------------------------------------------------------------------------------------------

def _evaluate(built: Built, params, eval_ds, mesh) -> dict:
  nll, count = 0.0, 0.0
  for local in eval_ds.eval_batches():
    n, c = built.eval_step(params, sharding.put_batch(local, mesh))
    nll, count = nll + float(n), count + float(c)
  loss = nll / max(count, 1.0)
  return {"eval_loss": loss, "eval_perplexity": float(np.exp(min(loss, 50.0))),
          "eval_tokens": int(count)}


def _samples(config, params, cfg, tok, mesh, label: str, workdir, log) -> None:
  prompts = [p for p in config.sample_prompts.split("|") if p.strip()]
  if not prompts:
    return
  from lima_jax import generate
  answers = generate.generate(params, cfg, tok, [[p] for p in prompts], mesh=mesh,
                              max_new_tokens=config.sample_max_new_tokens, greedy=True)
  if jax.process_index() == 0:
    with (workdir / "samples.jsonl").open("a") as f:
      for p, a in zip(prompts, answers):
        f.write(json.dumps({"when": label, "prompt": p, "answer": a}) + "\n")
        log(f"[{label}] {p!r} -> {a!r}")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains per `config` in `workdir`, resuming there if a checkpoint exists.

  Returns the last logged metrics (process 0) so that tests can check them.
  """
  if config.distributed.local_processes and _ENV_RANK not in os.environ:
    _start_local_processes(config, workdir)
    return {}
  _init_distributed(config)
  is_main = jax.process_index() == 0
  log = (lambda msg: print(msg, flush=True)) if is_main else (lambda msg: None)
  workdir = epath.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)

  # 1. Mesh (errors here name the mesh field, before anything is compiled).
  mesh = sharding.make_mesh(config.mesh.shape)
  accum = config.train.grad_accum_steps
  sharding.check_batch(config.train.batch_size, accum, mesh)

  # 2. Tokenizer, model, data.
  init_cfg, init_tok, init_kind = read_init(config.model.init)
  tok = load_tokenizer(config, init_tok)
  cfg = model_config(config, init_cfg, tok)
  check_platform(cfg, mesh.devices.flat[0].platform)  # Before the data is read.
  files = [f for f in config.data.train_files.split(",") if f]
  if not files:
    raise UserError("data.train_files: no file given")
  train_ds, eval_ds, report = data.load_sft_data(
      files, tok, max_len=config.data.max_len, pack=config.data.pack,
      global_batch=config.train.batch_size, seed=config.seed,
      subset_size=config.data.subset_size,
      eval_files=[f for f in config.data.eval_files.split(",") if f],
      eval_fraction=config.data.eval_fraction, on_error=config.data.on_error,
      process_index=jax.process_index(), process_count=jax.process_count())
  epochs = config.train.epochs
  total_steps = train_ds.total_steps(epochs)
  epoch_ends = np.cumsum([train_ds.steps_in_epoch(e) for e in range(epochs)]).tolist()
  log(f"data: {json.dumps(report)}")
  log(f"model: {model_lib.param_count(cfg):,} parameters, vocab {cfg.vocab_size} "
      f"(tokenizer {tok.vocab_size}); mesh {dict(mesh.shape)}; {total_steps} steps "
      f"({epochs} epochs)")
  if is_main:
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))

  # 3-4. Optimizer, step, shardings.
  with jax.set_mesh(mesh):
    built = build_train_step(config, mesh, cfg, total_steps)

    # 5. State: resume from the newest checkpoint, else init or load the starting weights.
    manager = checkpoint.Manager(workdir / "checkpoints", async_save=config.checkpoint.async_save)
    start = manager.latest_step() or 0
    if start:
      abstract = built.abstract_state
      params, opt_state, _ = manager.restore(start, abstract.params, abstract.opt_state)
      state = TrainState(jax.device_put(jnp.int32(start), built.state_shardings.step),
                         params, opt_state)
      log(f"resumed from {manager.step_dir(start)}")
    else:
      if init_kind:
        params = _load_init_params(config, init_kind, cfg, built, mesh)
        log(f"loaded weights from {config.model.init}")
      else:
        init = lambda rng: nn.meta.unbox(
            built.model.init(rng, jnp.zeros((1, 8), jnp.int32))["params"])
        params = jax.jit(init, out_shardings=built.state_shardings.params)(
            jax.random.key(config.seed))
      opt_state = jax.jit(built.tx.init, out_shardings=built.state_shardings.opt_state)(params)
      state = TrainState(jax.device_put(jnp.int32(0), built.state_shardings.step),
                         params, opt_state)
      _samples(config, state.params, cfg, tok, mesh, "before", workdir, log)

    # 6. The loop.
    keep = (checkpoint.parse_epochs(config.checkpoint.keep_epochs, "checkpoint.keep_epochs")
            or set(range(1, epochs + 1)))
    keep_steps = {epoch_ends[e - 1] for e in keep if 0 < e <= len(epoch_ends)}
    metrics_log = metrics_log_lib.MetricsLog(workdir, start) if is_main else None
    meta = {"model_config": cfg.to_dict(), "tokenizer": tok.to_meta()}
    preempted = []
    signal.signal(signal.SIGTERM, lambda *_: preempted.append(True))
    rng = jax.random.key(config.seed + 1)
    last, t0, t_steps = {}, time.perf_counter(), 0
    bar = tqdm(total=total_steps, initial=start, disable=None if is_main else True,
               desc="train", unit="step")
    for step in range(start, total_steps):
      epoch, in_epoch = train_ds.locate(step)
      batch = sharding.put_batch(train_ds.batch(step), mesh, accum)
      state, metrics = built.train_step(state, batch, rng)
      t_steps += 1
      done = step + 1
      epoch_end = done in epoch_ends
      if done % config.train.log_every == 0 or epoch_end or done == total_steps:
        m = {k: v.item() for k, v in jax.device_get(metrics).items()}
        if not np.isfinite(m["loss"]):
          manager.wait()
          raise UserError(f"step {done}: loss is {m['loss']}; stopped. The last good checkpoint "
                          f"is step {manager.latest_step()} in {workdir / 'checkpoints'}")
        dt = time.perf_counter() - t0
        last = {"step": done, "epoch": round(epoch + (in_epoch + 1) / train_ds.steps_in_epoch(
            epoch), 4), **m, "tokens_per_s": m["tokens"] * t_steps / dt,
            "examples_per_s": m["examples"] * t_steps / dt, "step_time_s": dt / t_steps}
        t0, t_steps = time.perf_counter(), 0
        bar.set_postfix(loss=f"{m['loss']:.4f}", lr=f"{m['learning_rate']:.2e}")
      if epoch_end and eval_ds is not None:
        last.update(_evaluate(built, state.params, eval_ds, mesh))
        log(f"epoch {epoch + 1}: loss {last['loss']:.4f}  eval loss {last['eval_loss']:.4f} "
            f"(perplexity {last['eval_perplexity']:.2f})")
      if metrics_log and last.get("step") == done:
        metrics_log.add(last, flush=epoch_end)
      stop = bool(preempted)
      if epoch_end or stop or (config.checkpoint.every_steps
                               and done % config.checkpoint.every_steps == 0):
        manager.prune(keep_steps)
        manager.save(done, state.params, state.opt_state,
                     dict(meta, step=done, epoch=epoch + 1 if epoch_end else epoch,
                          eval_loss=last.get("eval_loss") if epoch_end else None))
      if done == config.debug.crash_after_step:
        manager.wait()
        os._exit(3)  # Simulates a killed process: no cleanup, no final save.
      bar.update(1)
      if stop:
        manager.wait()
        log(f"SIGTERM: saved step {done}; rerun the same command to resume")
        break
    bar.close()
    manager.prune(keep_steps)
    manager.close()
    if metrics_log:
      metrics_log.close()
    if not preempted and start < total_steps:
      _samples(config, state.params, cfg, tok, mesh, "after", workdir, log)
  newest = workdir / "checkpoints" / str(total_steps)
  log(f"done: checkpoints in {workdir / 'checkpoints'}, metrics in {workdir / 'metrics.jsonl'}\n"
      f"export to Hugging Face: python -m lima_jax.convert to-hf --checkpoint={newest} "
      f"--out={workdir / 'hf'}")
  return last
