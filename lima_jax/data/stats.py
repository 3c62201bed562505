"""What `python -m lima_jax.data stats|show` prints: per-source counts and token-length
statistics of conversation files (as in LIMA's Table 1), and one encoded conversation with its
loss-masked part marked, in either conversation format (LIMA's, or a chat template's)."""
import pathlib
from typing import Sequence

import numpy as np
from tqdm import tqdm

from lima_jax.data import batches as data
from lima_jax.datasets.sources import Record
from lima_jax.tokenizer import Tokenizer, chat
from lima_jax.tokenizer import load as load_tokenizer


def open_format(tokenizer: str, fmt: str | None = None, chat_template: str = ""):
  """(tokenizer, renderer): the tokenizer file (or directory, or GGUF) `tokenizer`, and format
  `fmt` as training's data.format renders it ('lima' by default, as training's): for
  'chat_template' the template of the file `chat_template`, else the one the tokenizer's source
  carries (a GGUF's tokenizer.chat_template; chat_template.jinja or tokenizer_config.json in
  the Hugging Face directory, or beside tokenizer.json)."""
  tok = load_tokenizer(tokenizer)
  fmt = fmt or "lima"
  if fmt != "chat_template":
    return tok, chat.renderer(fmt, tok)
  if chat_template:
    return tok, chat.renderer(fmt, tok, chat.read_template(chat_template), chat_template)
  path = pathlib.Path(tokenizer)
  if path.suffix == ".gguf":
    from lima_jax.formats import gguf
    template, name = gguf.read_chat_template(path), f"{path.name}'s tokenizer.chat_template"
  else:
    from lima_jax.formats import model_file
    template, name = model_file.hf_chat_template(path if path.is_dir() else path.parent)
  return tok, chat.renderer(fmt, tok, template, name or tokenizer)


def _percentiles(values: Sequence[int]) -> tuple[float, float, float, int]:
  v = np.asarray(values, np.float64)
  return float(v.mean()), float(np.median(v)), float(np.percentile(v, 95)), int(v.max())


def compute_stats(records: Sequence[Record], tok: Tokenizer | None = None,
                  max_len: int = 2048, renderer=None) -> dict:
  """Per-source and overall statistics (tokens with `tok`, else characters); loss tokens and
  trimming as `renderer` (`open_format`'s; default LIMA's format) encodes the rows.

  Returns {"unit", "sources": {name: {...}}, "all": {...}}; each entry has "conversations",
  "prompt" and "response" (mean, median, p95, max); with a tokenizer also "trimmed",
  "trimmed_loss_tokens", "dropped_no_loss" and "loss_tokens".
  """
  if tok is not None:
    turn_ids = [tok.encode_batch(r.conversations)
                for r in tqdm(records, desc="tokenizing", unit="conv", disable=None, leave=False)]
    encoded = ([data.encode_turn_ids(ids, tok, max_len) for ids in turn_ids]
               if renderer is None or isinstance(renderer, chat.Lima)
               else data.encode_records(records, tok, max_len, renderer=renderer))
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
