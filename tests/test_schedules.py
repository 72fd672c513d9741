"""Tests of mi_contrast.schedules: endpoints, shapes of the curves, jit behaviour, adaptive rule."""

import math

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mi_contrast import schedules

ANNEALED = ("linear", "step", "cosine")


def _values(schedule, steps):
  return np.array([float(schedule(s)) for s in steps])


@pytest.mark.parametrize("kind", ANNEALED)
def test_endpoints_and_monotone(kind):
  s = schedules.build(kind, init=1.0, final=0.1, anneal_steps=100)
  assert float(s(0)) == pytest.approx(1.0, abs=1e-6)
  steps = np.arange(0, 131)
  values = _values(s, steps)
  assert np.all(np.diff(values) <= 1e-7), "decreasing schedule must never increase"
  np.testing.assert_allclose(values[100:], 0.1, atol=1e-6)
  assert float(s(10**6)) == pytest.approx(0.1, abs=1e-6)
  assert float(s(-5)) == pytest.approx(1.0, abs=1e-6)
  rising = schedules.build(kind, init=0.1, final=1.0, anneal_steps=100)
  assert np.all(np.diff(_values(rising, steps)) >= -1e-7)


def test_linear_and_cosine_midpoints():
  lin = schedules.linear(1.0, 0.0, 10)
  cos = schedules.cosine(1.0, 0.0, 10)
  np.testing.assert_allclose(_values(lin, range(11)), np.linspace(1, 0, 11), atol=1e-6)
  want = 0.5 * (1 + np.cos(np.pi * np.arange(11) / 10))
  np.testing.assert_allclose(_values(cos, range(11)), want, atol=1e-6)


@pytest.mark.parametrize("anneal_steps", [10, 100, 105, 1000])
def test_step_has_exactly_ten_levels(anneal_steps):
  s = schedules.step(1.0, 0.1, anneal_steps, levels=10)
  values = _values(s, range(anneal_steps + 50))
  levels = np.unique(np.round(values, 6))
  assert len(levels) == 10
  np.testing.assert_allclose(np.sort(levels)[::-1], np.linspace(1.0, 0.1, 10), atol=1e-6)
  hold = anneal_steps // 10
  for level in range(9):
    block = values[level * hold:(level + 1) * hold]
    np.testing.assert_allclose(block, np.linspace(1.0, 0.1, 10)[level], atol=1e-6)
  np.testing.assert_allclose(values[9 * hold:], 0.1, atol=1e-6)


def test_step_never_indexes_past_the_end():
  s = jax.jit(schedules.step(1.0, 0.1, 100, levels=10))
  for k in (99, 100, 101, 10**6, 2**31 - 1):
    assert float(s(jnp.int32(k))) == pytest.approx(0.1, abs=1e-6)


def test_exponential_decays_per_epoch():
  s = schedules.exponential(1.0, 0.1, rate=0.5, steps_per_epoch=50)
  values = _values(s, range(0, 300))
  for epoch in range(6):
    block = values[epoch * 50:(epoch + 1) * 50]
    np.testing.assert_allclose(block, 0.1 + 0.9 * math.exp(-0.5 * epoch), rtol=1e-6)
  assert float(s(10**7)) == pytest.approx(0.1, abs=1e-6)
  assert np.all(values >= 0.1 - 1e-7)


@pytest.mark.parametrize("kind", ("constant", "linear", "step", "exponential", "cosine"))
def test_jit_traced_step_matches_python_and_compiles_once(kind):
  s = schedules.build(kind, init=1.0, final=0.1, anneal_steps=60, steps_per_epoch=7, rate=0.3)
  traces = []

  def f(step):
    traces.append(None)
    return s(step)

  jitted = jax.jit(f)
  steps = [0, 1, 5, 7, 30, 59, 60, 61, 500]
  got = np.array([float(jitted(jnp.int32(k))) for k in steps])
  want = _values(s, steps)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
  assert len(traces) == 1
  assert jitted._cache_size() == 1
  assert all(s(k).dtype == jnp.float32 for k in (0, jnp.int32(3)))


