"""How curation reads a record: its prompt, its response, and forms of text for matching.

A record's *prompt* is its user turns and its *response* its assistant turns, each joined by
a blank line. For LIMA's single-turn rows these are simply the two utterances; for a
multi-turn chain the rules (length, first person, ...) then judge the whole assistant side.
"""
import re
import unicodedata

# A fenced block runs to its closing fence, or to the end of the text when it is unclosed
# (a truncated answer), so that its code is never mistaken for prose.
_FENCED = re.compile(r"```.*?(?:```|\Z)", re.S)
_INLINE_CODE = re.compile(r"`[^`\n]+`")
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?")
_NON_WORD = re.compile(r"[\W_]+")


def prompt(record) -> str:
  return "\n\n".join(record.conversations[0::2])


def response(record) -> str:
  return "\n\n".join(record.conversations[1::2])


def normalise(text: str) -> str:
  """Case, accents, punctuation and spacing folded away: the key for exact-duplicate checks.

  Two rows that differ only in typography ("Don't" vs "don’t", trailing spaces, a final
  period) are the same example to a model trained on them.
  """
  if not text.isascii():  # the per-character pass is slow, and ASCII has nothing to fold
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c))
  return _NON_WORD.sub(" ", text.casefold()).strip()


def split_code(text: str) -> list[tuple[bool, str]]:
  """Splits text into (is_code, segment) pieces: fenced blocks and inline code vs prose."""
  pieces, pos = [], 0
  for match in _FENCED.finditer(text):
    pieces.extend(_split_inline(text[pos:match.start()]))
    pieces.append((True, match.group()))
    pos = match.end()
  pieces.extend(_split_inline(text[pos:]))
  return [p for p in pieces if p[1]]


def _split_inline(text: str) -> list[tuple[bool, str]]:
  pieces, pos = [], 0
  for match in _INLINE_CODE.finditer(text):
    pieces.append((False, text[pos:match.start()]))
    pieces.append((True, match.group()))
    pos = match.end()
  pieces.append((False, text[pos:]))
  return pieces


def prose(text: str) -> str:
  """The text without its code, for checks about writing (first person, references)."""
  return " ".join(segment for is_code, segment in split_code(text) if not is_code)


def words(text: str) -> list[str]:
  return _WORD.findall(text)


def shingles(text: str, n: int) -> set[str]:
  """Word n-grams of the normalised text (the whole text when it has fewer than n words)."""
  tokens = normalise(text).split()
  if len(tokens) <= n:
    return {" ".join(tokens)} if tokens else set()
  return {" ".join(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}
