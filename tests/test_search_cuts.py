"""The named views of negatives' packed search state and the cut search's contract (the
length of every function: tests/test_layout.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mi_contrast import negatives

def test_state_views_round_trip():
  rng = np.random.default_rng(0)
  shape = (5, 2)
  ints = {k: jnp.asarray(rng.integers(-1000, 1000, shape), jnp.int32)
          for k in ("steps", "c_lo", "c_hi", "last", "width1", "width2")}
  keys = {k: jnp.asarray(rng.integers(0, 2 ** 32, shape, dtype=np.uint64), jnp.uint32)
          for k in ("lo", "hi")}
  floats = {k: jnp.asarray(rng.standard_normal(shape), jnp.float32)
            for k in ("z_lo", "z_hi", "w_lo", "w_hi")}
  fields = {**ints, **keys, **floats}
  state = negatives._CutState.pack(**fields)  # pylint: disable=protected-access
  assert state.ints.shape == (*shape, 8) and state.ints.dtype == jnp.int32
  assert state.floats.shape == (*shape, 4) and state.floats.dtype == jnp.float32
  for name, value in fields.items():
    view = getattr(state, name)
    assert view.dtype == value.dtype, name
    np.testing.assert_array_equal(np.asarray(view), np.asarray(value), err_msg=name)
  # A NamedTuple is a pytree: maps keep the type and the two packed arrays.
  mapped = jax.tree.map(lambda a: a[1:3], state)
  assert isinstance(mapped, negatives._CutState)  # pylint: disable=protected-access
  np.testing.assert_array_equal(np.asarray(mapped.lo), np.asarray(keys["lo"][1:3]))

  r = jnp.asarray(rng.integers(1, 10, shape), jnp.int32)
  mean, std = jnp.ones((5, 1)), jnp.full((5, 1), 2.0)
  targets = negatives._CutTargets.pack(r, r.astype(jnp.float32) * 0.5, mean, std)  # pylint: disable=protected-access
  np.testing.assert_array_equal(np.asarray(targets.r), np.asarray(r))
  np.testing.assert_array_equal(np.asarray(targets.z_target), np.asarray(r) * 0.5)
  np.testing.assert_array_equal(np.asarray(targets.mean), np.ones(shape))
  np.testing.assert_array_equal(np.asarray(targets.std), np.full(shape, 2.0))


@pytest.mark.parametrize("kind", ["normal", "ties", "sentinel"])
def test_search_cuts_contract(kind):
  rng = np.random.default_rng(1)
  n, p = 24, 357
  x = rng.standard_normal((n, p)).astype(np.float32)
  if kind == "ties":
    x = np.round(x * 2) / 2
  if kind == "sentinel":
    x[rng.random((n, p)) < 0.1] = -np.inf
  ranks = np.stack([rng.integers(1, p + 1, n), np.where(np.arange(n) % 2, 1, p)], 1)
  t, c_ge, c_gt = jax.jit(negatives._search_cuts)(  # pylint: disable=protected-access
      jnp.asarray(x), jnp.asarray(ranks, jnp.int32))
  # The reference counts are XLA's too: XLA on the CPU treats subnormal operands as zero, so
  # a bracket can end at the largest subnormal with all zeros counted at or above it (and the
  # masks of the module, also compiled, agree with these counts).
  count = jax.jit(lambda x, t, strict: jnp.sum(
      jnp.where(strict, x[:, None, :] > t[:, :, None], x[:, None, :] >= t[:, :, None]), -1))
  ref_ge, ref_gt = (np.asarray(count(jnp.asarray(x), t, s)) for s in (False, True))
  t, c_ge, c_gt = map(np.asarray, (t, c_ge, c_gt))
  t = np.where(np.abs(t) < np.finfo(np.float32).tiny, np.float32(0.0), t)
  np.testing.assert_array_equal(c_ge, ref_ge)
  assert np.all(c_gt < ranks) and np.all(ranks <= c_ge)
  # Not an exact cut: c_gt counts x > t, and t is the value of the rank r - 1 entry.
  inexact = c_ge != ranks
  assert kind != "ties" or np.any(inexact)
  np.testing.assert_array_equal(c_gt[inexact], ref_gt[inexact])
  sorted_desc = -np.sort(-x, axis=1)
  at_rank = np.take_along_axis(sorted_desc, ranks - 1, axis=1)
  np.testing.assert_array_equal(t[inexact], at_rank[inexact])
