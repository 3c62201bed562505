"""LIMA fine-tuning: `train_and_evaluate(config, workdir)`, read top to bottom.

1. processes and mesh;  2. tokenizer, model config, data and starting weights;  3. optimizer
and schedule;  4. the pure, jitted `train_step(state, batch, rng)` (3 and 4: `train.step`);
5. state: resume (under the same recipe only), or init / load weights straight into their
shardings;  6. the loop: one step, then logging, evaluation, checkpoints and preemption, each a
small object (the step log: `train.metrics_log`; when to save: `train.saving`).

Resuming is exact: the batch of step N and the dropout key of step N are pure functions of
(seed, N), and a checkpoint holds params, optimizer state, step and the run's fingerprint
(lima_jax.train.fingerprint). On a pod every process feeds exactly the batch rows its devices hold
(`sharding.process_rows`), and the hosts check that they agree on data, tokenizer and recipe
before the first step (`distributed.agree`).
"""
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from lima_jax.train import adapters
from lima_jax.train import base_model
from lima_jax.formats import checkpoint
from lima_jax.data import batches as data
from lima_jax.parallel import distributed
from lima_jax.train import fingerprint as fingerprint_lib
from lima_jax.parallel import sharding
from lima_jax.train.metrics_log import StepLog
from lima_jax.train.saving import Checkpoints, NonFinite
from lima_jax.train.step import Built, TrainState, build_train_step, check_platform
from lima_jax import tokenizer as tokenizer_lib
from lima_jax.model import splash
from lima_jax.model import transformer as model_lib
from lima_jax.errors import UserError


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
# 2. Tokenizer, model config, data and starting weights (lima_jax.train.base_model).
# ----------------------------------------------------------------------------------------------

def load_data(config, tok: tokenizer_lib.Tokenizer, renderer=None):
  files = [f for f in config.data.train_files.split(",") if f]
  if not files:
    raise UserError("data.train_files: no file given")
  return data.load_sft_data(
      files, tok, max_len=config.data.max_len, pack=config.data.pack,
      global_batch=config.train.batch_size, seed=config.seed,
      subset_size=config.data.subset_size, epoch_examples=config.data.epoch_examples,
      eval_files=[f for f in config.data.eval_files.split(",") if f],
      eval_fraction=config.data.eval_fraction, on_error=config.data.on_error,
      renderer=renderer)


# ----------------------------------------------------------------------------------------------
# 3-4. Optimizer, schedule and the pure, jitted step: lima_jax.train.step.
# ----------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------
# 5. State: resume under the same recipe, else init or load the starting weights.
# ----------------------------------------------------------------------------------------------

def initial_state(config, built: Built, cfg, init_kind: str, mesh, log) -> TrainState:
  if cfg.lora is not None:  # adapters on a frozen base (lima_jax.train.adapters)
    return adapters.initial_state(config, built, cfg, init_kind, mesh)
  if init_kind:
    params = base_model.load_init_params(config, init_kind, cfg, built.state_shardings.params, mesh)
    log(f"loaded weights from {config.model.init}")
  else:
    init = lambda rng: nn.meta.unbox(built.model.init(rng, jnp.zeros((1, 8), jnp.int32))["params"])
    params = jax.jit(init, out_shardings=built.state_shardings.params)(jax.random.key(config.seed))
  opt_state = jax.jit(built.tx.init, out_shardings=built.state_shardings.opt_state)(params)
  return TrainState(jax.device_put(jnp.int32(0), built.state_shardings.step), params, opt_state)


def restored_state(manager: checkpoint.Manager, step: int, built: Built, frozen) -> TrainState:
  abstract = built.abstract_state
  params, opt_state, _ = manager.restore(step, abstract.params, abstract.opt_state)
  return TrainState(jax.device_put(jnp.int32(step), built.state_shardings.step), params, opt_state,
                    frozen)


# ----------------------------------------------------------------------------------------------
# 6. The loop, and what it writes.
# ----------------------------------------------------------------------------------------------

