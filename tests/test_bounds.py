"""Tests of mi_contrast.bounds against independent float64 numpy formulas and invariants."""

import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jitted import jitted

from mi_contrast import bounds as bounds_module


bounds = jitted(bounds_module)

SETTINGS = hypothesis.settings(max_examples=40, deadline=None, derandomize=True)


# ------------------------------------------------------------------------------------------
# Independent numpy references (float64, written from the papers' formulas).
# ------------------------------------------------------------------------------------------


def np_logsumexp(x, axis=-1):
  m = np.max(x, axis=axis, keepdims=True)
  m = np.where(np.isfinite(m), m, 0.0)
  return np.squeeze(m, axis) + np.log(np.sum(np.exp(x - m), axis=axis))


def np_infonce(pos, neg, mask=None):
  if mask is None:
    mask = np.ones(neg.shape, bool)
  out = np.empty(pos.shape)
  for idx in np.ndindex(pos.shape):
    kept = neg[idx][mask[idx]]
    scores = np.concatenate([[pos[idx]], kept])
    out[idx] = pos[idx] - np.log(np.mean(np.exp(scores - scores.max()))) - scores.max()
  return out


def np_nce(pos, neg, log_z, num_data):
  k = neg.shape[-1]
  c = k / num_data
  p_pos = np.exp(pos - log_z)
  p_neg = np.exp(neg - log_z)
  return np.log(p_pos / (p_pos + c)) + np.sum(np.log(c / (p_neg + c)), axis=-1)


def np_nwj(pos, neg):
  return pos - np.exp(-1.0) * np.mean(np.exp(neg), axis=-1)


def np_dv(pos, neg):
  return pos - np.log(np.mean(np.exp(neg), axis=-1))


def np_tuba(pos, neg, log_a):
  a = np.exp(log_a)
  return pos - np.mean(np.exp(neg), axis=-1) / a - log_a + 1.0


def np_js(pos, neg):
  return -np.log1p(np.exp(-pos)) - np.mean(np.log1p(np.exp(neg)), axis=-1)


def np_interpolated(pos, neg, alpha, log_a):
  """Poole et al. (2019) reference code, row by row: positive = diagonal, negatives = row."""
  a_all = np.broadcast_to(np.exp(log_a), pos.shape)
  k = neg.shape[-1]
  out = np.empty(pos.shape)
  for idx in np.ndindex(pos.shape):
    p, n, a = pos[idx], neg[idx], a_all[idx]
    joint = []
    for j in range(k):
      others = np.concatenate([[p], np.delete(n, j)])
      m = np.mean(np.exp(others))
      joint.append(p - np.log(alpha * m + (1 - alpha) * a))
    base_neg = alpha * np.mean(np.exp(n)) + (1 - alpha) * a
    marginal = np.mean(np.exp(n) / base_neg)
    out[idx] = 1.0 + np.mean(joint) - marginal
  return out


def _random(seed, shape, scale=2.0):
  return np.random.default_rng(seed).normal(size=shape) * scale


# ------------------------------------------------------------------------------------------
# Equality with the numpy formulas.
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lead", [(), (5,), (3, 4)])
def test_bounds_match_numpy(lead):
  k = 7
  pos = _random(0, lead)
  neg = _random(1, lead + (k,))
  log_a = _random(2, lead, 0.5)
  f32 = lambda x: np.asarray(x, np.float32)
  cases = [
      (bounds.infonce(f32(pos), f32(neg)), np_infonce(pos, neg)),
      (bounds.nce(f32(pos), f32(neg), 1.5, 1000), np_nce(pos, neg, 1.5, 1000)),
      (bounds.nwj(f32(pos), f32(neg)), np_nwj(pos, neg)),
      (bounds.dv(f32(pos), f32(neg)), np_dv(pos, neg)),
      (bounds.tuba(f32(pos), f32(neg), f32(log_a)), np_tuba(pos, neg, log_a)),
      (bounds.js(f32(pos), f32(neg)), np_js(pos, neg)),
  ]
  for alpha in (0.0, 0.3, 1.0):
    cases.append((bounds.interpolated_infonce(f32(pos), f32(neg), alpha, f32(log_a)),
                   np_interpolated(pos, neg, alpha, log_a)))
  for got, want in cases:
    assert got.shape == lead
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-5, atol=2e-5)


