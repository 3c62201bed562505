"""metrics.jsonl (and TensorBoard, when tensorboardX is installed), written by process 0, and
the loop's step log that fills it (throughput, the progress bar)."""
import json
import os
import time

import jax
from etils import epath
from tqdm import tqdm


class MetricsLog:
  """metrics.jsonl (+ TensorBoard) on process 0. On resume, rows past the restored step are
  dropped, so the file reads as one uninterrupted run."""

  def __init__(self, workdir: epath.Path, resume_step: int):
    self.path = workdir / "metrics.jsonl"
    self.rows = []
    if self.path.exists():
      self.rows = [r for r in map(json.loads, self.path.read_text().splitlines())
                   if r["step"] <= resume_step]
    self._flush()
    self.tb = None
    try:
      from tensorboardX import SummaryWriter
      self.tb = SummaryWriter(str(workdir / "tensorboard"))
    except ImportError:
      pass

  def _flush(self):
    # Whole-file rewrite: works on gs:// (no append there); the file stays small (a row a step).
    tmp = self.path.parent / (self.path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in self.rows))
    tmp.replace(self.path)

  def add(self, row: dict, flush: bool = False):
    self.rows.append(row)
    if self.tb:
      for k, v in row.items():
        if k != "step" and isinstance(v, (int, float)):
          self.tb.add_scalar(k, v, row["step"])
    if flush or not os.fspath(self.path).startswith("gs://"):
      self._flush()

  def close(self):
    self._flush()
    if self.tb:
      self.tb.close()


class StepLog:
  """metrics.jsonl rows on logged steps, epoch ends and the last step, with throughput."""

  def __init__(self, config, workdir, start: int, total_steps: int, is_main: bool):
    self.every, self.total = config.train.log_every, total_steps
    self.file = MetricsLog(workdir, start) if is_main else None
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
