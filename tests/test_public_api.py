"""The light public API as a product: every public function of bounds, negatives, schedules and
views gives the same result under jit, vmap, pmap and jax.shard_map (with its defaults) as
called plainly; its contracts are checked with errors that name the argument; the docstring
examples run; -inf means "not a negative"; no padding row is ever returned."""

import doctest
import functools
import inspect
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from helpers import DEFAULT_EMITTERS

from mi_contrast import bounds
from mi_contrast import negatives
from mi_contrast import schedules
from mi_contrast import views

DEVICES = 8
B = 2 * DEVICES               # rows of a batch: 2 per device
MESH = jax.make_mesh((DEVICES,), ("b",))
T = 0.1


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _scores(seed, shape):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape) / T, jnp.float32)


def _transforms(fn, batched, shared, compiler_options=None):
  """fn(*batched, *shared) under jit on the whole batch (the reference), and under vmap, pmap
  and shard_map, each compiled with XLA's `compiler_options` (default: the session's).

  batched: arrays (or pytrees) with a leading batch axis of B rows, split over the devices;
  shared: arguments every device gets whole (pools, keys, scalars). fn must act on each row of
  the batched arguments independently (as every function of the API does per example).
  """
  call = lambda *b: fn(*b, *shared)
  run = lambda transformed, *args: transformed.lower(*args).compile(compiler_options)(*args)
  plain = run(jax.jit(call), *batched)
  results = {}
  # vmap over a new leading axis of two copies of the batch.
  twice = jax.tree.map(lambda a: jnp.stack([a, a]), batched)
  results["vmap"] = jax.tree.map(lambda a: a[1], run(jax.jit(jax.vmap(call)), *twice))
  split = jax.tree.map(lambda a: a.reshape((DEVICES, -1) + a.shape[1:]), batched)
  merged = run(jax.pmap(call), *split)
  results["pmap"] = jax.tree.map(lambda a: a.reshape((-1,) + a.shape[2:]), merged)
  sharded = jax.device_put(batched, NamedSharding(MESH, P("b")))
  results["shard_map"] = run(jax.jit(jax.shard_map(call, mesh=MESH, in_specs=P("b"),
                                                   out_specs=P("b"))), *sharded)
  return plain, results


def _assert_same(plain, results):
  for name, out in results.items():
    flat_p, tree_p = jax.tree.flatten(plain)
    flat_o, tree_o = jax.tree.flatten(out)
    assert tree_p == tree_o, name
    for a, b in zip(flat_p, flat_o):
      a, b = np.asarray(a), np.asarray(b)
      assert a.shape == b.shape and a.dtype == b.dtype, name
      if np.issubdtype(a.dtype, np.floating):
        np.testing.assert_allclose(b, a, rtol=2e-6, atol=2e-6, err_msg=name)
      else:
        np.testing.assert_array_equal(b, a, err_msg=name)


# ---------------------------------------------------------------------------------------------
# Every public function under every transformation.
# ---------------------------------------------------------------------------------------------

POS = _scores(0, (B,))
NEG = _scores(1, (B, 6)).at[:, 5].set(-jnp.inf)       # one entry per row is "not a negative"
MASK = jnp.asarray(np.random.default_rng(2).random((B, 6)) < 0.8)

BOUND_CASES = {
    "infonce": lambda p, n, m: bounds.infonce(p, n, m),
    "infonce_cap": lambda p, n, m: bounds.infonce_cap(n, m),
    "nce": lambda p, n, m: bounds.nce(p, n, 1.5, 1000, m),
    "nwj": lambda p, n, m: bounds.nwj(p / 10, n / 10, m),
    "dv": lambda p, n, m: bounds.dv(p, n, m),
    "tuba": lambda p, n, m: bounds.tuba(p / 10, n / 10, p / 20, m),
    "js": lambda p, n, m: bounds.js(p, n, m),
    "interpolated_infonce": lambda p, n, m: bounds.interpolated_infonce(p / 10, n / 10, 0.3,
                                                                        neg_mask=m),
    "neighbour_view_objective": lambda p, n, m: bounds.neighbour_view_objective(p, n, m, ~m),
    "dcl": lambda p, n, m: bounds.dcl(p, n, tau_plus=0.05, temperature=T, neg_mask=m),
    "hcl": lambda p, n, m: bounds.hcl(p, n, beta=0.2, tau_plus=0.05, temperature=T,
                                      neg_mask=m),
    "hcl_clamped": lambda p, n, m: bounds.hcl_clamped(p, n, beta=0.2, tau_plus=0.05,
                                                      temperature=T, neg_mask=m),
}


