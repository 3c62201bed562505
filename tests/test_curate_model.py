"""Model-based curation scores (IFD, loss, consistency, influence) with a tiny random LLaMA."""
import dataclasses
import pathlib

from flax import linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import curate as curate_config
from lima_jax.formats import checkpoint
from lima_jax.model import transformer as model_lib
from lima_jax.curate import model_scores, pipeline, selectors
from lima_jax.datasets import Record
from lima_jax.model.config import get_size
from lima_jax.tokenizer import load as load_tokenizer

TOKENIZER = pathlib.Path(__file__).resolve().parents[1] / "data" / "demo" / "tokenizer.model"
MAX_LEN = 32

RECORDS = [
    Record(("Name a colour.", "Blue."), "s", "r0"),
    Record(("What do cats eat?", "Cats eat fish, meat and dry food from the shop."), "s", "r1"),
    Record(("Say hello to a friend.", "Hello there, my friend!"), "s", "r2"),
    Record(("Tell me a story about a dragon.",
            "Once upon a time a dragon lived by the sea. It was kind and it loved the waves."),
           "s", "r3"),
    Record(("Count to three.", "One, two, three.", "And back?", "Three, two, one."), "s", "r4"),
]


@pytest.fixture(scope="module")
def scorer():
  tok = load_tokenizer(TOKENIZER)
  cfg = get_size("tiny", vocab_size=tok.padded_vocab_size())
  model = model_lib.Transformer(cfg)
  params = nn.unbox(jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
  return model_scores.Scorer(model, params, tok, MAX_LEN)


def reference_loss(scorer, encoded):
  """Mean NLL of one unpadded sequence, straight from the logits."""
  logits = jax.jit(scorer.model.apply)({"params": scorer.params},
                                       jnp.asarray(encoded.tokens[None, :-1]))
  logp = jax.nn.log_softmax(np.asarray(logits[0], np.float64), axis=-1)
  nll = -np.take_along_axis(np.asarray(logp), encoded.tokens[1:, None], axis=-1)[:, 0]
  return nll[encoded.loss_mask[1:]].mean()


def test_batched_padded_losses_match_one_sequence_at_a_time(scorer):
  from lima_jax.data import batches as data  # pylint: disable=g-import-not-at-top
  encoded = [data.encode_conversation(r.conversations, scorer.tok, MAX_LEN) for r in RECORDS]
  lengths = [len(e.tokens) for e in encoded]
  assert len(set(lengths)) >= 2  # the shorter rows are padded
  batched = model_scores.mean_losses(scorer, encoded, batch_size=2)
  # Against the shortest and the longest, unpadded (each reference compiles once).
  for i in (int(np.argmin(lengths)), int(np.argmax(lengths))):
    assert batched[i] == pytest.approx(reference_loss(scorer, encoded[i]), rel=2e-5)


def test_ifd_compares_the_same_response_tokens_with_and_without_the_prompt(scorer):
  parts = model_scores.ifd(scorer, RECORDS, batch_size=2)
  for record, part in zip(RECORDS, parts):
    assert part["ifd"] == pytest.approx(part["loss_conditional"] / part["loss_response"])
  # The dragon's story does not fit in MAX_LEN: trimming leaves part of the response, and
  # the response-only sequence is cut to exactly those tokens.
  from lima_jax.data import batches as data  # pylint: disable=g-import-not-at-top
  cond = data.encode_conversation(RECORDS[3].conversations, scorer.tok, MAX_LEN)
  alone = model_scores.response_only(RECORDS[3], scorer.tok, cond.n_loss_tokens)
  full_response = len(scorer.tok.encode(RECORDS[3].conversations[1])) + 1
  assert cond.trimmed and 0 < cond.n_loss_tokens < full_response
  assert alone.n_loss_tokens == cond.n_loss_tokens
  np.testing.assert_array_equal(alone.tokens[1:], cond.tokens[cond.loss_mask])
  assert parts[3]["loss_response"] == pytest.approx(reference_loss(scorer, alone), rel=2e-5)
  picks = selectors.ifd_pick(parts, 5, max_ifd=10.0)
  assert [p.score for p in picks] == sorted((p["ifd"] for p in parts), reverse=True)
  assert len(selectors.ifd_pick(parts, 5, max_ifd=0.0)) == 0


def test_count_sketch_preserves_inner_products():
  rng = np.random.default_rng(0)
  a = {"x": rng.standard_normal((100, 50)), "y": rng.standard_normal(7000)}
  b = jax.tree.map(lambda v: 0.6 * v + 0.8 * rng.standard_normal(v.shape), a)
  dot = lambda u, v: sum(float(np.vdot(p, q)) for p, q in zip(jax.tree.leaves(u),
                                                               jax.tree.leaves(v)))
  sa = np.asarray(model_scores.count_sketch(a, dim=4096, seed=1))
  sb = np.asarray(model_scores.count_sketch(b, dim=4096, seed=1))
  scale = np.sqrt(dot(a, a) * dot(b, b))
  assert abs(sa @ sb - dot(a, b)) < 0.05 * scale  # true cosine is 0.6
  assert sa @ sa == pytest.approx(dot(a, a), rel=0.05)
  other = np.asarray(model_scores.count_sketch(a, dim=4096, seed=2))
  assert not np.allclose(sa, other)


def test_gradient_features_match_single_example_gradients_and_find_the_target(scorer):
  features = model_scores.gradient_features(scorer, RECORDS, dim=256, seed=0, batch_size=2)
  from lima_jax.data import batches as data  # pylint: disable=g-import-not-at-top
  e = data.encode_conversation(RECORDS[1].conversations, scorer.tok, MAX_LEN)

  def loss(p):
    logits = scorer.model.apply({"params": p}, jnp.asarray(e.tokens[None, :-1]))
    logp = jax.nn.log_softmax(logits[0], axis=-1)
    nll = -jnp.take_along_axis(logp, jnp.asarray(e.tokens[1:, None]), axis=-1)[:, 0]
    return jnp.sum(jnp.where(jnp.asarray(e.loss_mask[1:]), nll, 0.0)) / e.n_loss_tokens

  single = np.asarray(model_scores.count_sketch(jax.jit(jax.grad(loss))(scorer.params),
                                                dim=256, seed=0))
  np.testing.assert_allclose(features[1], single / np.linalg.norm(single), atol=2e-4)
  similarity = model_scores.influence(features, features[[3]])
  picks = selectors.influence_pick(similarity, 2)
  assert picks[0].index == 3 and picks[0].score == pytest.approx(1.0, abs=1e-5)
  assert picks[1].score < 0.999


def test_ifd_selector_end_to_end_from_a_checkpoint(tmp_path, scorer):
  # Stored without EOT rows (vocab 512 < the tokenizer's 514): the scorer grows it.
  cfg = get_size("tiny", vocab_size=512)
  params = nn.unbox(jax.jit(model_lib.Transformer(cfg).init)(
      jax.random.key(1), jnp.zeros((1, 8), jnp.int32))["params"])
  checkpoint.save(tmp_path / "ckpt", params, {"model_config": cfg.to_dict(),
                                              "tokenizer": scorer.tok.to_meta()})
  config = curate_config.get_config("ifd")
  config.update(dict(n=3, filters="exact_dedup", allow_fewer=False))
  config.report.diversity = False
  config.scorer = str(tmp_path / "ckpt")
  config.model.max_len = MAX_LEN
  config.ifd.max_ifd = 100.0
  curation = pipeline.curate(RECORDS, config)
  assert len(curation.chosen) == 3
  scores = [p.score for _, p in curation.chosen]
  assert scores == sorted(scores, reverse=True)
  assert set(curation.chosen[0][1].scores) == {"loss_conditional", "loss_response", "ifd"}
  config.ifd.max_ifd = 0.0
  with pytest.raises(Exception, match="found only 0 of the 3"):
    pipeline.curate(RECORDS, config)


def nll_by_hand(scorer, tokens):
  """Next-token NLLs of one unpadded sequence: the model's logits, log-softmax in numpy."""
  logits = np.asarray(jax.jit(scorer.model.apply)({"params": scorer.params},
                                                  jnp.asarray(np.asarray(tokens)[None, :-1]))[0],
                      np.float64)
  logits -= logits.max(-1, keepdims=True)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  return -logp[np.arange(len(tokens) - 1), np.asarray(tokens)[1:]]


def test_consistency_is_the_worst_answer_token_of_the_plain_text(scorer):
  tok = scorer.tok
  # With this tokenizer these turns tokenize the same alone as inside the joined text (checked
  # here), so the answer's tokens are known without the library's boundary search.
  for record in (RECORDS[1], RECORDS[4]):
    assert tok.encode(" ".join(record.conversations)) == [
        i for turn in record.conversations for i in tok.encode(turn)]
  # At max_len 64 both fit; at MAX_LEN (32) both are cut and only what is left is judged.
  long = dataclasses.replace(scorer, max_len=64)
  parts = {(skip, end, s.max_len): model_scores.consistency(
               s, [RECORDS[1], RECORDS[4]], batch_size=2, skip_first=skip, end=end)
           for skip, end in ((0, "eos"), (2, "eos"), (0, "bos"), (0, "none"))
           for s in (scorer, long)}
  for row, record in enumerate((RECORDS[1], RECORDS[4])):
    turns = [tok.encode(t) for t in record.conversations]
    text = [tok.bos_id] + [i for t in turns for i in t]
    # nll[j] is the surprise at tokens[j + 1]; without an end token, a prefix of EOS's.
    by_end = {end: nll_by_hand(scorer, text + [i]) for end, i in (("eos", tok.eos_id),
                                                                   ("bos", tok.bos_id))}
    by_end["none"] = by_end["eos"][:-1]
    for (skip, end, max_len), got in parts.items():
      last = {"eos": [tok.eos_id], "bos": [tok.bos_id], "none": []}[end]
      tokens = text + last
      nll = by_end[end]
      judged, at = [], 0  # positions in `tokens` less one
      for k, t in enumerate(turns):
        if k % 2:
          judged += list(range(at + skip, at + len(t)))
        at += len(t)
      judged += [at] if last else []
      judged = [j for j in judged if j + 1 < max_len]
      assert MAX_LEN < len(tokens) <= 64  # so both cases are what the comment says
      assert got[row]["consistency"] == pytest.approx(nll[judged].max(), rel=2e-5)
      assert got[row]["mean_nll"] == pytest.approx(nll[judged].mean(), rel=2e-5)
      assert got[row]["worst_token"] == int(np.argmax(nll[judged]))


def test_loss_and_consistency_presets_choose_the_lowest(tmp_path, scorer):
  cfg = get_size("tiny", vocab_size=scorer.tok.padded_vocab_size())
  checkpoint.save(tmp_path / "ckpt", scorer.params, {"model_config": cfg.to_dict(),
                                                     "tokenizer": scorer.tok.to_meta()})
  config = curate_config.get_config("loss")
  config.update(dict(n=3, filters="exact_dedup", scorer=str(tmp_path / "ckpt")))
  config.report.diversity = False
  config.model.max_len = MAX_LEN
  curation = pipeline.curate(RECORDS, config)
  from lima_jax.data import batches as data  # pylint: disable=g-import-not-at-top
  by_hand = []
  for r in RECORDS:
    e = data.encode_conversation(r.conversations, scorer.tok, MAX_LEN)
    by_hand.append(nll_by_hand(scorer, e.tokens)[e.loss_mask[1:]].mean())
  assert [i for i, _ in curation.chosen] == list(np.argsort(by_hand)[:3])
  for i, pick in curation.chosen:
    assert pick.score == pytest.approx(by_hand[i], rel=2e-5)
  assert [s for _, s in curation.scored] == pytest.approx(by_hand, rel=2e-5)

  config = curate_config.get_config("consistency")
  config.update(dict(n=2, filters="exact_dedup", scorer=str(tmp_path / "ckpt")))
  config.report.diversity = False
  config.model.max_len = MAX_LEN
  worst = [s for _, s in pipeline.curate(RECORDS, config).scored]
  config.consistency.max_nll = float(np.median(worst))  # removes the two above the median
  curation = pipeline.curate(RECORDS, config)
  above = {RECORDS[i].origin for i in np.argsort(worst)[3:]}
  assert {r.origin for r, stage, _ in curation.removed if stage == "consistency"} == above
  assert [s.name for s in curation.stages][-2:] == ["consistency", "select:consistency"]
  assert [curation.candidates[i].origin for i, _ in curation.chosen] == [
      RECORDS[i].origin for i in np.argsort(worst)[:2]]
