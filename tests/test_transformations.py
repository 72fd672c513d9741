"""Every public function of bounds, negatives and schedules gives the same result under
jit, vmap, pmap and jax.shard_map (with its defaults) as called plainly on the whole batch. Each
group of functions is compiled as one program per transformation, on 8 simulated devices.
(views: tests/test_views_transformations.py.)"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from api_cases import (ANCHORS, B, BANK, BOUND_CASES, IDS, KEY, LABELS, MASK, NEG, POS, SIMS, T,
                       assert_same, transforms)

from mi_contrast import bounds
from mi_contrast import negatives
from mi_contrast import schedules

# ---------------------------------------------------------------------------------------------
# Every public function under every transformation.
# ---------------------------------------------------------------------------------------------


def test_every_public_bound_has_a_case():
  assert sorted(BOUND_CASES) == sorted(bounds.__all__)


@functools.lru_cache(maxsize=None)
def _all_bounds():
  """Every bound under every transformation, compiled as one program per transformation."""
  every = lambda p, n, m: {name: fn(p, n, m) for name, fn in BOUND_CASES.items()}
  return transforms(every, (POS, NEG, MASK), ())


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BOUND_CASES))
def test_bound_under_transformations(name):
  plain, results = _all_bounds()
  assert_same(plain[name], {k: v[name] for k, v in results.items()})
  if name != "hcl_clamped":
    assert np.all(np.isfinite(np.asarray(plain[name])))


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
  return transforms(every, batched, shared)


def _group_of(name):
  for group in _GROUPS:
    if name in group:
      return tuple(sorted(group))
  return tuple(sorted(set(NEGATIVE_CASES) - set().union(*_GROUPS)))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(NEGATIVE_CASES))
def test_negatives_under_transformations(name):
  plain, results = _negatives_group(_group_of(name))
  assert_same(plain[name], {k: v[name] for k, v in results.items()})


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
  plain, results = transforms(all_schedules, (steps, jnp.linspace(0.0, 1.0, B)), ())
  assert_same(plain, results)