def test_every_public_bound_has_a_case():
  assert sorted(BOUND_CASES) == sorted(bounds.__all__)


@functools.lru_cache(maxsize=None)
def _all_bounds():
  """Every bound under every transformation, compiled as one program per transformation."""
  every = lambda p, n, m: {name: fn(p, n, m) for name, fn in BOUND_CASES.items()}
  return _transforms(every, (POS, NEG, MASK), ())


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BOUND_CASES))
def test_bound_under_transformations(name):
  plain, results = _all_bounds()
  _assert_same(plain[name], {k: v[name] for k, v in results.items()})
  if name != "hcl_clamped":
    assert np.all(np.isfinite(np.asarray(plain[name])))


SIMS = _scores(3, (B, 40))
BANK = jnp.asarray(_unit(np.random.default_rng(4).normal(size=(300, 8))), jnp.float32)
ANCHORS = jnp.asarray(_unit(np.random.default_rng(5).normal(size=(B, 8))), jnp.float32)
IDS = jnp.arange(B, dtype=jnp.int32) * 7
KEY = jax.random.key(11)
LABELS = jnp.asarray(np.random.default_rng(6).integers(0, 3, 300), jnp.int32)

NEGATIVE_CASES = {
    # (fn, batched arguments, shared arguments)
    "fractions_to_quantiles": (lambda o, i: negatives.fractions_to_quantiles(o, i),
                               (jnp.linspace(0.1, 1.0, B), jnp.linspace(0.0, 0.5, B)), ()),
    "band_bounds": (lambda lo, up: jax.vmap(lambda a, b: negatives.band_bounds(500, a, b))(lo, up),
                    (jnp.linspace(0.0, 0.9, B), jnp.linspace(0.5, 1.0, B)), ()),
    "ring_mask": (lambda s: negatives.ring_mask(s, 0.6, 0.95), (SIMS,), ()),
    "ball_mask": (lambda s: negatives.ball_mask(s, 0.8), (SIMS,), ()),
    "neighbour_masks": (lambda s: negatives.neighbour_masks(s, 0.6, 0.95), (SIMS,), ()),
    "band_thresholds": (lambda s: negatives.band_thresholds(s, 0.6, 0.95), (SIMS,), ()),
    "band_negatives": (
        lambda a, ids, own, key, bank: negatives.band_negatives(
            key, a, bank, 0.8, 0.98, 12, temperature=T, anchor_ids=ids, exclude_rows=own),
        (ANCHORS, IDS, IDS), (KEY, BANK)),
    "band_negatives_sampled": (
        lambda a, ids, key, bank: negatives.band_negatives(
            key, a, bank, 0.5, 0.9, 12, temperature=T, candidates=64, anchor_ids=ids,
            pool_rows=250),
        (ANCHORS, IDS), (KEY, BANK)),
    "uniform_rows": (lambda ids, own, key: negatives.uniform_rows(key, ids, own, 300, 12),
                     (IDS, IDS), (KEY,)),
    "false_negative_counts": (
        lambda rows, neg_rows, labels: jax.vmap(
            lambda r, n: negatives.false_negative_counts(labels, r[None], n[None]))(rows, neg_rows),
        (IDS, jnp.asarray(np.random.default_rng(7).integers(-1, 300, (B, 9)), jnp.int32)),
        (LABELS,)),
}


def test_every_public_negatives_function_has_a_case():
  assert set(negatives.__all__) <= {n.split("_sampled")[0] for n in NEGATIVE_CASES}


# The cheap functions share one program per transformation; band_negatives has its own.
_GROUPS = ({"band_negatives"}, {"band_negatives_sampled"})


@functools.lru_cache(maxsize=None)
def _negatives_group(names):
  cases = [NEGATIVE_CASES[n] for n in names]
  sizes = [len(batched) for _, batched, _ in cases]
  shared = tuple(a for _, _, sh in cases for a in sh)
  shared_sizes = [len(sh) for _, _, sh in cases]

  def every(*args):
    batched, shared_args = args[:sum(sizes)], args[sum(sizes):]
    out, i, j = {}, 0, 0
    for name, (fn, _, _), size, shared_size in zip(names, cases, sizes, shared_sizes):
      out[name] = fn(*batched[i:i + size], *shared_args[j:j + shared_size])
      i, j = i + size, j + shared_size
    return out

  batched = tuple(a for _, b, _ in cases for a in b)
  return _transforms(every, batched, shared)


def _group_of(name):
  for group in _GROUPS:
    if name in group:
      return tuple(sorted(group))
  return tuple(sorted(set(NEGATIVE_CASES) - set().union(*_GROUPS)))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(NEGATIVE_CASES))
