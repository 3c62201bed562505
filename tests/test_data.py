"""SFT encoding, packing, batching, loading and the `lima_jax.data` CLI."""
import base64
import json
import random
import subprocess
import sys

import numpy as np
import pytest

from lima_jax.data.batches import Encoded, SFTDataset, encode_conversation, load_sft_data, make_rows
from lima_jax.errors import UserError
from lima_jax.tokenizer import train_sentencepiece
from tests.conftest import shared_file

_WORDS = ("the a cat dog sat on mat ran to park and saw big red ball she he loved play outside "
          "in what is your name my happy day one time there was little girl named lily tom").split()
KEYS = ("inputs", "targets", "loss_mask", "segment_ids", "positions")


def sentence(rng, lo=2, hi=12):
  return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(lo, hi)))


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  rng = random.Random(0)
  return train_sentencepiece([sentence(rng) + "." for _ in range(300)], 400,
                             tmp_path_factory.mktemp("tok") / "t.model")


def conversations(n, seed=0, turns=(2, 2, 2, 4)):
  rng = random.Random(seed)
  return [[sentence(rng) for _ in range(rng.choice(turns))] for _ in range(n)]


def write_jsonl(path, convs, source="src"):
  path.write_text("".join(json.dumps({"conversations": c, "source": source}) + "\n"
                          for c in convs))
  return path


def test_mask_and_eot_placement_multi_turn(tok):
  turns = ["the cat sat", "on the mat", "what is your name", "lily"]
  enc = encode_conversation(turns, tok, max_len=1000)
  ids = [tok.encode(t) for t in turns]
  assert enc.tokens.dtype == np.int32 and enc.loss_mask.dtype == bool
  assert enc.tokens[0] == tok.bos_id
  eots = np.flatnonzero(enc.tokens == tok.eot_id)
  assert len(eots) == 4 and eots[-1] == len(enc.tokens) - 1
  # Between consecutive EOTs lies exactly one utterance's tokens.
  bounds = [0] + eots.tolist()
  for k, t in enumerate(ids):
    assert enc.tokens[bounds[k] + 1:bounds[k + 1]].tolist() == t
    span = enc.loss_mask[bounds[k] + 1:bounds[k + 1] + 1]  # the utterance and its EOT
    assert span.all() if k % 2 else not span.any()
  assert not enc.loss_mask[0]
  assert enc.n_loss_tokens == len(ids[1]) + len(ids[3]) + 2
  assert not enc.trimmed and enc.n_trimmed_loss_tokens == 0


def test_trimming_keeps_the_start_and_counts_lost_loss_tokens(tok):
  turns = ["the cat sat on the mat", "a big red ball and a little girl named lily"]
  full = encode_conversation(turns, tok, max_len=1000)
  cut = len(full.tokens) - 3
  enc = encode_conversation(turns, tok, max_len=cut)
  assert enc.trimmed and len(enc.tokens) == cut
  assert enc.tokens.tolist() == full.tokens[:cut].tolist()
  assert enc.n_trimmed_loss_tokens == 3 and enc.n_loss_tokens == full.n_loss_tokens - 3
  prompt_only = encode_conversation(turns, tok, max_len=len(tok.encode(turns[0])) + 2)
  assert prompt_only.trimmed and prompt_only.n_loss_tokens == 0


def _enc(tokens, mask):
  return Encoded(np.array(tokens, np.int32), np.array(mask, bool))


def test_make_rows_docstring_example():
  B, E = 1, 99
  a = _enc([B, 5, E, 7, 8, E], [0, 0, 0, 1, 1, 1])
  b = _enc([B, 6, E, 9, E], [0, 0, 0, 1, 1])
  rows = make_rows([a, b], row_len=10, pack=True)
  assert {k: v.tolist() for k, v in rows.items()} == {
      "inputs": [[B, 5, E, 7, 8, B, 6, E, 9, 0]],
      "targets": [[5, E, 7, 8, E, 6, E, 9, E, 0]],
      "loss_mask": [[0, 0, 1, 1, 1, 0, 0, 1, 1, 0]],
      "segment_ids": [[1, 1, 1, 1, 1, 2, 2, 2, 2, 0]],
      "positions": [[0, 1, 2, 3, 4, 0, 1, 2, 3, 0]],
  }
  assert rows["loss_mask"].dtype == bool and rows["inputs"].dtype == np.int32
  padded = make_rows([a, b], row_len=10, pack=False)
  assert padded["segment_ids"].tolist() == [[1] * 5 + [0] * 5, [1] * 4 + [0] * 6]
  assert padded["targets"][1].tolist() == [6, E, 9, E] + [0] * 6


