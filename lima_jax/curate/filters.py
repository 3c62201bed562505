"""Filters: pure functions from records to (kept, removed-with-reason).

Each filter takes a sequence of `Record`s and returns a `FilterResult`; the input is never
changed and the order of the kept records is the input order. `clean_markup` is the one
transform: it returns rewritten records (the responses without links, images and HTML).

The LIMA rules are those the paper applied to Stack Exchange answers (Zhou et al. 2023, §2.1):
answers of 1,200-4,096 characters, none written in the first person, none referring to other
answers, with links, images and other HTML removed except code blocks and lists.
Duplicate and test-overlap filters live in `dedup`.
"""
import dataclasses
import re
from typing import Any, Sequence

from lima_jax.curate import text


@dataclasses.dataclass
class FilterResult:
  """What a filter kept (in input order), what it removed and why, and how many it rewrote."""

  kept: list[Any]
  removed: list[tuple[Any, str]]
  changed: int = 0


# --- LIMA's Stack Exchange rules -----------------------------------------------------------

_MD_IMAGE = re.compile(r"!\[[^\]\n]*\]\([^)\n]*\)")
_MD_LINK = re.compile(r"\[([^\]\n]+)\]\([^)\n]*\)")
_MD_REF_LINK = re.compile(r"\[([^\]\n]+)\]\[[^\]\n]*\]")
_MD_REF_DEF = re.compile(r"^[ \t]*\[[^\]\n]+\]:[ \t]*\S+.*$", re.M)
_URL = re.compile(r"<?\bhttps?://[^\s<>]+>?")
# Only real HTML tag names, so that prose such as "if a <b and c> d" is left alone... mostly.
_TAGS = ("a|abbr|b|big|blockquote|br|center|cite|code|del|div|em|font|h[1-6]|hr|i|img|ins|kbd|"
         "li|ol|p|pre|s|small|span|strike|strong|sub|sup|table|tbody|td|th|thead|tr|u|ul")
_HTML_LI = re.compile(r"<li\b[^>]*>", re.I)
_HTML_BREAK = re.compile(r"<(?:br|/p|p|/div|div|hr)\b[^>]*/?>", re.I)
_HTML_TAG = re.compile(rf"</?(?:{_TAGS})\b[^>]*/?>", re.I)
_HTML_COMMENT = re.compile(r"<!--.*?-->", re.S)
_SPACES = re.compile(r"[ \t]{2,}")
_BLANK_LINES = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)+")


def _clean_prose(segment: str) -> str:
  segment = _HTML_COMMENT.sub("", segment)
  segment = _MD_IMAGE.sub("", segment)
  segment = _MD_LINK.sub(r"\1", segment)
  segment = _MD_REF_LINK.sub(r"\1", segment)
  segment = _MD_REF_DEF.sub("", segment)
  segment = _URL.sub("", segment)
  # Lists survive as Markdown items, paragraphs as blank lines; every other tag goes.
  segment = _HTML_LI.sub("\n- ", segment)
  segment = _HTML_BREAK.sub("\n", segment)
  segment = _HTML_TAG.sub("", segment)
  return _SPACES.sub(" ", segment)


def strip_markup(response: str) -> str:
  """Removes links (keeping their text), images and HTML tags outside code."""
  pieces = [seg if is_code else _clean_prose(seg) for is_code, seg in text.split_code(response)]
  return _BLANK_LINES.sub("\n\n", "".join(pieces)).strip()


def clean_markup(records: Sequence[Any]) -> FilterResult:
  """Rewrites every assistant turn with `strip_markup`; drops a record left with an empty one."""
  kept, removed, changed = [], [], 0
  for record in records:
    turns = list(record.conversations)
    turns[1::2] = [strip_markup(t) for t in turns[1::2]]
    if not all(t.strip() for t in turns[1::2]):
      removed.append((record, "response empty after removing links, images and HTML"))
      continue
    if tuple(turns) != record.conversations:
      record = dataclasses.replace(record, conversations=tuple(turns))
      changed += 1
    kept.append(record)
  return FilterResult(kept, removed, changed)


# Singular first person only: tutorials' "we" ("we can see that") is not a personal voice.
# "I" must stand alone (not I/O, I-95, a variable in code: code is excluded anyway).
FIRST_PERSON = re.compile(
    r"(?<![\w/-])I(?:['’](?:m|ve|d|ll))?(?![\w/-])|\b(?i:me|my|mine|myself)\b")
