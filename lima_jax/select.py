r"""Choosing a checkpoint by reading its answers, as LIMA did.

    python -m lima_jax.select --workdir=DIR --prompts=F.jsonl [--epochs=5-10] [--out=DIR/select]

For each chosen epoch, the checkpoint that ended it (found by `meta["epoch"]` under
WORKDIR/checkpoints/*) answers every prompt with the same decoding and seed. OUT/index.html,
one self-contained page, shows each prompt with the epochs' answers side by side, their
lengths and each epoch's eval loss; OUT/answers.jsonl holds the same data (each prompt row
plus "answers", one per epoch). With --judge.base_url a judge names the best epoch. The
library is `lima_jax.eval.epochs` (compare_epochs, judge_epochs).
"""
import json
import os
import pathlib

import jax

from lima_jax.decode.flags import decoding_from_flags, define_decoding_flags, mesh_from_flags
from lima_jax.errors import UserError
from lima_jax.parallel import distributed


def main(argv) -> None:
  from absl import flags, logging
  f = flags.FLAGS
  if len(argv) > 1:
    raise UserError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not f["verbosity"].present:
    logging.set_verbosity(logging.ERROR)
  if not f.workdir or not f.prompts:
    raise UserError("needs --workdir and --prompts")
  if not distributed.start(f, "lima_jax.select"):
    return
  judge_config = _judge_config(f["judge"].value) if f["judge"].value.base_url else None
  from lima_jax.eval import epochs
  out = epochs.compare_epochs(f.workdir, f.prompts, f.epochs, f.out, decoding_from_flags(f),
                              f.seed, f.batch_size, mesh_from_flags(f), f.dtype, judge_config,
                              fmt=f.format, chat_template=f.chat_template)
  if jax.process_index() != 0:
    return
  out_dir = f.out or os.path.join(f.workdir, "select")
  print(f"wrote {os.path.join(out_dir, 'index.html')} and answers.jsonl "
        f"({len(out)} prompts x {len(out[0]['answers'])} epochs)")
  if judge_config is not None:
    choice = json.loads(pathlib.Path(out_dir, "judged.json").read_text())
    print(f"best epoch by the judge: {choice['best_epoch']} (by the 1-6 grade alone: "
          f"{choice['best_by_likert']}); {os.path.join(out_dir, 'judged.json')}")


def _eval_config():
  """configs/eval.py:lima_likert (the judge flags' defaults), loaded by path as config_flags
  loads configs: the working directory's (a checkout, or a user's edited copy), else the
  checkout beside the package, else the copy `pip install` puts under PREFIX/share/lima_jax."""
  import importlib.util
  import sys
  places = [pathlib.Path("configs"), pathlib.Path(__file__).resolve().parents[1] / "configs",
            pathlib.Path(sys.prefix) / "share" / "lima_jax" / "configs"]
  path = next((p / "eval.py" for p in places if (p / "eval.py").is_file()), None)
  if path is None:
    raise SystemExit("lima_jax.select: no configs/eval.py in " + ", ".join(map(str, places)))
  spec = importlib.util.spec_from_file_location("lima_eval_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config("lima_likert")


def _judge_config(judge_flags):
  """configs/eval.py:lima_likert with the flags' judge."""
  if not judge_flags.model:
    raise UserError("--judge.model: the judge's model name is needed with --judge.base_url")
  config = _eval_config()
  config.judge = judge_flags
  return config


def run() -> None:
  from absl import app, flags
  from lima_jax.errors import cli_main
  flags.DEFINE_string("workdir", None, "Training workdir (holds checkpoints/ and metrics.jsonl).")
  flags.DEFINE_string("prompts", None, "JSONL prompts, as for lima_jax.generate (e.g. a 50-prompt "
                      "dev set of {\"conversations\": [prompt]} rows).")
  flags.DEFINE_string("epochs", "5-10", "Epochs to compare: '5-10', '5,8,10', or '' for every "
                      "epoch with a checkpoint (LIMA: 5-10).")
  flags.DEFINE_string("out", None, "Output directory for index.html and answers.jsonl "
                      "(default WORKDIR/select).")
  define_decoding_flags()
  from ml_collections import config_flags
  config_flags.DEFINE_config_dict(
      "judge", _eval_config().judge, "Judge the epochs (configs/eval.py's judge fields): with "
      "--judge.base_url=URL --judge.model=NAME every epoch's answers get LIMA's 1-6 grade and a "
      "pairwise ladder against the best so far, and the page names the best epoch.",
      lock_config=True)
  app.run(cli_main(main))


if __name__ == "__main__":
  run()
