"""The light public API as a product: its functions are annotated, their docstring examples run,
their contracts are checked with errors that name the argument, -inf means "not a negative", and
no padding row is ever returned. (Every function under jit, vmap, pmap and shard_map:
tests/test_transformations.py.)"""

import doctest
import inspect
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from api_cases import ANCHORS, B, BANK, BOUND_CASES, IDS, KEY, LABELS, POS, T, scores, unit

from mi_contrast import bounds
from mi_contrast import negatives
from mi_contrast import schedules
from mi_contrast import views


# ---------------------------------------------------------------------------------------------
# Docstring examples.
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("module", [bounds, negatives])
def test_docstring_examples_run(module):
  for name in module.__all__:
    assert "Examples:" in (getattr(module, name).__doc__ or ""), name
  result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
  assert result.failed == 0 and result.attempted >= len(module.__all__)


def test_public_functions_are_annotated():
  for module in (bounds, negatives, schedules, views):
    for name in module.__all__:
      fn = getattr(module, name)
      if not inspect.isfunction(fn):
        continue
      sig = inspect.signature(fn)
      missing = [p for p in sig.parameters.values() if p.annotation is inspect.Parameter.empty]
      assert not missing, (module.__name__, name, missing)
      assert sig.return_annotation is not inspect.Signature.empty, (module.__name__, name)


# ---------------------------------------------------------------------------------------------
# Contracts: errors that name the argument, raised before JAX sees it.
# ---------------------------------------------------------------------------------------------

POOL = np.asarray(BANK)
A = np.asarray(ANCHORS)


@pytest.mark.parametrize("call, error, words", [
    (lambda: bounds.infonce(jnp.zeros(4), jnp.zeros((5, 3))), ValueError, "neg must have shape"),
    (lambda: bounds.infonce(jnp.zeros(4), jnp.zeros((4, 3)), jnp.ones((4, 2), bool)),
     ValueError, "neg_mask"),
    (lambda: bounds.infonce(jnp.zeros(4), jnp.zeros((4, 3)), jnp.ones((4, 3))), TypeError,
     "neg_mask must be a bool"),
    (lambda: bounds.infonce(jnp.zeros(4), jnp.zeros(())), ValueError, "neg must have shape"),
    (lambda: bounds.dcl(jnp.zeros(4), jnp.zeros((4, 3)), tau_plus=1.0, temperature=T),
     ValueError, "tau_plus"),
    (lambda: bounds.hcl(jnp.zeros(4), jnp.zeros((4, 3)), beta=-1.0, tau_plus=0.1,
                        temperature=T), ValueError, "beta"),
    (lambda: bounds.dcl(jnp.zeros(4), jnp.zeros((4, 3)), tau_plus=0.1, temperature=0.0),
     ValueError, "temperature"),
    (lambda: bounds.interpolated_infonce(jnp.zeros(4), jnp.zeros((4, 3)), 1.5), ValueError,
     "alpha"),
    (lambda: bounds.interpolated_infonce(jnp.zeros(4), jnp.zeros((4, 1)), 0.5), ValueError,
     "K >= 2"),
    (lambda: bounds.nce(jnp.zeros(4), jnp.zeros((4, 3)), 0.0, 0), ValueError, "num_data"),
    (lambda: negatives.ring_mask(jnp.zeros((4, 0)), 0.5, 0.9), ValueError, "empty pool"),
    (lambda: negatives.ring_mask(jnp.zeros((4, 5)), 0.5, 1.2), ValueError, "upper"),
    (lambda: negatives.ball_mask(jnp.zeros(()), 0.5), ValueError, "sims must have shape"),
    (lambda: negatives.fractions_to_quantiles(1.5, 0.1), ValueError, "outer"),
    (lambda: negatives.band_bounds(-1, 0.1, 0.5), ValueError, "num_candidates"),
    (lambda: negatives.band_negatives(KEY, A, POOL, 0.5, 0.9, 0, temperature=T), ValueError,
     "num must be >= 1"),
    (lambda: negatives.band_negatives(KEY, A, POOL, 0.5, 0.9, 4, temperature=T, candidates=0),
     ValueError, "candidates must be >= 1"),
    (lambda: negatives.band_negatives(KEY, A, POOL, 0.5, 0.9, 4, temperature=0.0), ValueError,
     "temperature"),
    (lambda: negatives.band_negatives(KEY, A[0], POOL, 0.5, 0.9, 4, temperature=T), ValueError,
     "anchors must have shape [B, D]"),
    (lambda: negatives.band_negatives(KEY, A, POOL[:, :5], 0.5, 0.9, 4, temperature=T),
     ValueError, "same width D"),
    (lambda: negatives.band_negatives(KEY, A, POOL[:0], 0.5, 0.9, 4, temperature=T), ValueError,
     "pool has no rows"),
    (lambda: negatives.band_negatives(KEY, A, POOL, 0.5, 0.9, 4, temperature=T,
                                      exclude_rows=jnp.zeros(3, jnp.int32)), ValueError,
     "exclude_rows must have shape"),
    (lambda: negatives.band_negatives(KEY, A, POOL, 0.5, 0.9, 4, temperature=T, pool_rows=0),
     ValueError, "pool_rows"),
    (lambda: negatives.band_negatives(KEY, A, POOL, 0.5, 0.9, 4.0, temperature=T), TypeError,
     "num must be a Python int"),
    (lambda: negatives.band_negatives(0, A, POOL, 0.5, 0.9, 4, temperature=T), TypeError,
     "rng must be a PRNG key"),
    (lambda: negatives.uniform_rows(KEY, IDS, IDS, 0, 4), ValueError, "num_rows"),
    (lambda: negatives.uniform_rows(KEY, IDS, IDS[:3], 10, 4), ValueError, "exclude_rows"),
    (lambda: negatives.false_negative_counts(LABELS, IDS, jnp.zeros((3, 4), jnp.int32)),
     ValueError, "negative_rows"),
])
def test_contracts_name_the_argument(call, error, words):
  with pytest.raises(error) as info:
    call()
  assert words in str(info.value)
  assert str(info.value).split(":")[0] in dir(bounds) + dir(negatives)


