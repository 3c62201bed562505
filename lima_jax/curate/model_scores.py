"""Model-based scores: IFD, answer loss, knowledge consistency and gradient influence.

All run a lima_jax model (`load_scorer`: any model file `lima_jax.formats.model_file` opens),
batched and jitted, on CPU, GPU or TPU. Records are encoded as in training
(`lima_jax.data.encode_conversation`: BOS, each utterance then EOT, loss on assistant tokens and
their EOT), except by `consistency` (plain text, `lima_jax.curate.plain_text`); sequences are
sorted by length and padded to power-of-two lengths, so only a handful of shapes are ever
compiled.

  ifd        Li et al. 2023 ("From Quantity to Quality"): IFD = L(response | prompt) /
             L(response), each the mean next-token NLL over the response tokens, with and
             without the prompt before them. Near or above 1 the prompt does not help predict
             the answer (a mismatched pair); the higher below 1, the more the example has to
             teach. When trimming to max_len cuts the response, both losses cover the same
             surviving response tokens.
  loss       L(response | prompt) alone: IFD's numerator, the same computation.
  consistency  the worst (highest) next-token NLL over each answer read as a plain document
             (`plain_text.encode`): one wrong fact is one surprising token, which a mean over
             a long answer would dilute.
  influence  LESS-style (Xia et al. 2024): the gradient of each record's mean loss over all
             parameters, projected to `dim` numbers by a CountSketch (each parameter adds
             +-its gradient to one of `dim` buckets, both drawn from a seed: a sparse
             Johnson-Lindenstrauss projection that is regenerated, not stored), normalised.
             Score = cosine similarity with the mean normalised feature of a target set.
             LESS proper uses LoRA gradients, Adam preconditioning and several checkpoints;
             this is the plain-gradient, one-checkpoint form.
"""
import dataclasses
import functools
from typing import Any, Iterator, Sequence

from flax import linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from lima_jax.data import batches as data
from lima_jax.decode import generator as decoding
from lima_jax.model import transformer as model_lib
from lima_jax.errors import UserError
from lima_jax.tokenizer import Tokenizer, chat


@dataclasses.dataclass
class Scorer:
  model: model_lib.Transformer
  params: Any
  tok: Tokenizer
  max_len: int
  # Jitted steps, built once per scorer so that every call reuses their compilations.
  _steps: dict = dataclasses.field(default_factory=dict, repr=False)

  def step(self, name: str, make):
    if name not in self._steps:
      self._steps[name] = make()
    return self._steps[name]


def load_scorer(path: str, *, tokenizer: str = "", max_len: int = 2048,
                vocab_multiple: int = 128) -> Scorer:
  """Any model file `lima_jax.formats.model_file` opens (a lima_jax checkpoint, a Hugging Face
  directory, GGUF, llama2.c) and its tokenizer (or `tokenizer`, a SentencePiece/llama2.c file or
  tokenizer.json). A base model without EOT grows as training will grow it: to a multiple of
  `vocab_multiple` (the training config's `model.vocab_multiple`), since every padding row
  takes part in the softmax the scores are computed from."""
  from lima_jax.formats import model_file
  check_scorer(path, tokenizer)
  try:
    m = model_file.open(path, tokenizer=tokenizer, need_tokenizer=False,
                        vocab_multiple=vocab_multiple)
  except UserError as e:
    raise UserError(f"config scorer: {e}") from None
  return Scorer(model_lib.Transformer(m.config), m.params, m.tokenizer, max_len)


def check_scorer(path: str, tokenizer: str = "") -> None:
  """Fails with one line when `path` is not a model file with a tokenizer; reads no weights,
  so a run can check it before hours of filtering."""
  from lima_jax.formats import model_file
  if not path:
    raise UserError("config scorer: the ifd, loss, consistency and influence selectors need a "
                    "model (a lima_jax checkpoint, a Hugging Face directory, a GGUF or "
                    "llama2.c file)")
  try:
    meta = model_file.read(path)
  except UserError as e:
    raise UserError(f"config scorer: {e}") from None
  if tokenizer:
    from lima_jax.tokenizer import load  # pylint: disable=g-import-not-at-top
    try:
      load(tokenizer)
    except UserError as e:
      raise UserError(f"config model.tokenizer: {e}") from None
  elif meta.tokenizer is None:
    raise UserError(f"config model.tokenizer: required ({path} holds no tokenizer)")