REFERENCE = re.compile(
    r"\b(?:as (?:(?:was|i|has been|already|previously) )?(?:mentioned|said|stated|noted)"
    r"|as others? (?:have |has )?(?:said|mentioned|pointed out|noted|suggested)"
    r"|other answers?|previous answers?|above answers?|answers? above|accepted answer"
    r"|this answer|my answer|stack ?exchange|stack ?overflow|upvot\w*|downvot\w*"
    r"|(?:in|see) the comments?|edit:|update:)", re.I)
# Every REFERENCE alternative contains one of these: a cheap substring test skips the slow
# case-insensitive alternation for most texts.
_REFERENCE_KEYS = ("mention", "said", "stated", "noted", "suggest", "pointed", "answer",
                   "stack", "vot", "comment", "edit:", "update:")


def find_reference(writing: str) -> re.Match | None:
  """The first reference to other answers ("as mentioned", "stack exchange", ...), if any."""
  lowered = writing.lower()
  if not any(key in lowered for key in _REFERENCE_KEYS):
    return None
  return REFERENCE.search(writing)


def lima_rules(records: Sequence[Any], *, min_chars: int = 1200,
               max_chars: int = 4096) -> FilterResult:
  """LIMA's Stack Exchange answer rules: length window, no first person, no references.

  Run `clean_markup` first: LIMA measured answers after stripping links and HTML.
  """
  kept, removed = [], []
  for record in records:
    reply = text.response(record)
    writing = text.prose(reply)
    if len(reply) < min_chars:
      reason = f"response too short ({len(reply)} < {min_chars} chars)"
    elif len(reply) > max_chars:
      reason = f"response too long ({len(reply)} > {max_chars} chars)"
    elif match := FIRST_PERSON.search(writing):
      reason = f"first person in response ({match.group()!r})"
    elif match := find_reference(writing):
      reason = f"refers to other answers ({match.group()!r})"
    else:
      kept.append(record)
      continue
    removed.append((record, reason))
  return FilterResult(kept, removed)


# --- Empty and truncated responses ---------------------------------------------------------

_DANGLING = frozenset(
    "a an and the of to or but with for in on at by from that which because is are was were "
    "as than if so such".split())
_STRUCTURED_LINE = re.compile(r"^(?:[-*+•]\s|\d+[.)]\s|\||#)")
# A fence is a line that starts with ``` and has no other ``` (LIMA's data often puts code
# right after the fence); lines of ```inline``` spans are not fences.
_FENCE_LINE = re.compile(r"^[ \t]*```(?!.*```)", re.M)


def pool_vocabulary(replies: Sequence[str]) -> tuple[frozenset, frozenset]:
  """(words seen at least twice not at a reply's end, proper prefixes of words seen at least
  three times): what `truncation_reason` needs to tell a word cut in half ("... and th")
  from a reply that simply ends on a word. A word's count leaves out reply-final words, so a
  cut-off word that recurs at ends does not vouch for itself."""
  counts: dict[str, int] = {}
  for reply in replies:
    for w in text.words(reply)[:-1]:
      counts[w] = counts.get(w, 0) + 1
  known = frozenset(w for w, c in counts.items() if c >= 2)
  prefixes = frozenset(w[:i] for w, c in counts.items() if c >= 3 for i in range(1, len(w)))
  return known, prefixes


def truncation_reason(reply: str, *, min_words: int = 20, min_last_line_words: int = 8,
                      require_end_punctuation: bool = False,
                      vocabulary: tuple[frozenset, frozenset] | None = None) -> str:
  """Why a response looks cut off, or '' when it looks complete.

  Checks, in order: an empty turn; an unclosed ``` block; a trailing comma, dash or opening
  bracket; a last word that cannot end an English sentence ("the", "and", ..., in lower
  case: "AND" is a label). With `require_end_punctuation`, also: answers of at least
  `min_words` words whose last line is prose of at least `min_last_line_words` words
  must end in punctuation (verse, list items, table rows, headings and hashtag lines are
  exempt). That last check is off by default: human-written answers (Dolly) often simply
  omit the final period, and comma-separated answers end without one. With a `vocabulary`
  (`pool_vocabulary` of the pool), also: a lower-case last word, right at the end, that the
  pool never uses elsewhere but that begins a word it often uses, is a word cut in half
  ("... and th", "... the orig"); names (capitalised) and rare words that begin nothing
  are left alone.
  """
  body = reply.rstrip()
  if not body:
    return "empty response"
  if len(_FENCE_LINE.findall(body)) % 2:
    return "unclosed code block"
  if body.endswith("```"):
    return ""
  last_line = body.splitlines()[-1].strip()
  tail = text.words(last_line[-40:])
  dangling = body[-1].isalnum() and tail and tail[-1] in _DANGLING
  if body[-1] in ",(-–[{“" or (dangling and len(text.words(body)) > 3):
    return f"ends mid-sentence ({body[-20:]!r})"
  if vocabulary is not None and body[-1].isalpha() and tail and body.endswith(tail[-1]):
    known, prefixes = vocabulary
    last = tail[-1]
    if last.islower() and last not in known and last in prefixes:
      return f"ends mid-word ({body[-20:]!r})"
  if (require_end_punctuation and body[-1].isalnum()
      and len(text.words(body)) >= min_words and not _STRUCTURED_LINE.match(last_line)
      and not last_line.split()[-1].startswith("#")
      and len(text.words(last_line)) >= min_last_line_words):
    return f"ends without closing punctuation ({body[-20:]!r})"
  return ""