def test_masked_infonce_matches_numpy_and_cap():
  pos = _random(3, (6,))
  neg = _random(4, (6, 9))
  mask = np.random.default_rng(5).random((6, 9)) < 0.5
  mask[0] = False  # an example with no kept negative
  got = bounds.infonce(pos.astype(np.float32), neg.astype(np.float32), mask)
  np.testing.assert_allclose(np.asarray(got), np_infonce(pos, neg, mask), rtol=2e-5, atol=2e-5)
  assert float(got[0]) == 0.0
  cap = bounds.infonce_cap(neg, mask)
  np.testing.assert_allclose(np.asarray(cap), np.log1p(mask.sum(-1)), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(bounds.infonce_cap(neg)), np.full(6, np.log(10.0)),
                             rtol=1e-6)


def test_special_cases_of_tuba_and_interpolation():
  pos = _random(6, (4,)).astype(np.float32)
  neg = _random(7, (4, 5)).astype(np.float32)
  np.testing.assert_allclose(bounds.tuba(pos, neg, 1.0), bounds.nwj(pos, neg), rtol=1e-5)
  np.testing.assert_allclose(bounds.interpolated_infonce(pos, neg, 0.0),
                             bounds.nwj(pos, neg), rtol=1e-5, atol=1e-5)
  loo = np.mean([bounds.infonce(pos, np.delete(neg, j, -1)) for j in range(5)], axis=0)
  np.testing.assert_allclose(bounds.interpolated_infonce(pos, neg, 1.0), loo,
                             rtol=1e-5, atol=1e-5)


def test_interpolated_leave_one_out_stable_when_one_negative_dominates():
  pos = np.array([0.0, 30.0], np.float32)
  neg = np.array([[60.0, 0.0, -1.0], [60.0, 60.0, 0.0]], np.float32)
  got = bounds.interpolated_infonce(pos, neg, 1.0)
  want = np.mean([np_infonce(pos.astype(np.float64), np.delete(neg, j, -1).astype(np.float64))
                  for j in range(3)], axis=0)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-4)
  grad = jax.jit(jax.grad(lambda n: bounds.interpolated_infonce(pos, n, 0.7).sum()))(neg)
  assert np.all(np.isfinite(grad))


def test_interpolated_finite_for_scores_spread_over_hundreds_of_nats():
  # exp of a score gap above ~88 nats overflows float32; the leave-one-out must not use it.
  pos = np.array([0.0, 150.0, -200.0], np.float32)
  neg = np.array([[-150.0, 0.0, 200.0], [150.0, -300.0, 0.0], [0.0, -100.0, 100.0]],
                 np.float32)
  want = np.mean([np_infonce(pos.astype(np.float64), np.delete(neg, j, -1).astype(np.float64))
                  for j in range(3)], axis=0)
  np.testing.assert_allclose(np.asarray(bounds.interpolated_infonce(pos, neg, 1.0)), want,
                             rtol=1e-5)
  value_and_grad = jax.jit(jax.value_and_grad(
      lambda p, n, alpha: bounds.interpolated_infonce(p, n, alpha, 1.0).sum(), argnums=(0, 1)))
  for alpha in (0.0, 0.01, 0.5, 1.0):
    value, grads = value_and_grad(pos / 10, neg / 10, np.float32(alpha))
    assert np.isfinite(value) and all(np.all(np.isfinite(g)) for g in grads)


def test_interpolated_rejects_single_negative():
  with pytest.raises(ValueError, match="K >= 2"):
    bounds.interpolated_infonce(jnp.zeros(3), jnp.zeros((3, 1)), 0.5)


