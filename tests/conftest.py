"""Test set-up: 8 fake CPU devices, so every sharding path is really exercised.

XLA_FLAGS must be set before JAX initialises its backends, which happens on first use, so
we set it here (conftest is imported before any test module) and never touch JAX's global
config at import time of a test module.
"""
import contextlib
import os
import pathlib
import socket
import subprocess
import sys
import time

import pytest

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_file(rel: str) -> pathlib.Path:
  """Path of a file under ../shared/data, or skip the test saying why (fail under CI)."""
  path = SHARED_DATA / rel
  if not path.exists():
    if os.environ.get("CI") == "true":  # CI always has ../shared: its absence is a failure.
      pytest.fail(f"{path} not present, but CI must have ../shared/data")
    pytest.skip(f"{path} not present (shared data is not bundled: licences)")
  return path


_REPO = pathlib.Path(__file__).resolve().parents[1]


def tiny_config(**overrides):
  """configs/lima.py:demo shrunk to the 'tiny' model and 96 demo conversations; overrides are
  dotted keys, e.g. tiny_config(**{"train.epochs": 1})."""
  sys.path.insert(0, str(_REPO))
  from configs import lima
  c = lima.get_config("demo")
  c.unlock()
  c.model.size = "tiny"
  c.model.dropout_top = 0.0
  c.data.train_files = str(_REPO / "data/demo/train.jsonl")
  c.data.tokenizer = str(_REPO / "data/demo/tokenizer.model")
  c.data.max_len = 64
  c.data.subset_size = 96
  c.data.eval_fraction = 0.1
  c.train.epochs = 2
  c.train.batch_size = 8
  c.train.warmup_steps = 0
  c.checkpoint.keep_epochs = ""
  c.checkpoint.async_save = False
  c.sample_prompts = ""
  for key, value in overrides.items():
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  c.lock()
  return c


def random_tiny_model(seed: int = 0):
  """(params, cfg, tok): the 'tiny' model with the demo tokenizer (vocabulary rows past it are
  sharding padding) and N(0, 0.3) weights drawn on the host (compiling init's RNG is slow;
  wide enough that greedy answers vary)."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import numpy as np
  from lima_jax.model import transformer as M
  from lima_jax.model.config import get_size
  from lima_jax.tokenizer import load as load_tokenizer
  tok = load_tokenizer(_REPO / "data/demo/tokenizer.model")
  cfg = get_size("tiny", vocab_size=tok.padded_vocab_size(128))
  rng = np.random.RandomState(seed)
  params = jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s.shape) * 0.3, s.dtype),
                        nn.meta.unbox(M.abstract_params(cfg)))
  return params, cfg, tok


@contextlib.contextmanager
def serve_process(checkpoint, *flags: str, env: dict, timeout_s: float, poll_s: float = 0.5):
  """`python -m lima_jax.serve --checkpoint=CHECKPOINT FLAGS` on a free port until the block
  ends; yields its URL once /health answers 200 (the test fails if the process exits first or
  is not healthy within timeout_s)."""
  import httpx2 as httpx
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
  proc = subprocess.Popen([sys.executable, "-m", "lima_jax.serve", f"--checkpoint={checkpoint}",
                           f"--port={port}", *flags], cwd=_REPO, env=env,
                          stderr=subprocess.PIPE, text=True)
  try:
    url, t0 = f"http://127.0.0.1:{port}", time.time()
    while True:
      assert proc.poll() is None, proc.stderr.read()[-3000:]
      try:
        if httpx.get(url + "/health").status_code == 200:
          break
      except httpx.TransportError:
        pass
      assert time.time() - t0 < timeout_s, "never healthy"
      time.sleep(poll_s)
    yield url
  finally:
    proc.terminate()
    proc.wait(30)
