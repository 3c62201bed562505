r"""Command line: choose training conversations from a pool and report how.

  python -m lima_jax.curate --config=configs/curate.py:quality \
    --config.pool=a.json,b.jsonl --config.n=1000 --out=chosen.jsonl [--report=report.html]

Presets and every config field are documented in configs/curate.py. Bad input (a malformed
pool row, an unknown filter, a quota a source cannot fill) stops the run with one line
naming the file, row or field, before any output is written; outputs are written to
temporary files and renamed, so an existing good file is never left half-overwritten.
"""
import os
import pathlib
import shlex
import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

from lima_jax.errors import UserError, cli_main, parse_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Curation config: configs/curate.py[:PRESET] (random, longest, quality, "
    "diverse, diverse_minilm, lima_rules, ifd, loss, consistency, influence); override fields "
    "with --config.a.b=value.",
    lock_config=True)
_OUT = flags.DEFINE_string(
    "out", None, "Chosen conversations as LIMA-format JSONL (conversations, source, origin, "
    "score, scores), in pick order.")
_REPORT = flags.DEFINE_string(
    "report", "", "Optional report page PATH.html; its figures are also written as PATH.json.")
_REMOVED = flags.DEFINE_string(
    "removed", "", "Optional JSONL of every removed record: origin, source, stage, reason.")
_SCORES = flags.DEFINE_string(
    "scores", "", "Optional JSONL, one line per pool row read, in pool order: origin, source, "
    "the selector's score (null for a row removed before scoring), chosen (true/false), and "
    "the stage and reason that removed it (null when none did).")
flags.mark_flags_as_required(["config", "out"])


def _outputs() -> dict[str, pathlib.Path]:
  """The files this run writes, checked before any work so a typo fails in a second."""
  outputs = {"out": pathlib.Path(_OUT.value)}
  if _REPORT.value:
    report = pathlib.Path(_REPORT.value)
    if report.suffix.lower() not in (".html", ".htm"):
      raise UserError(f"--report: {report} must end in .html (the figures go to "
                      f"{report.with_suffix('.json')})")
    outputs["report"] = report
    outputs["report_json"] = report.with_suffix(".json")
  if _REMOVED.value:
    outputs["removed"] = pathlib.Path(_REMOVED.value)
  if _SCORES.value:
    outputs["scores"] = pathlib.Path(_SCORES.value)
  for flag, path in outputs.items():
    name = flag.split("_")[0]
    if not path.parent.is_dir():
      raise UserError(f"--{name}: directory {path.parent} does not exist")
    if path.is_dir() or not os.access(path.parent, os.W_OK):
      raise UserError(f"--{name}: {path} cannot be written"
                      + (" (it is a directory)" if path.is_dir() else ""))
  return outputs


@cli_main
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  outputs = _outputs()
  # Imported here so that --help and flag errors stay fast (scikit-learn, datasketch).
  # pylint: disable-next=g-import-not-at-top
  from lima_jax.curate import io, pipeline, report, report_html, selectors

  config = _CONFIG.value
  pipeline.validate(config)
  if config.selector in selectors.MODEL_SELECTORS:  # a bad path fails now, not after filtering
    from lima_jax.curate import model_scores  # pylint: disable=g-import-not-at-top
    model_scores.check_scorer(config.scorer, config.model.tokenizer)
  start = time.perf_counter()
  pool_paths = io.split_paths(config.pool, "pool")
  if not pool_paths:
    raise UserError("config pool: no pool files given (--config.pool=a.json,b.jsonl)")
  records, problems = io.read_pool(pool_paths, on_error=config.pool_on_error)
  test_prompts = io.read_test_prompts(io.split_paths(config.test_sets, "test_sets"))
  target, _ = io.read_pool(io.split_paths(config.influence.target, "influence.target"))
  curation = pipeline.curate(records, config, test_prompts, target)
  chosen = [(curation.candidates[i], pick) for i, pick in curation.chosen]

  texts = {"out": io.chosen_jsonl(chosen)}
  if "removed" in outputs:
    texts["removed"] = io.removed_jsonl(curation.removed)
  if "scores" in outputs:
    texts["scores"] = io.scores_jsonl(curation)
  if "report" in outputs:
    command = "python -m lima_jax.curate " + shlex.join(sys.argv[1:])
    fig = report.figures(curation, config, command=command, problems=problems)
    fig["seconds"] = time.perf_counter() - start
    texts["report_json"] = report.to_json(fig)
    texts["report"] = report_html.render(fig)
  for name, content in texts.items():
    io.write_atomic(outputs[name], content)
  logging.info("chose %d of %d records in %.1fs -> %s", len(chosen), len(records),
               time.perf_counter() - start, outputs["out"])
  print(f"chose {len(chosen)} of {len(records)} records -> {outputs['out']}"
        + (f" (report: {outputs['report']})" if "report" in outputs else ""))


def run():
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
