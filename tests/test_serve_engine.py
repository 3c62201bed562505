"""lima_jax.serve.engine: slots with their own cache positions give exactly Generator's tokens
(greedy, greedy with LIMA's penalty, and seeded sampling), whatever slot a prompt sits in, and
the three jitted functions compile once."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from lima_jax.decode import generator as decoding
from lima_jax.model import transformer as model_lib
from lima_jax.decode.generator import Generator
from lima_jax.model.config import get_size
from lima_jax.decode.sampling import Decoding
from lima_jax.serve.engine import Engine, bucket_for, buckets
from lima_jax.tokenizer import load as load_tokenizer
from conftest import _REPO

N_NEW = 20


@pytest.fixture(scope="module")
def setup():
  tok = load_tokenizer(_REPO / "data/demo/tokenizer.model")
  cfg = get_size("tiny", vocab_size=tok.padded_vocab_size())
  params = nn.meta.unbox(model_lib.Transformer(cfg).init(
      jax.random.key(1), jnp.zeros((1, 8), jnp.int32))["params"])
  engine = Engine(params, cfg, tok.vocab_size, slots=4,
                  banned=decoding.banned_ids(tok, (tok.eot_id, tok.eos_id)))  # as Generator
  engine.warm_up()
  texts = ["hello there how are you", "a", "what is the meaning of life and the universe"]
  prompts = [[tok.bos_id] + tok.encode(t) + [tok.eot_id] for t in texts]
  return tok, cfg, params, engine, prompts


def _run(engine, tok, prompts, slots, dec, seed):
  for i, (p, slot) in enumerate(zip(prompts, slots)):
    engine.insert(slot, p, seed=seed, index=i, temperature=dec.temperature, top_p=dec.top_p,
                  top_k=dec.top_k, penalty=dec.repetition_penalty, greedy=dec.greedy)
  outs, done = [[] for _ in prompts], [False] * len(prompts)
  for _ in range(N_NEW):
    tokens = engine.step()
    for i, slot in enumerate(slots):
      if not done[i]:
        if tokens[slot] in (tok.eot_id, tok.eos_id):
          done[i] = True
        else:
          outs[i].append(int(tokens[slot]))
  return outs


@pytest.mark.parametrize("dec,seed", [
    (Decoding(max_new_tokens=N_NEW, greedy=True, repetition_penalty=1.0), 0),
    (Decoding(max_new_tokens=N_NEW, greedy=True), 0),
    (Decoding(max_new_tokens=N_NEW, top_k=50), 5),
])
def test_slots_match_generator(setup, dec, seed):
  tok, cfg, params, engine, prompts = setup
  ref = [ids for ids, _ in Generator(params, cfg, tok, batch_size=4).answer_ids(
      prompts, dec, seed=seed)]
  assert _run(engine, tok, prompts, [0, 1, 2], dec, seed) == ref
  # Other slots, other neighbours (slot 0 keeps decoding the stale row): same tokens.
  assert _run(engine, tok, prompts, [3, 2, 1], dec, seed) == ref


def test_compiled_once(setup):
  engine = setup[3]
  assert engine.spans == [64, 128]  # the step's cache spans at max_len 128
  assert engine.row_buckets == [1, 2, 4]  # rows a step computes: the busy slots, padded
  n = len(buckets(engine.max_len))
  assert engine.compiles == {"prefill": n, "insert": 1, "step": 2 * 3, "score": n}


def test_buckets():
  assert buckets(128) == [16, 32, 64, 128]
  assert buckets(100) == [16, 32, 64, 100]
  assert [bucket_for(n, 100) for n in (1, 16, 17, 65, 99)] == [16, 16, 32, 100, 100]


def test_on_a_mesh_gives_the_same_tokens(setup):
  """Params sharded (fsdp x tensor over 4 of the fake devices), the cache over the batch: the
  same tokens as on one device (what `--mesh` serves)."""
  from lima_jax.parallel import sharding
  tok, cfg, params, engine, prompts = setup
  mesh = sharding.make_mesh([1, 2, 2], jax.devices()[:4])
  placed = jax.device_put(params, sharding.logical_shardings(model_lib.abstract_params(cfg),
                                                            mesh))
  sharded = Engine(placed, cfg, tok.vocab_size, slots=3, mesh=mesh, banned=engine.banned)
  assert sharded.slots == 4  # rounded up to the 2 batch shards
  dec = Decoding(max_new_tokens=N_NEW, top_k=50)
  assert _run(sharded, tok, prompts, [1, 3, 0], dec, 5) == _run(engine, tok, prompts, [0, 1, 2],
                                                                dec, 5)
