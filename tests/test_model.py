"""The Transformer itself: config, sizes, scan/unrolled equivalence, dropout, KV cache, remat,
vocabulary growth, sharding. Parity with Hugging Face is in test_convert.py."""
import functools
import json
import typing

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lima_jax.model import axes
from lima_jax.model import layers
from lima_jax.model import config as model_config
from lima_jax.parallel import sharding
from lima_jax.model import transformer as M
from lima_jax.errors import UserError
from lima_jax.model.config import ModelConfig, SIZES, get_size


BASE = get_size("tiny", n_layers=3, dropout_top=0.5)  # dropout rates 0, 0.25, 0.5
SHAPE = (4, 16)  # one token shape everywhere, so compiled functions are shared between tests


def _boxed_shapes(cfg):
  return jax.eval_shape(lambda: M.Transformer(cfg).init(
      jax.random.key(0), jnp.zeros((1, 4), jnp.int32)))["params"]


def _init(cfg, seed=0):
  """Random params of the right tree, drawn on the host (compiling `init`'s RNG is slow)."""
  rng = np.random.RandomState(seed)

  def draw(path, sds):
    if path[-1].key == "scale":
      x = 1.0 + 0.1 * rng.standard_normal(sds.shape)
    else:
      x = rng.standard_normal(sds.shape) * (0.5 if path[-1].key == "embedding" else 0.15)
    return jnp.asarray(x, sds.dtype)

  return jax.tree_util.tree_map_with_path(draw, nn.meta.unbox(_boxed_shapes(cfg)))


@functools.cache
def _forward(cfg, deterministic=True):
  """Jitted apply; training mode also returns the sown dropout masks."""
  model = M.Transformer(cfg)
  if deterministic:
    return jax.jit(lambda p, t: model.apply({"params": p}, t))
  return jax.jit(lambda p, t, key: model.apply(
      {"params": p}, t, deterministic=False, rngs={"dropout": key}, mutable=["intermediates"]))


def _tokens(shape=SHAPE, vocab=256, seed=1):
  return jnp.asarray(np.random.RandomState(seed).randint(0, vocab, shape), jnp.int32)


# --- config and sizes -------------------------------------------------------------------------

def test_config_round_trips_through_json_and_is_hashable():
  scaling = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
             "original_max_position_embeddings": 8192}
  cfg = get_size("llama3-8b", rope_scaling=scaling, dropout_top=0.2)
  back = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
  assert back == cfg and hash(back) == hash(cfg)
  assert back.rope_scaling_dict == scaling
  assert get_size("llama1-7b").head_dim == 128 and get_size("llama1-7b").n_kv_heads == 32


def test_config_rejects_unknown_keys_and_bad_values():
  with pytest.raises(UserError, match="unknown key.*'n_expert'"):
    ModelConfig.from_dict({**SIZES["tiny"].to_dict(), "n_expert": 8})
  with pytest.raises(UserError, match="n_heads=4 is not a multiple of n_kv_heads=3"):
    get_size("tiny", n_kv_heads=3)
  with pytest.raises(UserError, match="remat_policy"):
    get_size("tiny", remat_policy="some")
  with pytest.raises(UserError, match="'llama9-1b' is not one of"):
    get_size("llama9-1b")
  with pytest.raises(UserError, match="attention_impl='flash' is not one of"):
    get_size("tiny", attention_impl="flash")
  with pytest.raises(UserError, match="attention_block=-1 is negative"):
    get_size("tiny", attention_block=-1)


def test_the_config_module_is_re_exported_and_types_the_layers():
  # lima_jax.model's names are the documented ones (docs/INTERFACES.md, README).
  import lima_jax.model as face
  assert (face.ModelConfig, face.SIZES, face.get_size) == (ModelConfig, SIZES, get_size)
  assert (face.Transformer, face.init_cache) == (M.Transformer, M.init_cache)
  assert M.REMAT_POLICIES is model_config.REMAT_POLICIES
  for module in (layers.Attention, layers.MLP, layers.Embed, layers.LMHead):
    assert typing.get_type_hints(module)["cfg"] is ModelConfig


@pytest.mark.parametrize("name,billions,tol", [
    ("llama1-7b", 6.74, 0.005),
    ("llama2-70b", 68.98, 0.005),
    ("llama3-8b", 8.03, 0.005),
])
def test_param_counts_match_published(name, billions, tol):
  assert abs(M.param_count(SIZES[name]) / 1e9 - billions) <= tol


