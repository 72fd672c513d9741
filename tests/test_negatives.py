"""Tests of mi_contrast.negatives against a numpy argsort reference and invariants."""

import fractions

import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mi_contrast import negatives

SETTINGS = hypothesis.settings(max_examples=30, deadline=None, derandomize=True)
T = 0.07
NUM = 2048          # negatives per anchor in the band_negatives tests (one compiled shape)


# ------------------------------------------------------------------------------------------
# Independent references.
# ------------------------------------------------------------------------------------------


def np_ranks(x):
  """Rank of every entry of each row: most similar first, ties by lower index first."""
  x = np.asarray(x, np.float64).reshape(-1, np.shape(x)[-1])
  order = np.lexsort((np.broadcast_to(np.arange(x.shape[1]), x.shape), -x), axis=1)
  ranks = np.empty_like(order)
  np.put_along_axis(ranks, order, np.arange(x.shape[1])[None, :].repeat(x.shape[0], 0), axis=1)
  return ranks


def np_bounds(p, lower, upper):
  """floor((1 - q) * P) in exact rational arithmetic, q given as a decimal string or float."""
  def count(q):
    frac = 1 - fractions.Fraction(str(q))
    return min(max(int(np.floor(frac * p)), 0), p)
  return count(upper), count(lower)


def np_ring_mask(x, lower, upper):
  start, end = np_bounds(np.shape(x)[-1], lower, upper)
  ranks = np_ranks(x)
  return ((ranks >= start) & (ranks < end)).reshape(np.shape(x))


def unit_rows(rng, n, d):
  v = rng.standard_normal((n, d)).astype(np.float32)
  return v / np.linalg.norm(v, axis=1, keepdims=True)


def clustered_rows(rng, n, d, clusters=20, spread=0.7):
  centres = unit_rows(rng, clusters, d)
  v = centres[rng.integers(0, clusters, n)] + spread * unit_rows(rng, n, d)
  return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


# ------------------------------------------------------------------------------------------
# Quantiles and rank counts.
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("p, start, end", [(50000, 500, 5000), (65536, 655, 6553),
                                           (1281167, 12811, 128116)])
def test_reference_ring_ranks(p, start, end):
  # The paper's worked examples for rho_outer = rho_inner = 0.1, python and traced fractions.
  lower, upper = negatives.fractions_to_quantiles(0.1, 0.1)
  assert tuple(int(v) for v in negatives.band_bounds(p, lower, upper)) == (start, end)
  traced = jax.jit(lambda o, i: negatives.band_bounds(p, *negatives.fractions_to_quantiles(o, i)))
  assert tuple(int(v) for v in traced(0.1, 0.1)) == (start, end)


def test_band_bounds_float_guard():
  # (1 - (1 - 0.1)) * 50000 is 4999.99... in floating point; the count must be 5000.
  assert int(negatives.band_bounds(50000, 1 - 0.1, 1.0)[1]) == 5000
  assert int(jax.jit(lambda q: negatives.band_bounds(50000, q, 1.0)[1])(0.9)) == 5000


@pytest.mark.parametrize("p", [510, 4096, 50000, 65536, 1281167])
def test_band_bounds_match_exact_arithmetic_and_reference(p):
  # Exact floors, except within the documented float32 tolerance below an integer, where the
  # count may round up by one (fractions are float32 under jit).
  traced = jax.jit(lambda lo, up: negatives.band_bounds(p, lo, up))
  tol = 1e-3 + p * 2.0 ** -23

  def close(got, exact):
    return got == int(np.floor(exact)) or (got == int(np.floor(exact)) + 1
                                           and exact - np.floor(exact) >= 1 - tol)

  for outer in ["1.0", "0.5", "0.3", "0.25", "0.2", "0.1", "0.05", "0.01"]:
    for inner in ["0.5", "0.1", "0.05"]:
      o, i = fractions.Fraction(outer), fractions.Fraction(inner)
      start, end = (int(v) for v in traced(float(1 - o), float(1 - i * o)))
      assert close(start, i * o * p) and close(end, o * p), (p, outer, inner, start, end)
      # The reference's dynamic inner floor(rho_i * floor(rho_o * P)) is at most one lower.
      ref_outer = int(np.floor(o * p))
      ref_inner = int(np.floor(i * ref_outer))
      assert end == ref_outer or close(end, o * p)
      assert 0 <= start - ref_inner <= 1 or close(start, i * o * p)


