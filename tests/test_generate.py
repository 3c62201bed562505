"""Generation: LIMA's token choice against hand-computed distributions, the KV-cached decoder
against full recomputation (batched, on a mesh and on one device), stopping, budgets, the CLI
and the chat loop. Parity with transformers' `generate` is in test_export.py."""
import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import random_tiny_model
from lima_jax.decode import answer
from lima_jax.decode.prompts import read_prompts
from lima_jax.formats import checkpoint
from lima_jax.decode import generator as decoding
from lima_jax.decode import sampling
from lima_jax.parallel import sharding
from lima_jax.model import transformer as M
from lima_jax.decode.sampling import Decoding
from lima_jax.errors import UserError

REPO = pathlib.Path(__file__).resolve().parents[1]
CONVS = [["What is the capital of France?"],
         ["Hi"],
         ["Write a short poem about the sea, with waves and wind and salt in every line."],
         ["How many legs does a spider have?", "Eight.", "And an ant?"]]
PLAIN = Decoding(greedy=True, repetition_penalty=1.0, max_new_tokens=12)
SAMPLE = Decoding(max_new_tokens=12)  # LIMA's


@pytest.fixture(scope="module")
def model():
  """A random tiny model with the demo tokenizer; vocab rows 514..639 are sharding padding."""
  return random_tiny_model()


@pytest.fixture(scope="module")
def gen(model):
  return decoding.Generator(*model, batch_size=4)


def _prompts(tok):
  return [decoding.render_prompt(c, tok) for c in CONVS]


# --- token choice, by hand ------------------------------------------------------------------

def test_repetition_penalty_divides_positive_and_multiplies_negative_seen_logits():
  logits = jnp.array([[2.0, -1.0, 0.5, 0.0, -3.0]])
  seen = jnp.array([[True, True, False, True, False]])
  got = sampling.repetition_penalty(logits, seen, 2.0)
  np.testing.assert_allclose(got, [[1.0, -2.0, 0.5, 0.0, -3.0]])
  # Greedy takes the argmax after the penalty: 2.0 / 1.2 = 1.67 < 1.9.
  logits = jnp.array([[2.0, 1.9, 0.0]])
  seen = jnp.array([[True, False, False]])
  pick = lambda pen: int(sampling.next_tokens(
      logits, seen, None, Decoding(greedy=True, repetition_penalty=pen), 3)[0])
  assert (pick(1.0), pick(1.2)) == (0, 1)


def test_top_k_and_top_p_keep_the_right_tokens():
  logits = jnp.log(jnp.array([[0.1, 0.5, 0.15, 0.25]]))
  keep = lambda x: np.isfinite(np.asarray(x))[0].tolist()
  assert keep(sampling.top_k_filter(logits, 2)) == [False, True, False, True]
  # Mass before each token, most likely first: 0.5 -> 0, 0.25 -> 0.5, 0.15 -> 0.75, 0.1 -> 0.9.
  assert keep(sampling.top_p_filter(logits, 0.5)) == [False, True, False, False]
  assert keep(sampling.top_p_filter(logits, 0.7)) == [False, True, False, True]
  assert keep(sampling.top_p_filter(logits, 0.76)) == [False, True, True, True]
  assert keep(sampling.top_p_filter(logits, 0.95)) == [True, True, True, True]
  assert keep(sampling.top_p_filter(logits, 0.01)) == [False, True, False, False]


