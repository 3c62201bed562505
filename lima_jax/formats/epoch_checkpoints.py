"""The checkpoint that ended each epoch of a training run, found by its meta and metrics.jsonl.

`python -m lima_jax.select` compares these, and a study answers with them.
"""
import dataclasses
import json
import sys

from etils import epath

from lima_jax.errors import UserError
from lima_jax.formats import checkpoint


@dataclasses.dataclass(frozen=True)
class EpochCheckpoint:
  epoch: int
  step: int
  path: epath.Path
  eval_loss: float | None


def _epoch_ends(workdir: epath.Path) -> dict[int, dict]:
  """{epoch: its last metrics row} from metrics.jsonl (a row whose epoch is a whole number)."""
  path = workdir / "metrics.jsonl"
  if not path.exists():
    return {}
  ends = {}
  for n, line in enumerate(path.read_text().splitlines(), 1):
    try:
      row = json.loads(line)
      epoch = float(row["epoch"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
      # A run killed mid-write leaves a torn last line; the loss column is only a guide.
      print(f"warning: {path}:{n}: not a metrics row, ignored", file=sys.stderr)
      continue
    if epoch.is_integer() and epoch >= 1:
      ends[int(epoch)] = row
  return ends


def find_epoch_checkpoints(workdir) -> dict[int, EpochCheckpoint]:
  """The checkpoint that ended each epoch, by epoch.

  A checkpoint saved mid-epoch (every_steps, preemption) carries the number of epochs done
  so far, like the one that ended the previous epoch; metrics.jsonl tells them apart by
  step, and without it the earlier step is the epoch's end.
  """
  workdir = epath.Path(workdir)  # local or gs://, as training
  root = workdir / "checkpoints"
  if not root.is_dir():
    raise UserError(f"{root}: no checkpoints directory (is {workdir} a training workdir?)")
  ends = _epoch_ends(workdir)
  found: dict[int, EpochCheckpoint] = {}
  for d in sorted((d for d in root.iterdir() if d.name.isdigit()), key=lambda d: int(d.name)):
    if not (d / "meta").exists():
      continue
    meta = checkpoint.read_meta(d)
    epoch, step = meta.get("epoch"), meta.get("step", int(d.name))
    if not isinstance(epoch, int) or epoch < 1 or epoch in found:
      continue
    end = ends.get(epoch)
    if end is not None and end.get("step") != step:
      continue
    loss = meta.get("eval_loss")
    if loss is None and end is not None:
      loss = end.get("eval_loss")
    found[epoch] = EpochCheckpoint(epoch, step, d, loss)
  return found


def select_epochs(spec: str, available: dict[int, EpochCheckpoint], where: str) -> list[int]:
  """'5-10', '5,8,10' or '' (all available) -> epochs, all of which must be available."""
  if not available:
    raise UserError(f"{where}: no epoch-end checkpoint found")
  if not spec.strip():
    return sorted(available)
  wanted = checkpoint.parse_epochs(spec, "--epochs")
  missing = sorted(wanted - set(available))
  if missing or not wanted:
    raise UserError(f"--epochs={spec}: no checkpoint for epoch(s) {missing} in {where}; "
                    f"available epochs: {', '.join(map(str, sorted(available)))}")
  return sorted(wanted)
