"""The batched, KV-cached decoder (the choice of each token is `lima_jax.decode.sampling`'s).

A batch is right-padded to a bucketed length P and prefilled in one pass (padding has segment
id 0, so no later token attends to it); then the whole loop runs on the device as one
`lax.while_loop` that exits when every row has stopped. `loop="host"` drives a jitted step
from Python instead; benchmarks/decode.py compares the two. Sampling keys derive from (seed,
prompt index, step), so an answer does not depend on the batch it was decoded in.
"""
import contextlib
import dataclasses
import functools
import time
from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm import tqdm

from lima_jax.model import transformer as model_lib
from lima_jax.parallel import sharding
from lima_jax.errors import UserError
from lima_jax.model.config import ModelConfig
from lima_jax.decode.sampling import LIMA, Decoding, Knobs, allowed, next_tokens
from lima_jax.tokenizer import chat

_MIN_BUCKET = 64
_MAX_STOPS = 8  # stop ids are an input of fixed size: any set shares one compiled decoder


@dataclasses.dataclass(frozen=True)
class Answer:
  text: str
  tokens: list[int]  # generated ids, without the stop token
  stopped: bool  # True: ended with EOT/EOS; False: ran out of new tokens (or of context)


def render_prompt(conversation: Sequence, tok, renderer=None) -> list[int]:
  """The ids a model answers for a conversation (utterances or messages, ending on the user's):
  `renderer`'s prompt (`lima_jax.tokenizer.chat.renderer`), by default LIMA's format."""
  return (renderer or chat.Lima(tok)).prompt_ids(chat.as_messages(conversation))


def bucket(n: int, minimum: int = _MIN_BUCKET, maximum: int | None = None) -> int:
  """Lengths round up to powers of two (at least `minimum`, at most `maximum`): a handful of
  compiled shapes. The one rule for the decoder, the server and curation's scoring."""
  b = max(minimum, 1 << (max(n, 1) - 1).bit_length())
  return b if maximum is None else min(b, maximum)


class _Spec(NamedTuple):
  """What a compiled decoder depends on besides shapes (hashable: a static jit argument, so
  every Generator with the same settings shares the compiled code)."""
  cfg: ModelConfig
  mesh: Any
  vocab_size: int
  n_new: int  # room for new tokens (a bucket: each row's own limit is its budget)
  greedy: bool
  top_k: int
  banned: tuple[int, ...] = ()  # ids never emitted (BOS, PAD)


