"""metrics.jsonl (and TensorBoard, when tensorboardX is installed), written by process 0."""
import json
import os

from etils import epath


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
