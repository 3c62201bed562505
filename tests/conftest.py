"""Test set-up: 8 fake CPU devices, so every sharding path is really exercised.

XLA_FLAGS must be set before JAX initialises its backends, which happens on first use, so
we set it here (conftest is imported before any test module) and never touch JAX's global
config at import time of a test module.
"""
import os
import pathlib

import pytest

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_file(rel: str) -> pathlib.Path:
  """Path of a file under ../shared/data, or skip the test saying why."""
  path = SHARED_DATA / rel
  if not path.exists():
    pytest.skip(f"{path} not present (shared data is not bundled: licences)")
  return path
