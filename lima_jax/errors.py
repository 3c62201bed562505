"""The one way bad input is reported: a single line naming the file, line or field, exit 1.

Library code raises `UserError("FILE:LINE: what is wrong")`; every command-line entry point
runs under `cli_main`, which prints that line to stderr and exits non-zero instead of showing
a traceback. Programming errors (anything else) still get their traceback.
"""
import sys
from typing import Callable, NoReturn


class UserError(Exception):
  """Bad input from a user (file, flag, config, checkpoint): shown as one line."""


def fail(message: str) -> NoReturn:
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(1)


def cli_main(main: Callable[[list[str]], None]) -> Callable[[list[str]], None]:
  """Wraps an absl main so that a UserError becomes one line on stderr and exit code 1."""

  def wrapped(argv):
    try:
      main(argv)
    except UserError as e:
      fail(str(e))

  return wrapped


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing for `app.run(main, flags_parser=parse_flags)`: a misspelled config
  override (--config.train.epochz=3), a wrongly typed value or an unknown variant becomes one
  line and exit 1, instead of a traceback from ml_collections' config_flags."""
  from absl import flags
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    text = str(e).replace("\\n", "\n").replace("\\'", "'")
    lines = [l.strip().strip("'\"") for l in text.splitlines() if l.strip()]
    if isinstance(e, (AttributeError, KeyError)):  # ml_collections: field, then a suggestion.
      fail(f"unknown config field {' '.join(lines)}")
    fail(f"bad flag: {lines[-1] if lines else type(e).__name__}")  # The last line says why.
