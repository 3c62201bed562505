"""A training run's directory opens as its latest finished checkpoint (model_file.resolve_run)."""
import pytest

from lima_jax.errors import UserError
from lima_jax.formats import model_file


def test_a_run_directory_stands_for_its_latest_finished_checkpoint(tmp_path):
  run = tmp_path / "run"
  for step, finished in ((10, True), (200, True), (30, True), (400, False)):
    (run / "checkpoints" / str(step)).mkdir(parents=True)
    if finished:  # an unfinished save has no meta yet
      (run / "checkpoints" / str(step) / "meta").mkdir()
  (run / "checkpoints" / "tmp_500").mkdir()
  (run / "config.json").write_text("{}")  # a run's config, not a Hugging Face config
  assert model_file.resolve_run(run) == str(run / "checkpoints" / "200")
  ckpt = run / "checkpoints" / "10"
  assert model_file.resolve_run(ckpt) == str(ckpt)  # a checkpoint is itself
  other = tmp_path / "hf"
  other.mkdir()
  assert model_file.resolve_run(other) == str(other)
  empty = tmp_path / "empty"
  (empty / "checkpoints").mkdir(parents=True)
  with pytest.raises(UserError, match="no finished checkpoint"):
    model_file.read(empty)
