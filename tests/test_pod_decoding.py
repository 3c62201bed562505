"""Answers, checkpoint choice and export at pod scale, on simulated hosts and in bfloat16.

`generate` and `select` on two local processes x 4 CPU devices give the answers one process
gives, written once by process 0; training with sample prompts runs on two processes; loading
in bfloat16 halves the loaded bytes; `to-hf` reads a checkpoint through a URL and one layer
slice of a stacked parameter at a time.
"""
import hashlib
import json
import logging
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import tiny_config

REPO = pathlib.Path(__file__).resolve().parents[1]
PROMPTS = ["What is the capital of France?", "Write a short poem about the sea.",
           "How many legs does a spider have?", "Name a colour.", "What is 2 + 2?"]
DECODE = ["--max_new_tokens=12", "--seed=3", "--batch_size=4"]  # LIMA's sampling otherwise


def _run(module, *flags, timeout=600):
  r = subprocess.run([sys.executable, "-m", module, *flags], cwd=REPO, capture_output=True,
                     text=True, timeout=timeout)
  assert r.returncode == 0, r.stderr[-3000:]
  return r


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """(workdir, prompts file): the tiny model trained 3 epochs, one checkpoint per epoch."""
  from lima_jax.train import loop as train
  workdir = tmp_path_factory.mktemp("run")
  train.train_and_evaluate(tiny_config(**{"train.epochs": 3, "data.eval_fraction": 0.0}),
                           str(workdir))
  prompts = workdir / "prompts.jsonl"
  rows = [{"id": f"p{i}", "conversations": [p]} for i, p in enumerate(PROMPTS)]
  rows.append({"id": "multi", "conversations": ["What is 2 + 2?", "4.", "And 3 + 3?"]})
  prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return workdir, prompts


def _last_checkpoint(workdir):
  root = workdir / "checkpoints"
  return root / str(max(int(p.name) for p in root.iterdir() if p.name.isdigit()))


@pytest.mark.slow
@pytest.mark.parametrize("mesh", ["1,8,1", "2,2,2"])
def test_generate_on_two_processes_gives_one_process_answers(run, tmp_path, mesh):
  workdir, prompts = run
  ckpt = _last_checkpoint(workdir)
  one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
  _run("lima_jax.generate", f"--checkpoint={ckpt}", f"--prompts={prompts}", f"--out={one}",
       f"--mesh={mesh}", *DECODE)
  r = _run("lima_jax.generate", f"--checkpoint={ckpt}", f"--prompts={prompts}", f"--out={two}",
           f"--mesh={mesh}", "--local_processes=2", "--local_devices=4", *DECODE)
  assert r.stdout.count("wrote 6 answers") == 1  # process 0 writes, process 1 does not
  a = [json.loads(l) for l in one.read_text().splitlines()]
  b = [json.loads(l) for l in two.read_text().splitlines()]
  assert [x["id"] for x in b] == [f"p{i}" for i in range(5)] + ["multi"]
  assert a == b
  assert sum(x["n_tokens"] for x in a) > 10 and len({x["answer"] for x in a}) > 2
  assert sorted(p.name for p in tmp_path.iterdir()) == ["one.jsonl", "two.jsonl"]  # no debris


@pytest.mark.slow
def test_select_on_two_processes_gives_one_process_page(run, tmp_path):
  workdir, prompts = run
  one, two = tmp_path / "one", tmp_path / "two"
  common = [f"--workdir={workdir}", f"--prompts={prompts}", "--epochs=1-3", "--mesh=2,2,2",
            *DECODE]
  _run("lima_jax.select", *common, f"--out={one}")
  r = _run("lima_jax.select", *common, f"--out={two}", "--local_processes=2",
           "--local_devices=4")
  assert r.stdout.count("wrote ") == 1
  a = [json.loads(l) for l in (one / "answers.jsonl").read_text().splitlines()]
  b = [json.loads(l) for l in (two / "answers.jsonl").read_text().splitlines()]
  assert a == b and [x["epoch"] for x in a[0]["answers"]] == [1, 2, 3]
  assert (one / "index.html").read_text() == (two / "index.html").read_text()


@pytest.mark.slow
def test_training_with_sample_prompts_on_two_processes(tmp_path):
  from lima_jax.train import loop as train
  prompts = "What is the capital of France?|Name a colour."
  runs = {}
  for name, extra in (("one", {}), ("two", {"distributed.local_processes": 2,
                                            "distributed.local_devices": 4})):
    c = tiny_config(**{"train.epochs": 1, "sample_prompts": prompts, "mesh.shape": (2, 2, 2),
                       "sample_max_new_tokens": 8, **extra})
    train.train_and_evaluate(c, str(tmp_path / name))
    runs[name] = [json.loads(l) for l in (tmp_path / name / "samples.jsonl").read_text()
                  .splitlines()]
  assert [(r["when"], r["prompt"]) for r in runs["two"]] == [
      ("before", "What is the capital of France?"), ("before", "Name a colour."),
      ("after", "What is the capital of France?"), ("after", "Name a colour.")]
  assert runs["one"] == runs["two"]