def test_llama1_65b_param_count():
  # Meta reports "65.2B" (truncated); the architecture itself has
  # 80 * (4 * 8192^2 + 3 * 8192 * 22016 + 2 * 8192) + 2 * 32000 * 8192 + 8192 parameters.
  exact = 80 * (4 * 8192**2 + 3 * 8192 * 22016 + 2 * 8192) + 2 * 32000 * 8192 + 8192
  n = M.param_count(SIZES["llama1-65b"])
  assert n == exact
  assert 65.2e9 <= n < 65.3e9


# --- parameter tree ---------------------------------------------------------------------------

def test_scan_and_unrolled_share_params_and_outputs():
  unrolled = ModelConfig.from_dict({**BASE.to_dict(), "scan_layers": False})
  describe = lambda t: jax.tree.map(lambda b: (b.value.shape, b.names), t,
                                    is_leaf=lambda b: isinstance(b, nn.LogicallyPartitioned))
  assert describe(_boxed_shapes(BASE)) == describe(_boxed_shapes(unrolled))
  assert describe(_boxed_shapes(BASE))["layers"]["attn"]["k"] == (
      (3, 64, 2, 16), ("layers", "embed", "kv_heads", "head_dim"))
  params, tokens = _init(BASE), _tokens()
  out = _forward(BASE)(params, tokens)
  assert out.dtype == jnp.float32 and out.shape == SHAPE + (256,)
  np.testing.assert_allclose(_forward(unrolled)(params, tokens), out, atol=1e-5)


def test_bfloat16_compute_returns_float32_logits_close_to_float32():
  params, tokens = _init(BASE), _tokens()
  ref = _forward(BASE)(params, tokens)
  out = _forward(ModelConfig.from_dict({**BASE.to_dict(), "dtype": "bfloat16"}))(params, tokens)
  assert out.dtype == jnp.float32
  assert float(jnp.max(jnp.abs(out - ref))) < 0.05 * float(jnp.max(jnp.abs(ref)))
  shapes = nn.meta.unbox(_boxed_shapes(get_size("tiny", param_dtype="bfloat16")))
  assert {x.dtype for x in jax.tree.leaves(shapes)} == {jnp.dtype(jnp.bfloat16)}


def test_remat_policies_do_not_change_gradients():
  params, tokens = _init(BASE), _tokens()

  def grad_fn(policy):
    cfg = ModelConfig.from_dict({**BASE.to_dict(), "remat_policy": policy})
    return jax.grad(lambda p: jnp.mean(M.Transformer(cfg).apply({"params": p}, tokens) ** 2))

  for policy in ("save_dots", "save_dots_no_batch"):  # tracing applies the policy; no compile
    jax.eval_shape(grad_fn(policy), params)
  plain = jax.jit(grad_fn("none"))(params)
  for policy in ("full", "elementwise"):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                 jax.jit(grad_fn(policy))(params), plain)


def test_elementwise_remat_recomputes_the_same_dropout_and_saves_less():
  """With dropout on, the recomputed layers must draw the masks the forward pass drew; and the
  policy must actually keep fewer residuals for the backward pass than none."""
  params, tokens = _init(BASE), _tokens()

  def loss_fn(policy):
    cfg = ModelConfig.from_dict({**BASE.to_dict(), "remat_policy": policy})
    return lambda p: jnp.mean(M.Transformer(cfg).apply(
        {"params": p}, tokens, deterministic=False, rngs={"dropout": jax.random.key(7)}) ** 2)

  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               jax.jit(jax.grad(loss_fn("elementwise")))(params),
               jax.jit(jax.grad(loss_fn("none")))(params))
  temp = lambda policy: jax.jit(jax.grad(loss_fn(policy))).lower(
      params).compile().memory_analysis().temp_size_in_bytes
  assert temp("elementwise") < 0.8 * temp("none")


# --- dropout ----------------------------------------------------------------------------------

def test_dropout_rate_schedules():
  np.testing.assert_allclose(M.dropout_rates(get_size("tiny", n_layers=5, dropout_top=0.2)),
                             [0.0, 0.05, 0.1, 0.15, 0.2], atol=1e-7)
  np.testing.assert_allclose(M.dropout_rates(
      get_size("tiny", n_layers=3, dropout_top=0.3, dropout_schedule="constant")), [0.3] * 3)
  np.testing.assert_allclose(M.dropout_rates(
      get_size("tiny", n_layers=3, dropout_top=0.3, dropout_schedule="none")), [0.0] * 3)
  np.testing.assert_allclose(M.dropout_rates(get_size("tiny", n_layers=1, dropout_top=0.3)),
                             [0.3])


