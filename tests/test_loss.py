"""The fused output projection + cross-entropy over loss tokens (lima_jax/train/loss.py) against the
plain route: float32 logits [B, T, V], optax's cross-entropy, masked sum."""
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lima_jax.train import loss
from lima_jax.model import transformer as M
from lima_jax.train import step as step_lib
from lima_jax.model.config import get_size

B, T, D, V = 3, 37, 16, 50


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  h = jnp.asarray(rng.normal(size=(B, T, D)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(V, D)) * 0.5, jnp.float32)
  targets = jnp.asarray(rng.integers(0, V, (B, T)), jnp.int32)
  mask = rng.random((B, T)) < 0.6
  mask[1] = False  # a row without loss tokens (all prompt, or all padding)
  mask[2, :] = True  # a row that is all loss tokens
  return h, w, targets, jnp.asarray(mask)


def _plain(h, w, targets, mask):
  logits = jnp.einsum("BTD,VD->BTV", h, w)
  nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  return jnp.sum(jnp.where(mask, nll, 0.0))


@pytest.mark.parametrize("chunk", [1, 5, 36, 37, 64, 200])
@pytest.mark.parametrize("vocab_first", [True, False])
@pytest.mark.parametrize("groups", [1, 3])  # all rows joined; one row per group
def test_fused_loss_and_gradients_match_plain(chunk, vocab_first, groups):
  h, w, targets, mask = _inputs()
  ref, (ref_dh, ref_dw) = jax.value_and_grad(_plain, argnums=(0, 1))(h, w, targets, mask)
  w_in = w if vocab_first else w.T  # lm_head kernels are [D, V]

  def fused(h, w_in):
    total, count = loss.nll_sums(h, w_in, targets, mask, chunk=chunk, vocab_first=vocab_first,
                                 groups=groups)
    assert count.dtype == jnp.float32
    return total, count

  (total, count), (dh, dw) = jax.value_and_grad(fused, argnums=(0, 1), has_aux=True)(h, w_in)
  assert float(count) == float(np.sum(np.asarray(mask)))
  np.testing.assert_allclose(total, ref, rtol=1e-5)
  np.testing.assert_allclose(dh, ref_dh, atol=1e-5)
  np.testing.assert_allclose(dw if vocab_first else dw.T, ref_dw, atol=1e-5)
  assert not np.any(np.asarray(dh)[1])  # no loss token in row 1: no gradient there


def test_fused_loss_scales_its_gradient_by_the_cotangent():
  h, w, targets, mask = _inputs(seed=1)
  fused = lambda h, w: 2.5 * loss.nll_sums(h, w, targets, mask, chunk=8, vocab_first=True)[0]
  plain = lambda h, w: 2.5 * _plain(h, w, targets, mask)
  for a, b in zip(jax.grad(fused, argnums=(0, 1))(h, w), jax.grad(plain, argnums=(0, 1))(h, w)):
    np.testing.assert_allclose(a, b, atol=2e-5)


def test_fused_loss_groups_must_divide_the_rows():
  h, w, targets, mask = _inputs()
  with pytest.raises(ValueError, match="3 rows do not split into 2 groups"):
    loss.nll_sums(h, w, targets, mask, chunk=4, vocab_first=True, groups=2)


def test_fused_loss_on_a_sharded_batch_keeps_rows_on_their_devices():
  """groups = batch shards: under jit on 8 devices the result equals the plain one, and the
  joined rows stay sharded (no gather of hidden states onto one device)."""
  from lima_jax.parallel import sharding
  if len(jax.devices()) < 8:
    pytest.skip("needs the 8 fake CPU devices from conftest")
  rng = np.random.default_rng(3)
  h = jnp.asarray(rng.normal(size=(16, 9, D)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(V, D)) * 0.5, jnp.float32)
  targets = jnp.asarray(rng.integers(0, V, (16, 9)), jnp.int32)
  mask = jnp.asarray(rng.random((16, 9)) < 0.5)
  mesh = sharding.make_mesh((2, 4, 1))
  rows = sharding.batch_sharding(mesh)
  with jax.set_mesh(mesh):
    args = [jax.device_put(x, rows) for x in (h, targets, mask)]
    f = jax.jit(jax.value_and_grad(lambda h, w, t, m: loss.nll_sums(
        h, w, t, m, chunk=4, vocab_first=True, groups=8)[0], argnums=(0, 1)))
    total, (dh, dw) = f(args[0], w, args[1], args[2])
    hlo = f.lower(args[0], w, args[1], args[2]).compile().as_text()
  ref, (ref_dh, ref_dw) = jax.value_and_grad(_plain, argnums=(0, 1))(h, w, targets, mask)
  np.testing.assert_allclose(total, ref, rtol=1e-5)
  np.testing.assert_allclose(dh, ref_dh, atol=1e-5)
  np.testing.assert_allclose(dw, ref_dw, atol=1e-5)
  # Joining all 16 rows (groups=1) would move [144, D] hidden states and masks between devices.
  collectives = re.findall(r"= (.*?) (?:all-gather|all-reduce|all-to-all)\(", hlo)
  assert collectives and not any("144" in shape for shape in collectives), collectives