def _decoder(spec: _Spec):
  """(init, body, cond) of the decode loop; the state is a dict of arrays.

  init(params, tokens [B, P], lengths [B], budget [B], rows [B], seed, knobs [3], stops [S])
  prefills the cache; body(params, state) picks one token per row and feeds it; cond(state)
  says whether any row still runs. A row stops at a stop id (not emitted; -1 pads `stops`)
  or after `budget` tokens. knobs: temperature, top_p, repetition penalty.
  """
  cfg, mesh, vocab_size, n_new, greedy, top_k, banned = spec
  model = model_lib.Transformer(cfg)

  def init(params, tokens, lengths, budget, rows, seed, knobs, stops):
    B, p_len = tokens.shape
    cache = model_lib.init_cache(cfg, B, p_len + n_new)
    if mesh is not None:
      kv = "tensor" if cfg.n_kv_heads % mesh.shape["tensor"] == 0 else None
      kv_sharding = NamedSharding(mesh, P(None, sharding.BATCH_AXES, None, kv, None))
      cache = {**cache, "k": jax.lax.with_sharding_constraint(cache["k"], kv_sharding),
               "v": jax.lax.with_sharding_constraint(cache["v"], kv_sharding)}
    segments = (jnp.arange(p_len)[None] < lengths[:, None]).astype(jnp.int32)
    logits, cache = model.apply({"params": params}, tokens, segment_ids=segments, cache=cache,
                                cache_index=0)
    base = jax.random.key(seed)
    return {"t": jnp.int32(0), "logits": logits[jnp.arange(B), lengths - 1], "cache": cache,
            "lengths": lengths, "budget": budget,
            "keys": jax.vmap(lambda r: jax.random.fold_in(base, r))(rows),
            "out": jnp.zeros((B, n_new), jnp.int32), "n": jnp.zeros(B, jnp.int32),
            "seen": jnp.zeros((B, logits.shape[-1]), bool),
            "done": budget <= 0, "stopped": jnp.zeros(B, bool), "knobs": knobs,
            "stops": stops}

  def body(params, s):
    t, B = s["t"], s["n"].shape[0]
    keys = jax.vmap(lambda k: jax.random.fold_in(k, t))(s["keys"])
    dec = Knobs(greedy, top_k, *s["knobs"])
    token = next_tokens(s["logits"], s["seen"], keys, dec, vocab_size, banned)
    stop = jnp.isin(token, s["stops"])
    emit = ~s["done"] & ~stop
    n = s["n"] + emit
    p_len = s["cache"]["segment_ids"].shape[1] - n_new
    logits, cache = model.apply(
        {"params": params}, token[:, None], positions=(s["lengths"] + t)[:, None],
        segment_ids=jnp.ones((B, 1), jnp.int32), cache=s["cache"], cache_index=p_len + t)
    return {**s, "t": t + 1, "logits": logits[:, 0], "cache": cache,
            "out": s["out"].at[:, t].set(jnp.where(emit, token, 0)), "n": n,
            "seen": s["seen"].at[jnp.arange(B), token].max(emit),
            "done": s["done"] | stop | (n >= s["budget"]),
            "stopped": s["stopped"] | (~s["done"] & stop)}

  def cond(s):
    return (s["t"] < n_new) & ~jnp.all(s["done"])

  return init, body, cond


