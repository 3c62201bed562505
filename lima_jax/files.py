"""Writing a file so that no reader ever sees half of it, and a failed run never leaves half a
file where a good one was: write a temporary file beside the target, then rename it over."""
import json
import os
import pathlib
import tempfile
from typing import Any, Iterable

from lima_jax.errors import UserError


def write_atomic(path: str | os.PathLike, content: str | bytes) -> None:
  """Writes `content` (text as UTF-8) to `path` through a temporary file and a rename."""
  path = pathlib.Path(path)
  if not path.parent.is_dir():
    raise UserError(f"{path}: directory {path.parent} does not exist")
  data = content.encode("utf-8") if isinstance(content, str) else content
  try:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
  except OSError as e:
    raise UserError(f"{path}: cannot write ({e.strerror or e})") from None
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.replace(tmp, path)
  except OSError as e:
    os.unlink(tmp)
    raise UserError(f"{path}: cannot write ({e.strerror or e})") from None
  except BaseException:
    os.unlink(tmp)
    raise


def write_jsonl(path: str | os.PathLike, rows: Iterable[Any]) -> None:
  """One JSON object a line (UTF-8, not escaped), atomically."""
  write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def write_json(path: str | os.PathLike, obj: Any, indent: int = 1) -> None:
  write_atomic(path, json.dumps(obj, indent=indent, ensure_ascii=False, default=str) + "\n")