def test_fused_loss_under_jit_with_no_loss_token_at_all():
  h, w, targets, _ = _inputs()
  f = jax.jit(jax.value_and_grad(lambda h: loss.nll_sums(
      h, w, targets, jnp.zeros((B, T), bool), chunk=4, vocab_first=True)[0]))
  total, dh = f(h)
  assert float(total) == 0.0 and not np.any(np.asarray(dh))


@pytest.mark.parametrize("tied", [True, False])
def test_train_loss_sums_same_with_and_without_the_fused_head(tied):
  cfg = get_size("tiny", tie_embeddings=tied)
  model = M.Transformer(cfg)
  rng = np.random.default_rng(2)
  tokens = rng.integers(0, cfg.vocab_size, (4, 17)).astype(np.int32)
  batch = {"inputs": jnp.asarray(tokens[:, :-1]), "targets": jnp.asarray(tokens[:, 1:]),
           "loss_mask": jnp.asarray(rng.random((4, 16)) < 0.5),
           "segment_ids": jnp.ones((4, 16), jnp.int32),
           "positions": jnp.broadcast_to(jnp.arange(16, dtype=jnp.int32), (4, 16))}
  params = nn.meta.unbox(model.init(jax.random.key(0), batch["inputs"]))["params"]
  assert ("lm_head" in params) != tied

  def run(chunk):
    f = lambda p: step_lib.loss_sums(model, p, batch, None, True, chunk)
    return jax.jit(jax.value_and_grad(f, has_aux=True))(params)

  (nll0, n0), g0 = run(0)
  (nll1, n1), g1 = run(3)
  assert float(n0) == float(n1) == float(np.sum(np.asarray(batch["loss_mask"])))
  np.testing.assert_allclose(nll1, nll0, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-5), g1, g0)


def test_fused_loss_in_bfloat16_stays_close_to_float32():
  """bfloat16 hidden states and head (accelerator training): the loss and its gradients
  within bfloat16's precision of the float32 plain computation on the same rounded inputs
  (the log-sum-exp runs in float32 over a 4,096-word vocabulary)."""
  rng = np.random.default_rng(3)
  B, T, D, V = 4, 64, 32, 4096
  h = jnp.asarray(rng.normal(size=(B, T, D)), jnp.bfloat16)
  w = jnp.asarray(rng.normal(size=(V, D)) * 0.3, jnp.bfloat16)
  targets = jnp.asarray(rng.integers(0, V, (B, T)), jnp.int32)
  mask = jnp.asarray(rng.random((B, T)) < 0.6)
  f32 = lambda x: x.astype(jnp.float32)
  fused = lambda h, w: loss.nll_sums(h, w, targets, mask, chunk=64, vocab_first=True)[0]
  total, (dh, dw) = jax.value_and_grad(fused, argnums=(0, 1))(h, w)
  ref, (rdh, rdw) = jax.value_and_grad(_plain, argnums=(0, 1))(f32(h), f32(w), targets, mask)
  assert total.dtype == jnp.float32
  np.testing.assert_allclose(total, ref, rtol=5e-3)
  for got, want in ((dh, rdh), (dw, rdw)):
    assert float(jnp.max(jnp.abs(f32(got) - want)) / jnp.max(jnp.abs(want))) < 2e-2
