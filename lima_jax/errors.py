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
