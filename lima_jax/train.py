"""LIMA fine-tuning: `train_and_evaluate(config, workdir)`, read top to bottom.

1. processes and mesh;  2. tokenizer, model config, data and starting weights;  3. optimizer
and schedule;  4. the pure, jitted `train_step(state, batch, rng)`;  5. state: resume (under
the same recipe only), or init / load weights straight into their shardings;  6. the loop:
one step, then logging, evaluation, checkpoints and preemption, each a small object.

Resuming is exact: the batch of step N and the dropout key of step N are pure functions of
(seed, N), and a checkpoint holds params, optimizer state, step and the run's fingerprint
(lima_jax.recipe). On a pod every process feeds exactly the batch rows its devices hold
(`sharding.process_rows`), and the hosts check that they agree on data, tokenizer and recipe
before the first step (`distributed.agree`).
"""
import dataclasses
import json
import os
import time
from typing import Any

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

from lima_jax import axes, base_model, checkpoint, data, distributed, recipe, sharding
from lima_jax import loss as loss_lib
from lima_jax import metrics_log as metrics_log_lib
from lima_jax import tokenizer as tokenizer_lib
from lima_jax import model as model_lib
from lima_jax.errors import UserError
from lima_jax.model_config import ModelConfig


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


# ----------------------------------------------------------------------------------------------
# 1. Processes and mesh.
# ----------------------------------------------------------------------------------------------

def make_mesh(config: ml_collections.ConfigDict) -> jax.sharding.Mesh:
  """`mesh.shape`, or () for one chosen from the devices and the micro-batch (errors name the
  mesh and batch fields, before anything is read or compiled)."""
  accum = config.train.grad_accum_steps
  micro = sharding.micro_batch(config.train.batch_size, accum)
  mesh = sharding.choose_mesh(config.mesh.shape, jax.devices(), micro)
  sharding.check_batch(config.train.batch_size, accum, mesh)
  return mesh


# ----------------------------------------------------------------------------------------------
# 2. Tokenizer, model config, data and starting weights (lima_jax.base_model).
# ----------------------------------------------------------------------------------------------