def test_fractions_to_quantiles():
  assert negatives.fractions_to_quantiles(0.1, 0.1) == pytest.approx((0.9, 0.99))
  assert negatives.fractions_to_quantiles(1.0, 0.1) == pytest.approx((0.0, 0.9))
  lower, upper = jax.jit(negatives.fractions_to_quantiles)(0.5, 0.1)
  np.testing.assert_allclose([lower, upper], [0.5, 0.95], rtol=1e-6)


# ------------------------------------------------------------------------------------------
# Exact masks.
# ------------------------------------------------------------------------------------------


BANDS = [(0.9, 0.99), (0.0, 1.0), (0.0, 0.0), (1.0, 1.0), (0.5, 0.5), (0.3, 0.8),
         (0.99, 1.0), (0.0, 0.01), (0.8, 0.3)]


@pytest.mark.parametrize("kind", ["normal", "ties", "clustered", "outliers", "binades"])
def test_ring_mask_matches_argsort_reference(kind):
  rng = np.random.default_rng(0)
  n, p = 24, 777
  if kind == "normal":
    x = rng.standard_normal((n, p))
  elif kind == "ties":
    x = rng.integers(0, 6, (n, p)).astype(np.float64)
    x[:3] = 0.0                                            # whole rows of equal values
  elif kind == "clustered":
    z = clustered_rows(rng, p, 16)
    x = z[:n] @ z.T / T                                    # anchors inside the pool
  elif kind == "outliers":
    x = rng.standard_normal((n, p))
    x[:, 5] = 1e6
    x[:, 9] = -1e6
  else:
    # Magnitudes over 60 decades, both signs, and exact zeros.
    x = rng.choice([-1.0, 1.0], (n, p)) * 10.0 ** rng.uniform(-30, 30, (n, p))
    x[:, ::7] = 0.0
  x = x.astype(np.float32)
  for lower, upper in BANDS:
    got = np.asarray(negatives.ring_mask(x, lower, upper))
    want = np_ring_mask(x, lower, upper)
    np.testing.assert_array_equal(got, want, err_msg=f"{kind} {lower} {upper}")


def test_ring_mask_leading_shapes_and_no_gradient():
  rng = np.random.default_rng(1)
  x = rng.standard_normal((2, 3, 100)).astype(np.float32)
  one = negatives.ring_mask(x[0, 0], 0.5, 0.9)
  np.testing.assert_array_equal(one, np_ring_mask(x[0, 0], 0.5, 0.9))
  masked_sum = lambda s: jnp.sum(jnp.where(negatives.ring_mask(s, 0.5, 0.9), s, 0.0))
  grad = jax.grad(masked_sum)(x)                 # the mask is traced with a 3-d input here
  np.testing.assert_array_equal(grad, np_ring_mask(x, 0.5, 0.9).astype(np.float32))
  assert one.shape == (100,) and one.dtype == jnp.bool_