def test_packing_isolates_conversations(tok):
  encoded = [encode_conversation(c, tok, 64) for c in conversations(12)]
  packed = make_rows(encoded, row_len=64, pack=True)
  single = make_rows(encoded, row_len=64, pack=False)
  assert len(packed["inputs"]) < len(encoded)
  seen = []
  for r in range(len(packed["inputs"])):
    seg = packed["segment_ids"][r]
    for s in range(1, seg.max() + 1):
      where = np.flatnonzero(seg == s)
      assert (np.diff(where) == 1).all()  # contiguous
      assert packed["positions"][r, where].tolist() == list(range(len(where)))
      # The segment is exactly one conversation's shifted row: nothing crosses a boundary.
      match = [i for i in range(len(encoded)) if len(encoded[i].tokens) - 1 == len(where)
               and (single["inputs"][i, :len(where)] == packed["inputs"][r, where]).all()
               and (single["targets"][i, :len(where)] == packed["targets"][r, where]).all()
               and (single["loss_mask"][i, :len(where)] == packed["loss_mask"][r, where]).all()]
      assert match
      seen.append(match[0])
    assert not packed["loss_mask"][r, seg == 0].any()
  assert sorted(seen) == list(range(len(encoded)))


def test_packed_loss_equals_unpacked_loss(tok):
  import jax
  import jax.numpy as jnp
  import optax
  from flax import linen as nn

  from lima_jax.model.transformer import Transformer
  from lima_jax.model.config import get_size

  cfg = get_size("tiny", vocab_size=tok.padded_vocab_size(), max_seq_len=64)
  model = Transformer(cfg)
  # Random weights of the right shapes: running `init` would cost a compile for nothing.
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
  leaves, tree = jax.tree.flatten(nn.meta.unbox(shapes["params"]))
  rng = np.random.default_rng(0)
  params = jax.tree.unflatten(tree, [jnp.asarray(rng.normal(0, 0.1, x.shape), x.dtype)
                                     for x in leaves])
  encoded = [encode_conversation(c, tok, 48) for c in conversations(6, seed=1)]

  @jax.jit
  def loss_sums(rows):
    logits = model.apply({"params": params}, rows["inputs"], positions=rows["positions"],
                         segment_ids=rows["segment_ids"])
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, rows["targets"])
    return jnp.sum(jnp.where(rows["loss_mask"], nll, 0.0)), rows["loss_mask"].sum()

  def loss(rows):
    total, count = loss_sums(rows)
    return float(total / count)

  packed = make_rows(encoded, row_len=64, pack=True)
  assert len(packed["inputs"]) < len(encoded) and packed["segment_ids"].max() > 1
  unpacked = make_rows(encoded, row_len=64, pack=False)
  # All-padding rows to one shape (one compile); they must not change the loss either.
  packed = {k: np.concatenate([v, np.zeros((len(encoded) - len(v), 64), v.dtype)])
            for k, v in packed.items()}
  assert loss(packed) == pytest.approx(loss(unpacked), rel=1e-5)
  # The equality is not trivial: packing without segment ids mixes conversations.
  leaky = dict(packed, segment_ids=(packed["segment_ids"] > 0).astype(np.int32))
  assert abs(loss(leaky) - loss(unpacked)) > 1e-4


def _dataset(tok, n=23, **kw):
  encoded = [encode_conversation(c, tok, 64) for c in conversations(n)]
  args = dict(global_batch=4, row_len=64, pack=False, seed=3)
  args.update(kw)
  return SFTDataset(encoded, **args)


def _rows_of(ds, batch):
  """Example index of each non-padding row (pad mode)."""
  out = []
  for r in range(len(batch["inputs"])):
    n = int((batch["segment_ids"][r] > 0).sum())
    out.append(None if n == 0 else next(
        i for i, e in enumerate(ds.encoded) if len(e.tokens) - 1 == n
        and (e.tokens[:-1] == batch["inputs"][r, :n]).all()))
  return out