class Generator:
  """Answers prompts with one model, in batches.

  params: unboxed parameters, placed on `mesh` (see `load`) or on one device.
  batch_size: rows per batch (rounded up to a multiple of the mesh's batch shards).
  loop: "device" (the loop inside jit) or "host" (a jitted step per token, for comparison).
  Compiled decoders are shared by all Generators (keyed by model, mesh, settings and shapes),
  so `params` may be replaced by another checkpoint of the same model at no cost.
  stop_ids: ids that end an answer; default the renderer's (EOT and EOS; a chat template's end
  of turn and EOS). renderer: the conversation format prompts are rendered in
  (`chat.renderer`), by default LIMA's.
  """

  def __init__(self, params, cfg: ModelConfig, tok, *, mesh=None, batch_size: int = 8,
               loop: str = "device", stop_ids: Sequence[int] | None = None, renderer=None):
    if loop not in ("device", "host"):
      raise ValueError(f"loop must be 'device' or 'host', got {loop!r}")
    self.cfg = dataclasses.replace(cfg, remat_policy="none", dropout_top=0.0)
    self.params, self.tok, self.mesh, self.loop = params, tok, mesh, loop
    shards = sharding.batch_shards(mesh) if mesh is not None else 1
    self.batch_size = -(-max(batch_size, 1) // shards) * shards
    self.renderer = renderer or chat.Lima(tok)
    self.stop_ids = tuple(stop_ids) if stop_ids is not None else tuple(self.renderer.stop_ids)
    self.banned = banned_ids(tok, self.stop_ids)
    if len(self.stop_ids) > _MAX_STOPS:
      raise ValueError(f"at most {_MAX_STOPS} stop ids, got {len(self.stop_ids)}")

  def answer_ids(self, prompts: Sequence[Sequence[int]], dec: Decoding = LIMA, seed: int = 0,
                 progress: bool = False) -> list[tuple[list[int], bool]]:
    """(generated ids, stopped) for each prompt, given as rendered token ids."""
    ctx = self.cfg.max_seq_len
    for i, p in enumerate(prompts):
      if not 0 < len(p) < ctx:
        raise UserError(f"prompt {i}: {len(p)} tokens; the model's context is {ctx}")
    n_new = min(dec.max_new_tokens, ctx - 1)
    spec = _spec(self.cfg, self.mesh, self.tok.vocab_size, dec, self.banned)
    knobs = jnp.asarray([dec.temperature, dec.top_p, dec.repetition_penalty], jnp.float32)
    stops = jnp.asarray(self.stop_ids + (-1,) * (_MAX_STOPS - len(self.stop_ids)), jnp.int32)
    decode = _decode_on_device if self.loop == "device" else _decode_on_host
    B, results = self.batch_size, []
    put = jnp.asarray
    if self.mesh is not None:
      rows_sharding = NamedSharding(self.mesh, P(sharding.BATCH_AXES))
      # Every host holds every prompt and places the rows its own devices hold (a pod's hosts
      # cannot device_put to each other's devices).
      put = lambda x: jax.make_array_from_callback(x.shape, rows_sharding, lambda i: x[i])
    bar = tqdm(total=len(prompts), desc="generate", unit="prompt", leave=False,
               disable=None if progress and jax.process_index() == 0 else True)
    t0, total = time.perf_counter(), 0
    with _on_mesh(self.mesh):
      for start in range(0, len(prompts), B):
        chunk = prompts[start:start + B]
        tokens = np.zeros((B, bucket(max(map(len, chunk)))), np.int32)
        lengths, budget = np.ones(B, np.int32), np.zeros(B, np.int32)  # spare rows: no budget
        for b, p in enumerate(chunk):
          tokens[b, :len(p)], lengths[b], budget[b] = p, len(p), min(n_new, ctx - len(p))
        rows = np.arange(start, start + B, dtype=np.int32)
        s = decode(spec, self.params, *map(put, (tokens, lengths, budget, rows)),
                   jnp.int32(seed), knobs, stops)
        out, n, stopped = _fetch((s["out"], s["n"], s["stopped"]))
        results += [(out[b, :n[b]].tolist(), bool(stopped[b])) for b in range(len(chunk))]
        total += int(n.sum())
        bar.update(len(chunk))
        bar.set_postfix(tokens_per_s=f"{total / (time.perf_counter() - t0):.1f}")
    bar.close()
    return results

  def prompt_ids(self, conversation: Sequence) -> list[int]:
    """The prompt of a conversation in this generator's format."""
    return render_prompt(conversation, self.tok, self.renderer)

  def answer(self, conversations: Sequence[Sequence[str]], dec: Decoding = LIMA, seed: int = 0,
             progress: bool = False) -> list[Answer]:
    """One answer per conversation (user, assistant, ..., user; utterances or messages)."""
    prompts = [self.prompt_ids(c) for c in conversations]
    return [Answer(self.tok.decode(ids), ids, stopped)
            for ids, stopped in self.answer_ids(prompts, dec, seed, progress)]


def banned_ids(tok, stop_ids: Sequence[int] = ()) -> tuple[int, ...]:
  """Ids an answer never contains: BOS and PAD (unless one is also a stop id)."""
  ids = {getattr(tok, name, -1) for name in ("bos_id", "pad_id")}
  return tuple(sorted(i for i in ids if i is not None and i >= 0 and i not in stop_ids))


def _spec(cfg: ModelConfig, mesh, vocab_size: int, dec: Decoding,
          banned: tuple[int, ...] = ()) -> _Spec:
  n_new = min(dec.max_new_tokens, cfg.max_seq_len - 1)
  return _Spec(cfg, mesh, vocab_size, min(bucket(n_new), cfg.max_seq_len - 1), dec.greedy,
               dec.top_k, banned)


def lower(params, cfg: ModelConfig, mesh, vocab_size: int, batch_size: int,
          prompt_len: int, dec: Decoding = LIMA) -> jax.stages.Lowered:
  """The decode loop `Generator.answer_ids` runs for one batch of `batch_size` prompts of up
  to `prompt_len` tokens, lowered for `params` given as jax.ShapeDtypeStructs placed on
  `mesh`: the planner compiles it for a TPU slice it cannot touch."""
  cfg = dataclasses.replace(cfg, remat_policy="none", dropout_top=0.0)
  rows, whole = NamedSharding(mesh, P(sharding.BATCH_AXES)), NamedSharding(mesh, P())
  shape = lambda s, sh, dtype=jnp.int32: jax.ShapeDtypeStruct(s, dtype, sharding=sh)
  B = batch_size
  args = (shape((B, bucket(prompt_len)), rows), shape((B,), rows), shape((B,), rows),
          shape((B,), rows), shape((), whole), shape((3,), whole, jnp.float32),
          shape((_MAX_STOPS,), whole))
  with _on_mesh(mesh):
    return _decode_on_device.lower(_spec(cfg, mesh, vocab_size, dec), params, *args)


@functools.partial(jax.jit, static_argnums=0)
def _decode_on_device(spec: _Spec, params, *args):
  init, body, cond = _decoder(spec)
  return jax.lax.while_loop(cond, lambda s: body(params, s), init(params, *args))


@functools.partial(jax.jit, static_argnums=0)
def _init_step(spec: _Spec, params, *args):
  return _decoder(spec)[0](params, *args)


@functools.partial(jax.jit, static_argnums=0, donate_argnums=2)
def _body_step(spec: _Spec, params, state):
  return _decoder(spec)[1](params, state)


def _decode_on_host(spec: _Spec, params, *args):
  state = _init_step(spec, params, *args)
  while int(state["t"]) < spec.n_new and not bool(jnp.all(state["done"])):
    state = _body_step(spec, params, state)
  return state


def _fetch(tree):
  """Host numpy copies of batch-sharded results; across hosts, every host gets all rows."""
  if all(x.is_fully_addressable for x in jax.tree.leaves(tree)):
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)


