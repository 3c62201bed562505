r"""Answers from a checkpoint with LIMA's decoding: the command line and a terminal chat.

    python -m lima_jax.generate --checkpoint=CKPT --prompts=F.jsonl --out=F.jsonl
    python -m lima_jax.generate --checkpoint=CKPT --interactive

Defaults are LIMA's: nucleus sampling (p=0.9) at temperature 0.7, repetition penalty 1.2 on
the tokens generated so far, at most 2,048 new tokens (never past the model's context). The
library is `lima_jax.decode`: `answer` (answers for conversations, a prompts file, a chat),
`prompts` (prompt files), `flags` (the decoding flags `select` and `serve` share) and
`generator` (the batched, KV-cached decoder).
"""
import pathlib

from lima_jax.decode import answer
from lima_jax.decode.flags import decoding_from_flags, define_decoding_flags, mesh_from_flags
from lima_jax.decode.prompts import read_prompts
from lima_jax.errors import UserError
from lima_jax.parallel import distributed


def main(argv) -> None:
  from absl import flags, logging
  f = flags.FLAGS
  if len(argv) > 1:
    raise UserError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not f["verbosity"].present:
    logging.set_verbosity(logging.ERROR)  # orbax's INFO lines would bury the answers
  if not f.checkpoint or not (f.interactive or (f.prompts and f.out)):
    raise UserError("needs --checkpoint and either --prompts and --out, or --interactive")
  rows = [] if f.interactive else read_prompts(f.prompts)  # bad prompts fail before the model
  if rows and not pathlib.Path(f.out).absolute().parent.is_dir():
    raise UserError(f"{f.out}: its directory does not exist")
  if f.interactive and (f.local_processes or f.distributed):
    raise UserError("--interactive runs in one process; drop --distributed/--local_processes")
  if not distributed.start(f, "lima_jax.generate"):
    return
  dec, mesh = decoding_from_flags(f), mesh_from_flags(f)
  gen = answer.open_generator(f.checkpoint, mesh=mesh, dtype=f.dtype, batch_size=f.batch_size,
                              fmt=f.format, chat_template=f.chat_template)
  if f.interactive:
    return answer.chat(gen, dec, f.seed)
  summary = answer.answer_file(gen, f.prompts, f.out, dec, f.seed, rows=rows)
  if summary:
    print(summary)


def _define_flags() -> None:
  from absl import flags
  flags.DEFINE_string("checkpoint", None, "lima_jax checkpoint directory (e.g. "
                      "WORKDIR/checkpoints/STEP; its meta holds the model config and tokenizer), "
                      "or a Hugging Face directory or GGUF file with its tokenizer.")
  flags.DEFINE_string("prompts", None, "JSONL prompts: LIMA test rows {\"id\", \"conversations\": "
                      "[prompt]} (a conversation ending on a user turn), {\"messages\": [{\"role\", "
                      "\"content\"}, ...]} (system messages allowed first) or {\"prompt\": str}.")
  flags.DEFINE_string("out", None, "JSONL output: each input row plus 'answer', 'n_tokens' and "
                      "'stopped' (false when cut at max_new_tokens). Written atomically.")
  flags.DEFINE_bool("interactive", False, "Chat in the terminal (multi-turn, keeps the history) "
                    "instead of reading --prompts.")
  define_decoding_flags()


def run() -> None:
  """Console-script entry point (lima-generate)."""
  from absl import app
  from lima_jax.errors import cli_main
  _define_flags()
  app.run(cli_main(main))


if __name__ == "__main__":
  run()