def test_batches_are_a_pure_function_of_seed_and_step(tok):
  ds = _dataset(tok)
  assert ds.steps_in_epoch(0) == 6 and ds.total_steps(3) == 18  # ceil(23 / 4)
  assert ds.locate(0) == (0, 0) and ds.locate(5) == (0, 5) and ds.locate(13) == (2, 1)
  later = [ds.batch(s) for s in (13, 2, 7)]
  fresh = _dataset(tok)  # as after a restart
  for s, b in zip((13, 2, 7), later):
    for k in KEYS:
      assert np.array_equal(fresh.batch(s)[k], b[k])
  epoch0 = [i for s in range(6) for i in _rows_of(ds, ds.batch(s))]
  epoch1 = [i for s in range(6, 12) for i in _rows_of(ds, ds.batch(s))]
  assert sorted(i for i in epoch0 if i is not None) == list(range(23))
  assert epoch0.count(None) == 1  # the last batch of 4 holds 3 examples and 1 padding row
  assert epoch0 != epoch1  # reshuffled each epoch
  other_seed = _dataset(tok, seed=4)
  assert [i for i in _rows_of(other_seed, other_seed.batch(0))] != epoch0[:4]


def test_no_batch_without_loss_and_padding_rows_are_inert(tok):
  for pack in (False, True):
    ds = _dataset(tok, pack=pack, global_batch=8)
    for step in range(ds.total_steps(4)):
      b = ds.batch(step)
      assert b["loss_mask"].any()
      pad_rows = b["segment_ids"].max(axis=1) == 0
      assert not b["loss_mask"][pad_rows].any()
    with pytest.raises(ValueError, match="step must be >= 0"):
      ds.batch(-1)
  dropped = _dataset(tok, drop_remainder=True)
  assert dropped.steps_in_epoch(0) == 5
  with pytest.raises(UserError, match="larger than the 23 rows"):
    _dataset(tok, global_batch=24, drop_remainder=True)


def test_packed_epochs_cover_every_example_once(tok):
  ds = _dataset(tok, n=30, pack=True, global_batch=2)
  for epoch in range(2):
    first = sum(ds.steps_in_epoch(e) for e in range(epoch))
    batches = [ds.batch(first + s) for s in range(ds.steps_in_epoch(epoch))]
    n_segments = sum(int(b["segment_ids"].max(axis=1).sum()) for b in batches)
    loss_tokens = sum(int(b["loss_mask"].sum()) for b in batches)
    assert n_segments == 30 and loss_tokens == ds.num_loss_tokens
  assert ds.steps_in_epoch(0) < 15  # packing really reduced the rows
  late = ds.total_steps(3) - 1
  fresh = _dataset(tok, n=30, pack=True, global_batch=2)  # resumed: jumps straight to `late`
  for k in KEYS:
    assert np.array_equal(fresh.batch(late)[k], ds.batch(late)[k])


@pytest.mark.parametrize("pack", [False, True])
def test_any_rows_of_the_global_batch(tok, pack):
  # A host feeds the rows its devices hold, in any pattern (e.g. [0, 1, 4, 5] under
  # accumulation): each must be exactly that row of the global batch, replicas identical.
  ds = _dataset(tok, pack=pack)
  for step in (0, 5, 9):
    whole = ds.batch(step)
    assert whole["inputs"].shape == (4, 64)
    for rows in ([0, 1], [2, 3], [0, 2], [3], [1, 1]):
      part = ds.batch(step, rows)
      for k in KEYS:
        assert np.array_equal(part[k], whole[k][rows]), (step, rows, k)
  evals = list(ds.eval_batches([3, 0]))
  for got, w in zip(evals, ds.eval_batches()):
    for k in KEYS:
      assert np.array_equal(got[k], w[k][[3, 0]])


def _examples_of(ds, batch):
  """Example index of every segment of every row (packed or not), in row order."""
  out = []
  for r in range(len(batch["inputs"])):
    for seg in range(1, int(batch["segment_ids"][r].max()) + 1):
      inputs = batch["inputs"][r][batch["segment_ids"][r] == seg]
      out.append(next(i for i, e in enumerate(ds.encoded)
                      if len(e.tokens) - 1 == len(inputs) and (e.tokens[:-1] == inputs).all()))
  return out