def test_bfloat16_load_halves_bytes_and_keeps_greedy_answers(tmp_path):
  """A model trained with bfloat16 compute: its float32 checkpoint loaded in bfloat16 holds
  half the bytes and answers greedily as the float32 load does."""
  from lima_jax.decode import generator as decoding
  from lima_jax.formats import model_file
  from lima_jax.parallel import sharding
  from lima_jax.train import loop as train
  from lima_jax.decode.sampling import Decoding
  train.train_and_evaluate(tiny_config(**{"train.epochs": 2, "model.dtype": "bfloat16",
                                          "data.eval_fraction": 0.0}), str(tmp_path))
  ckpt = _last_checkpoint(tmp_path)
  mesh = sharding.make_mesh((1, 8, 1))
  dec = Decoding(greedy=True, repetition_penalty=1.0, max_new_tokens=16)
  answers, nbytes = {}, {}
  for dtype in (None, "bfloat16"):
    m = model_file.open(ckpt, mesh=mesh, dtype=dtype)
    params, cfg, tok = m.params, m.config, m.tokenizer
    leaves = jax.tree.leaves(params)
    assert {x.dtype for x in leaves} == {np.dtype(dtype or "float32")}
    nbytes[dtype] = sum(x.nbytes for x in leaves)
    answers[dtype] = decoding.Generator(params, cfg, tok, mesh=mesh).answer(
        [[p] for p in PROMPTS], dec)
  assert nbytes["bfloat16"] * 2 == nbytes[None]
  assert [a.tokens for a in answers["bfloat16"]] == [a.tokens for a in answers[None]]
  assert sum(len(a.tokens) for a in answers[None]) > 10


def test_small_layers_save_without_orbax_chunk_warnings(tmp_path, caplog):
  """Layers under 1 MiB ask orbax for 1 MiB chunks (below that it warns on every save); a
  1 MiB layer still gets a chunk of its own, and slices read back exactly."""
  from lima_jax.formats import checkpoint
  rng = np.random.default_rng(0)
  params = {"layers": {"big": rng.standard_normal((4, 512, 512), np.float32),
                       "small": rng.standard_normal((4, 8, 8), np.float32)},
            "embed": rng.standard_normal((64, 8), np.float32)}
  with caplog.at_level(logging.WARNING):
    checkpoint.save(tmp_path / "c", params, {"step": 0})
  assert "too small" not in caplog.text
  _, stored = checkpoint.read_stored(tmp_path / "c")
  assert stored["layers"]["big"]._store.chunk_layout.read_chunk.shape == (1, 512, 512)
  np.testing.assert_array_equal(stored["layers"]["big"][2], params["layers"]["big"][2])
  np.testing.assert_array_equal(stored["layers"]["small"][3], params["layers"]["small"][3])
  np.testing.assert_array_equal(np.asarray(stored["embed"]), params["embed"])


def _tree_hash(directory: pathlib.Path) -> dict:
  return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def test_training_checkpoints_store_one_layer_per_chunk_and_read_by_slice(run):
  from lima_jax.formats import checkpoint
  workdir, _ = run
  ckpt = _last_checkpoint(workdir)
  full, _ = checkpoint.load_numpy(ckpt)
  meta, stored = checkpoint.read_stored(ckpt)
  assert meta["step"] == int(ckpt.name)
  gate = stored["layers"]["mlp"]["gate"]
  assert gate._store.chunk_layout.read_chunk.shape[0] == 1  # one layer per chunk
  assert gate.shape == full["layers"]["mlp"]["gate"].shape
  np.testing.assert_array_equal(gate[1], full["layers"]["mlp"]["gate"][1])
  np.testing.assert_array_equal(np.asarray(stored["embed"]["embedding"]),
                                full["embed"]["embedding"])


def test_to_hf_from_a_url_equals_the_local_export(run, tmp_path):
  workdir, _ = run
  ckpt = _last_checkpoint(workdir)
  _run("lima_jax.convert", "to-hf", f"--checkpoint={ckpt}", f"--out={tmp_path / 'local'}")
  _run("lima_jax.convert", "to-hf", f"--checkpoint=file://{ckpt}",
       f"--out={tmp_path / 'url'}")
  assert _tree_hash(tmp_path / "local") == _tree_hash(tmp_path / "url")
  r = subprocess.run([sys.executable, "-m", "lima_jax.convert", "to-hf",
                      f"--checkpoint=file://{tmp_path}/nothing", f"--out={tmp_path / 'x'}"],
                     cwd=REPO, capture_output=True, text=True, timeout=300)
  assert r.returncode == 1 and r.stderr.strip().splitlines()[-1].startswith("error: ")
  assert "not a lima_jax checkpoint" in r.stderr and not (tmp_path / "x").exists()