@contextlib.contextmanager
def _on_mesh(mesh):
  """The mesh and the logical-axis rules, so activations and the cache follow the batch."""
  if mesh is None:
    yield
    return
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
    yield


def recompute_greedy(params, cfg: ModelConfig, vocab_size: int,
                     prompts: Sequence[Sequence[int]], max_new_tokens: int,
                     stop_ids: Sequence[int] = (), banned: Sequence[int] = ()
                     ) -> list[list[int]]:
  """Reference decoder without a cache: a full forward pass over the sequence per token.

  Each row holds its prompt then its answer, unpadded in between; the causal mask makes the
  slots after the cursor irrelevant, so one buffer serves every step. Slow (quadratic); for
  checks and benchmarks. Stops as `Generator` does; no repetition penalty.
  """
  cfg = dataclasses.replace(cfg, remat_policy="none", dropout_top=0.0)
  stops = jnp.asarray(tuple(stop_ids) + (-1,) * (_MAX_STOPS - len(stop_ids)), jnp.int32)
  lengths = np.asarray([len(p) for p in prompts], np.int32)
  buf = np.zeros((len(prompts), max(lengths) + max_new_tokens), np.int32)
  for b, p in enumerate(prompts):
    buf[b, :len(p)] = p
  out, n = jax.device_get(_recompute(cfg, vocab_size, tuple(banned), max_new_tokens, params, buf,
                                     lengths, stops))
  return [out[b, len(p):len(p) + n[b]].tolist() for b, p in enumerate(prompts)]


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _recompute(cfg, vocab_size, banned, max_new_tokens, params, buf, lengths, stops):
  model, rows = model_lib.Transformer(cfg), jnp.arange(buf.shape[0])

  def body(t, c):
    buf, n, done = c
    logits = model.apply({"params": params}, buf)[rows, lengths + t - 1]
    logits = jnp.where(allowed(logits.shape[-1], vocab_size, banned), logits, -jnp.inf)
    token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    done = done | jnp.isin(token, stops)
    return buf.at[rows, lengths + t].set(token), n + ~done, done

  zeros = jnp.zeros(buf.shape[0], jnp.int32)
  return jax.lax.fori_loop(0, max_new_tokens, body, (buf, zeros, zeros.astype(bool)))[:2]