def response_only(record: Any, tok: Tokenizer, keep: int) -> data.Encoded:
  """BOS, then the first `keep` tokens of the assistant turns, each followed by EOT
  (`lima_jax.tokenizer.chat.response_ids`)."""
  tokens = np.asarray(chat.response_ids(record.conversations, tok)[:1 + keep], np.int32)
  return data.Encoded(tokens, np.arange(len(tokens)) > 0)


def _batches(encoded: Sequence[data.Encoded], batch_size: int, max_len: int,
             desc: str) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
  """(record indices, shifted padded arrays) in batches of similar length; padding rows are
  segment 0 with no loss token, so every batch has the same batch size."""
  order = np.argsort([len(e.tokens) for e in encoded], kind="stable")
  for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch",
                    disable=len(order) <= 4 * batch_size):
    idx = order[start:start + batch_size]
    length = decoding.bucket(max(len(encoded[i].tokens) for i in idx) - 1, 16, max_len)
    rows = {k: np.zeros((batch_size, length), d) for k, d in
            (("inputs", np.int32), ("targets", np.int32), ("loss_mask", bool),
             ("segment_ids", np.int32))}
    for row, i in enumerate(idx):
      e = encoded[i]
      n = len(e.tokens) - 1
      rows["inputs"][row, :n] = e.tokens[:-1]
      rows["targets"][row, :n] = e.tokens[1:]
      rows["loss_mask"][row, :n] = e.loss_mask[1:]
      rows["segment_ids"][row, :n] = 1
    yield idx, rows


def _token_nll(model, params, rows):
  logits = model.apply({"params": params}, rows["inputs"], segment_ids=rows["segment_ids"])
  nll = optax.softmax_cross_entropy_with_integer_labels(logits, rows["targets"])
  return jnp.where(rows["loss_mask"], nll, 0.0)


def token_losses(scorer: Scorer, encoded: Sequence[data.Encoded], *, batch_size: int = 8,
                 desc: str = "loss") -> list[np.ndarray]:
  """Each sequence's next-token NLLs on its loss tokens, in order (float32)."""
  step = scorer.step("nll", lambda: jax.jit(
      lambda p, rows: _token_nll(scorer.model, p, rows)))
  out: list[np.ndarray] = [np.zeros(0, np.float32)] * len(encoded)
  params = nn.unbox(scorer.params)
  for idx, rows in _batches(encoded, batch_size, scorer.max_len, desc):
    nll = np.asarray(jax.device_get(step(params, rows)))
    for row, i in enumerate(idx):
      out[i] = nll[row][rows["loss_mask"][row]]
  return out


def mean_losses(scorer: Scorer, encoded: Sequence[data.Encoded], *, batch_size: int = 8,
                desc: str = "loss") -> np.ndarray:
  """Mean NLL over each sequence's loss tokens (NaN where it has none)."""
  return np.array([x.astype(np.float64).mean() if len(x) else np.nan
                   for x in token_losses(scorer, encoded, batch_size=batch_size, desc=desc)])


def training_format(scorer: Scorer, records: Sequence[Any]) -> list[data.Encoded]:
  return [data.encode_conversation(r.conversations, scorer.tok, scorer.max_len)
          for r in records]


def answer_loss(scorer: Scorer, records: Sequence[Any], *, batch_size: int = 8,
                encoded: Sequence[data.Encoded] | None = None,
                desc: str = "loss: answer given prompt") -> np.ndarray:
  """L(response | prompt) per record: the mean NLL of the assistant tokens and their EOT in
  the training format (NaN when trimming to max_len leaves none). `encoded`: the records'
  `training_format`, when the caller has it already."""
  if encoded is None:
    encoded = training_format(scorer, records)
  return mean_losses(scorer, encoded, batch_size=batch_size, desc=desc)


