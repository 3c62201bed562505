"""Incremental detokenization with stop strings: the text of a growing answer that is safe to
send now.

Two things must never reach a client mid-answer: a piece of a multi-byte character (byte-
fallback tokens decode to U+FFFD until the character is complete) and the start of what may
become a stop string (it would have to be taken back). Both are held until they resolve.

Decoding the whole answer at every token costs O(n) a token; instead (vLLM's scheme) only the
ids since the last emitted boundary are decoded, next to the same ids without the newest, and
the difference is the new text. Both decodes lose SentencePiece's leading space alike, so the
pieces concatenate to `decode(all ids)`.
"""
from typing import Callable, Sequence

_BROKEN = "\ufffd"


class TextStream:
  """Feeds token ids in, gets text out; `stopped` once a stop string has been seen (the stop
  string and everything after it are never returned)."""

  def __init__(self, decode: Callable[[Sequence[int]], str], stop: Sequence[str] = ()):
    self._decode = decode
    self._stop = [s for s in stop if s]
    self.ids: list[int] = []
    self._prefix = 0  # ids[_prefix:_read] were decoded last time as the context of the next
    self._read = 0
    self._text = ""  # all text decoded so far (stable: never ends on a broken character)
    self._sent = 0  # how much of it was returned
    self.stopped = False

  @property
  def text(self) -> str:
    """What has been returned so far."""
    return self._text[:self._sent]

  def add(self, token: int) -> str:
    """Appends one id; returns the text that became safe to send ("" often)."""
    self.ids.append(int(token))
    self._decode_new(final=False)
    return self._release(final=False)

  def finish(self) -> str:
    """The answer is over: returns everything still held back (up to a stop string)."""
    self._decode_new(final=True)
    return self._release(final=True)

  def _decode_new(self, final: bool) -> None:
    if self.stopped:
      return
    before = self._decode(self.ids[self._prefix:self._read])
    now = self._decode(self.ids[self._prefix:])
    if len(now) > len(before) and (final or not now.endswith(_BROKEN)):
      self._text += now[len(before):]
      self._prefix, self._read = self._read, len(self.ids)

  def _release(self, final: bool) -> str:
    if self.stopped:
      return ""
    text, start = self._text, self._sent
    # Anything already sent held no stop string and no prefix of one at its end, so a match
    # can only start at or after `start`.
    hits = [j for j in (text.find(s, start) for s in self._stop) if j >= 0]
    if hits:
      end = min(hits)
      self.stopped = True
    elif final:
      end = len(text)
    else:
      end = len(text) - self._held(text, start)
    self._sent = max(end, start)
    return text[start:self._sent]

  def _held(self, text: str, start: int) -> int:
    """Length of the longest tail of text[start:] that begins some stop string."""
    longest = 0
    for s in self._stop:
      for k in range(min(len(s) - 1, len(text) - start), longest, -1):
        if text.endswith(s[:k]):
          longest = k
          break
    return longest
