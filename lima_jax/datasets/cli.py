"""`python -m lima_jax.data stats|show`: look at conversation files before training on them.

  stats --data=F[,F2] [--tokenizer=T] [--max_len=2048]
      Conversations per source and, with a tokenizer, prompt and response lengths in tokens
      (mean / median / p95 / max, as in LIMA's Table 1), how many conversations trimming at
      max_len cuts, and the loss tokens left. Without a tokenizer, lengths are in characters.
  show --data=F --index=I --tokenizer=T
      The encoded conversation I (0-based, over the files in order) as the model sees it, with
      the loss-masked part (what is learned) marked: green on a terminal, else between ⟦ ⟧.

A prompt is the user turns of a conversation together, a response its assistant turns.
"""
import sys
from typing import Sequence

import numpy as np
from absl import app, flags
from tqdm import tqdm

from lima_jax import data
from lima_jax.datasets.sources import FORMATS, Record, read_files
from lima_jax.errors import UserError, cli_main
from lima_jax.tokenizer import Tokenizer

FLAGS = flags.FLAGS
_COMMANDS = ("stats", "show")


def _define_flags() -> None:
  # Defined when the command runs, not at import, so that importing this module next to
  # another command's flags cannot collide with them. They are registered under the main
  # module (sys.argv[0]) so that --help lists them.
  main = sys.argv[0]
  flags.DEFINE_string("data", None, "Comma-separated conversation files (LIMA JSONL, "
                      "Alpaca/Dolly JSON or JSONL).", module_name=main)
  flags.DEFINE_string("tokenizer", None, "SentencePiece .model or llama2.c tokenizer .bin; "
                      "stats without it counts characters, show needs it.", module_name=main)
  flags.DEFINE_integer("max_len", 2048, "Tokens a conversation is trimmed to (LIMA: 2048).",
                       module_name=main)
  flags.DEFINE_integer("index", 0, "show: which conversation, 0-based over all --data files.",
                       module_name=main)
  flags.DEFINE_enum("format", "auto", FORMATS, "File format; auto tells by the first record.",
                    module_name=main)
  flags.DEFINE_enum("on_error", "raise", ["raise", "skip"], "Bad records: stop at the first "
                    "('raise') or leave them out and count them.", module_name=main)
  flags.DEFINE_enum("color", "auto", ["auto", "always", "never"], "show: colour the "
                    "loss-masked part (auto: when stdout is a terminal).", module_name=main)

def _percentiles(values: Sequence[int]) -> tuple[float, float, float, int]:
  v = np.asarray(values, np.float64)
  return float(v.mean()), float(np.median(v)), float(np.percentile(v, 95)), int(v.max())


def compute_stats(records: Sequence[Record], tok: Tokenizer | None = None,
                  max_len: int = 2048) -> dict:
  """Per-source and overall statistics (tokens with `tok`, else characters).

  Returns {"unit", "sources": {name: {...}}, "all": {...}}; each entry has "conversations",
  "prompt" and "response" (mean, median, p95, max); with a tokenizer also "trimmed",
  "trimmed_loss_tokens", "dropped_no_loss" and "loss_tokens".
  """
  if tok is not None:
    turn_ids = [tok.encode_batch(r.conversations)
                for r in tqdm(records, desc="tokenizing", unit="conv", disable=None, leave=False)]
    encoded = [data.encode_turn_ids(ids, tok, max_len) for ids in turn_ids]
    lengths = [(sum(map(len, ids[0::2])), sum(map(len, ids[1::2]))) for ids in turn_ids]
  else:
    encoded = None
    lengths = [(sum(map(len, r.conversations[0::2])), sum(map(len, r.conversations[1::2])))
               for r in records]
  groups: dict[str, list[int]] = {}
  for i, r in enumerate(records):
    groups.setdefault(r.source, []).append(i)
  groups_all = dict(groups, **{"all": list(range(len(records)))})
  out = {"unit": "tokens" if tok else "characters", "sources": {}}
  for name, members in groups_all.items():
    entry = {"conversations": len(members),
             "prompt": _percentiles([lengths[i][0] for i in members]),
             "response": _percentiles([lengths[i][1] for i in members])}
    if encoded is not None:
      kept = [encoded[i] for i in members]
      entry.update(trimmed=sum(e.trimmed for e in kept),
                   trimmed_loss_tokens=sum(e.n_trimmed_loss_tokens for e in kept),
                   dropped_no_loss=sum(e.n_loss_tokens == 0 for e in kept),
                   loss_tokens=sum(e.n_loss_tokens for e in kept))
    if name == "all":
      out["all"] = entry
    else:
      out["sources"][name] = entry
  return out


