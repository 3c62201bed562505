"""The loop-weighted HLO count (lima_jax.plan.hlo_count) on programs whose FLOPs are known:
matmuls under a scan, a nested scan and a while loop of unknown trip count, compiled by XLA:CPU.
"""
import re

import jax
import jax.numpy as jnp
import pytest

from lima_jax.plan import hlo_count, hlo_text

M, K, N = 16, 32, 24


def compiled(fn, *shapes):
  return jax.jit(fn).lower(*(jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes)).compile()


def xla_cost(c):
  cost = c.cost_analysis()
  return cost[0] if isinstance(cost, (list, tuple)) else cost


def scanned(x, ws):
  """x (M, K) through a (K, K) and a (K, N)-wide round trip per step: 2 matmuls a step."""
  def step(c, w):
    h = jnp.tanh(c @ w[:, :N])  # (M, N)
    return c + h @ w[:, :N].T, None
  return jax.lax.scan(step, x, ws)[0]


PER_STEP = 2 * M * K * N + 2 * M * N * K


@pytest.mark.parametrize("trips", [1, 3, 7])
def test_scan_counts_every_trip_where_xla_counts_the_body_once(trips):
  c = compiled(scanned, (M, K), (trips, K, K))
  n = hlo_count.count(c.as_text())
  assert n.flops == trips * PER_STEP
  assert n.unknown_loops == []
  # Why the planner counts for itself: XLA's cost analysis sees one step of the loop
  # (its figure also has elementwise FLOPs, a few per element, hence the margin).
  assert PER_STEP <= xla_cost(c)["flops"] < 1.1 * PER_STEP


def test_bytes_weight_the_loop_body_by_its_trips():
  """XLA's bytes for a loop program are the entry's plus one body's; ours add a body per trip.
  With 1 trip the two agree, and each added trip adds the same body bytes."""
  counts = [hlo_count.count(compiled(scanned, (M, K), (t, K, K)).as_text()).bytes
            for t in (2, 3, 7)]
  one_body = counts[1] - counts[0]
  assert one_body > 0 and counts[2] == counts[0] + 5 * one_body
  xla = xla_cost(compiled(scanned, (M, K), (7, K, K)))["bytes accessed"]
  # Within 0.1%: XLA's rule for the loop counter's scalar bookkeeping differs by a few bytes.
  assert counts[2] == pytest.approx(xla + 6 * one_body, rel=1e-3)


def test_loop_free_program_matches_xla_exactly():
  c = compiled(lambda a, b: jnp.tanh(a @ b) @ b.T, (M, K), (K, N))
  n, xla = hlo_count.count(c.as_text()), xla_cost(c)
  assert n.flops == 2 * M * K * N * 2 == xla["flops"] - 0  # tanh is a transcendental
  assert n.bytes == xla["bytes accessed"]
  assert (n.loops, n.unknown_loops) == (0, [])


def test_nested_scans_multiply_their_trip_counts():
  def nested(x, ws):  # ws: (outer, inner, K, K)
    def outer(c, w_inner):
      return jax.lax.scan(lambda c2, w: (jnp.tanh(c2 @ w), None), c, w_inner)[0], None
    return jax.lax.scan(outer, x, ws)[0]
  c = compiled(nested, (M, K), (4, 5, K, K))
  n = hlo_count.count(c.as_text())
  assert n.flops == 4 * 5 * 2 * M * K * K
  assert (n.loops, n.unknown_loops) == (2, [])
  assert xla_cost(c)["flops"] < 1.1 * 2 * M * K * K  # one inner body, once


def test_while_loop_of_unknown_trip_count_is_counted_once_and_reported():
  def until_small(x, w):  # Runs as long as the data says: no trip count to prove.
    return jax.lax.while_loop(lambda c: jnp.sum(c) > 1.0, lambda c: jnp.tanh(c @ w) * 0.5, x)
  c = compiled(until_small, (M, K), (K, K))
  n = hlo_count.count(c.as_text())
  assert n.flops == 2 * M * K * K
  assert n.loops == 1 and n.unknown_loops == ["jit(until_small)/while"]


def test_convolution_flops():
  def conv(x, w):  # NHWC 1x8x8x3, HWIO 3x3x3x4, VALID: 6x6 outputs x 4 features x 27 taps
    return jax.lax.conv_general_dilated(x, w, (1, 1), "VALID",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
  c = compiled(conv, (1, 8, 8, 3), (3, 3, 3, 4))
  assert hlo_count.count(c.as_text()).flops == 2 * 36 * 4 * 27 == xla_cost(c)["flops"]


def test_convolution_taps_on_padding_are_not_counted():
  """SAME 3x3 on 8x8: per spatial dim, 8 outputs x 3 taps less the 2 that fall off the edges."""
  def conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
  c = compiled(conv, (1, 8, 8, 3), (3, 3, 3, 4))
  assert hlo_count.count(c.as_text()).flops == 2 * 4 * 3 * 22 * 22 == xla_cost(c)["flops"]


def test_without_a_written_trip_count_the_counters_are_run():
  """libtpu's optimized text has no known_trip_count: the same programs with it removed."""
  for fn, shapes, flops in ((scanned, [(M, K), (7, K, K)], 7 * PER_STEP),
                            (lambda x, w: jax.lax.fori_loop(  # from 2 to 11: 9 trips
                                2, 11, lambda i, c: jnp.tanh(c @ w) * i, x), [(M, K), (K, K)],
                             9 * 2 * M * K * K)):
    text = compiled(fn, *shapes).as_text()
    bare = re.sub(r',? ?"known_trip_count":\{"n":"\d+"\}', "", text)
    assert "known_trip_count" in text and "known_trip_count" not in bare
    assert hlo_count.count(bare) == hlo_count.count(text)
    assert hlo_count.count(bare).flops == flops


def test_trip_count_is_read_from_the_backend_config():
  assert hlo_text.known_trip_count(
      'body=%b, backend_config={"known_init_step":{"init":"0","step":"1"},'
      '"known_trip_count":{"n":"43"}}') == 43
  assert hlo_text.known_trip_count('body=%b, backend_config={"known_init_step":{}}') is None
  assert hlo_text.known_trip_count("body=%b") is None
