r"""Command line: judge answers; compare runs; agreement between judges.

  python -m lima_jax.eval --config=configs/eval.py:PROTOCOL --workdir=DIR \
    --config.answers=A.jsonl [--config.baseline=B.jsonl] \
    --config.judge.base_url=URL --config.judge.model=NAME [--config.dry_run=True]
  python -m lima_jax.eval compare DIR1 DIR2 ... [--png=F.png]
  python -m lima_jax.eval agreement A/judgments.sqlite B/judgments.sqlite|LABELS.jsonl
  python -m lima_jax.eval annotations ALPACA_EVAL_DIR/annotations.json [--workdir=DIR]

Protocols and every config field: configs/eval.py. Bad input stops with one line naming the
file and row before anything is written or sent. Exit status 3: a budget cap stopped the
run (what was judged is kept; rerun with a larger cap to finish); 4: some judgments failed
after every retry (results.json counts them in n_failed; a rerun retries them).
"""
import pathlib
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from lima_jax.decode.flags import define_format_flags
from lima_jax.errors import UserError, cli_main, parse_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Eval config: configs/eval.py:PROTOCOL (lima_pairwise, lima_likert, "
    "mt_bench, alpaca_eval, judge_free, harness); override fields with --config.a.b=value.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where results.json, judgments.sqlite, "
                               "report.html and the figure go (a rerun resumes from it).")
define_format_flags("with --config.checkpoint, what it was trained in; for a converted model "
                    "that carries a template, its template")
_PNG = flags.DEFINE_string("png", "", "compare: also draw the pairwise runs' win/tie/loss bars "
                           "(LIMA's Figure 1) to this PNG.")


@cli_main
def main(argv):
  command, rest = (argv[1], argv[2:]) if len(argv) > 1 else ("evaluate", [])
  # pylint: disable=g-import-not-at-top  (keep --help and flag errors fast)
  if command == "compare":
    if not rest:
      raise UserError("compare: give one or more evaluation directories")
    from lima_jax.eval import compare
    print(compare.compare(rest, png=_PNG.value))
    return
  if command == "agreement":
    if len(rest) != 2:
      raise UserError("agreement: give two judgments.sqlite files (or one and a human label "
                      "file, JSONL)")
    from lima_jax.eval import compare
    print(compare.agreement(*rest))
    return
  if command == "annotations":
    if len(rest) != 1:
      raise UserError("annotations: give one AlpacaEval annotations.json")
    from lima_jax.eval import alpaca
    out = alpaca.read_annotations(rest[0])
    if _WORKDIR.value:
      from lima_jax import files
      pathlib.Path(_WORKDIR.value).mkdir(parents=True, exist_ok=True)
      files.write_json(pathlib.Path(_WORKDIR.value) / "results.json",
                       {"protocol": "alpaca_eval_annotations", "annotations": rest[0], **out})
    lo, hi = out["win_rate_ci95"]
    print(f"{out['generator']} vs {out['reference']}: AlpacaEval win rate "
          f"{out['win_rate']:.3f} [{lo:.3f}, {hi:.3f}] over {out['n_instructions']} "
          f"instructions ({out['n_draws']} draws)")
    return
  if command != "evaluate" or rest:
    raise app.UsageError(f"unknown command {' '.join(argv[1:])!r}: use compare, agreement, "
                         "annotations, or flags alone")
  if _CONFIG.value is None or not _WORKDIR.value:
    raise UserError("needs --config=configs/eval.py:PROTOCOL and --workdir=DIR")
  from lima_jax.eval import run
  if _CONFIG.value.checkpoint and not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.ERROR)  # orbax's INFO lines would bury the progress
  out = run.evaluate(_CONFIG.value, _WORKDIR.value, fmt=flags.FLAGS.format,
                     chat_template=flags.FLAGS.chat_template)
  if out is None:
    return
  print(summary(out, _WORKDIR.value))
  if out.get("n_failed"):
    print(f"error: {out['n_failed']} judgments failed after every retry (first: "
          f"{out['first_error']}); a rerun retries them", file=sys.stderr)
  if out.get("stopped_reason"):
    sys.exit(run.EXIT_BUDGET)
  if out.get("n_failed"):
    sys.exit(run.EXIT_FAILED)


def summary(out: dict, workdir) -> str:
  def ci(key, within=None):
    src = out if within is None else out["tasks"][within]
    v, c = src.get(key), src.get(key + "_ci95")
    if v is None:
      return "-"
    return f"{v:.3f} [{c[0]:.3f}, {c[1]:.3f}]" if c and None not in c else f"{v:.3f}"

  if out.get("protocol") == "harness":
    return "; ".join(f"{task}: " + ", ".join(
        f"{m} {ci(m, task)}" for m in fig if f"{m}_ci95" in fig) + f" (n={fig['n']})"
        for task, fig in out["tasks"].items()) + f" -> {workdir}/results.json"
  if "wins" in out:
    head = (f"{out['system']} vs {out['baseline']}: {out['wins']} W / {out['ties']} T / "
            f"{out['losses']} L of {out['n']}; win {ci('win_rate')}, tie {ci('tie_rate')}, "
            f"loss {ci('loss_rate')}, equal or better {ci('equal_or_better')}, position flips "
            f"{ci('position_flip_rate')}")
    if "lc_win_rate" in out:
      head += f"; preference {ci('preference')}, length-controlled {ci('lc_win_rate')}"
  elif "mean" in out:
    head = (f"{out['system']}: mean {ci('mean')} over {out['n']} grades of "
            f"{out['n_prompts']} prompts ({out['samples_per_prompt']} a prompt)")
    for t in out.get("turns", []):
      c = t["mean_ci95"]
      head += f"; turn {t['turn']} {t['mean']:.3f} [{c[0]:.3f}, {c[1]:.3f}]"
  else:
    exact = ""
    if out.get("exact_rate") is not None:
      exact = f"; exact {ci('exact_rate')} of {out['exact_n']}" + "".join(
          f", {t} {ci(f'exact_rate:{t}')}" for t in out.get("exact_tags", []))
    return (f"{out['system']}: judge-free figures of {out['n']} answers{exact} -> "
            f"{workdir}/results.json")
  return (head + f"\njudge calls {out['judge_calls']} (retries {out['retries']}), cache hits "
          f"{out['cache_hits']}, failed {out['n_failed']}, unparsed {out['n_unparsed']}, "
          f"pending {out['n_pending']}; tokens {out['prompt_tokens']} + "
          f"{out['completion_tokens']}, ${out['cost_usd']:.4f} -> {workdir}/results.json")


def run_cli():
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run_cli()
