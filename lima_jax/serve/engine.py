"""The device side of the server: a fixed set of decode slots over one KV cache, and the three
jitted functions that drive it (JetStream's shape, see docs/INTERFACES.md):

- `prefill(params, tokens [1, P], length)`: one prompt, P a power-of-two bucket, into a fresh
  one-row cache; returns that row (padded to the slot length) and its last-position logits.
- `insert(state, row, slot, request scalars)`: writes the row into slot `slot` (traced, so one
  executable serves every slot) and resets the slot's decoding knobs; the state is donated.
- `step(params, state, span, rows)`: one token for each slot in `rows` (the busy ones, padded
  with free ones to a power of two: at low load a step computes 1 or 2 rows, not all 8), fed
  back through the model; the state is donated. Attention reads only the first `span` cache
  positions, a static bucket (64, 128, ... max_len) just above the furthest active slot:
  short conversations do not pay for the full context (at 8 slots x 512 on a CPU a step at
  span 128 costs half the full one). One compilation per (span, row count). When any row
  asked for logprobs it also returns each token's logprob and the top `logprobs.TOP`
  alternatives (a `lax.cond`: other steps skip the vocabulary-wide ranking).
- `score(params, tokens [1, P])`: the prompt's own logprobs (echo), one full forward pass;
  compiled per prefill bucket.

The model's cache takes one write index for the whole batch, while slots sit at different
positions. Each row is therefore applied on its own under `jax.vmap`, with its own scalar
index: vmap turns the model's per-index cache write into a per-row scatter, and its matmuls
into one batched matmul, with no change to the model. Prefill wants logits at the last real
position only (the full [1, P, V] is 2 GB at 8 x 2,048 x 32K); the output projection is
intercepted (`nn.intercept_methods`) and fed just that position.

Sampling keys derive from (seed, choice index, step) as in `lima_jax.decode.generator`, so an answer
does not depend on its slot or neighbours, and greedy/seeded answers equal `Generator`'s.
"""
import dataclasses
import threading
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from lima_jax.decode import generator as decoding
from lima_jax.model import layers
from lima_jax.decode import sampling
from lima_jax.parallel import sharding
from lima_jax.model import transformer as model_lib
from lima_jax.model.config import ModelConfig
from lima_jax.serve import logprobs as lp_lib

MIN_BUCKET = 16
MIN_SPAN = 64
# The slots' cache is kept batch-major, k/v [B, L, S, G, K] (the model's is [L, B, S, G, K]):
# under vmap the model's layer scan carries its cache with the batch first, so the model's
# layout cost two transposes of the whole cache in and two out at every step (3-4x the step
# time at 8 slots x 512 tokens on a CPU).
_CACHE_AXES = {"k": 0, "v": 0, "segment_ids": 0}  # the batch axis of each cache array
_ROW_STATE = ("logits", "seen", "key", "t", "pos", "temperature", "top_p", "top_k", "penalty",
              "greedy", "want_logprobs")


def buckets(max_len: int) -> list[int]:
  """Prefill lengths: powers of two from MIN_BUCKET, the last one capped at max_len."""
  out, b = [], MIN_BUCKET
  while b < max_len:
    out.append(b)
    b *= 2
  return out + [max_len]


def bucket_for(n: int, max_len: int) -> int:
  return decoding.bucket(n, MIN_BUCKET, max_len)


def _last_position_only(index):
  """Interceptor: the output projection (untied LMHead or tied Embed.attend) sees only
  position `index` of its [B, T, D] input, so logits come out [B, 1, V]."""

  def interceptor(next_fun, args, kwargs, context):
    head = (isinstance(context.module, layers.LMHead) and context.method_name == "__call__") or (
        isinstance(context.module, layers.Embed) and context.method_name == "attend")
    if head:
      args = (jax.lax.dynamic_slice_in_dim(args[0], index, 1, axis=1),) + tuple(args[1:])
    return next_fun(*args, **kwargs)

  return interceptor