def test_contracts_are_checked_at_trace_time_under_jit():
  with pytest.raises(ValueError, match="neg must have shape"):
    jax.jit(bounds.infonce)(jnp.zeros(4), jnp.zeros((5, 3)))
  # A traced temperature cannot be checked: it is used as given.
  f = jax.jit(lambda t: negatives.band_negatives(KEY, A, POOL, 0.5, 0.9, 4, temperature=t)[0])
  assert f(0.2).shape == (B, 4)


# ---------------------------------------------------------------------------------------------
# -inf is "not a negative"; no padding row is ever returned.
# ---------------------------------------------------------------------------------------------

MASKABLE = ["infonce", "infonce_cap", "nce", "nwj", "dv", "tuba", "js", "interpolated_infonce",
            "dcl", "hcl", "hcl_clamped"]


@pytest.mark.parametrize("name", MASKABLE)
def test_minus_inf_is_exactly_a_masked_entry(name):
  fn = BOUND_CASES[name]
  pos, neg = POS, scores(9, (B, 6))
  drop = jnp.asarray(np.random.default_rng(10).random((B, 6)) < 0.3).at[0].set(True)
  keep = ~drop
  as_inf = jnp.where(drop, -jnp.inf, neg)
  everything = jnp.ones_like(keep)
  fn = jax.jit(fn)
  np.testing.assert_array_equal(fn(pos, as_inf, everything), fn(pos, neg, keep))
  if name in ("infonce_cap", "hcl_clamped"):
    return
  grad = jax.jit(jax.grad(lambda n: jnp.sum(fn(pos, n, everything))))(as_inf)
  assert np.all(np.isfinite(grad)) and np.all(np.asarray(grad)[np.asarray(drop)] == 0)
  # Row 0 has no negative left: value 0 (as infonce), with a zero gradient.
  assert float(fn(pos, as_inf, everything)[0]) == 0.0


