r"""Entry point: parses flags and calls `train.train_and_evaluate(config, workdir)`.

  python -m lima_jax.main --config=configs/lima.py:demo --workdir=/tmp/lima_demo

Rerunning the same command resumes from the newest complete checkpoint in WORKDIR.
"""
from absl import app, flags, logging
from ml_collections import config_flags

from lima_jax.parallel import host_memory
from lima_jax.errors import cli_main, parse_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training config: configs/FILE.py[:VARIANT]; override fields with "
    "--config.a.b=value.", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory (local or gs://) for checkpoints, metrics.jsonl and config.json.")
flags.mark_flags_as_required(["config", "workdir"])


@cli_main
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if logging.get_verbosity() == logging.INFO:  # Quiet orbax's per-save INFO lines; -v 0 for them.
    logging.set_verbosity(logging.WARNING)
  from lima_jax.train import loop as train  # Imported late so that --help stays fast.
  train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


def run():
  # XLA:CPU's per-step temporaries on 2 MiB pages; glibc reads the setting only at start-up.
  host_memory.restart_with_huge_pages()
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