def test_lima_decoding_distribution_by_hand_and_sampled_frequencies():
  # Vocabulary of 5 (+1 padding row with the largest logit); tokens 0 and 3 already generated.
  logits = jnp.array([[2.0, 1.0, 0.5, -1.0, 0.0, 9.0]])
  seen = jnp.array([[True, False, False, True, False, False]])
  # By hand: penalty 1.2 (2.0 -> 2/1.2, -1.0 -> -1.2), then temperature 0.7.
  z = np.array([2.0 / 1.2, 1.0, 0.5, -1.2, 0.0]) / 0.7
  p = np.exp(z) / np.exp(z).sum()  # ~ [0.594, 0.229, 0.112, 0.010, 0.055]
  # Nucleus 0.9: the two most likely hold 0.823 < 0.9, so the third completes it; 4 and 3 go.
  assert p[0] + p[1] < 0.9 <= p[0] + p[1] + p[2]
  expected = np.array([p[0], p[1], p[2], 0.0, 0.0, 0.0]) / (p[0] + p[1] + p[2])
  np.testing.assert_allclose(expected[:3], [0.635, 0.245, 0.120], atol=1e-3)

  greedy = Decoding(greedy=True, repetition_penalty=1.2)
  assert int(sampling.next_tokens(logits, seen, None, greedy, 5)[0]) == 0  # not padding row 5
  filtered = sampling.processed_logits(logits, seen, sampling.LIMA, vocab_size=5)
  np.testing.assert_allclose(jax.nn.softmax(filtered)[0], expected, atol=1e-6)

  n = 20000
  keys = jax.random.split(jax.random.key(0), n)
  draw = jax.jit(lambda k: sampling.next_tokens(jnp.repeat(logits, n, 0), jnp.repeat(seen, n, 0),
                                                k, sampling.LIMA, 5))
  draws = np.asarray(draw(keys))
  freq = np.bincount(draws, minlength=6) / n
  assert freq[3:].sum() == 0  # filtered and padding tokens are never drawn
  np.testing.assert_allclose(freq, expected, atol=4 * np.sqrt(0.25 / n))


def test_decoding_rejects_bad_settings():
  with pytest.raises(UserError, match="temperature=0 must be > 0; top_p=1.5"):
    Decoding(top_p=1.5, temperature=0)


# --- the cached decoder -----------------------------------------------------------------------

def test_cached_greedy_equals_recomputation_batched_and_on_a_mesh(model, gen):
  params, cfg, tok = model
  prompts = _prompts(tok)
  assert len({len(p) for p in prompts}) == len(prompts)
  stops = (tok.eot_id, tok.eos_id)
  ref = decoding.recompute_greedy(params, cfg, tok.vocab_size, prompts, PLAIN.max_new_tokens,
                                  stops, decoding.banned_ids(tok, stops))
  assert len({tuple(r) for r in ref}) == len(ref) and max(map(len, ref)) >= 6
  assert [ids for ids, _ in gen.answer_ids(prompts, PLAIN)] == ref
  # The public helper the trainer calls: greedy texts of the same tokens.
  assert answer.generate(params, cfg, tok, CONVS, max_new_tokens=12) == [
      tok.decode(r) for r in ref]

  mesh = sharding.make_mesh((2, 2, 2))
  boxed = jax.eval_shape(lambda: M.Transformer(cfg).init(
      jax.random.key(0), jnp.zeros((1, 4), jnp.int32)))["params"]
  placed = jax.device_put(params, sharding.logical_shardings(boxed, mesh))
  assert placed["layers"]["attn"]["q"].sharding.spec != jax.sharding.PartitionSpec()
  on_mesh = decoding.Generator(placed, cfg, tok, mesh=mesh, batch_size=4)
  assert [ids for ids, _ in on_mesh.answer_ids(prompts, PLAIN)] == ref


def test_rows_stop_on_their_own_at_a_stop_id_or_at_their_budget(model):
  params, cfg, tok = model
  long_prompt = list(range(3, 3 + cfg.max_seq_len - 5))  # room for 5 tokens in the context
  prompts = _prompts(tok) + [long_prompt]
  free = decoding.Generator(params, cfg, tok, batch_size=4, stop_ids=())
  full = [ids for ids, _ in free.answer_ids(prompts, PLAIN)]
  assert [len(ids) for ids in full] == [12, 12, 12, 12, 5]
  stop = full[0][3]
  cut = [ids[:ids.index(stop)] if stop in ids else ids for ids in full]
  assert len(cut[0]) <= 3 and any(c == f for c, f in zip(cut, full))  # some rows never see it
  got = decoding.Generator(params, cfg, tok, batch_size=4, stop_ids=(stop,)).answer_ids(
      prompts, PLAIN)
  assert [ids for ids, _ in got] == cut
  assert [s for _, s in got] == [stop in ids for ids in full]
  with pytest.raises(UserError, match="prompt 1: 128 tokens; the model's context is 128"):
    free.answer_ids([long_prompt, list(range(128))], PLAIN)
  with pytest.raises(UserError, match="must end on a user turn"):
    decoding.render_prompt(["question", "answer"], tok)