def test_ball_and_neighbour_masks():
  rng = np.random.default_rng(2)
  x = rng.integers(0, 50, (24, 777)).astype(np.float32)       # many ties
  lower, upper = 0.8, 0.95                                     # ranks [38, 155)
  ball = np.asarray(negatives.ball_mask(x, lower))
  np.testing.assert_array_equal(ball, np_ring_mask(x, lower, 1.0))
  np.testing.assert_array_equal(ball.sum(1), 155)
  np.testing.assert_array_equal(ball, negatives.ring_mask(x, lower, 1.0))
  inner, ring = (np.asarray(m) for m in negatives.neighbour_masks(x, lower, upper))
  np.testing.assert_array_equal(inner, negatives.ball_mask(x, upper))
  np.testing.assert_array_equal(ring, negatives.ring_mask(x, lower, upper))
  assert not np.any(inner & ring)
  np.testing.assert_array_equal(inner | ring, ball)
  np.testing.assert_array_equal(inner.sum(1), 38)
  np.testing.assert_array_equal(ring.sum(1), 117)


def test_band_thresholds():
  rng = np.random.default_rng(3)
  x = rng.standard_normal((24, 777)).astype(np.float32)
  low, high = negatives.band_thresholds(x, 0.9, 0.99)          # ranks [7, 77)
  mask = np_ring_mask(x, 0.9, 0.99)
  np.testing.assert_array_equal(low, np.where(mask, x, np.inf).min(1))
  np.testing.assert_array_equal(high, np.where(mask, x, -np.inf).max(1))
  srt = -np.sort(-x, axis=1)
  np.testing.assert_array_equal(high, srt[:, 7])
  np.testing.assert_array_equal(low, srt[:, 76])


def test_masks_do_not_recompile_when_band_changes():
  x = np.random.default_rng(4).standard_normal((24, 777)).astype(np.float32)
  sizes = []
  for lower, upper in [(0.9, 0.99), (0.0, 0.9), (0.5, 0.6), (0.2, 0.1)]:
    got = negatives.ring_mask(x, jnp.float32(lower), jnp.float32(upper))
    np.testing.assert_array_equal(got, np_ring_mask(x, np.float32(lower), np.float32(upper)))
    sizes.append(negatives._band_membership._cache_size())  # pylint: disable=protected-access
  assert sizes[0] == sizes[-1]


@hypothesis.given(
    data=st.data(),
    p=st.sampled_from([1, 33, 200]),
    lower=st.floats(0.0, 1.0), upper=st.floats(0.0, 1.0),
    values=st.sampled_from(["few", "many"]))
@pytest.mark.slow
@SETTINGS
def test_mask_counts_property(data, p, lower, upper, values):
  top = 4 if values == "few" else 10 ** 6
  x = data.draw(hnp.arrays(np.float32, (3, p), elements=st.integers(-top, top).map(float)))
  start, end = (int(v) for v in negatives.band_bounds(p, lower, upper))
  got = np.asarray(negatives.ring_mask(x, lower, upper))
  np.testing.assert_array_equal(got.sum(1), max(end - start, 0))
  ranks = np_ranks(x)
  np.testing.assert_array_equal(got, (ranks >= start) & (ranks < end))
  ball = np.asarray(negatives.ball_mask(x, lower))
  np.testing.assert_array_equal(ball.sum(1), end)
  assert np.all(ball | ~got)                         # the ring lies inside its ball


# ------------------------------------------------------------------------------------------
# band_negatives.
# ------------------------------------------------------------------------------------------


def ring_loss(anchors, pool, rng, lower, upper, num, **kwargs):
  pos = jnp.sum(anchors * anchors, axis=1) / T
  neg, idx = negatives.band_negatives(rng, anchors, pool, lower, upper, num, temperature=T,
                                      **kwargs)
  logits = jnp.concatenate([pos[:, None], neg], axis=1)
  return -jnp.mean(pos - jax.nn.logsumexp(logits, axis=1)), idx


@pytest.fixture(scope="module")
def bank():
  rng = np.random.default_rng(5)
  pool = clustered_rows(rng, 3000, 16)
  anchors = clustered_rows(rng, 8, 16)
  return anchors, pool


