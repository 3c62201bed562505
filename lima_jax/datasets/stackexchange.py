r"""Stack Exchange data dumps -> a LIMA-style pool of (question title, top answer) records.

    python -m lima_jax.datasets.stackexchange --dumps=stem=math/Posts.xml,other=cooking/Posts.xml \
      --n=2000 --out=se_pool.jsonl [--temperature=3] [--min_answer_score=10] [--unfiltered]

Reads each site's `Posts.xml` as the public dumps ship it (archive.org/details/stackexchange:
one `<row .../>` per post; PostTypeId 1 questions with Title and Score, PostTypeId 2 answers
with ParentId and Score; bodies are HTML) in one streaming pass. LIMA (section 2.1): the
questions "self-contained in the title", the top answer of each with score >= 10, and
sampling across exchanges with temperature 3 (a site's share grows as its size^(1/3)),
separately within each group (LIMA's STEM and Other: name them as GROUP=PATH; the paper lists
75 STEM and 99 Other exchanges). The answer-side rules (1,200-4,096 characters, no first
person, no references to other answers, links and images stripped) are curation's
`lima_rules` preset: run it on this pool. `--unfiltered` keeps every answered question and
its top answer whatever the scores (LIMA's unfiltered Stack Exchange arm).

"Self-contained in the title" is read here as: the title ends with '?', has at least four
words and does not point at the body ("this code", "the following", "below", "above",
"attached", "here is"). A record keeps site, group, title, question and answer scores.
"""
import html
import pathlib
import random
import re
import xml.etree.ElementTree as ET

from absl import app, flags

from lima_jax import files
from lima_jax.errors import UserError, cli_main

_POINTS_AT_BODY = re.compile(
    r"\b(this|these|the following|following|below|above|attached|here is|here's)\b"
    r"(?!\s+(?:year|week|month|day|century|is\b))", re.I)


def self_contained(title: str) -> bool:
  """Whether a title can be answered without the question's body."""
  t = title.strip()
  return t.endswith("?") and len(t.split()) >= 4 and not _POINTS_AT_BODY.search(t)


def read_site(path, *, min_answer_score: int = 10, filtered: bool = True) -> list[dict]:
  """(title, top answer) records of one site's Posts.xml, in question id order."""
  path = pathlib.Path(path)
  site = path.parent.name or path.stem
  questions, best = {}, {}
  try:
    for _, el in ET.iterparse(path, events=("end",)):
      if el.tag != "row":
        continue
      a = el.attrib
      kind = a.get("PostTypeId")
      try:
        if kind == "1" and a.get("Title"):
          questions[int(a["Id"])] = (html.unescape(a["Title"]), int(a.get("Score", 0)))
        elif kind == "2" and a.get("ParentId"):
          parent, score = int(a["ParentId"]), int(a.get("Score", 0))
          if parent not in best or score > best[parent][0]:
            best[parent] = (score, a.get("Body", ""))
      except (KeyError, ValueError) as e:
        raise UserError(f"{path}: row Id={a.get('Id', '?')}: bad {e} in a post") from None
      el.clear()  # the dumps run to tens of GB: keep nothing but what is needed
  except ET.ParseError as e:
    raise UserError(f"{path}: not a Stack Exchange Posts.xml ({e})") from None
  except OSError as e:
    raise UserError(f"{path}: cannot read ({e.strerror})") from None
  out = []
  for qid in sorted(questions):
    title, q_score = questions[qid]
    if qid not in best:
      continue
    a_score, body = best[qid]
    if filtered and (a_score < min_answer_score or not self_contained(title)):
      continue
    out.append({"conversations": [title, body], "source": "stackexchange", "site": site,
                "title": title, "question_score": q_score, "answer_score": a_score, "id": qid})
  return out


def sample(sites: dict[str, list[dict]], n: int, temperature: float, seed: int) -> list[dict]:
  """n records across sites, a site drawn with probability ∝ size^(1/temperature) among the
  sites with records left, a record uniformly within it (no repeats)."""
  rng = random.Random(seed)
  left = {s: rng.sample(rows, len(rows)) for s, rows in sorted(sites.items()) if rows}
  weight = {s: len(rows) ** (1.0 / temperature) for s, rows in left.items()}
  out = []
  while len(out) < n and left:
    names = list(left)
    site = rng.choices(names, weights=[weight[s] for s in names])[0]
    out.append(left[site].pop())
    if not left[site]:
      del left[site]
  return out


def build_pool(dumps: list[tuple[str, str]], n: int, *, temperature: float = 3.0,
               min_answer_score: int = 10, filtered: bool = True, seed: int = 0) -> list[dict]:
  """dumps: [(group, Posts.xml path)]; n records from each group."""
  groups: dict[str, dict[str, list[dict]]] = {}
  for group, path in dumps:
    rows = read_site(path, min_answer_score=min_answer_score, filtered=filtered)
    site = rows[0]["site"] if rows else pathlib.Path(path).parent.name
    groups.setdefault(group, {})[site] = [{**r, "group": group} for r in rows]
  pool = []
  for i, (group, sites) in enumerate(sorted(groups.items())):
    have = sum(map(len, sites.values()))
    if have < n:
      raise UserError(f"group {group!r}: {have} questions pass the rules, fewer than --n={n} "
                      f"(sites: {', '.join(sorted(sites))})")
    pool += sample(sites, n, temperature, seed + i)
  return pool


def _parse_dumps(spec: list[str]) -> list[tuple[str, str]]:
  out = []
  for item in spec:
    group, _, path = item.rpartition("=")
    out.append((group or "all", path))
  return out


@cli_main
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  f = flags.FLAGS
  out = pathlib.Path(f.out)
  if not out.absolute().parent.is_dir():
    raise UserError(f"--out={out}: its directory does not exist")
  pool = build_pool(_parse_dumps(f.dumps), f.n, temperature=f.temperature,
                    min_answer_score=f.min_answer_score, filtered=not f.unfiltered, seed=f.seed)
  files.write_jsonl(out, pool)
  sites = {}
  for r in pool:
    sites[r["site"]] = sites.get(r["site"], 0) + 1
  print(f"wrote {len(pool)} records to {out} from {len(sites)} sites (largest share "
        f"{max(sites.values()) / len(pool):.0%}); next: python -m lima_jax.curate "
        f"--config=configs/curate.py:lima_rules --config.pool={out} ...")


def run():
  flags.DEFINE_list("dumps", None, "Posts.xml files, each optionally GROUP=PATH (LIMA: stem=..., "
                    "other=...); the site name is the file's directory.")
  flags.DEFINE_integer("n", 2000, "Records to draw from each group.", lower_bound=1)
  flags.DEFINE_float("temperature", 3.0, "Across sites: probability ∝ size^(1/T) (LIMA: 3; "
                     "1 = proportional).", lower_bound=1e-3)
  flags.DEFINE_integer("min_answer_score", 10, "Top answer's score at least this (LIMA: 10).")
  flags.DEFINE_bool("unfiltered", False, "Keep every answered question (no score or title "
                    "rule): LIMA's unfiltered arm.")
  flags.DEFINE_integer("seed", 0, "Sampling seed.")
  flags.DEFINE_string("out", None, "Output JSONL (LIMA format plus site, group, title, scores).")
  flags.mark_flags_as_required(["dumps", "out"])
  app.run(main)


if __name__ == "__main__":
  run()