@pytest.mark.parametrize("pack", [False, True])
def test_epoch_examples_draw_fresh_distinct_subsets_and_resume_exactly(tok, pack):
  ds = _dataset(tok, pack=pack, global_batch=2, epoch_examples=5)  # 23 examples, 5 an epoch
  assert ds.examples_per_epoch == 5 and ds.num_examples == 23
  seen = []
  for epoch in range(6):
    first = ds.total_steps(epoch)
    steps = ds.steps_in_epoch(epoch)
    if not pack:
      assert steps == 3  # ceil(5 / 2), not ceil(23 / 2)
    assert ds.locate(first) == (epoch, 0) and ds.locate(first + steps - 1) == (epoch, steps - 1)
    seen.append([i for s in range(steps) for i in _examples_of(ds, ds.batch(first + s))])
  for epoch in seen:
    assert len(epoch) == 5 and len(set(epoch)) == 5  # M distinct examples, each once
  # A pass of 23 // 5 = 4 epochs never repeats an example; the next pass draws afresh.
  assert len(set().union(*map(set, seen[:4]))) == 20
  assert len({frozenset(e) for e in seen}) == 6  # every epoch's subset differs
  assert seen[4] != seen[0]
  # Resumed: a fresh dataset jumps straight to a late step, rows in any pattern.
  late = ds.total_steps(5) + 1
  fresh = _dataset(tok, pack=pack, global_batch=2, epoch_examples=5)
  for rows in (None, [1], [1, 0]):
    for k in KEYS:
      assert np.array_equal(fresh.batch(late, rows)[k], ds.batch(late, rows)[k])
  assert _dataset(tok, pack=pack, global_batch=2, epoch_examples=5, seed=4).fingerprint() \
      != ds.fingerprint() != _dataset(tok, pack=pack, global_batch=2).fingerprint()


def test_epoch_examples_at_or_past_the_set_is_off(tok):
  off = _dataset(tok, pack=True)
  for m in (23, 100):
    same = _dataset(tok, pack=True, epoch_examples=m)
    assert same.epoch_examples == 0 and same.fingerprint() == off.fingerprint()
    assert same.total_steps(3) == off.total_steps(3)
    for step in range(off.total_steps(3)):
      for k in KEYS:
        assert np.array_equal(same.batch(step)[k], off.batch(step)[k])
  with pytest.raises(ValueError, match="epoch_examples -1"):
    _dataset(tok, epoch_examples=-1)


def test_fingerprint_sees_data_and_settings(tok):
  a, b = _dataset(tok), _dataset(tok)
  assert a.fingerprint() == b.fingerprint()
  assert _dataset(tok, pack=True).fingerprint() != a.fingerprint()
  assert _dataset(tok, global_batch=2).fingerprint() != a.fingerprint()
  changed = _dataset(tok)
  changed.encoded[3] = Encoded(changed.encoded[3].tokens[::-1].copy(), changed.encoded[3].loss_mask)
  assert changed.fingerprint() != a.fingerprint()


def test_eval_batches_in_order(tok):
  ds = _dataset(tok, n=10)
  batches = list(ds.eval_batches())
  assert len(batches) == 3 and all(b["inputs"].shape == (4, 64) for b in batches)
  order = [i for b in batches for i in _rows_of(ds, b)]
  assert order == list(range(10)) + [None, None]