def test_band_negatives_exact_band_scores_and_uniformity(bank):
  anchors, pool = bank
  num = NUM
  lower, upper = 0.9, 0.99
  scores, idx = negatives.band_negatives(jax.random.PRNGKey(0), anchors, pool, lower, upper,
                                         num, temperature=T)
  scores, idx = np.asarray(scores), np.asarray(idx)
  assert scores.shape == idx.shape == (8, num) and idx.dtype == np.int32
  band = np_ring_mask(anchors @ pool.T, lower, upper)             # ranks [30, 300)
  assert np.all(np.take_along_axis(band, idx, axis=1))
  np.testing.assert_allclose(scores, np.einsum("bd,bkd->bk", anchors, pool[idx]) / T,
                             rtol=1e-5, atol=1e-4)
  # Uniform over the 270 band members: a loose chi-square check per anchor.
  size = int(band[0].sum())
  assert size == 270
  for b in range(8):
    counts = np.bincount(idx[b], minlength=pool.shape[0])[band[b]]
    expected = num / size
    chi2 = np.sum((counts - expected) ** 2 / expected)
    assert chi2 < (size - 1) + 6 * np.sqrt(2 * (size - 1)), (b, chi2)


def test_band_negatives_gradient_matches_explicit_gather(bank):
  anchors, pool = bank
  rng = jax.random.PRNGKey(1)
  (value, idx), grads = jax.jit(jax.value_and_grad(ring_loss, argnums=(0, 1), has_aux=True),
                                static_argnums=(5,))(anchors, pool, rng, 0.8, 0.95, NUM)

  def reference(a, pl):
    pos = jnp.sum(a * a, axis=1) / T
    neg = jnp.einsum("bd,bkd->bk", a, pl[idx]) / T
    logits = jnp.concatenate([pos[:, None], neg], axis=1)
    return -jnp.mean(pos - jax.nn.logsumexp(logits, axis=1))

  ref_value, ref_grad = jax.value_and_grad(reference)(anchors, pool)
  np.testing.assert_allclose(value, ref_value, rtol=1e-5)
  np.testing.assert_allclose(grads[0], ref_grad, rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(grads[1], 0.0)                      # the pool gets no gradient


def test_band_negatives_traced_band_no_recompilation(bank):
  anchors, pool = bank
  sizes = []
  for lower, upper in [(0.9, 0.99), (0.0, 0.9), (0.5, 0.7), (0.99, 1.0)]:
    idx = negatives.band_negatives(jax.random.PRNGKey(2), anchors, pool, jnp.float32(lower),
                                   jnp.float32(upper), NUM, temperature=T)[1]
    band = np_ring_mask(anchors @ pool.T, np.float32(lower), np.float32(upper))
    assert np.all(np.take_along_axis(band, np.asarray(idx), axis=1)), (lower, upper)
    sizes.append(negatives._band_negatives._cache_size())
  assert sizes[0] == sizes[-1]


@pytest.mark.slow
def test_band_negatives_independent_of_batch_split(bank):
  anchors, pool = bank
  ids = jnp.arange(100, 108)
  rng = jax.random.PRNGKey(3)
  for candidates in (None, 1024):        # 1024: the same shape as the sampled-form test
    call = lambda a, i: negatives.band_negatives(rng, a, pool, 0.9, 0.99, NUM, temperature=T,
                                                 candidates=candidates, anchor_ids=i)
    full_scores, full_idx = call(anchors, ids)
    halves = [call(anchors[:4], ids[:4]), call(anchors[4:], ids[4:])]
    np.testing.assert_array_equal(full_idx, np.concatenate([h[1] for h in halves]))
    np.testing.assert_allclose(full_scores, np.concatenate([h[0] for h in halves]), rtol=1e-6)
    # Same ids, same draws; other ids, other draws.
    other = call(anchors, ids + 8)[1]
    assert np.mean(np.asarray(other) == np.asarray(full_idx)) < 0.2


def test_band_negatives_sampled_form(bank):
  anchors, pool = bank
  m = 1024
  scores, idx = negatives.band_negatives(jax.random.PRNGKey(4), anchors, pool, 0.9, 0.99, NUM,
                                         temperature=T, candidates=m)
  idx = np.asarray(idx)
  assert idx.min() >= 0 and idx.max() < pool.shape[0]
  np.testing.assert_allclose(scores, np.einsum("bd,bkd->bk", anchors, pool[idx]) / T,
                             rtol=1e-5, atol=1e-4)
  # Every anchor draws from the band of the same candidate set: at most 1024 distinct rows.
  assert len(np.unique(idx)) <= m


def test_sampled_band_drift_is_small_for_large_candidate_sets():
  rng = np.random.default_rng(6)
  pool = clustered_rows(rng, 20000, 16)
  anchors = clustered_rows(rng, 8, 16)
  lower, upper = 0.9, 0.99
  m = 8192
  ranks = np_ranks(anchors @ pool.T)
  start, end = np_bounds(pool.shape[0], lower, upper)
  _, idx = negatives.band_negatives(jax.random.PRNGKey(7), anchors, pool, lower, upper, NUM,
                                    temperature=T, candidates=m)
  r = np.take_along_axis(ranks, np.asarray(idx), axis=1)
  assert np.mean((r >= start) & (r < end)) > 0.95
  # Pool quantiles of the sampled band's edges stay within a few binomial errors.
  q_top = 1 - r.min(1) / pool.shape[0]
  q_bottom = 1 - (r.max(1) + 1) / pool.shape[0]
  tol = 4 * np.sqrt(0.1 * 0.9 / m) + 1e-3
  assert np.mean(np.abs(q_top - upper)) < tol and np.mean(np.abs(q_bottom - lower)) < tol


def test_band_negatives_empty_band_falls_back_to_one_entry():
  rng = np.random.default_rng(8)
  pool = unit_rows(rng, 3, 4)
  anchors = unit_rows(rng, 2, 4)
  for lower, upper in [(0.5, 0.5), (0.9, 0.2), (1.0, 1.0), (0.0, 0.0)]:
    scores, idx = negatives.band_negatives(jax.random.PRNGKey(0), anchors, pool, lower, upper,
                                           5, temperature=T)
    assert np.all(np.isfinite(scores))
    start = min(np_bounds(3, lower, upper)[0], 2)
    ranks = np_ranks(anchors @ pool.T)
    np.testing.assert_array_equal(np.take_along_axis(ranks, np.asarray(idx), axis=1), start)


def test_band_negatives_with_tied_pool(bank):
  # A bank of identical rows (for example freshly initialised): ties everywhere, the band is
  # the index range [start, end) = [30, 300).
  anchors, pool = bank
  pool = np.tile(pool[:1], (pool.shape[0], 1))
  _, idx = negatives.band_negatives(jax.random.PRNGKey(0), anchors, pool, 0.9, 0.99, NUM,
                                    temperature=T)
  idx = np.asarray(idx)
  assert idx.min() >= 30 and idx.max() < 300
  assert len(np.unique(idx)) > 250


@pytest.mark.slow
@pytest.mark.parametrize("candidates", [None, 8192])
def test_band_negatives_never_draw_the_anchors_own_row(bank, candidates):
  """The own row at rank 0 of a ball and inside a ring: never drawn, over 8 x 4,096 draws, and
  the band is cut over the other rows (numpy reference: the band of the pool without it)."""
  _, pool = bank
  own = np.array([3, 70, 500, 901, 1200, 1800, 2500, 2999], np.int32)
  rng = np.random.default_rng(9)
  # Anchors next to their own row: rank 0 of every row's similarities.
  anchors = pool[own] + 0.02 * rng.normal(size=(8, pool.shape[1])).astype(np.float32)
  anchors /= np.linalg.norm(anchors, axis=1, keepdims=True)
  sims = anchors @ pool.T
  assert np.all(np.argmax(sims, axis=1) == own)
  # A ring whose upper quantile puts the own row inside it for the first half of the anchors:
  # their own row's similarity is lowered to the band's middle.
  inside = pool.copy()
  for b in range(4):
    order = np.argsort(-sims[b])
    inside[own[b]] = pool[order[150]]                 # ranks [30, 300) of the ring below
  num = 4096
  for name, p, lower, upper in (("ball", pool, 0.9, 1.0), ("ring", inside, 0.9, 0.99)):
    key = jax.random.PRNGKey(len(name))
    _, idx = negatives.band_negatives(key, anchors, p, lower, upper, num, temperature=T,
                                      candidates=candidates, exclude_rows=own)
    idx = np.asarray(idx)
    assert not np.any(idx == own[:, None]), name
    _, with_own = negatives.band_negatives(key, anchors, p, lower, upper, num, temperature=T,
                                           candidates=candidates)
    # Without the exclusion the own row is drawn (about num / band size times per anchor):
    # by every anchor of the ball, by the first four of the ring (the others' lies above it).
    drawn = np.any(np.asarray(with_own) == own[:, None], axis=1)
    if candidates is None:
      assert np.all(drawn if name == "ball" else drawn[:4] & ~drawn[4:]), (name, drawn)
    elif name == "ball":   # the own row is among the 8,192 candidates of most anchors
      assert np.mean(drawn) > 0.5, drawn
    if candidates is None:
      for b in range(8):
        others = np.delete(np.arange(p.shape[0]), own[b])
        mask = np_ring_mask((anchors[b] @ p[others].T)[None], lower, upper)[0]
        assert set(np.unique(idx[b])) <= set(others[mask]), (name, b)
        assert len(np.unique(idx[b])) > 0.9 * mask.sum()
  # -1: nothing excluded, the same draws as without the argument.
  _, none = negatives.band_negatives(jax.random.PRNGKey(3), anchors, pool, 0.9, 1.0, 64,
                                     temperature=T, candidates=candidates,
                                     exclude_rows=np.full(8, -1, np.int32))
  _, plain = negatives.band_negatives(jax.random.PRNGKey(3), anchors, pool, 0.9, 1.0, 64,
                                      temperature=T, candidates=candidates)
  np.testing.assert_array_equal(none, plain)


def test_uniform_rows_never_draw_the_own_row_and_cover_the_rest():
  own = jnp.array([0, 5, 9, -1], jnp.int32)
  rows = np.asarray(negatives.uniform_rows(jax.random.PRNGKey(0), jnp.arange(4), own, 10, 5000))
  for b in range(3):
    counts = np.bincount(rows[b], minlength=10)
    assert counts[int(own[b])] == 0 and np.all(np.delete(counts, int(own[b])) > 450)
  assert np.all(np.bincount(rows[3], minlength=10) > 400)     # -1: every row


def test_sentinel_entries_are_ranked_last_and_leave_the_band_of_the_rest_unchanged():
  """-inf entries (an excluded row, SimCLR's self and positives) rank below every real score;
  the band search's starting guess ignores them, and the masks are those of the real scores
  with the sentinels at the end."""
  rng = np.random.default_rng(3)
  real = rng.normal(size=(16, 500)).astype(np.float32)
  sentinel = np.full((16, 12), -np.inf, np.float32)
  rows = np.concatenate([sentinel[:, :6], real, sentinel[:, 6:]], axis=1)
  lower, upper = 0.5, 0.95
  got = np.asarray(negatives.ring_mask(rows, lower, upper))
  ranks = np.argsort(np.argsort(-rows, axis=1, kind="stable"), axis=1)   # sentinels last
  start, end = (int(v) for v in negatives.band_bounds(rows.shape[1], lower, upper))
  np.testing.assert_array_equal(got, (ranks >= start) & (ranks < end))
  assert not got[:, :6].any() and not got[:, -6:].any()
