"""When a run saves: the checkpoint policy (epochs kept, periodic saves, what a preemption
notice saves) and the guard that keeps a non-finite step out of every saved checkpoint."""
import jax
import jax.numpy as jnp
from etils import epath

from lima_jax.errors import UserError
from lima_jax.formats import checkpoint
from lima_jax.train.step import TrainState


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