def test_deterministic_ignores_dropout_and_training_mode_applies_it():
  params, tokens = _init(BASE), _tokens()
  plain = _forward(BASE)(params, tokens)
  det = jax.jit(lambda p, t, key: M.Transformer(BASE).apply(
      {"params": p}, t, deterministic=True, rngs={"dropout": key}))(
          params, tokens, jax.random.key(5))
  np.testing.assert_allclose(det, plain, atol=1e-6)
  train = lambda seed: _forward(BASE, False)(params, tokens, jax.random.key(seed))[0]
  np.testing.assert_array_equal(train(1), train(1))  # reproducible from the key
  assert float(jnp.max(jnp.abs(train(1) - plain))) > 1e-2
  assert float(jnp.max(jnp.abs(train(1) - train(2)))) > 1e-2


@pytest.mark.parametrize("scan", [True, False])
def test_dropout_masks_follow_the_per_layer_rates_and_differ_between_layers(scan):
  cfg = ModelConfig.from_dict({**BASE.to_dict(), "scan_layers": scan})
  _, state = _forward(cfg, False)(_init(cfg), _tokens(), jax.random.key(3))
  keeps = state["intermediates"]["layers"]
  attn, mlp = np.asarray(keeps["attn_keep"][0]), np.asarray(keeps["mlp_keep"][0])
  assert attn.shape == (3,) + SHAPE + (64,)
  for keep in (attn, mlp):
    np.testing.assert_allclose(1.0 - keep.mean(axis=(1, 2, 3)), [0.0, 0.25, 0.5], atol=0.03)
  # Independent masks drop a unit in both with probability r1 * r2 (shared random bits
  # would give min(r1, r2)): each layer, and each branch, draws its own.
  both = lambda a, b: ((1 - a) * (1 - b)).mean()
  np.testing.assert_allclose(both(attn[1], attn[2]), 0.25 * 0.5, atol=0.03)
  np.testing.assert_allclose(both(attn[2], mlp[2]), 0.5 * 0.5, atol=0.03)
  np.testing.assert_allclose(both(mlp[1], mlp[2]), 0.25 * 0.5, atol=0.03)


# --- KV cache ---------------------------------------------------------------------------------

def test_cached_greedy_decoding_matches_recomputation():
  cfg = BASE
  params = _init(cfg, seed=3)
  model = M.Transformer(cfg)
  rng = np.random.RandomState(0)
  prompts = [list(rng.randint(3, 256, n)) for n in (6, 2, 4)]
  new, P = 8, 6
  lens = np.array([len(p) for p in prompts])

  # Recomputation: each prompt alone, unpadded, a full forward pass per token (one fixed-size
  # buffer: the causal mask makes the tokens after the cursor irrelevant).
  full = jax.jit(lambda t: model.apply({"params": params}, t))
  expected, expected_logits = [], []
  for p in prompts:
    buf, rows = np.zeros((1, P + new), np.int32), []
    buf[0, :len(p)] = p
    for cursor in range(len(p), len(p) + new):
      rows.append(full(buf)[0, cursor - 1])
      buf[0, cursor] = int(jnp.argmax(rows[-1]))
    expected.append(list(buf[0, len(p):len(p) + new]))
    expected_logits.append(np.stack(rows))

  # Cache: one right-padded batch; padding has segment id 0 and is never attended.
  step = jax.jit(lambda t, pos, seg, c, i: model.apply(
      {"params": params}, t, positions=pos, segment_ids=seg, cache=c, cache_index=i))
  tokens = np.zeros((3, P), np.int32)
  for b, p in enumerate(prompts):
    tokens[b, :len(p)] = p
  segments = (np.arange(P)[None] < lens[:, None]).astype(np.int32)
  cache = M.init_cache(cfg, 3, P + new)
  logits, cache = step(tokens, np.broadcast_to(np.arange(P), (3, P)), segments, cache, 0)
  rows = logits[np.arange(3), lens - 1]
  got, got_logits = [], []
  for t in range(new):
    got_logits.append(rows)
    got.append(jnp.argmax(rows, axis=-1))
    logits, cache = step(got[-1][:, None], (lens + t)[:, None], np.ones((3, 1), np.int32),
                         cache, P + t)
    rows = logits[:, 0]
  got, got_logits = np.stack(got, axis=1), np.stack(got_logits, axis=1)
  for b in range(3):
    assert list(got[b]) == expected[b]
    np.testing.assert_allclose(got_logits[b], expected_logits[b], atol=1e-4)