def load_data(config, tok: tokenizer_lib.Tokenizer):
  files = [f for f in config.data.train_files.split(",") if f]
  if not files:
    raise UserError("data.train_files: no file given")
  return data.load_sft_data(
      files, tok, max_len=config.data.max_len, pack=config.data.pack,
      global_batch=config.train.batch_size, seed=config.seed,
      subset_size=config.data.subset_size,
      eval_files=[f for f in config.data.eval_files.split(",") if f],
      eval_fraction=config.data.eval_fraction, on_error=config.data.on_error)


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
      w = nn.with_logical_constraint(
          w, axes.EMBEDDING_GATHERED if tied else axes.LM_HEAD_GATHERED)
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
    loss = nll / count
    metrics = {"loss": loss, "loss_tokens": count,
               "finite": jnp.isfinite(loss) & jnp.isfinite(optax.global_norm(grads)),
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
# gradients) to Eigen. All-Eigen is faster with loss.py's vocab-major head (README
# "Performance": what each change bought, per machine).
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


def check_platform(cfg: ModelConfig, platform: str) -> None:
  if cfg.attention_impl == "cudnn" and (platform != "gpu" or cfg.dtype != "bfloat16"):
    raise UserError(f"model.attention_impl='cudnn' needs NVIDIA GPUs and model.dtype='bfloat16' "
                    f"(this run: {platform}, {cfg.dtype}); use 'xla'")


def build_train_step(config, mesh, cfg: ModelConfig, total_steps: int) -> Built:
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
  # Not with dropout: under these options XLA:CPU gives another (wrong) loss for dropout on
  # SmolLM2-135M (9.14 against 5.11 at step 1; deterministic losses agree to 1e-6).
  options = CPU_COMPILER_OPTIONS if platform == "cpu" and deterministic else None
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
# 5. State: resume under the same recipe, else init or load the starting weights.
# ----------------------------------------------------------------------------------------------

def initial_state(config, built: Built, cfg, init_kind: str, mesh, log) -> TrainState:
  if init_kind:
    params = base_model.load_init_params(config, init_kind, cfg, built.state_shardings.params, mesh)
    log(f"loaded weights from {config.model.init}")
  else:
    init = lambda rng: nn.meta.unbox(built.model.init(rng, jnp.zeros((1, 8), jnp.int32))["params"])
    params = jax.jit(init, out_shardings=built.state_shardings.params)(jax.random.key(config.seed))
  opt_state = jax.jit(built.tx.init, out_shardings=built.state_shardings.opt_state)(params)
  return TrainState(jax.device_put(jnp.int32(0), built.state_shardings.step), params, opt_state)


def restored_state(manager: checkpoint.Manager, step: int, built: Built) -> TrainState:
  abstract = built.abstract_state
  params, opt_state, _ = manager.restore(step, abstract.params, abstract.opt_state)
  return TrainState(jax.device_put(jnp.int32(step), built.state_shardings.step), params, opt_state)


# ----------------------------------------------------------------------------------------------
# 6. The loop, and what it writes.
# ----------------------------------------------------------------------------------------------

class NonFinite:
  """The first step whose loss or gradient norm was NaN/inf, kept on the device (no host sync
  per step) and read before every checkpoint and on logged steps, so no checkpoint holding NaNs
  is ever written or called good."""

  def __init__(self):
    self._first = jnp.int32(-1)
    self._update = jax.jit(lambda first, ok, step: jnp.where((first < 0) & ~ok, step, first))

  def update(self, metrics, step: int) -> None:
    self._first = self._update(self._first, metrics["finite"], step)

  def check(self, manager: checkpoint.Manager) -> None:
    bad = int(self._first)
    if bad >= 0:
      manager.wait()
      good = manager.latest_step()
      raise UserError(f"step {bad}: the loss or gradient is not finite; stopped. The last good "
                      f"checkpoint is {manager.step_dir(good) if good else 'none'}")


class Checkpoints:
  """When to save, what to keep, what a preemption saves."""

  def __init__(self, config, manager: checkpoint.Manager, epoch_ends: list[int],
               fingerprint: dict, workdir: epath.Path):
    epochs = len(epoch_ends)
    keep = (checkpoint.parse_epochs(config.checkpoint.keep_epochs, "checkpoint.keep_epochs")
            or set(range(1, epochs + 1)))
    self.keep_steps = {epoch_ends[e - 1] for e in keep if 0 < e <= epochs}
    self.manager, self.every = manager, config.checkpoint.every_steps
    self.on_preemption, self.fingerprint = config.checkpoint.on_preemption, fingerprint
    self.preempted_dir = workdir / "preempted"
    self.saved_step = None
    if self.on_preemption not in ("full", "params", "none"):
      raise UserError(f"checkpoint.on_preemption={self.on_preemption!r}: not one of full, "
                      "params, none")

  def due(self, done: int, epoch_end: bool) -> bool:
    return epoch_end or bool(self.every and done % self.every == 0)

  def _ours(self, step: int) -> bool:
    """Only checkpoints of this recipe may be pruned (another recipe's epochs are kept)."""
    meta = checkpoint.read_meta(self.manager.step_dir(step))
    return meta.get("fingerprint") == self.fingerprint

  def save(self, state: TrainState, meta: dict) -> None:
    self.manager.prune(self.keep_steps, deletable=self._ours)
    self.manager.save(meta["step"], state.params, state.opt_state, meta)
    self.saved_step = meta["step"]

  def save_preempted(self, state: TrainState, meta: dict) -> str:
    """What the notice leaves time for (docs/tpu.md): the whole state, params only, or
    nothing (resume from the last periodic checkpoint)."""
    if self.on_preemption == "full":
      if self.saved_step != meta["step"]:  # not when the step was just saved
        self.save(state, meta)  # (the notice met an epoch end or every_steps)
      self.manager.wait()
      return f"saved step {meta['step']} to {self.manager.step_dir(meta['step'])}"
    if self.on_preemption == "params":
      where = self.preempted_dir / str(meta["step"])
      if not where.exists():
        checkpoint.save(where, state.params, meta)
      self.manager.wait()
      return (f"saved the params of step {meta['step']} to {where}; the rerun resumes from step "
              f"{self.manager.latest_step() or 0}")
    self.manager.wait()
    return f"saved nothing; the rerun resumes from step {self.manager.latest_step() or 0}"

  def close(self) -> None:
    self.manager.prune(self.keep_steps, deletable=self._ours)
    self.manager.close()


class StepLog:
  """metrics.jsonl rows on logged steps, epoch ends and the last step, with throughput."""

  def __init__(self, config, workdir, start: int, total_steps: int, is_main: bool):
    self.every, self.total = config.train.log_every, total_steps
    self.file = metrics_log_lib.MetricsLog(workdir, start) if is_main else None
    self.bar = tqdm(total=total_steps, initial=start, disable=None if is_main else True,
                    desc="train", unit="step")
    self.t0, self.steps, self.last = time.perf_counter(), 0, {}

  def step(self, done: int, metrics, epoch: float, epoch_end: bool) -> bool:
    """Counts a step; on a logged one fetches its metrics. Returns whether it was logged."""
    self.steps += 1
    self.bar.update(1)
    if not (done % self.every == 0 or epoch_end or done == self.total):
      return False
    m = {k: v.item() for k, v in jax.device_get(metrics).items() if k != "finite"}
    dt = time.perf_counter() - self.t0
    self.last = {"step": done, "epoch": round(epoch, 4), **m,
                 "tokens_per_s": m["tokens"] * self.steps / dt,
                 "examples_per_s": m["examples"] * self.steps / dt, "step_time_s": dt / self.steps}
    self.t0, self.steps = time.perf_counter(), 0
    self.bar.set_postfix(loss=f"{m['loss']:.4f}", lr=f"{m['learning_rate']:.2e}")
    return True

  def write(self, flush: bool) -> None:
    if self.file:
      self.file.add(self.last, flush=flush)

  def close(self) -> None:
    self.bar.close()
    if self.file:
      self.file.close()


def _evaluate(built: Built, params, eval_ds, mesh, global_batch: int) -> dict:
  rows = sharding.process_rows(mesh.devices, global_batch)
  nll, count = 0.0, 0.0
  for local in eval_ds.eval_batches(rows):
    n, c = built.eval_step(params, sharding.put_batch(local, mesh, rows, global_batch))
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
  """Trains per `config` in `workdir`, resuming there if a checkpoint of the same recipe exists.

  Returns the last logged metrics (process 0) so that tests can check them.
  """
  if config.distributed.local_processes and not distributed.is_local_child():
    distributed.run_local_processes(config, workdir)  # Testing: N processes on this machine.
    return {}
  distributed.initialize(config)
  is_main = jax.process_index() == 0
  log = (lambda msg: print(msg, flush=True)) if is_main else (lambda msg: None)
  workdir = epath.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)

  # 1. Mesh.
  mesh = make_mesh(config)
  batch_size, accum = config.train.batch_size, config.train.grad_accum_steps

  # 2. Tokenizer, model, data; every host must hold the same.
  init_cfg, init_tok, init_kind = base_model.read_init(config.model.init)
  tok = base_model.load_tokenizer(config, init_tok, init_kind)
  cfg = base_model.model_config(config, init_cfg, tok)
  check_platform(cfg, mesh.devices.flat[0].platform)  # Before the data is read.
  train_ds, eval_ds, report = load_data(config, tok)
  epochs = config.train.epochs
  steps_per_epoch = [train_ds.steps_in_epoch(e) for e in range(epochs)]
  total_steps, epoch_ends = sum(steps_per_epoch), np.cumsum(steps_per_epoch).tolist()
  fingerprint = recipe.fingerprint(config, cfg, tok)
  distributed.agree({
      "data": train_ds.fingerprint() + (eval_ds.fingerprint() if eval_ds else ""),
      "tokenizer": distributed.digest(tok.to_meta()), "steps": distributed.digest(epoch_ends),
      "recipe": distributed.digest(fingerprint)})
  log(f"data: {json.dumps(report)}")
  log(f"model: {model_lib.param_count(cfg):,} parameters, vocab {cfg.vocab_size} "
      f"(tokenizer {tok.vocab_size}); mesh {dict(mesh.shape)} on {jax.process_count()} "
      f"process(es); {total_steps} steps ({epochs} epochs)")

  with jax.set_mesh(mesh):
    # 3-4. Optimizer, step, shardings.
    built = build_train_step(config, mesh, cfg, total_steps)

    # 5. State.
    manager = checkpoint.Manager(workdir / "checkpoints", async_save=config.checkpoint.async_save)
    start = manager.latest_step() or 0
    if start:
      diffs = recipe.check_resume(checkpoint.read_meta(manager.step_dir(start)), fingerprint,
                                  config.checkpoint.allow_recipe_change, manager.step_dir(start))
      if diffs:
        log(f"continuing under a changed recipe (checkpoint.allow_recipe_change): {diffs}")
    if is_main:
      recipe.write_config(workdir, config, start)
    if start:
      state = restored_state(manager, start, built)
      log(f"resumed from {manager.step_dir(start)}")
    else:
      state = initial_state(config, built, cfg, init_kind, mesh, log)
      _samples(config, state.params, cfg, tok, mesh, "before", workdir, log)

    # 6. The loop.
    ckpts = Checkpoints(config, manager, epoch_ends, fingerprint, workdir)
    steplog = StepLog(config, workdir, start, total_steps, is_main)
    nonfinite, preemption = NonFinite(), distributed.Preemption()
    meta = {"model_config": cfg.to_dict(), "tokenizer": tok.to_meta(),
            "fingerprint": fingerprint, "code_version": recipe.code_version()}
    rows = sharding.process_rows(mesh.devices, batch_size, accum)
    rng, preempted = jax.random.key(config.seed + 1), False
    for step in range(start, total_steps):
      epoch, in_epoch = train_ds.locate(step)
      batch = sharding.put_batch(train_ds.batch(step, rows), mesh, rows, batch_size, accum)
      state, metrics = built.train_step(state, batch, rng)
      done = step + 1
      nonfinite.update(metrics, done)
      epoch_end = done in epoch_ends
      if steplog.step(done, metrics, epoch + (in_epoch + 1) / steps_per_epoch[epoch], epoch_end):
        nonfinite.check(manager)
      if epoch_end and eval_ds is not None:
        steplog.last.update(_evaluate(built, state.params, eval_ds, mesh, batch_size))
        log(f"epoch {epoch + 1}: loss {steplog.last['loss']:.4f}  eval loss "
            f"{steplog.last['eval_loss']:.4f} (perplexity {steplog.last['eval_perplexity']:.2f})")
      if steplog.last.get("step") == done:
        steplog.write(flush=epoch_end)
      step_meta = dict(meta, step=done, epoch=epoch + 1 if epoch_end else epoch,
                       eval_loss=steplog.last.get("eval_loss") if epoch_end else None)
      preempted = preemption.reached(done)
      if ckpts.due(done, epoch_end):
        nonfinite.check(manager)
        ckpts.save(state, step_meta)
      _debug_crash(config, done, manager)
      if preempted:
        nonfinite.check(manager)
        print(f"process {jax.process_index()}: SIGTERM: {ckpts.save_preempted(state, step_meta)};"
              " rerun the same command to resume", flush=True)
        break
    steplog.close()
    ckpts.close()
    if not preempted and start < total_steps:
      _samples(config, state.params, cfg, tok, mesh, "after", workdir, log)
  newest = workdir / "checkpoints" / str(total_steps)
  log(f"done: checkpoints in {workdir / 'checkpoints'}, metrics in {workdir / 'metrics.jsonl'}\n"
      f"export to Hugging Face: python -m lima_jax.convert to-hf --checkpoint={newest} "
      f"--out={workdir / 'hf'}")
  return steplog.last


def _debug_crash(config, done: int, manager: checkpoint.Manager) -> None:
  """Testing (`debug.crash_after_step`): exit abruptly once step N's checkpoint is written."""
  if done == config.debug.crash_after_step:
    manager.wait()
    os._exit(3)  # A killed process: no cleanup, no final save.