def truncated(records: Sequence[Any], *, min_words: int = 20, min_last_line_words: int = 8,
              require_end_punctuation: bool = False, mid_word: bool = False) -> FilterResult:
  """Removes records with an empty or cut-off assistant turn (see `truncation_reason`).

  mid_word: also words cut in half, judged against the vocabulary of these records' replies.
  Off by default: on the 12K Alpaca+Dolly pool and LIMA's 1,030 it flagged 6 answers and none
  was cut off: they end on a URL, a code, or a real word the pool uses nowhere else that
  begins a common one ("cod" / "code", "arrest" / "arrested"). It suits machine-generated
  pools whose answers stop at a token limit.
  """
  kept, removed = [], []
  vocabulary = (pool_vocabulary([t for r in records for t in r.conversations[1::2]])
                if mid_word else None)
  for record in records:
    for turn in record.conversations[1::2] or ("",):
      reason = truncation_reason(turn, min_words=min_words,
                                 min_last_line_words=min_last_line_words,
                                 require_end_punctuation=require_end_punctuation,
                                 vocabulary=vocabulary)
      if reason:
        removed.append((record, reason))
        break
    else:
      kept.append(record)
  return FilterResult(kept, removed)


# --- Language and format sanity ------------------------------------------------------------

_WHITESPACE = re.compile(r"\s+")
_NON_LETTER = re.compile(r"[\W\d_]+")

def sanity(records: Sequence[Any], *, min_alpha_ratio: float = 0.5,
           min_ascii_ratio: float = 0.9, min_chars: int = 20,
           min_unique_line_ratio: float = 0.5) -> FilterResult:
  """Removes responses that are not mostly English prose, or that repeat themselves.

  On the response's prose (code excluded), counting non-space characters:
    * letters (any script) / characters >= `min_alpha_ratio`: tables of numbers, symbol soup
      and mangled encodings fail;
    * ASCII / characters >= `min_ascii_ratio`: a cheap proxy for English (LIMA is English);
      a few accents, curly quotes or a formula pass.
  Both are skipped below `min_chars` characters ("42" is a fine answer to some prompts).
  A response of 5+ lines whose distinct lines are fewer than `min_unique_line_ratio` of its
  lines is degenerate repetition.
  """
  kept, removed = [], []
  for record in records:
    reply = text.response(record)
    # Counted with C-speed regex passes rather than a Python loop per character.
    chars = _WHITESPACE.sub("", text.prose(reply))
    lines = [line.strip() for line in reply.splitlines() if line.strip()]
    reason = ""
    if len(chars) >= min_chars:
      alpha = len(_NON_LETTER.sub("", chars)) / len(chars)
      ascii_ = len(chars.encode("ascii", "ignore")) / len(chars)
      if alpha < min_alpha_ratio:
        reason = f"mostly non-letters (letters {alpha:.2f} < {min_alpha_ratio})"
      elif ascii_ < min_ascii_ratio:
        reason = f"mostly non-ASCII (ASCII {ascii_:.2f} < {min_ascii_ratio})"
    if not reason and len(lines) >= 5:
      unique = len(set(lines)) / len(lines)
      if unique < min_unique_line_ratio:
        reason = f"repeated lines (distinct {unique:.2f} < {min_unique_line_ratio})"
    if reason:
      removed.append((record, reason))
    else:
      kept.append(record)
  return FilterResult(kept, removed)