def test_negatives_under_transformations(name):
  plain, results = _negatives_group(_group_of(name))
  _assert_same(plain[name], {k: v[name] for k, v in results.items()})


def test_schedules_under_transformations():
  made = [schedules.constant(0.3), schedules.linear(1.0, 0.1, 40),
          schedules.step(1.0, 0.1, 40, levels=4), schedules.exponential(1.0, 0.1, 0.5, 10),
          schedules.cosine(1.0, 0.1, 40),
          schedules.build("linear", init=1.0, final=0.2, anneal_steps=30)]

  def all_schedules(steps, metric):
    values = [jax.vmap(s)(steps) for s in made]
    state = jax.vmap(lambda _: schedules.adaptive_init(1.0, 4))(steps)
    state = jax.vmap(lambda st, m: schedules.adaptive_update(st, m, delta=0.1, lower=0.1,
                                                             upper=1.0))(state, metric)
    return values, state

  steps = jnp.arange(B, dtype=jnp.int32) * 4
  plain, results = _transforms(all_schedules, (steps, jnp.linspace(0.0, 1.0, B)), ())
  _assert_same(plain, results)


_RECIPE = [("random_resized_crop", {"scale": (0.3, 1.0), "size": 6}, 1.0),
           ("random_horizontal_flip", {}, 1.0), ("color_jitter",
            {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1}, 0.8),
           ("random_grayscale", {"p": 0.2}, 1.0),
           ("random_gaussian_blur", {"sigma": (0.1, 1.0)}, 0.5),
           ("random_solarize", {}, 0.2), ("random_gaussian_noise", {"std": 0.02}, 1.0)]
_IMAGES = np.random.default_rng(8).random((B, 8, 8, 3)).astype(np.float32)


@pytest.mark.slow
def test_views_under_transformations():
  """Every public function of views but make_views (and the recipe functions it calls: the
  next test) under every transformation."""
  public = [n for n in views.__all__ if inspect.isfunction(getattr(views, n))]
  used = {"make_views", "apply_recipe", "normalize_recipe"} | {op for op, _, _ in _RECIPE}
  prims = {
      "adjust_brightness": lambda im: views.adjust_brightness(im, 1.3),
      "adjust_contrast": lambda im: views.adjust_contrast(im, 0.7),
      "adjust_saturation": lambda im: views.adjust_saturation(im, 1.5),
      "adjust_hue": lambda im: views.adjust_hue(im, 0.1),
      "to_grayscale": views.to_grayscale,
      "gaussian_blur": lambda im: views.gaussian_blur(im, 1.0),
      "solarize": lambda im: views.solarize(im, 0.5),
      "horizontal_flip": views.horizontal_flip,
      "normalize": lambda im: views.normalize(im, (0.5, 0.5, 0.5), (0.2, 0.2, 0.2)),
      "rgb_to_lab": views.rgb_to_lab,
      "lab_split": views.lab_split,
      "resized_crop": lambda im: views.resized_crop(im, 1, 2, 5, 4, 4),
      "resize": lambda im: views.resize(im, 4),
      "colormap": lambda im: views.colormap(im[..., :1]),
  }
  randoms = {
      "random_intensity": views.random_intensity,
      "sample_crop_box": lambda key, im: views.sample_crop_box(key, 8, 8),
  }
  untested = set(public) - used - set(prims) - set(randoms)
  assert not untested, untested

  def all_views(images, ids, key):
    out = [jax.vmap(f)(images) for f in prims.values()]
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(ids)
    out += [jax.vmap(f)(keys, images) for f in randoms.values()]
    return out

  plain, results = _transforms(all_views, (jnp.asarray(_IMAGES), IDS), (KEY,))
  _assert_same(plain, results)


@pytest.mark.slow
def test_make_views_under_transformations():
  """make_views with two recipes that use every random op, compiled with XLA's default fusion
  emitters (helpers.DEFAULT_EMITTERS): with the older ones of the tests' session, one resampling
  coordinate of one view came out one rounding apart under vmap, and the crop's floor turned
  that into a different pixel."""

  def both_views(images, ids, key):
    return jnp.swapaxes(views.make_views(key, images, [_RECIPE, _RECIPE], image_ids=ids), 0, 1)

  plain, results = _transforms(both_views, (jnp.asarray(_IMAGES), IDS), (KEY,),
                               compiler_options=DEFAULT_EMITTERS)
  _assert_same(plain, results)


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
  pos, neg = POS, _scores(9, (B, 6))
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
  pool = jnp.asarray(_unit(rng.normal(size=(200, 8))), jnp.float32)
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