def test_block_inputs_take_one_of_the_two_documented_combinations():
  # Without a cache: segments only; with one: mask, kv and cache_index together.
  pos, seg = jnp.zeros((1, 4), jnp.int32), jnp.ones((1, 4), jnp.int32)
  kv, mask, index = {"k": 0, "v": 0}, jnp.ones((1, 1, 1, 4, 4), bool), jnp.int32(0)
  per_layer, shared = M.block_inputs(BASE, pos, segments=seg)
  assert per_layer.kv is None and shared.mask is None and shared.cache_index is None
  np.testing.assert_array_equal(per_layer.rate, M.dropout_rates(BASE))
  per_layer, shared = M.block_inputs(BASE, pos, mask=mask, kv=kv, cache_index=index)
  assert per_layer.kv is kv and shared.segments is None
  for wrong in ({}, {"segments": seg, "mask": mask, "kv": kv, "cache_index": index},
                {"mask": mask, "kv": kv}, {"segments": seg, "kv": kv}):
    with pytest.raises(ValueError, match="Block takes segments"):
      M.block_inputs(BASE, pos, **wrong)


# --- vocabulary growth ------------------------------------------------------------------------

@pytest.mark.parametrize("tied", [False, True])
def test_resize_vocab_appends_mean_rows_and_keeps_boxes(tied):
  cfg = get_size("tiny", tie_embeddings=tied, param_dtype="bfloat16")
  values = _init(cfg)
  boxed = jax.tree.map(lambda b, v: b.replace_boxed(v), _boxed_shapes(cfg), values,
                       is_leaf=lambda b: isinstance(b, nn.LogicallyPartitioned))
  grown = M.resize_vocab(boxed, 259)
  emb = grown["embed"]["embedding"]
  assert isinstance(emb, nn.LogicallyPartitioned) and emb.names == ("vocab", "embed")
  old = np.asarray(values["embed"]["embedding"], np.float32)
  new = np.asarray(emb.value, np.float32)
  assert emb.value.dtype == jnp.bfloat16
  np.testing.assert_array_equal(new[:256], old)
  for row in new[256:]:
    np.testing.assert_allclose(row, old.mean(axis=0), atol=1e-2)
  if not tied:
    old_head = np.asarray(values["lm_head"]["kernel"], np.float32)
    np.testing.assert_allclose(np.asarray(grown["lm_head"]["kernel"].value, np.float32)[:, 256:],
                               np.repeat(old_head.mean(axis=1, keepdims=True), 3, 1), atol=1e-2)
  # The grown tree is exactly what a 259-token model expects.
  want = _boxed_shapes(ModelConfig.from_dict({**cfg.to_dict(), "vocab_size": 259}))
  same = lambda t: jax.tree.map(lambda x: (x.shape, x.dtype), nn.meta.unbox(t))
  assert same(grown) == same(want)
  with pytest.raises(ValueError, match="only grows"):
    M.resize_vocab(boxed, 100)


# --- sharding ---------------------------------------------------------------------------------

def test_every_logical_axis_name_has_exactly_one_rule():
  # A name without a rule would be replicated silently; a rule without a name is dead.
  used = {n for k, names in vars(axes).items() if k.isupper()
          for n in ((names,) if isinstance(names, str) else names) if n is not None}
  ruled = [name for name, _ in sharding.RULES]
  assert sorted(ruled) == sorted(set(ruled)) and set(ruled) == used


def test_sharded_forward_matches_single_device():
  if len(jax.devices()) < 8:
    pytest.skip("needs the 8 fake CPU devices from conftest")
  params, tokens = _init(BASE), _tokens()
  ref = _forward(BASE)(params, tokens)
  mesh = sharding.make_mesh((1, 4, 2))
  shardings = sharding.logical_shardings(_boxed_shapes(BASE), mesh)
  model = M.Transformer(BASE)
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
    placed = jax.device_put(params, shardings)
    out = jax.jit(lambda p, t: model.apply({"params": p}, t))(
        placed, jax.device_put(tokens, sharding.batch_sharding(mesh)))
  np.testing.assert_allclose(out, ref, atol=1e-5)


# --- attention --------------------------------------------------------------------------------

def _reference_attention(q, k, v, mask):
  """Textbook masked softmax attention, [B, T, G, R, K] queries on [B, S, G, K] keys/values."""
  s = jnp.einsum("BTGRK,BSGK->BGRTS", q, k) * q.shape[-1]**-0.5
  s = jnp.where(mask, s, -jnp.inf)
  return jnp.einsum("BGRTS,BSGK->BTGRK", jax.nn.softmax(s, axis=-1), v)