def test_inputs_are_cast_to_float32():
  pos = jnp.ones((3,), jnp.bfloat16)
  neg = jnp.zeros((3, 4), jnp.bfloat16)
  for value in (bounds.infonce(pos, neg), bounds.nwj(pos, neg), bounds.js(pos, neg),
                bounds.nce(pos, neg, 0.0, 100)):
    assert value.dtype == jnp.float32


@pytest.mark.slow
def test_jit_and_vmap_agree_with_eager():
  pos = _random(8, (2, 3)).astype(np.float32)
  neg = _random(9, (2, 3, 6)).astype(np.float32)
  mask = np.random.default_rng(10).random((2, 3, 6)) < 0.6
  eager = bounds.infonce(pos, neg, mask)
  jitted = jax.jit(bounds.infonce)(pos, neg, mask)
  vmapped = jax.vmap(bounds.infonce)(pos, neg, mask)
  np.testing.assert_allclose(jitted, eager, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(vmapped, eager, rtol=1e-6, atol=1e-6)
  # log_z and num_data traced.
  traced = jax.jit(bounds.nce)(pos, neg, jnp.float32(2.0), jnp.float32(500.0))
  np.testing.assert_allclose(traced, bounds.nce(pos, neg, 2.0, 500), rtol=1e-6)
  alpha_traced = jax.jit(bounds.interpolated_infonce)(pos, neg, jnp.float32(0.4))
  np.testing.assert_allclose(alpha_traced, bounds.interpolated_infonce(pos, neg, 0.4),
                             rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------
# Invariants (property tests).
# ------------------------------------------------------------------------------------------


# Few distinct shapes keep the number of compilations (and the test time) small.
_infonce = jax.jit(bounds.infonce)
_infonce_cap = jax.jit(bounds.infonce_cap)
_infonce_value_and_grad = jax.jit(jax.value_and_grad(
    lambda p, n, m: bounds.infonce(p, n, m).sum(), argnums=(0, 1)))


@st.composite
def scores_and_mask(draw):
  batch = draw(st.sampled_from([1, 3]))
  k = draw(st.sampled_from([1, 4, 12]))
  scale = draw(st.sampled_from([0.1, 1.0, 10.0, 50.0]))
  elements = st.floats(-1.0, 1.0, width=32)
  pos = draw(hnp.arrays(np.float32, (batch,), elements=elements)) * scale
  neg = draw(hnp.arrays(np.float32, (batch, k), elements=elements)) * scale
  mask = draw(hnp.arrays(bool, (batch, k)))
  return pos.astype(np.float32), neg.astype(np.float32), mask


@SETTINGS
@hypothesis.given(scores_and_mask())
def test_infonce_never_exceeds_log_one_plus_kept(data):
  pos, neg, mask = data
  for m in (mask, np.ones_like(mask)):
    value = np.asarray(_infonce(pos, neg, m))
    cap = np.asarray(_infonce_cap(neg, m))
    assert np.all(np.isfinite(value))
    assert np.all(value <= cap + 1e-5)


@SETTINGS
@hypothesis.given(scores_and_mask(), st.floats(-40.0, 40.0))
def test_infonce_is_shift_invariant(data, shift):
  pos, neg, mask = data
  base = _infonce(pos, neg, mask)
  shifted = _infonce(pos + np.float32(shift), neg + np.float32(shift), mask)
  # float32 rounding of the shifted inputs themselves is the only source of difference.
  tol = 1e-5 * (1.0 + np.abs(pos).max() + abs(shift)) * 4
  np.testing.assert_allclose(np.asarray(shifted), np.asarray(base), atol=tol)


@SETTINGS
@hypothesis.given(scores_and_mask(), st.sampled_from([np.inf, -np.inf, np.nan, 1e30, -1e30]))
def test_masked_entries_get_zero_gradient_and_no_nan(data, junk):
  pos, neg, mask = data
  neg = np.where(mask, neg, np.float32(junk)).astype(np.float32)
  value, (gpos, gneg) = _infonce_value_and_grad(pos, neg, mask)
  assert np.isfinite(value)
  assert np.all(np.isfinite(gpos)) and np.all(np.isfinite(gneg))
  assert np.all(np.asarray(gneg)[~mask] == 0.0)
  np.testing.assert_allclose(
      float(value), float(np.sum(_infonce(pos, np.where(mask, neg, 0.0), mask))),
      rtol=1e-6, atol=1e-6)


_nce_value_and_grad = jax.jit(jax.value_and_grad(
    lambda p, n, log_z, num_data: bounds.nce(p, n, log_z, num_data).sum(), argnums=(0, 1)))


@SETTINGS
@hypothesis.given(st.floats(-1e4, 1e4), st.floats(-1e4, 1e4), st.floats(-50, 50),
                  st.sampled_from([10.0, 1e3, 1.28e6]))
def test_nce_stable_for_large_scores(pos_score, neg_score, log_z, num_data):
  pos = np.full((2,), pos_score, np.float32)
  neg = np.full((2, 16), neg_score, np.float32)
  value, grads = _nce_value_and_grad(pos, neg, np.float32(log_z), np.float32(num_data))
  assert np.isfinite(value)
  assert value <= 0.0
  assert all(np.all(np.isfinite(g)) for g in grads)


def test_nce_large_score_limits():
  # A very confident positive and very unlikely noise give an objective near 0; a huge noise
  # score costs its log-odds (linear, not overflow).
  v = bounds.nce(jnp.float32(1e3), jnp.full((4,), -1e3), 0.0, 100)
  assert abs(float(v)) < 1e-6
  v = bounds.nce(jnp.float32(1e3), jnp.array([1e3, -1e3, -1e3, -1e3]), 0.0, 100)
  np.testing.assert_allclose(float(v), -(1e3 - np.log(4 / 100)), rtol=1e-6)


@pytest.mark.slow
def test_loss_decreases_under_gradient_steps():
  # Every bound is a usable objective: a few gradient steps on the scores raise its value.
  rng = np.random.default_rng(11)
  pos0 = rng.normal(size=(8,)).astype(np.float32)
  neg0 = rng.normal(size=(8, 5)).astype(np.float32)
  objectives = {
      "infonce": bounds.infonce, "nwj": bounds.nwj, "dv": bounds.dv, "js": bounds.js,
      "tuba": lambda p, n: bounds.tuba(p, n, 0.5),
      "interpolated": lambda p, n: bounds.interpolated_infonce(p, n, 0.5),
      "nce": lambda p, n: bounds.nce(p, n, 1.0, 100),
  }
  for name, fn in objectives.items():
    loss = jax.jit(lambda s, fn=fn: -jnp.mean(fn(s[0], s[1])))
    grad = jax.jit(jax.grad(loss))
    params = (jnp.asarray(pos0), jnp.asarray(neg0))
    first = float(loss(params))
    for _ in range(5):
      grads = grad(params)
      params = jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)
    assert float(loss(params)) < first, name


def test_neighbour_view_objective_matches_numpy_and_reduces_to_infonce():
  rng = np.random.RandomState(3)
  pos = rng.randn(5).astype(np.float32) * 3
  scores = rng.randn(5, 12).astype(np.float32) * 3
  extra = rng.rand(5, 12) < 0.2
  negs = (rng.rand(5, 12) < 0.6) & ~extra
  got = np.asarray(bounds.neighbour_view_objective(pos, scores, extra, negs))
  for i in range(5):
    num = np.concatenate([[pos[i]], scores[i][extra[i]]]).astype(np.float64)
    den = np.concatenate([num, scores[i][negs[i]]])
    want = np.log(np.exp(num).sum()) - np.log(np.exp(den).sum())
    assert abs(got[i] - want) < 1e-4
  assert np.all(got <= 1e-6)
  none = np.zeros_like(extra)
  reduced = bounds.neighbour_view_objective(pos, scores, none, negs)
  expected = bounds.infonce(pos, scores, negs) - np.log1p(negs.sum(-1))
  np.testing.assert_allclose(reduced, expected, atol=1e-5)
  grad = jax.grad(lambda s: bounds.neighbour_view_objective(pos, s, extra, negs).sum())(scores)
  assert np.all(np.asarray(grad)[~(extra | negs)] == 0)