def format_stats(stats: dict, max_len: int) -> str:
  """LIMA Table 1 layout: one row per source, then the total."""
  unit, tokens = stats["unit"], stats["unit"] == "tokens"
  w = max([16] + [len(name) + 1 for name in stats["sources"]])
  head = (f"{'source':<{w}}{'convs':>7}  {'prompt ' + unit + ' mean/median/p95/max':>36}  "
          f"{'response ' + unit + ' mean/median/p95/max':>38}")
  if tokens:
    head += f"{'trimmed':>9}{'loss tokens':>13}"
  lines = [head]
  rows = list(stats["sources"].items()) + [("all", stats["all"])]
  for name, e in rows:
    cells = [f"{e[k][0]:>9.1f} {e[k][1]:>8.1f} {e[k][2]:>8.1f} {e[k][3]:>7d}"
             for k in ("prompt", "response")]
    line = f"{name:<{w}}{e['conversations']:>7}  {cells[0]:>36}  {cells[1]:>38}"
    if tokens:
      line += f"{e['trimmed']:>9}{e['loss_tokens']:>13}"
    lines.append(line)
  if tokens:
    a = stats["all"]
    lines.append(f"trimmed to max_len={max_len}: {a['trimmed']} conversations, "
                 f"{a['trimmed_loss_tokens']} loss tokens cut; left without a loss token "
                 f"(dropped in training): {a['dropped_no_loss']}")
    lines.append(f"loss tokens (assistant tokens and their EOT, after trimming): "
                 f"{a['loss_tokens']}")
  return "\n".join(lines)


def render_example(enc: data.Encoded, tok: Tokenizer, color: bool) -> str:
  """Decoded tokens, specials shown, the loss-masked spans marked."""
  out, mask = [], enc.loss_mask
  edges = [0] + [i for i in range(1, len(mask)) if mask[i] != mask[i - 1]] + [len(mask)]
  for a, b in zip(edges[:-1], edges[1:]):
    text = tok.decode(enc.tokens[a:b], render_special=True)
    if mask[a]:
      text = f"\x1b[32m{text}\x1b[0m" if color else f"⟦{text}⟧"
    out.append(text)
  return "".join(out)


def main(argv: Sequence[str]) -> None:
  if len(argv) != 2 or argv[1] not in _COMMANDS:
    raise UserError(f"expected one command, {' or '.join(_COMMANDS)}; got {argv[1:]}")
  if not FLAGS.data:
    raise UserError("--data is required (comma-separated conversation files)")
  if FLAGS.max_len < 2:
    raise UserError(f"--max_len must be at least 2, got {FLAGS.max_len}")
  files = [f for f in FLAGS.data.split(",") if f]
  tok = Tokenizer.load(FLAGS.tokenizer) if FLAGS.tokenizer else None
  records, problems = read_files(files, on_error=FLAGS.on_error, fmt=FLAGS.format)
  for p in problems:
    print(f"skipped {p}", file=sys.stderr)
  if not records:
    raise UserError(f"{', '.join(files)}: no conversation could be read")
  if argv[1] == "stats":
    print(f"{', '.join(files)}: {len(records)} conversations; skipped rows: {len(problems)}; "
          f"trailing user turns dropped: {sum(r.dropped_turns for r in records)}")
    print(format_stats(compute_stats(records, tok, FLAGS.max_len), FLAGS.max_len))
    return
  if tok is None:
    raise UserError("show needs --tokenizer")
  if not 0 <= FLAGS.index < len(records):
    raise UserError(f"--index={FLAGS.index}: {', '.join(files)} hold {len(records)} "
                    "conversations (0-based)")
  record = records[FLAGS.index]
  enc = data.encode_conversation(record.conversations, tok, FLAGS.max_len)
  color = FLAGS.color == "always" or (FLAGS.color == "auto" and sys.stdout.isatty())
  print(f"{record.origin} (source {record.source}): {len(record.conversations)} turns, "
        f"{len(enc.tokens)} tokens, {enc.n_loss_tokens} loss tokens"
        + (f", trimmed at {FLAGS.max_len} ({enc.n_trimmed_loss_tokens} loss tokens cut)"
           if enc.trimmed else ""))
  print("loss-masked part (learned): " + ("green" if color else "between ⟦ and ⟧"))
  print(render_example(enc, tok, color))


def run() -> None:
  # absl's --help prints the __main__ module's docstring; make it this command's usage.
  sys.modules["__main__"].__doc__ = __doc__
  _define_flags()
  app.run(cli_main(main))


if __name__ == "__main__":
  run()