def test_minus_inf_does_not_count_toward_k():
  pos, neg = jnp.array([1.0]), jnp.array([[0.0, -jnp.inf, -jnp.inf]])
  assert float(bounds.infonce_cap(neg)[0]) == pytest.approx(math.log(2))
  assert float(bounds.infonce(pos, neg)[0]) == pytest.approx(
      1.0 - math.log(math.e + 1.0) + math.log(2), abs=1e-6)
  assert np.isnan(float(bounds.infonce(pos, jnp.array([[0.0, jnp.nan]]))[0]))    # NaN stays


@pytest.mark.slow
def test_sampled_form_never_returns_a_padding_row():
  rng = np.random.default_rng(12)
  pool = jnp.asarray(unit(rng.normal(size=(200, 8))), jnp.float32)
  # Padding rows nearer than any real row: a selection that reached them would prefer them.
  pool = pool.at[100:].set(pool[100:] * 0 + ANCHORS[0])
  sampled = jax.jit(lambda key, rows, m=None: negatives.band_negatives(
      key, ANCHORS, pool, 0.5, 0.9, 16, temperature=T, candidates=m, pool_rows=rows),
      static_argnums=2)
  for trial in range(8):
    pool_rows = int(rng.integers(1, 40)) if trial > 1 else 1
    candidates = (64, 5)[trial % 2]            # two compiled programs; pool_rows is traced
    scores, rows = sampled(jax.random.key(trial), pool_rows, candidates)
    assert np.all(np.asarray(rows) < pool_rows), (pool_rows, candidates)
    assert np.all(np.isfinite(np.asarray(scores)))
    _, exact = sampled(jax.random.key(trial), pool_rows)
    assert np.all(np.asarray(exact) < pool_rows), pool_rows


def test_no_candidate_left_returns_a_valid_row():
  _, rows = negatives.band_negatives(KEY, ANCHORS[:2], BANK, 0.5, 0.9, 4, temperature=T,
                                     pool_rows=1, exclude_rows=jnp.zeros(2, jnp.int32))
  assert np.all(np.asarray(rows) == 0)
  one = negatives.uniform_rows(KEY, IDS[:2], jnp.zeros(2, jnp.int32), 1, 5)
  assert np.all(np.asarray(one) == 0)


def test_sampled_form_unchanged_without_pool_rows():
  """Drawing candidates from the first pool_rows rows leaves the default draw as it was: the
  candidates of the whole pool are jax.random.randint over [0, P) with the call's key."""
  _, rows = negatives.band_negatives(KEY, ANCHORS, BANK, 0.5, 0.9, 8, temperature=T,
                                     candidates=32)
  cand = jax.random.randint(jax.random.split(KEY)[0], (32,), 0, BANK.shape[0], dtype=jnp.int32)
  assert set(np.asarray(rows).ravel()) <= set(np.asarray(cand).tolist())


# ---------------------------------------------------------------------------------------------
# infonce and optax's NT-Xent.
# ---------------------------------------------------------------------------------------------


def test_infonce_ntxent_relation():
  optax = pytest.importorskip("optax")
  n = 6
  z = jnp.asarray(np.random.default_rng(13).normal(size=(2 * n, 5)), jnp.float32)
  labels = jnp.concatenate([jnp.arange(n), jnp.arange(n)])
  u = z / jnp.linalg.norm(z, axis=1, keepdims=True)
  s = u @ u.T / 0.5
  partner = jnp.concatenate([jnp.arange(n, 2 * n), jnp.arange(n)])
  pos = s[jnp.arange(2 * n), partner]
  mask = ~(jnp.eye(2 * n, dtype=bool) | (jnp.arange(2 * n)[None, :] == partner[:, None]))
  expected = math.log(2 * n - 1) - jnp.mean(jax.jit(bounds.infonce)(pos, s, mask))
  got = jax.jit(optax.losses.ntxent, static_argnames="temperature")(z, labels, temperature=0.5)
  assert float(got) == pytest.approx(float(expected), abs=1e-5)