def _blocked_attention(q, k, v, segments, block):
  """attention.causal_attention on [B, T, G, R, K] queries and [B, T, G, K] keys/values."""
  from lima_jax.model import attention
  B, T, G, R, K = q.shape
  qh = q.transpose(0, 2, 1, 3, 4).reshape(B, G, T * R, K)
  out = attention.causal_attention(qh, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3),
                                   segments, block)
  return out.reshape(B, G, T, R, K).transpose(0, 2, 1, 3, 4)


@pytest.mark.parametrize("block", [0, 1, 5, 16, 37])
def test_blocked_attention_matches_reference_with_packed_segments(block):
  from lima_jax.model import attention
  rng = np.random.default_rng(0)
  B, T, G, R, K = 2, 37, 2, 3, 8
  q = jnp.asarray(rng.normal(size=(B, T, G, R, K)), jnp.float32)
  k, v = (jnp.asarray(rng.normal(size=(B, T, G, K)), jnp.float32) for _ in range(2))
  segments = jnp.asarray([[1] * 20 + [2] * 10 + [0] * 7, [1] * 37])  # packed, then padding
  slots = jnp.broadcast_to(jnp.arange(T), (B, T))
  mask = attention.attention_mask(segments, segments, slots, slots)
  r = jnp.asarray(rng.normal(size=(B, T, G, R, K)), jnp.float32)
  ours = lambda q, k, v: jnp.sum(_blocked_attention(q, k, v, segments, block) * r)
  ref = lambda q, k, v: jnp.sum(_reference_attention(q, k, v, mask) * r)
  np.testing.assert_allclose(_blocked_attention(q, k, v, segments, block),
                             _reference_attention(q, k, v, mask), atol=1e-5)
  np.testing.assert_allclose(attention.cached_attention(q, k, v, mask),
                             _reference_attention(q, k, v, mask), atol=1e-5)
  for a, b in zip(jax.grad(ours, argnums=(0, 1, 2))(q, k, v),
                  jax.grad(ref, argnums=(0, 1, 2))(q, k, v)):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_attention_block_size_does_not_change_the_model():
  one_block = ModelConfig.from_dict({**BASE.to_dict(), "attention_block": 0})
  blocked = ModelConfig.from_dict({**BASE.to_dict(), "attention_block": 3})  # 16 = 5 x 3 + 1
  params, tokens = _init(BASE), _tokens()
  segments = jnp.asarray(np.repeat([[1] * 9 + [2] * 5 + [0] * 2], SHAPE[0], axis=0))

  def loss(cfg):
    model = M.Transformer(cfg)
    return jax.jit(jax.value_and_grad(lambda p: jnp.mean(
        model.apply({"params": p}, tokens, segment_ids=segments) ** 2)))

  (a, ga), (b, gb) = loss(one_block)(params), loss(blocked)(params)
  np.testing.assert_allclose(a, b, rtol=1e-5)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6), ga, gb)


def test_blocked_attention_in_bfloat16_stays_close_to_float32():
  """bfloat16 q, k, v (what accelerator training feeds it): output and gradients within
  bfloat16's precision of the float32 reference on the same (rounded) inputs; the softmax
  sums run in float32, so longer rows do not drift."""
  from lima_jax.model import attention
  rng = np.random.default_rng(1)
  B, T, G, R, K = 2, 256, 2, 2, 16
  q = jnp.asarray(rng.normal(size=(B, T, G, R, K)), jnp.bfloat16)
  k, v = (jnp.asarray(rng.normal(size=(B, T, G, K)), jnp.bfloat16) for _ in range(2))
  segments = jnp.asarray([[1] * 200 + [2] * 56, [1] * 256])
  slots = jnp.broadcast_to(jnp.arange(T), (B, T))
  mask = attention.attention_mask(segments, segments, slots, slots)
  f32 = lambda x: x.astype(jnp.float32)
  r = jnp.asarray(rng.normal(size=(B, T, G, R, K)), jnp.float32)
  ours = lambda q, k, v: jnp.sum(f32(_blocked_attention(q, k, v, segments, 64)) * r)
  ref = lambda q, k, v: jnp.sum(_reference_attention(q, k, v, mask) * r)
  out = _blocked_attention(q, k, v, segments, 64)
  assert out.dtype == jnp.bfloat16
  want = _reference_attention(f32(q), f32(k), f32(v), mask)
  assert float(jnp.max(jnp.abs(f32(out) - want))) < 2e-2
  for a, b in zip(jax.grad(ours, argnums=(0, 1, 2))(q, k, v),
                  jax.grad(ref, argnums=(0, 1, 2))(f32(q), f32(k), f32(v))):
    assert float(jnp.max(jnp.abs(f32(a) - b)) / jnp.max(jnp.abs(b))) < 2e-2