def test_padding_vocab_rows_are_never_generated(model, gen, monkeypatch):
  params, cfg, tok = model
  # Every token embeds to ones and the layers add nothing, so every final hidden state is the
  # final norm's scale; padding rows of the output matrix along it win every argmax by far.
  layers = dict(params["layers"])
  layers["attn"] = {**layers["attn"], "o": jnp.zeros_like(layers["attn"]["o"])}
  layers["mlp"] = {**layers["mlp"], "down": jnp.zeros_like(layers["mlp"]["down"])}
  head = np.array(params["lm_head"]["kernel"])
  head[:, tok.vocab_size:] = 10 * np.asarray(params["final_norm"]["scale"])[:, None]
  rigged = {**params, "embed": {"embedding": jnp.ones_like(params["embed"]["embedding"])},
            "layers": layers, "lm_head": {"kernel": jnp.asarray(head)}}
  prompts = _prompts(tok)
  logits = np.asarray(params["final_norm"]["scale"]) @ head  # RMSNorm(ones) * scale = scale
  assert np.argmax(logits) >= tok.vocab_size  # the trap is real
  monkeypatch.setattr(gen, "params", rigged)
  for dec in (PLAIN, SAMPLE):
    answers = gen.answer_ids(prompts, dec)
    assert all(len(ids) == 12 for ids, _ in answers)
    assert all(0 <= t < tok.vocab_size for ids, _ in answers for t in ids)


def test_sampling_is_seeded_and_independent_of_the_batch(model, gen):
  params, cfg, tok = model
  prompts = _prompts(tok)
  batched = gen.answer_ids(prompts, SAMPLE, seed=3)
  one = decoding.Generator(params, cfg, tok, batch_size=1)  # one prompt at a time, unpadded
  assert one.answer_ids(prompts, SAMPLE, seed=3) == batched
  assert gen.answer_ids(prompts, SAMPLE, seed=4) != batched


def test_chat_keeps_the_history(model, gen, monkeypatch, capsys):
  params, cfg, tok = model
  lines = iter(["What is the capital of France?", "", "And of Spain?", "/reset", "Hi", "/quit"])
  monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
  seen = []
  real = gen.answer
  monkeypatch.setattr(gen, "answer", lambda convs, *a, **k: seen.append(convs[0]) or real(
      convs, *a, **k))
  answer.chat(gen, PLAIN, seed=0)
  assert [len(c) for c in seen] == [1, 3, 1]
  assert seen[1][:1] == ["What is the capital of France?"] and seen[1][2] == "And of Spain?"
  assert seen[1][1] == real([seen[0]], PLAIN, 0)[0].text  # the model's own first answer
  assert seen[2] == ["Hi"]
  assert capsys.readouterr().out.count("assistant> ") == 3


# --- command line -----------------------------------------------------------------------------

