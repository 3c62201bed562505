r"""wikiHow articles -> LIMA-style (title, article) records.

    python -m lima_jax.datasets.wikihow --csv=wikihowAll.csv --n=2000 --out=wikihow_pool.jsonl

The public wikiHow dump is the research release of Koupaee & Wang (2018,
github.com/mahnazkoupaee/WikiHow-Dataset): `wikihowAll.csv` with columns headline (step
summaries), title ("How to Zest a Lemon") and text (the article's paragraphs). LIMA (section
2.1) used the title as the prompt and the body as the response, with "This article..."
openings turned into "The following answer..." and links and images pruned. Here: the
title becomes a question ("How to Zest a Lemon?"), the text is the answer, and articles under
`min_chars` are dropped; `curate` (e.g. the random or lima_rules presets, clean_markup) takes
it from there. The CSV has no categories, so LIMA's sampling across wikiHow's categories
cannot be reproduced from it: the draw is uniform.
"""
import csv
import pathlib
import random
import re
import sys

from absl import app, flags

from lima_jax import files
from lima_jax.errors import UserError, cli_main

_THIS_ARTICLE = re.compile(r"^\s*This (article|wikiHow)\b", re.I)
_SPACES = re.compile(r"[ \t]+")


def to_question(title: str) -> str:
  """'How to Zest a Lemon' -> 'How to Zest a Lemon?' (wikiHow's title case is kept: lowering
  it would also lower names)."""
  return title.strip().rstrip("?.!").strip() + "?"


def read_csv(path, *, min_chars: int = 400) -> list[dict]:
  path = pathlib.Path(path)
  csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # whole articles sit in one field
  try:
    with open(path, newline="", encoding="utf-8") as f:
      reader = csv.DictReader(f)
      missing = {"title", "text"} - set(reader.fieldnames or ())
      if missing:
        raise UserError(f"{path}: not wikihowAll.csv (no column {', '.join(sorted(missing))})")
      out = []
      for line, row in enumerate(reader, 2):
        title, text = (row.get("title") or "").strip(), (row.get("text") or "").strip()
        if not title or len(text) < min_chars:
          continue
        text = _THIS_ARTICLE.sub("The following answer", text)
        text = "\n".join(_SPACES.sub(" ", p).strip() for p in text.splitlines() if p.strip())
        out.append({"conversations": [to_question(title), text], "source": "wikihow",
                    "title": title, "row": line})
  except (OSError, UnicodeDecodeError, csv.Error) as e:
    raise UserError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from None
  return out


@cli_main
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  f = flags.FLAGS
  rows = read_csv(f.csv, min_chars=f.min_chars)
  if len(rows) < f.n:
    raise UserError(f"{f.csv}: {len(rows)} articles of at least {f.min_chars} characters, "
                    f"fewer than --n={f.n}")
  chosen = random.Random(f.seed).sample(rows, f.n)
  out = pathlib.Path(f.out)
  files.write_jsonl(out, chosen)
  print(f"wrote {len(chosen)} of {len(rows)} articles to {out}")


def run():
  flags.DEFINE_string("csv", None, "wikihowAll.csv (columns headline, title, text).")
  flags.DEFINE_integer("n", 2000, "Articles to draw (uniformly).", lower_bound=1)
  flags.DEFINE_integer("min_chars", 400, "Drop articles shorter than this.", lower_bound=0)
  flags.DEFINE_integer("seed", 0, "Sampling seed.")
  flags.DEFINE_string("out", None, "Output JSONL (LIMA format plus title and CSV row).")
  flags.mark_flags_as_required(["csv", "out"])
  app.run(main)


if __name__ == "__main__":
  run()