def test_load_sft_data_split_subset_and_report(tok, tmp_path):
  path = write_jsonl(tmp_path / "a.jsonl", conversations(40))
  other = write_jsonl(tmp_path / "b.jsonl", conversations(10, seed=5), source="other")
  kw = dict(max_len=64, pack=False, global_batch=4, seed=0)
  train, evals, report = load_sft_data([path, other], tok, eval_fraction=0.2, **kw)
  assert report["eval"]["examples"] == 10 and report["train"]["examples"] == 40
  assert report["train"]["sources"]["src"] + report["eval"]["sources"].get("src", 0) == 40
  assert report["train"]["loss_tokens"] == train.num_loss_tokens
  assert report["skipped_rows"] == 0 and report["dropped_no_loss"] == 0
  json.dumps(report)
  train_set = {e.tokens.tobytes() for e in train.encoded}
  eval_set = {e.tokens.tobytes() for e in evals.encoded}
  assert not train_set & eval_set
  # A subset ablation keeps the same held-out set and draws from the training side.
  sub, sub_eval, sub_report = load_sft_data(f"{path},{other}", tok, eval_fraction=0.2,
                                            subset_size=15, **kw)
  assert {e.tokens.tobytes() for e in sub_eval.encoded} == eval_set
  assert sub.num_examples == 15 and {e.tokens.tobytes() for e in sub.encoded} <= train_set
  again, _, _ = load_sft_data([path, other], tok, eval_fraction=0.2, subset_size=15, **kw)
  assert [e.tokens.tolist() for e in again.encoded] == [e.tokens.tolist() for e in sub.encoded]
  with pytest.raises(UserError, match="subset size 41 > the 40 usable"):
    load_sft_data([path, other], tok, eval_fraction=0.2, subset_size=41, **kw)
  _, files_eval, _ = load_sft_data([path], tok, eval_files=[other], **kw)
  assert files_eval.num_examples == 10
  # Per-epoch draws come from the subset, and leave the held-out set where it was.
  drawn, drawn_eval, drawn_report = load_sft_data([path, other], tok, eval_fraction=0.2,
                                                  subset_size=15, epoch_examples=6, **kw)
  assert {e.tokens.tobytes() for e in drawn_eval.encoded} == eval_set
  assert [e.tokens.tolist() for e in drawn.encoded] == [e.tokens.tolist() for e in sub.encoded]
  assert drawn.examples_per_epoch == 6 and drawn.steps_in_epoch(1) == 2  # ceil(6 / 4)
  assert drawn_report["train"]["epoch_examples"] == 6
  assert "epoch_examples" not in sub_report["train"]
  with pytest.raises(UserError, match=r"^data.epoch_examples=-1: must be 0"):
    load_sft_data([path, other], tok, epoch_examples=-1, **kw)


def test_load_sft_data_drops_trims_and_skips(tok, tmp_path):
  long_prompt = " ".join(["the cat sat on the mat"] * 30)
  rows = [json.dumps({"conversations": c}) for c in conversations(5)]
  rows += [json.dumps({"conversations": [long_prompt, "lily"]}), "{broken",
           json.dumps({"conversations": ["q"] + [" ".join(["a big red ball"] * 30)]}),
           json.dumps({"conversations": ["hi", "ok", "and then?"]})]
  path = tmp_path / "mixed.jsonl"
  path.write_text("\n".join(rows) + "\n")
  kw = dict(max_len=64, pack=True, global_batch=2, seed=0)
  with pytest.raises(UserError, match=f"{path}:7: malformed JSON"):
    load_sft_data([path], tok, **kw)
  train, evals, report = load_sft_data([path], tok, on_error="skip", **kw)
  assert evals is None
  assert report["skipped_rows"] == 1 and report["problems"][0].startswith(f"{path}:7:")
  assert report["dropped_no_loss"] == 1  # the long prompt left no reply after trimming
  assert report["dropped_trailing_turns"] == 1
  assert report["train"]["examples"] == train.num_examples == 7
  assert report["train"]["trimmed"] == 1 and report["train"]["trimmed_loss_tokens"] > 0


def test_load_sft_data_with_nothing_usable(tok, tmp_path):
  long_prompt = " ".join(["the cat sat on the mat"] * 30)
  path = write_jsonl(tmp_path / "hopeless.jsonl", [[long_prompt, "lily"]])
  with pytest.raises(UserError, match=f"{path}: no usable conversation"):
    load_sft_data([path], tok, max_len=32, pack=False, global_batch=1, seed=0)
  empty = tmp_path / "empty.jsonl"
  empty.write_text("\n")
  with pytest.raises(UserError, match=f"{empty}: no conversation could be read"):
    load_sft_data(str(empty), tok, max_len=32, pack=False, global_batch=1, seed=0)


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "lima_jax.data", *args], capture_output=True,
                        text=True, timeout=120)


def test_cli_stats_on_lima():
  path = shared_file("lima/train.jsonl")
  tokenizer = shared_file("llama2c/llama_tokenizer/tokenizer.model")
  result = _cli("stats", f"--data={path}", f"--tokenizer={tokenizer}", "--max_len=2048")
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert lines[0].startswith(f"{path}: 1030 conversations; skipped rows: 0; "
                             "trailing user turns dropped: 1")
  counts = {line.split()[0]: int(line.split()[1]) for line in lines[2:9]}
  assert counts == {"stackexchange": 400, "authors": 200, "wikihow": 200, "nlp": 50,
                    "writingprompts": 150, "multi_turn": 30, "all": 1030}
  # LIMA's Table 1: wikiHow prompts are short and its answers the longest.
  stats = {line.split()[0]: line.split() for line in lines[2:9]}
  assert float(stats["wikihow"][2]) < 20 and float(stats["wikihow"][6]) > 1500
  assert "trimmed to max_len=2048" in result.stdout


