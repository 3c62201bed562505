"""The step: the optimizer and its schedule, the loss sums, and the pure
`train_step(state, batch, rng) -> (state, metrics)`, jitted once with the state donated, built
on a mesh from abstract inputs (so the planner compiles exactly what training runs)."""
import dataclasses
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from lima_jax.errors import UserError
from lima_jax.model import axes
from lima_jax.model import lora
from lima_jax.model import splash
from lima_jax.model import transformer as model_lib
from lima_jax.model.config import ModelConfig
from lima_jax.parallel import sharding
from lima_jax.train import loss as loss_lib


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any  # what is trained: every parameter, or only LoRA's adapters
  opt_state: Any
  frozen: Any = None  # LoRA's frozen base (None: full fine-tuning)

  @property
  def model_params(self):
    """The tree the model applies: the trained params, with the frozen base if any."""
    return lora.join(self.frozen, self.params)


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


def loss_sums(model: nn.Module, params, batch, rng, deterministic: bool, loss_chunk: int = 0,
              groups: int = 1):
  """(sum of next-token NLL over loss tokens, number of loss tokens), in float32.

  loss_chunk > 0 fuses the output projection into the loss over loss tokens only
  (lima_jax.train.loss, which joins the rows of each of the `groups` batch shards); 0 takes the plain route through
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
  # Gradients of the trained params only: a frozen base gets neither gradient nor moments.
  grad_fn = jax.value_and_grad(
      lambda p, f, b, r: loss_sums(model, lora.join(f, p), b, r, deterministic, loss_chunk,
                                   groups), has_aux=True)

  def train_step(state: TrainState, batch, rng):
    rng = jax.random.fold_in(rng, state.step)
    if grad_accum == 1:
      (nll, count), grads = grad_fn(state.params, state.frozen, batch, rng)
    else:
      def micro(carry, xs):
        (n, c), g = grad_fn(state.params, state.frozen, xs[0], jax.random.fold_in(rng, xs[1]))
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
    return TrainState(state.step + 1, params, opt_state, state.frozen), metrics

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
# gradients) to Eigen. All-Eigen is faster with loss.py's vocab-major head (docs/performance.md:
# what each change bought, per machine).
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


def check_platform(cfg: ModelConfig, platform: str) -> str:
  """The attention the step will use on `platform` (one line if it cannot run there)."""
  return splash.check_impl(cfg.attention_impl, cfg.dtype, platform)


def build_train_step(config, mesh, cfg: ModelConfig, total_steps: int) -> Built:
  """Builds the jitted step and the abstract sharded state without allocating anything."""
  platform = mesh.devices.flat[0].platform
  check_platform(cfg, platform)
  model = model_lib.Transformer(cfg)
  schedule = make_schedule(config.train, total_steps)
  tx = make_optimizer(config.train, schedule)
  boxed = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32)))["params"]
  frozen = None
  if cfg.lora is not None:  # train the adapters; the rest is the frozen base
    frozen, boxed = lora.split(boxed)
  param_sh = sharding.logical_shardings(boxed, mesh)
  frozen_sh = None if frozen is None else sharding.logical_shardings(frozen, mesh)
  opt_sh = sharding.logical_shardings(jax.eval_shape(tx.init, boxed), mesh)
  replicated = NamedSharding(mesh, P())
  state_sh = TrainState(step=replicated, params=param_sh, opt_state=opt_sh, frozen=frozen_sh)
  abstract = jax.eval_shape(lambda: TrainState(
      jnp.zeros((), jnp.int32), nn.meta.unbox(boxed), nn.meta.unbox(jax.eval_shape(tx.init, boxed)),
      None if frozen is None else nn.meta.unbox(frozen)))
  abstract_state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                abstract, state_sh)
  accum = config.train.grad_accum_steps
  b, t = config.train.batch_size, config.data.max_len
  shape = (accum, b // accum, t) if accum > 1 else (b, t)
  batch_sh = sharding.batch_sharding(mesh, accum)
  dtypes = {"inputs": jnp.int32, "targets": jnp.int32, "loss_mask": jnp.bool_,
            "segment_ids": jnp.int32, "positions": jnp.int32}
  abstract_batch = {k: jax.ShapeDtypeStruct(shape, d, sharding=batch_sh) for k, d in dtypes.items()}
  deterministic = (cfg.dropout_schedule == "none" or cfg.dropout_top == 0.0) and not (
      cfg.lora and cfg.lora.dropout)
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
  eval_step = jax.jit(make_eval_step(model, chunk, groups),  # params: lora.join(frozen, params)
                      in_shardings=(lora.join(frozen_sh, param_sh), eval_sh),
                      out_shardings=replicated, compiler_options=options)
  return Built(model, step, eval_step, abstract_state, state_sh, abstract_batch, tx, schedule)