@pytest.mark.parametrize("bad, match", [
    (dict(kind="warmup"), "kind must be one of"),
    (dict(kind="adaptive"), "adaptive_init"),
    (dict(kind="linear", anneal_steps=0), "anneal_steps must be an int >= 1"),
    (dict(kind="cosine", anneal_steps=2.5), "anneal_steps must be an int >= 1"),
    (dict(kind="step", anneal_steps=5), "levels must be <="),
    (dict(kind="step", levels=1), "levels must be an int >= 2"),
    (dict(kind="exponential", steps_per_epoch=None, rate=0.1), "steps_per_epoch"),
    (dict(kind="exponential", steps_per_epoch=10, rate=0.0), "rate must be"),
    (dict(kind="linear", final=None), "final is required"),
    (dict(kind="linear", init=float("nan")), "init must be a finite"),
])
def test_build_rejects_bad_config(bad, match):
  args = dict(kind="linear", init=1.0, final=0.1, anneal_steps=100, steps_per_epoch=None,
              rate=None, name="ring.rho_outer")
  args.update(bad)
  kind = args.pop("kind")
  with pytest.raises(ValueError, match=match) as info:
    schedules.build(kind, **args)
  assert "ring.rho_outer" in str(info.value) or "adaptive" in str(info.value)


def test_build_matches_direct_constructors():
  built = schedules.build("exponential", init=1.0, final=0.2, steps_per_epoch=5, rate=0.1)
  direct = schedules.exponential(1.0, 0.2, 0.1, 5)
  np.testing.assert_array_equal(_values(built, range(40)), _values(direct, range(40)))
  assert float(schedules.build("constant", init=0.3)(123)) == pytest.approx(0.3)


# ------------------------------------------------------------------------------------------
# Adaptive schedule against a hand-written python reference.
# ------------------------------------------------------------------------------------------


def reference_adaptive(init, window, metrics, delta, lower, upper):
  value, history, out = init, [], []
  for m in metrics:
    if history:
      mean = sum(history) / len(history)
      harder, easier = m < mean, m > mean   # a loss above its recent mean: easier
      if easier:
        value += delta
      elif harder:
        value -= delta
      value = min(max(value, lower), upper)
    history = (history + [m])[-window:]
    out.append(value)
  return out


@hypothesis.settings(max_examples=15, deadline=None, derandomize=True)
@hypothesis.given(
    st.integers(1, 6),
    st.lists(st.floats(0.0, 1.0, width=32), min_size=1, max_size=25),
    st.sampled_from([0.05, 0.1, 0.3]))
def test_adaptive_update_matches_reference(window, metrics, delta):
  update = jax.jit(
      lambda state, m: schedules.adaptive_update(
          state, m, delta=delta, lower=0.1, upper=1.0))
  state = schedules.adaptive_init(0.5, window)
  got = []
  for m in metrics:
    state = update(state, np.float32(m))
    got.append(float(state.value))
  # float32 metrics on both sides so the comparisons with the mean agree.
  want = reference_adaptive(0.5, window, [float(np.float32(m)) for m in metrics], delta,
                            0.1, 1.0)
  np.testing.assert_allclose(got, want, atol=1e-5)
  assert int(state.count) == len(metrics)


def test_adaptive_random_sequence_and_pytree():
  rng = np.random.default_rng(0)
  metrics = rng.normal(size=200).cumsum().astype(np.float32)
  state = schedules.adaptive_init(1.0, 10)
  traces = []

  def step(state, m):
    traces.append(None)
    return schedules.adaptive_update(state, m, delta=0.02, lower=0.1, upper=1.0)

  jitted = jax.jit(step)
  got = []
  for m in metrics:
    state = jitted(state, m)
    got.append(float(state.value))
  want = reference_adaptive(1.0, 10, [float(m) for m in metrics], 0.02, 0.1, 1.0)
  np.testing.assert_allclose(got, want, atol=1e-5)
  assert len(traces) == 1
  leaves = jax.tree.leaves(state)
  assert len(leaves) == 3 and all(isinstance(x, jax.Array) for x in leaves)
  assert state.history.shape == (10,)


def test_adaptive_first_record_does_not_change_value_and_rejects_bad_args():
  state = schedules.adaptive_init(0.7, 4)
  state = schedules.adaptive_update(state, 5.0, delta=0.1, lower=0.0, upper=1.0)
  assert float(state.value) == pytest.approx(0.7)
  for mode in ("kl", "accuracy"):  # the reference's accuracy mode is not offered
    with pytest.raises(TypeError, match="mode"):
      schedules.adaptive_update(state, 1.0, delta=0.1, lower=0.0, upper=1.0, mode=mode)
  with pytest.raises(ValueError, match="window"):
    schedules.adaptive_init(1.0, 0)