def test_cli_show_and_character_stats(tok, tmp_path):
  model = tmp_path / "t.model"
  model.write_bytes(base64.b64decode(tok.to_meta()["model"]))
  path = write_jsonl(tmp_path / "c.jsonl", [["the cat sat", "on the mat"]])
  shown = _cli("show", f"--data={path}", "--index=0", f"--tokenizer={model}", "--color=never")
  assert shown.returncode == 0, shown.stderr
  assert shown.stdout.splitlines()[-1] == "<s>the cat sat<eot>⟦on the mat<eot>⟧"
  chars = _cli("stats", f"--data={path}")
  assert chars.returncode == 0 and "prompt characters" in chars.stdout
  assert chars.stdout.splitlines()[2].split()[:4] == ["src", "1", "11.0", "11.0"]


def test_cli_bad_input_is_one_line(tok, tmp_path):
  path = tmp_path / "bad.jsonl"
  path.write_text('{"conversations": ["q", "a"]}\n{"conversations": ["q", 5]}\n')
  result = _cli("stats", f"--data={path}")
  assert result.returncode == 1
  assert result.stderr.strip().splitlines() == [
      f"error: {path}:2: conversations[1] must be a string, got a number"]
  no_tok = _cli("show", f"--data={path}", "--on_error=skip",
                f"--tokenizer={tmp_path / 'none.model'}")
  assert no_tok.returncode == 1
  assert no_tok.stderr.strip().splitlines()[-1].startswith(
      f"error: {tmp_path / 'none.model'}: cannot read")
  model = tmp_path / "t.model"
  model.write_bytes(base64.b64decode(tok.to_meta()["model"]))
  out_of_range = _cli("show", f"--data={path}", "--on_error=skip", "--index=1",
                      f"--tokenizer={model}")
  assert out_of_range.returncode == 1
  assert out_of_range.stderr.strip().splitlines() == [
      f"skipped {path}:2: conversations[1] must be a string, got a number",
      f"error: --index=1: {path} hold 1 conversations (0-based)"]
  assert _cli("count", f"--data={path}").stderr.startswith("error: expected one command")


def test_plain_documents_learn_every_token_and_pack_isolated(tok, tmp_path):
  # Pretraining rows: BOS, text, EOS; every target after BOS is learned, documents never
  # attend across each other when packed.
  docs = tmp_path / "docs.jsonl"
  texts = ["the cat sat on the mat.", "a dog ran far away today."]
  docs.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
  train, _, report = load_sft_data(str(docs), tok, max_len=64, pack=True, global_batch=1,
                                   seed=0)
  assert report["train"]["examples"] == 2 and report["dropped_no_loss"] == 0
  row = train.batch(0)
  ids = [tok.encode(t) for t in texts]
  n_targets = sum(len(i) + 1 for i in ids)  # each text's tokens plus its EOS
  assert row["loss_mask"].sum() == n_targets
  inputs, targets = row["inputs"][0], row["targets"][0]
  seg = row["segment_ids"][0]
  for s in (1, 2):
    where = seg == s
    assert inputs[where][0] == tok.bos_id and targets[where][-1] == tok.eos_id
    assert row["positions"][0][where][0] == 0
  assert set(targets[row["loss_mask"][0]]) >= {tok.eos_id}


def test_plain_document_file_errors_name_the_line(tok, tmp_path):
  bad = tmp_path / "bad.jsonl"
  bad.write_text(json.dumps({"text": "fine words here"}) + "\n" + json.dumps({"text": 3}) + "\n")
  with pytest.raises(UserError, match=r"bad.jsonl:2: text must be a string, got a number"):
    load_sft_data(str(bad), tok, max_len=64, pack=True, global_batch=1, seed=0)
  mixed = tmp_path / "mixed.jsonl"
  mixed.write_text(json.dumps({"text": "fine words"}) + "\n"
                   + json.dumps({"conversations": ["q", "a"]}) + "\n")
  with pytest.raises(UserError, match=r"mixed.jsonl:2: missing field 'text'"):
    load_sft_data(str(mixed), tok, max_len=64, pack=True, global_batch=1, seed=0)