@dataclasses.dataclass
class Engine:
  """Slots, their state on the device, and the compiled functions over them.

  params: unboxed parameters (on `mesh` if given); slots: decode rows (rounded up to the
  mesh's batch shards); max_len: tokens a slot holds, prompt plus answer (<= the context).
  `compiles` counts traces of the three functions (each trace is one compilation); it stops
  growing after `warm_up`.
  """
  params: Any
  cfg: ModelConfig
  vocab_size: int
  slots: int = 8
  max_len: int | None = None
  mesh: Any = None
  banned: tuple[int, ...] = ()  # ids never emitted: decoding.banned_ids (BOS, PAD)

  def __post_init__(self):
    self.cfg = dataclasses.replace(self.cfg, remat_policy="none", dropout_top=0.0)
    self.max_len = min(self.max_len or self.cfg.max_seq_len, self.cfg.max_seq_len)
    shards = sharding.batch_shards(self.mesh) if self.mesh is not None else 1
    self.slots = -(-max(self.slots, 1) // shards) * shards
    self.compiles = {"prefill": 0, "insert": 0, "step": 0, "score": 0}
    self._lock = threading.Lock()
    self.model = model_lib.Transformer(self.cfg)
    state_sh = self._state_shardings()
    self._prefill = jax.jit(self._prefill_fn)
    self._insert = jax.jit(self._insert_fn, donate_argnums=0, out_shardings=state_sh)
    self._step = jax.jit(self._step_fn, donate_argnums=1, static_argnums=2,
                         out_shardings=(state_sh, None, None))
    self._score = jax.jit(self._score_fn)
    self.logprobs = None  # the last step's (logprob [B], top ids [B, K], top logprobs [B, K])
    self.spans = [b for b in buckets(self.max_len) if b >= MIN_SPAN] or [self.max_len]
    # Rows a step computes: the busy slots padded to a power of two. On a mesh the rows are
    # sharded over the batch axes, so a step there always takes every slot.
    self.row_buckets = [self.slots] if self.mesh is not None else sorted(
        {min(2**i, self.slots) for i in range(self.slots.bit_length() + 1)})
    self._ends = np.zeros(self.slots, np.int64)  # next write position per slot; 0: free
    self.state = self._init_state()
    if state_sh is not None:
      self.state = jax.device_put(self.state, state_sh)

  # -- device functions (their Python bodies run only when traced) -----------------------------

  def _count(self, name):
    with self._lock:
      self.compiles[name] += 1

  def _row_apply(self, params, token, position, cache, index):
    """One row, one token: the model on a batch of one at cache slot `index`."""
    c = {"k": cache["k"][:, None], "v": cache["v"][:, None],
         "segment_ids": cache["segment_ids"][None]}
    logits, new = self.model.apply(
        {"params": params}, token[None, None], positions=position[None, None],
        segment_ids=jnp.ones((1, 1), jnp.int32), cache=c, cache_index=index)
    return logits[0, 0], {"k": new["k"][:, 0], "v": new["v"][:, 0],
                          "segment_ids": new["segment_ids"][0]}

  def _prefill_fn(self, params, tokens, length):
    self._count("prefill")
    p_len = tokens.shape[1]
    segments = (jnp.arange(p_len)[None] < length).astype(jnp.int32)
    cache = model_lib.init_cache(self.cfg, 1, p_len)
    with nn.intercept_methods(_last_position_only(length - 1)):
      logits, cache = self.model.apply({"params": params}, tokens, segment_ids=segments,
                                       cache=cache, cache_index=0)
    pad = self.max_len - p_len
    row = {"k": jnp.pad(cache["k"][:, 0], ((0, 0), (0, pad), (0, 0), (0, 0))),
           "v": jnp.pad(cache["v"][:, 0], ((0, 0), (0, pad), (0, 0), (0, 0))),
           "segment_ids": jnp.pad(cache["segment_ids"][0], (0, pad))}
    return row, logits[0, 0]

  def _insert_fn(self, state, row, logits, slot, req):
    self._count("insert")
    put = lambda a, x, axis=0: jax.lax.dynamic_update_index_in_dim(a, x, slot, axis)
    cache = {k: put(state["cache"][k], row[k], _CACHE_AXES[k]) for k in _CACHE_AXES}
    key = jax.random.fold_in(jax.random.key(req["seed"]), req["index"])
    s = {**state, "cache": cache, "logits": put(state["logits"], logits),
         "seen": put(state["seen"], jnp.zeros(state["seen"].shape[1], bool)),
         "key": put(state["key"], key), "t": put(state["t"], 0),
         "pos": put(state["pos"], req["length"])}
    for name in ("temperature", "top_p", "top_k", "penalty", "greedy", "want_logprobs"):
      s[name] = put(state[name], req[name].astype(state[name].dtype))
    return s

  def _step_fn(self, params, full, span, rows):
    self._count("step")
    R = rows.shape[0]
    # Every slot (`step` passes the rows sorted, so then they are 0..slots-1): slices, where a
    # gather and a scatter of the whole cache would copy it.
    sel = slice(None) if R == self.slots else rows
    s = {k: full[k][sel] for k in _ROW_STATE}  # the rows stepped: the busy slots (+ padding)
    allowed = sampling.allowed(s["logits"].shape[-1], self.vocab_size, self.banned)
    logits = jnp.where(allowed, s["logits"], -jnp.inf)
    logits = sampling.repetition_penalty(logits, s["seen"], s["penalty"][:, None])
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    scaled = logits / jnp.where(s["greedy"], 1.0, s["temperature"])[:, None]
    # Per-row top-k (0: off) from one sort; sampling.top_k_filter takes one static k.
    desc = -jnp.sort(-scaled, axis=-1)
    kth = jnp.take_along_axis(desc, jnp.maximum(s["top_k"] - 1, 0)[:, None], axis=-1)
    scaled = jnp.where((s["top_k"][:, None] > 0) & (scaled < kth), -jnp.inf, scaled)
    scaled = sampling.top_p_filter(scaled, s["top_p"][:, None])
    keys = jax.vmap(jax.random.fold_in)(s["key"], s["t"])
    sampled = jax.vmap(jax.random.categorical)(keys, scaled).astype(jnp.int32)
    token = jnp.where(s["greedy"], greedy, sampled)
    pos = jnp.minimum(s["pos"], span - 1)  # padding rows may run on: keep them in range
    apply = jax.vmap(self._row_apply, in_axes=(None, 0, 0, _CACHE_AXES, 0),
                     out_axes=(0, _CACHE_AXES))
    c = full["cache"]
    cut = {"k": c["k"][sel, :, :span], "v": c["v"][sel, :, :span],
           "segment_ids": c["segment_ids"][sel, :span]}
    new_logits, new = apply(params, token, pos, cut, pos)
    cache = {"k": c["k"].at[sel, :, :span].set(new["k"]),
             "v": c["v"].at[sel, :, :span].set(new["v"]),
             "segment_ids": c["segment_ids"].at[sel, :span].set(new["segment_ids"])}
    raw = s["logits"]
    none = (jnp.zeros(R, jnp.float32), jnp.zeros((R, lp_lib.TOP), jnp.int32),
            jnp.zeros((R, lp_lib.TOP), jnp.float32))
    lps = jax.lax.cond(jnp.any(s["want_logprobs"]),
                       lambda: lp_lib.chosen_and_top(raw, token, self.vocab_size), lambda: none)
    seen = s["seen"].at[jnp.arange(R), token].set(True)
    put = lambda name, value: full[name].at[sel].set(value)
    full = {**full, "cache": cache, "logits": put("logits", new_logits),
            "t": put("t", s["t"] + 1), "pos": put("pos", pos + 1), "seen": put("seen", seen)}
    return full, token, lps

  def _score_fn(self, params, tokens):
    self._count("score")
    logits = self.model.apply({"params": params}, tokens)[0]
    return lp_lib.chosen_and_top(logits[:-1], tokens[0, 1:], self.vocab_size)

  # -- host API ---------------------------------------------------------------------------------

  def _init_state(self) -> dict:
    B, V = self.slots, self.cfg.vocab_size
    f32, i32 = jnp.float32, jnp.int32
    cache = model_lib.init_cache(self.cfg, B, self.max_len)
    cache = {**cache, "k": jnp.moveaxis(cache["k"], 1, 0), "v": jnp.moveaxis(cache["v"], 1, 0)}
    return {"cache": cache,
            "logits": jnp.zeros((B, V), f32), "seen": jnp.zeros((B, V), bool),
            "key": jax.vmap(jax.random.key)(jnp.zeros(B, jnp.uint32)),
            "t": jnp.zeros(B, i32), "pos": jnp.zeros(B, i32),
            "temperature": jnp.ones(B, f32), "top_p": jnp.ones(B, f32),
            "top_k": jnp.zeros(B, i32), "penalty": jnp.ones(B, f32),
            "greedy": jnp.ones(B, bool), "want_logprobs": jnp.zeros(B, bool)}

  def _state_shardings(self):
    if self.mesh is None:
      return None
    kv = "tensor" if self.cfg.n_kv_heads % self.mesh.shape["tensor"] == 0 else None
    rows = NamedSharding(self.mesh, P(sharding.BATCH_AXES))
    kv_sh = NamedSharding(self.mesh, P(sharding.BATCH_AXES, None, None, kv, None))
    shapes = jax.eval_shape(self._init_state)
    out = jax.tree.map(lambda _: rows, shapes)
    out["cache"] = {"k": kv_sh, "v": kv_sh, "segment_ids": rows}
    return out

  def insert(self, slot: int, prompt: list[int], *, seed: int, index: int, temperature: float,
             top_p: float, top_k: int, penalty: float, greedy: bool,
             want_logprobs: bool = False) -> None:
    """Prefills `prompt` (1 <= len < max_len) and puts it in `slot` with its knobs."""
    n = len(prompt)
    tokens = np.zeros((1, bucket_for(n, self.max_len)), np.int32)
    tokens[0, :n] = prompt
    row, logits = self._prefill(self.params, tokens, np.int32(n))
    req = {"seed": np.int32(seed), "index": np.int32(index), "length": np.int32(n),
           "temperature": np.float32(temperature), "top_p": np.float32(top_p),
           "top_k": np.int32(top_k), "penalty": np.float32(penalty), "greedy": np.bool_(greedy),
           "want_logprobs": np.bool_(want_logprobs)}
    self.state = self._insert(self.state, row, logits, np.int32(slot), req)
    self._ends[slot] = n

  def free(self, slot: int) -> None:
    """The slot's answer is over: its row no longer sets how much of the cache a step reads."""
    self._ends[slot] = 0

  def step(self) -> np.ndarray:
    """One token per busy slot, as [slots] int32 (free slots: 0; one device-to-host transfer);
    their logprobs are left in `self.logprobs` (zeros unless a busy slot asked for them)."""
    furthest = int(self._ends.max())
    span = next(b for b in self.spans if b > min(furthest, self.max_len - 1))
    busy = np.flatnonzero(self._ends > 0)
    n = next(b for b in self.row_buckets if b >= len(busy))
    rows = np.sort(np.concatenate([busy, np.flatnonzero(self._ends == 0)[:n - len(busy)]]))
    self.state, tokens, lps = self._step(self.params, self.state, span, rows.astype(np.int32))
    self._ends[busy] += 1
    tokens, lps = jax.device_get((tokens, lps))
    out = np.zeros(self.slots, np.int32)
    out[rows] = tokens
    self.logprobs = tuple(_scatter(a, rows, self.slots) for a in lps)
    return out

  def score(self, prompt: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The logprob of each prompt token after the first, given those before it, and the top
    `logprobs.TOP` alternatives at each position: ([n-1], [n-1, K], [n-1, K])."""
    n = len(prompt)
    tokens = np.zeros((1, bucket_for(n, self.max_len)), np.int32)
    tokens[0, :n] = prompt
    chosen, ids, lps = jax.device_get(self._score(self.params, tokens))
    return chosen[:n - 1], ids[:n - 1], lps[:n - 1]

  def warm_up(self) -> None:
    """Compiles every prefill bucket, insert and step, so no request waits for a compile."""
    for b in buckets(self.max_len):
      n = min(b, self.max_len - 1)
      self.insert(0, [0] * n, seed=0, index=0, temperature=1.0, top_p=1.0, top_k=0,
                  penalty=1.0, greedy=True)
      self.score([0] * n)
    for span in self.spans:
      for n in self.row_buckets:
        self.state, *_ = self._step(self.params, self.state, span, np.arange(n, dtype=np.int32))
    self.free(0)


def int32_seed(seed: int) -> int:
  """An OpenAI seed (any int64) as the int32 `jax.random.key` takes; small seeds unchanged."""
  return (int(seed) + 2**31) % 2**32 - 2**31


def _scatter(a: np.ndarray, rows: np.ndarray, slots: int) -> np.ndarray:
  out = np.zeros((slots,) + a.shape[1:], a.dtype)
  out[rows] = a
  return out
