"""`python -m lima_jax.data stats|show`: look at conversation files before training on them.

  stats --data=F[,F2] [--tokenizer=T] [--max_len=2048] [--format=lima|chat_template]
      Conversations per source and, with a tokenizer, prompt and response lengths in tokens
      (mean / median / p95 / max, as in LIMA's Table 1), how many conversations trimming at
      max_len cuts, and the loss tokens left. Without a tokenizer, lengths are in characters.
  show --data=F --index=I --tokenizer=T [--format=lima|chat_template [--chat_template=J]]
      The encoded conversation I (0-based, over the files in order) as the model sees it, with
      the loss-masked part (what is learned) marked: green on a terminal, else between ⟦ ⟧.

--format is training's data.format (default 'lima'); with 'chat_template' the rows are rendered
by the template of --chat_template, else the one the tokenizer's source carries (a GGUF, or a
Hugging Face directory or tokenizer.json with tokenizer_config.json beside it), and the mask
is what training learns: each assistant message and the template's end-of-turn token.

A prompt is the user turns of a conversation together, a response its assistant turns.
"""
import sys
from typing import Sequence

from absl import app, flags

from lima_jax.data import batches as data
from lima_jax.data import stats as stats_lib
from lima_jax.datasets.sources import FORMATS, read_files
from lima_jax.decode.flags import define_format_flags
from lima_jax.errors import UserError, cli_main

FLAGS = flags.FLAGS
_COMMANDS = ("stats", "show")


def _define_flags() -> None:
  # Defined when the command runs, not at import, so that importing this module next to
  # another command's flags cannot collide with them. They are registered under the main
  # module (sys.argv[0]) so that --help lists them.
  main = sys.argv[0]
  flags.DEFINE_string("data", None, "Comma-separated conversation files (LIMA JSONL, "
                      "Alpaca/Dolly JSON or JSONL).", module_name=main)
  flags.DEFINE_string("tokenizer", None, "SentencePiece .model, llama2.c tokenizer .bin, "
                      "tokenizer.json, a Hugging Face directory or a GGUF file; stats without it "
                      "counts characters, show needs it.", module_name=main)
  flags.DEFINE_integer("max_len", 2048, "Tokens a conversation is trimmed to (LIMA: 2048).",
                       module_name=main)
  flags.DEFINE_integer("index", 0, "show: which conversation, 0-based over all --data files.",
                       module_name=main)
  flags.DEFINE_enum("file_format", "auto", FORMATS, "File format; auto tells by the first "
                    "record.", module_name=main)
  define_format_flags("'lima', as training's data.format", module_name=main)
  flags.DEFINE_enum("on_error", "raise", ["raise", "skip"], "Bad records: stop at the first "
                    "('raise') or leave them out and count them.", module_name=main)
  flags.DEFINE_enum("color", "auto", ["auto", "always", "never"], "show: colour the "
                    "loss-masked part (auto: when stdout is a terminal).", module_name=main)


def main(argv: Sequence[str]) -> None:
  if len(argv) != 2 or argv[1] not in _COMMANDS:
    raise UserError(f"expected one command, {' or '.join(_COMMANDS)}; got {argv[1:]}")
  if not FLAGS.data:
    raise UserError("--data is required (comma-separated conversation files)")
  if FLAGS.max_len < 2:
    raise UserError(f"--max_len must be at least 2, got {FLAGS.max_len}")
  files = [f for f in FLAGS.data.split(",") if f]
  if (FLAGS.format == "chat_template" or FLAGS.chat_template) and not FLAGS.tokenizer:
    raise UserError("--format=chat_template needs --tokenizer (a tokenizer.json, Hugging Face "
                    "directory or GGUF: the template renders its tokens)")
  if FLAGS.chat_template and FLAGS.format != "chat_template":
    raise UserError("--chat_template: only with --format=chat_template")
  tok, renderer = (stats_lib.open_format(FLAGS.tokenizer, FLAGS.format, FLAGS.chat_template)
                   if FLAGS.tokenizer else (None, None))
  records, problems = read_files(files, on_error=FLAGS.on_error, fmt=FLAGS.file_format)
  for p in problems:
    print(f"skipped {p}", file=sys.stderr)
  if not records:
    raise UserError(f"{', '.join(files)}: no conversation could be read")
  if argv[1] == "stats":
    print(f"{', '.join(files)}: {len(records)} conversations; skipped rows: {len(problems)}; "
          f"trailing user turns dropped: {sum(r.dropped_turns for r in records)}")
    stats = stats_lib.compute_stats(records, tok, FLAGS.max_len, renderer)
    print(stats_lib.format_stats(stats, FLAGS.max_len))
    return
  if tok is None:
    raise UserError("show needs --tokenizer")
  if not 0 <= FLAGS.index < len(records):
    raise UserError(f"--index={FLAGS.index}: {', '.join(files)} hold {len(records)} "
                    "conversations (0-based)")
  record = records[FLAGS.index]
  enc = data.encode_records([record], tok, FLAGS.max_len, renderer=renderer)[0]
  color = FLAGS.color == "always" or (FLAGS.color == "auto" and sys.stdout.isatty())
  print(f"{record.origin} (source {record.source}, {renderer.name}): "
        f"{len(record.messages or record.conversations)} turns, "
        f"{len(enc.tokens)} tokens, {enc.n_loss_tokens} loss tokens"
        + (f", trimmed at {FLAGS.max_len} ({enc.n_trimmed_loss_tokens} loss tokens cut)"
           if enc.trimmed else ""))
  print("loss-masked part (learned): " + ("green" if color else "between ⟦ and ⟧"))
  print(stats_lib.render_example(enc, tok, color))


def run() -> None:
  # absl's --help prints the __main__ module's docstring; make it this command's usage.
  sys.modules["__main__"].__doc__ = __doc__
  _define_flags()
  app.run(cli_main(main))


if __name__ == "__main__":
  run()
