"""The exact band search under stress: every row's cut equals a stable argsort's, bit for bit.

``negatives._select`` cuts every band, ball and ring of the package. Its masks are compared here
with ranks from numpy's stable argsort (descending scores, ties by index) on rows built to break
a search: Gaussian and cosine scores, integers with ties everywhere, a constant row, duplicated
columns, signed zeros and subnormal numbers, a heavy tail, and rows with many -inf entries (the
excluded rows of ``band_negatives``), each with bands of every kind per row (empty, a ball, the
whole row, start > end). Any exact search gives the same masks, so a faster search that passes
selects the same negatives as the one before it (tests/test_negatives.py checks the public
functions against the same reference).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mi_contrast import negatives


def _stress_rows(p, seed):
  """float32 [27, p]: rows of every kind the search must cut exactly."""
  rng = np.random.default_rng(seed)
  dim = 16
  centres = rng.standard_normal((10, dim))
  pool = centres[rng.integers(0, 10, p)] * 0.6 + rng.standard_normal((p, dim))
  pool /= np.linalg.norm(pool, axis=1, keepdims=True)
  anchors = pool[rng.integers(0, p, 4)] + 0.05 * rng.standard_normal((4, dim))
  anchors /= np.linalg.norm(anchors, axis=1, keepdims=True)
  third = max(1, p // 3)
  kinds = [
      rng.standard_normal((4, p)),                                   # Gaussian
      anchors @ pool.T / 0.07,                                       # cosine / temperature
      rng.integers(-3, 4, (3, p)),                                   # ties everywhere
      np.full((1, p), 0.25),                                         # a constant row
      rng.standard_normal((2, third))[:, rng.integers(0, third, p)],  # duplicated columns
      rng.choice([-0.0, 0.0, 1e-40, -1e-40, 1.0, -1.0], (2, p)),     # signed zeros, subnormals
      np.exp(3 * rng.standard_normal((2, p))),                       # heavy tail
      rng.choice([-1.0, 1.0], (2, p)) * 10.0 ** rng.uniform(-30, 30, (2, p)),  # 60 decades
  ]
  x = np.concatenate(kinds).astype(np.float32)
  excluded = rng.standard_normal((3, p)).astype(np.float32)
  excluded[0, rng.random(p) < 0.1] = -np.inf
  excluded[1, rng.random(p) < 0.7] = -np.inf
  excluded[2, : p // 2] = -np.inf
  return np.concatenate([x, excluded])


def _np_select(x, start, end):
  """(inner, band) of rows x [N, P]: ranks [0, start) and [start, end) per row, by a stable
  argsort. XLA's CPU comparisons treat subnormal numbers as zero; so does this reference."""
  x = np.where(np.abs(x) < np.finfo(np.float32).tiny, np.float32(0.0), x)
  n, p = x.shape
  ranks = np.empty((n, p), np.int64)
  np.put_along_axis(ranks, np.argsort(-x, axis=1, kind="stable"), np.arange(p)[None, :].repeat(
      n, axis=0), axis=1)
  inner = ranks < start[:, None]
  return inner, (ranks >= start[:, None]) & (ranks < end[:, None]) & ~inner


@pytest.mark.parametrize("p", [1, 33, 1000, 4000])
def test_the_search_cuts_every_row_as_a_stable_argsort(p):
  x = _stress_rows(p, seed=p)
  n = x.shape[0]
  rng = np.random.default_rng(p + 1)
  edges = rng.integers(0, p + 1, (4, n, 2))                         # some with start > end
  edges[1, :, 0] = 0                                                # balls
  edges[1, : n // 2, 1] = p                                         # the whole row
  edges[2] = np.sort(edges[2], axis=1)                              # ordered, some empty
  edges[3] = np.stack([np.full(n, p // 100), np.full(n, p // 10)], axis=1)  # the paper's ring
  select = jax.jit(negatives._select)
  for i, band in enumerate(edges):
    start, end = band[:, 0], band[:, 1]
    got = select(jnp.asarray(x), jnp.asarray(start, jnp.int32), jnp.asarray(end, jnp.int32))
    want = _np_select(x, start, end)
    for name, g, w in zip(("inner", "band"), got, want):
      bad = np.flatnonzero(np.any(np.asarray(g) != w, axis=1))
      assert bad.size == 0, f"p={p} bands {i}: {name} differs in rows {bad.tolist()}"


def _member_masks(p, rng):
  """bool [20, p]: band masks of every layout the rank -> column lookup must handle: spread
  over the row (dense, sparse), one run of members, a run plus a stray member, one member."""
  masks = [rng.random((4, p)) < 0.9, rng.random((4, p)) < 0.02]
  run = np.zeros((8, p), bool)
  for i in range(8):
    a = rng.integers(0, p)
    run[i, a:rng.integers(a + 1, p + 1)] = True
    if i >= 4:
      run[i, rng.integers(0, p)] = True                              # a stray member
  single = np.zeros((4, p), bool)
  single[np.arange(4), [0, p - 1, p // 2, rng.integers(0, p)]] = True
  mask = np.concatenate(masks + [run, single])
  mask[~mask.any(axis=1), 0] = True                                  # every row has a member
  return mask


@pytest.mark.parametrize("p", [1, 33, 4000, 50000])
def test_the_draw_lookup_returns_the_u_th_member_in_index_order(p):
  """_draw_from_words (the u-th set bit of a row, the draws of band_negatives) equals numpy's
  nonzero()[u] for every layout of members and for the first and last member of each row."""
  rng = np.random.default_rng(p)
  mask = _member_masks(p, rng)
  size = mask.sum(axis=1)
  u = (rng.integers(0, 1 << 30, (mask.shape[0], 64)) % size[:, None]).astype(np.int32)
  u[:, 0], u[:, 1] = 0, size - 1
  words = negatives._pack_words(jnp.asarray(mask))
  got = np.asarray(jax.jit(negatives._draw_from_words)(words, jnp.asarray(u)))
  want = np.stack([np.flatnonzero(row)[draws] for row, draws in zip(mask, u)])
  bad = np.flatnonzero(np.any(got != want, axis=1))
  assert bad.size == 0, f"p={p}: rows {bad.tolist()} differ"