def consistency(scorer: Scorer, records: Sequence[Any], *, batch_size: int = 8,
                skip_first: int = 0, end: str = "eos") -> list[dict[str, float]]:
  """{consistency, mean_nll, worst_token} per record: the highest and the mean NLL over the
  judged tokens (`plain_text.encode`), and the worst one's index among them (NaN when none
  is judged)."""
  from lima_jax.curate import plain_text  # pylint: disable=g-import-not-at-top
  encoded = [plain_text.encode(r, scorer.tok, scorer.max_len, skip_first=skip_first, end=end)
             for r in tqdm(records, desc="consistency: encoding", unit="row",
                           disable=len(records) < 1000, leave=False)]
  parts = []
  for nll in token_losses(scorer, encoded, batch_size=batch_size, desc="consistency"):
    if not len(nll):
      parts.append({"consistency": np.nan, "mean_nll": np.nan, "worst_token": np.nan})
      continue
    worst = int(np.argmax(nll))
    parts.append({"consistency": float(nll[worst]), "mean_nll": float(nll.mean()),
                  "worst_token": float(worst)})
  return parts


def ifd(scorer: Scorer, records: Sequence[Any], *,
        batch_size: int = 8) -> list[dict[str, float]]:
  """{loss_conditional, loss_response, ifd} per record (NaN when no response token fits)."""
  conditional = training_format(scorer, records)
  alone = [response_only(r, scorer.tok, c.n_loss_tokens) for r, c in zip(records, conditional)]
  cond = answer_loss(scorer, records, batch_size=batch_size, encoded=conditional,
                     desc="ifd: with prompt")
  resp = mean_losses(scorer, alone, batch_size=batch_size, desc="ifd: response alone")
  with np.errstate(invalid="ignore", divide="ignore"):
    ratio = cond / resp
  return [{"loss_conditional": float(c), "loss_response": float(r), "ifd": float(x)}
          for c, r, x in zip(cond, resp, ratio)]


@functools.partial(jax.jit, static_argnames=("dim", "seed"))
def count_sketch(grads: Any, *, dim: int, seed: int) -> jax.Array:
  """Projects a gradient pytree to `dim` numbers; the same seed gives the same projection."""
  out = jnp.zeros(dim, jnp.float32)
  for i, g in enumerate(jax.tree.leaves(grads)):
    bucket_key, sign_key = jax.random.split(jax.random.fold_in(jax.random.key(seed), i))
    bucket = jax.random.randint(bucket_key, g.shape, 0, dim)
    sign = jax.random.rademacher(sign_key, g.shape, jnp.float32)
    out += jax.ops.segment_sum((g.astype(jnp.float32) * sign).ravel(), bucket.ravel(),
                               num_segments=dim)
  return out


def gradient_features(scorer: Scorer, records: Sequence[Any], *, dim: int = 1024,
                      seed: int = 0, batch_size: int = 4) -> np.ndarray:
  """[N, dim] CountSketch of each record's loss gradient, rows normalised (0 if no loss)."""

  def one(params, rows):
    def loss(p):
      nll = _token_nll(scorer.model, p, jax.tree.map(lambda x: x[None], rows))
      return nll.sum() / jnp.maximum(rows["loss_mask"].sum(), 1)
    return count_sketch(jax.grad(loss)(params), dim=dim, seed=seed)

  step = scorer.step(f"grad{dim}/{seed}", lambda: jax.jit(jax.vmap(one, in_axes=(None, 0))))
  encoded = [data.encode_conversation(r.conversations, scorer.tok, scorer.max_len)
             for r in records]
  out = np.zeros((len(records), dim), np.float32)
  params = nn.unbox(scorer.params)
  for idx, rows in _batches(encoded, batch_size, scorer.max_len, "influence: gradients"):
    out[idx] = np.asarray(step(params, rows))[:len(idx)]
  norms = np.linalg.norm(out, axis=1, keepdims=True)
  return np.where(norms > 0, out / np.maximum(norms, 1e-30), 0.0)


def influence(candidate_features: np.ndarray, target_features: np.ndarray) -> np.ndarray:
  """Cosine similarity of each candidate feature with the mean target feature."""
  mean = target_features.mean(0)
  norm = np.linalg.norm(mean)
  if norm == 0:
    raise UserError("config influence.target: the target records have no loss token")
  return candidate_features @ (mean / norm)