def _cli(*args):
  return subprocess.run([sys.executable, "-m", "lima_jax.generate", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=300)


def test_cli_answers_a_prompts_file(model, tmp_path):
  params, cfg, tok = model
  ckpt = tmp_path / "ckpt"
  checkpoint.save(ckpt, params, {"model_config": cfg.to_dict(), "tokenizer": tok.to_meta(),
                                 "step": 0, "epoch": 0})
  rows = [{"id": "lima-0", "conversations": CONVS[0]}, {"prompt": CONVS[1][0], "extra": 7},
          {"conversations": [{"role": "user", "content": t} if i % 2 == 0 else
                             {"role": "assistant", "content": t} for i, t in enumerate(CONVS[3])]}]
  prompts = tmp_path / "prompts.jsonl"
  prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
  out = tmp_path / "out.jsonl"
  r = _cli(f"--checkpoint={ckpt}", f"--prompts={prompts}", f"--out={out}", "--greedy",
           "--repetition_penalty=1", "--max_new_tokens=12", "--batch_size=2")
  assert r.returncode == 0, r.stderr
  assert "tokens/s" in r.stdout
  got = [json.loads(l) for l in out.read_text().splitlines()]
  want = decoding.recompute_greedy(params, cfg, tok.vocab_size,
                                   [decoding.render_prompt(c, tok) for c in CONVS[:2] + CONVS[3:]],
                                   12, (tok.eot_id, tok.eos_id),
                                   decoding.banned_ids(tok, (tok.eot_id, tok.eos_id)))
  assert [{k: g[k] for k in r_} for g, r_ in zip(got, rows)] == rows  # input fields kept
  assert [g["answer"] for g in got] == [tok.decode(w) for w in want]
  assert [g["n_tokens"] for g in got] == [len(w) for w in want]


def test_bos_and_pad_are_never_emitted(model):
  """A tokenizer whose BOS is the token greedy decoding would pick first: that token is
  never emitted; the answer is the reference's with the same ids banned."""
  params, cfg, tok = model
  prompt = _prompts(tok)[:1]
  first = decoding.recompute_greedy(params, cfg, tok.vocab_size, prompt, 1)[0][0]
  assert tok.bos_id != first and tok.pad_id != first

  class BosIsFirst:  # the real tokenizer, but with BOS where greedy would go
    def __getattr__(self, name):
      return getattr(tok, name)
    bos_id = first

  odd = BosIsFirst()
  assert decoding.banned_ids(odd, (tok.eot_id,)) == tuple(sorted({first, tok.pad_id}))
  dec = Decoding(greedy=True, repetition_penalty=1.0, max_new_tokens=8)
  ids, _ = decoding.Generator(params, cfg, odd, batch_size=2).answer_ids(prompt, dec)[0]
  assert first not in ids and tok.pad_id not in ids
  assert ids == decoding.recompute_greedy(params, cfg, tok.vocab_size, prompt, 8,
                                          (tok.eot_id, tok.eos_id), (first, tok.pad_id))[0]
  mask = sampling.allowed(8, 6, (1, 3))
  assert mask.tolist() == [True, False, True, False, True, True, False, False]


def test_read_prompts_names_the_line_at_fault(tmp_path):
  cases = [('{"conversations": ["q"]}\n{"conversations": ["q", "a"]}\n',
            "p.jsonl:2: 'conversations' ends on an assistant turn"),
           ('{"conversations": ["q"]}\n\n{oops\n', "p.jsonl:3: invalid JSON"),
           ('{"text": "q"}\n', "p.jsonl:1: needs 'conversations'"),
           ('{"conversations": ["q", 3, "r"]}\n', "p.jsonl:1: 'conversations' must hold strings"),
           ('\n', "p.jsonl: no prompts")]
  path = tmp_path / "p.jsonl"
  for text, message in cases:
    path.write_text(text)
    with pytest.raises(UserError, match=message):
      read_prompts(path)


def test_cli_bad_input_is_one_line_and_leaves_the_output_alone(tmp_path):
  out = tmp_path / "out.jsonl"
  out.write_text("good\n")
  cases = [('{"conversations": ["q"]}\n{oops\n', "prompts.jsonl:2: invalid JSON"),
           ('{"conversations": ["q"]}\n', "nope: no such checkpoint directory or model file")]
  for text, message in cases:
    (tmp_path / "prompts.jsonl").write_text(text)
    r = _cli(f"--checkpoint={tmp_path / 'nope'}", f"--prompts={tmp_path / 'prompts.jsonl'}",
             f"--out={out}")
    assert r.returncode == 1
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
  assert out.read_text() == "good\n"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl", "prompts.jsonl"]


def test_mesh_flags_parse_once_for_every_cli():
  assert sharding.parse_mesh_shape("1,-1,1") == (1, -1, 1)
  assert sharding.parse_mesh_shape(["2", "2", "2"]) == (2, 2, 2)  # as absl's list flags give it
  with pytest.raises(UserError, match=r"--mesh=1,x,1: expected three integers"):
    sharding.parse_mesh_shape("1,x,1")


def test_an_untrained_eot_row_is_a_copy_of_the_line_break_row():
  """A model answered as it is in LIMA's format reads EOT as its line break: the EOT row of the
  embedding and of an untied lm_head copies the newline token's (SentencePiece: the last of
  '▁', '<0x0A>'); every other row is kept."""
  class Tok:
    eot_id = 6

    def encode(self, text):
      return [1, 3] if text == "\n" else [4]
  emb = np.arange(8 * 2, dtype=np.float32).reshape(8, 2)  # V=8, D=2
  head = np.arange(2 * 8, dtype=np.float32).reshape(2, 8) + 100
  out = answer.eot_as_line_break({"embed": {"embedding": jnp.asarray(emb)},
                                  "lm_head": {"kernel": jnp.asarray(head)}}, Tok())
  want_emb, want_head = emb.copy(), head.copy()
  want_emb[6], want_head[:, 6] = emb[3], head[:, 3]
  np.testing.assert_array_equal(out["embed"]["embedding"], want_emb)
  np.testing.assert_array_equal(out["lm_head"]["kernel"], want_head)