def _evaluate(built: Built, params, eval_ds, mesh, global_batch: int) -> dict:
  rows = sharding.process_rows(mesh.devices, global_batch)
  nll, count = 0.0, 0.0
  for local in eval_ds.eval_batches(rows):
    n, c = built.eval_step(params, sharding.put_batch(local, mesh, rows, global_batch))
    nll, count = nll + float(n), count + float(c)
  loss = nll / max(count, 1.0)
  return {"eval_loss": loss, "eval_perplexity": float(np.exp(min(loss, 50.0))),
          "eval_tokens": int(count)}


def _samples(config, params, cfg, tok, mesh, label: str, workdir, log, renderer=None) -> None:
  prompts = [p for p in config.sample_prompts.split("|") if p.strip()]
  if not prompts:
    return
  from lima_jax.decode import answer
  answers = answer.generate(params, cfg, tok, [[p] for p in prompts], mesh=mesh,
                            max_new_tokens=config.sample_max_new_tokens, greedy=True,
                            renderer=renderer)
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

  # 1. Mesh, and the attention it runs (the run's first line).
  mesh = make_mesh(config)
  log(splash.describe(config.model.attention_impl, config.model.dtype,
                      mesh.devices.flat[0].platform))
  batch_size, accum = config.train.batch_size, config.train.grad_accum_steps

  # 2. Tokenizer, model, data; every host must hold the same.
  init_cfg, init_tok, init_kind = base_model.read_init(config.model.init)
  tok = base_model.load_tokenizer(config, init_tok, init_kind)
  cfg = base_model.model_config(config, init_cfg, tok)
  check_platform(cfg, mesh.devices.flat[0].platform)  # Before the data is read.
  renderer, format_meta = base_model.conversation_format(config, tok)
  train_ds, eval_ds, report = load_data(config, tok, renderer)
  epochs = config.train.epochs
  steps_per_epoch = [train_ds.steps_in_epoch(e) for e in range(epochs)]
  total_steps, epoch_ends = sum(steps_per_epoch), np.cumsum(steps_per_epoch).tolist()
  fingerprint = fingerprint_lib.fingerprint(config, cfg, tok, format_meta)
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
    if cfg.lora is not None:
      log(adapters.describe(built, cfg))

    # 5. State.
    manager = checkpoint.Manager(workdir / "checkpoints", async_save=config.checkpoint.async_save)
    start = manager.latest_step() or 0
    if start:
      diffs = fingerprint_lib.check_resume(
          checkpoint.read_meta(manager.step_dir(start)), fingerprint,
          config.checkpoint.allow_recipe_change, manager.step_dir(start))
      if diffs:
        log(f"continuing under a changed recipe (checkpoint.allow_recipe_change): {diffs}")
    if is_main:
      fingerprint_lib.write_config(workdir, config, start)
    if start:
      frozen = adapters.load_frozen(config, built, cfg, init_kind, mesh) if cfg.lora else None
      state = restored_state(manager, start, built, frozen)
      log(f"resumed from {manager.step_dir(start)}")
    else:
      state = initial_state(config, built, cfg, init_kind, mesh, log)
      _samples(config, state.model_params, cfg, tok, mesh, "before", workdir, log, renderer)

    # 6. The loop.
    ckpts = Checkpoints(config, manager, epoch_ends, fingerprint, workdir)
    steplog = StepLog(config, workdir, start, total_steps, is_main)
    nonfinite, preemption = NonFinite(), distributed.Preemption()
    meta = {"model_config": cfg.to_dict(), "tokenizer": tok.to_meta(),
            "fingerprint": fingerprint, "code_version": fingerprint_lib.code_version(),
            **format_meta,
            **(adapters.meta(config, init_kind, fingerprint) if cfg.lora else {})}
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
        steplog.last.update(_evaluate(built, state.model_params, eval_ds, mesh, batch_size))
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
      _samples(config, state.model_params, cfg, tok, mesh, "after", workdir, log, renderer)
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
