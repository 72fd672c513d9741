"""Ring / ball masks and band selection of hard negatives over a pool of candidates.

The ring estimator (CNCE; Wu et al. 2020, 2021) draws negatives from a band of each anchor's
nearest neighbours in a pool (memory bank, queue or batch). This module finds that band
exactly, without sorting, and samples from it. Every function is pure and jittable, and
depends on nothing else in ``mi_contrast``.

Conventions
-----------
* Similarities of one anchor to its pool form the last axis, ``sims[..., P]``. They are
  ranked per row, most similar first (rank 0). Ties are broken by index: of equal values, the
  lower index ranks first, so every band holds exactly the requested number of entries.
* A band is given by similarity quantiles ``lower <= upper`` in ``[0, 1]`` (1.0 = most
  similar). It keeps ranks ``[start, end)`` with::

      start = floor((1 - upper) * P),   end = floor((1 - lower) * P)

  The ball ``ball_mask(sims, lower)`` is the band ``[lower, 1.0]``: ranks ``[0, end)``.
* ``lower`` and ``upper`` may be traced scalars (annealing changes them every step). No shape
  depends on them, so nothing recompiles when they change. The counts are computed in float32
  with a tolerance of ``1e-3 + P * 2**-23`` candidates added before the floor (the worst-case
  error of ``(1 - q) * P`` for a float32 fraction q), so that values such as
  ``(1 - 0.9) * 50000`` give 5000 and not 4999. The price: an exact count whose fractional
  part lies within that tolerance below an integer rounds up by one (for P = 1,281,167 the
  tolerance is 0.15 candidates; for P = 50,000 it is 0.007).
* The authors' parameterisation (outer fraction rho_o, inner fraction rho_i, "dynamic inner")
  converts with ``fractions_to_quantiles``. Their ring is ranks
  ``[floor(rho_i * floor(rho_o * P)), floor(rho_o * P))``; ours starts at
  ``floor(rho_i * rho_o * P)``, which is never smaller and exceeds theirs by at most one rank
  (the difference is ``rho_i * frac(rho_o * P) < 1``). Both agree on the paper's worked
  examples: ranks [500, 5000) of 50,000 and [655, 6553) of 65,536 for rho_o = rho_i = 0.1.
* Inputs must be finite (similarities of unit vectors are).

Algorithm
---------
A full sort of a B x P matrix, or a top-k with large k, is the hot spot of a naive
implementation. Here each band edge ("the top r entries of the row") is found by selection:
a safeguarded interpolation search runs counting passes ``sum(sims >= t)`` over the rows
until each row has a threshold that cuts exactly ``r`` entries, or two adjacent float32
values that bracket the cut (a tie, then resolved by index). The search starts from a
Gaussian model of the row (moments of a column subsample), continues by Illinois regula
falsi on the counting function in probit coordinates, and falls back to bisection (of the
value, or of the float32 bit pattern) when two steps did not halve the bracket. One pass
counts both edges of a band in one fused compare-and-reduce. Realistic rows need about 5 to
20 passes; rows are stepped in small gathered blocks, so rows that finished early cost
nothing while the slow ones finish.
Sampling inside the band then packs the band mask into 32-bit words, locates each draw's word
by binary search over the words' running popcounts and its bit by a popcount bisection inside
the word. No B x P sort, cumsum or top-k is made on the common path.

References
----------
* Wu, Zhuang, Mosse, Yamins, Goodman (2020), "On Mutual Information in Contrastive Learning for
  Visual Representations" (ball / ring negatives, percentiles of the similarity ranking).
* Wu, Zhuang, Mosse, Yamins, Goodman (ICLR 2021), "Conditional Negative Sampling for
  Contrastive Learning of Visual Representations" (CNCE; IR Ring samples K - 1 ring members
  uniformly with replacement, MoCo Ring uses every ring member of the queue).
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

__all__ = [
    "fractions_to_quantiles",
    "band_bounds",
    "ring_mask",
    "ball_mask",
    "neighbour_masks",
    "band_thresholds",
    "band_negatives",
    "uniform_rows",
    "false_negative_counts",
]

_WORD = 32                      # bits per packed mask word, and columns per counting group
_MOMENT_SAMPLE = 2048           # columns used to estimate a row's mean and spread


# ---------------------------------------------------------------------------------------------
# Quantiles and rank counts.
# ---------------------------------------------------------------------------------------------


def fractions_to_quantiles(outer, inner, dynamic_inner=True):
  """The authors' ring fractions ``(rho_outer, rho_inner)`` -> quantiles ``(lower, upper)``.

  With the reference's "dynamic inner" the ring is the nearest ``rho_outer`` fraction of the
  pool minus the nearest ``rho_inner`` fraction of that::

      lower = 1 - outer,   upper = 1 - inner * outer

  With ``dynamic_inner=False`` the inner cut is a fraction of the whole pool:
  ``upper = 1 - inner`` (the ring is empty unless ``inner < outer``). Defaults
  ``outer = inner = 0.1`` give the 90th..99th similarity percentiles. Works on python floats
  (returns floats) and on traced arrays. Source: method specification, section 3.
  """
  return 1.0 - outer, 1.0 - (inner * outer if dynamic_inner else inner)


@functools.partial(jax.jit, static_argnums=0)
def band_bounds(num_candidates, lower, upper):
  """Rank range ``(start, end)`` (int32 scalars) kept by the band ``[lower, upper]``.

  ``num_candidates`` (P) is a python int; ``lower`` and ``upper`` may be traced. The band keeps
  ranks ``[start, end)`` (rank 0 = most similar) with ``start = floor((1 - upper) * P)`` and
  ``end = floor((1 - lower) * P)``, both clipped to ``[0, P]`` and computed in float32 with a
  tolerance of ``1e-3 + P * 2**-23`` (see the module docstring). ``end <= start`` means the
  band is empty.
  """
  p = int(num_candidates)
  tol = 1e-3 + p * 2.0 ** -23

  def count(q):
    frac = 1.0 - jnp.clip(jnp.asarray(q, jnp.float32), 0.0, 1.0)
    return jnp.clip(jnp.floor(frac * jnp.float32(p) + jnp.float32(tol)), 0, p).astype(jnp.int32)

  return count(upper), count(lower)


# ---------------------------------------------------------------------------------------------
# Exact rank cuts by selection.
# ---------------------------------------------------------------------------------------------


def _to_key(x):
  """float32 -> uint32, monotone (-inf < ... < -0 < +0 < ... < +inf)."""
  bits = lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
  return jnp.where(bits >> 31 == 1, ~bits, bits | jnp.uint32(0x80000000))


def _from_key(k):
  bits = jnp.where(k >= jnp.uint32(0x80000000), k & jnp.uint32(0x7FFFFFFF), ~k)
  return lax.bitcast_convert_type(bits, jnp.float32)


def _row_sum(hits):
  """Sums bool [N, C, P] over the last axis -> int32 [N, C].

  Summed in int8 over groups of 32 columns, then in int32 over the groups (and the < 32 tail
  columns): XLA fuses the producer of ``hits`` into the short first reduction, whereas one
  long reduction over a boolean is rewritten into reduce-windows that materialise the mask.
  """
  n, c, p = hits.shape
  p0 = p - p % _WORD
  total = jnp.zeros((n, c), jnp.int32)
  if p0:
    partial = hits[..., :p0].astype(jnp.int8).reshape(n, c, p0 // _WORD, _WORD)
    total = partial.sum(-1, dtype=jnp.int8).astype(jnp.int32).sum(-1)
  if p0 < p:
    total = total + jnp.sum(hits[..., p0:], axis=-1, dtype=jnp.int32)
  return total


def _count_ge(x, thr):
  """Counts ``x >= thr`` per row for two thresholds. x [N, P], thr [N, 2] -> int32 [N, 2].

  Both compares go into one int16 per entry (1 for the first, 64 for the second), summed over
  groups of 32 columns and decoded per group: one reduction over the matrix instead of two.
  """
  n, p = x.shape
  p0 = p - p % _WORD
  total = jnp.zeros((n, 2), jnp.int32)
  if p0:
    xs = x[:, :p0]
    code = ((xs >= thr[:, 0:1]).astype(jnp.int16)
            + (xs >= thr[:, 1:2]).astype(jnp.int16) * jnp.int16(64))
    groups = code.reshape(n, p0 // _WORD, _WORD).sum(-1, dtype=jnp.int16)
    total = jnp.stack([(groups % 64).astype(jnp.int32).sum(-1),
                       (groups // 64).astype(jnp.int32).sum(-1)], axis=1)
  if p0 < p:
    total = total + jnp.sum(x[:, None, p0:] >= thr[:, :, None], axis=-1, dtype=jnp.int32)
  return total


def _chunk_rows(n):
  """Rows searched together per step (a block small enough to skip finished rows cheaply)."""
  return min(n, 32)


def _probit(count, p):
  """Gaussian score of the fraction of a row of ``p`` entries below a threshold with ``count``
  entries above it (a float32 array shaped like ``count``)."""
  frac = (p - jnp.asarray(count, jnp.float32) + 0.5) / (p + 1.0)
  return jnp.sqrt(2.0).astype(jnp.float32) * lax.erf_inv(2.0 * frac - 1.0)


def _row_moments(x):
  """Mean and standard deviation of each row x [N, P], each [N, 1] float32.

  From a strided subsample of ``_MOMENT_SAMPLE`` columns (a full pass costs as much as a search
  step). Sentinel entries (-inf: an excluded row) stay out of the moments.
  """
  sample = x[:, ::max(1, x.shape[1] // _MOMENT_SAMPLE)]
  real = jnp.isfinite(sample)
  count = jnp.maximum(jnp.sum(real, axis=1, keepdims=True), 1).astype(jnp.float32)
  mean = jnp.sum(jnp.where(real, sample, 0.0), axis=1, keepdims=True) / count
  std = jnp.sqrt(jnp.sum(jnp.where(real, jnp.square(sample - mean), 0.0), axis=1,
                         keepdims=True) / count)
  return mean, std


def _as_key(a):
  """int32 -> uint32 of the same bits (a float key stored in the packed int32 state)."""
  return lax.bitcast_convert_type(a, jnp.uint32)


class _CutState(NamedTuple):
  """The search state of every row and cut, packed into one int32 and one float32 array so
  that a search step gathers and scatters two arrays (what makes the step fast); the
  properties below are named views of it, each [N, C].

  ints [N, C, 8]: ``steps`` taken; the bracket ``[lo, hi)`` as uint32 float keys (``_to_key``)
  with ``c_lo = count(lo) >= r > count(hi) = c_hi``; the side moved ``last`` (+1: lo, -1: hi,
  0: none yet); the bracket's count width one and two steps back (``width1``, ``width2``).
  floats [N, C, 4]: the counts' probits ``z_lo``, ``z_hi`` and the Illinois weights ``w_lo``,
  ``w_hi``.
  """
  ints: jax.Array
  floats: jax.Array

  @classmethod
  def pack(cls, steps, lo, hi, c_lo, c_hi, last, width1, width2, z_lo, z_hi, w_lo, w_hi):
    """Packs the twelve [N, C] fields (``lo``, ``hi`` uint32 keys) into a state."""
    as_int = lambda k: lax.bitcast_convert_type(k, jnp.int32)
    ints = jnp.stack([steps, as_int(lo), as_int(hi), c_lo, c_hi, last, width1, width2], -1)
    return cls(ints, jnp.stack([z_lo, z_hi, w_lo, w_hi], -1))

  @classmethod
  def initial(cls, n, c, p):
    """The state before the first step of [N, C] cuts of rows of ``p`` entries: the bracket
    is ``[-inf, +inf)`` (counts p and 0), with unit Illinois weights."""
    full = lambda v, dtype: jnp.full((n, c), v, dtype)
    c_lo, c_hi = full(p, jnp.int32), full(0, jnp.int32)
    return cls.pack(full(0, jnp.int32), full(_to_key(jnp.float32(-jnp.inf)), jnp.uint32),
                    full(_to_key(jnp.float32(jnp.inf)), jnp.uint32), c_lo, c_hi,
                    full(0, jnp.int32), full(2 * p + 2, jnp.int32), full(2 * p + 2, jnp.int32),
                    _probit(c_lo, p), _probit(c_hi, p), full(1.0, jnp.float32),
                    full(1.0, jnp.float32))

  steps = property(lambda self: self.ints[..., 0])
  lo = property(lambda self: _as_key(self.ints[..., 1]))
  hi = property(lambda self: _as_key(self.ints[..., 2]))
  c_lo = property(lambda self: self.ints[..., 3])
  c_hi = property(lambda self: self.ints[..., 4])
  last = property(lambda self: self.ints[..., 5])
  width1 = property(lambda self: self.ints[..., 6])
  width2 = property(lambda self: self.ints[..., 7])
  z_lo = property(lambda self: self.floats[..., 0])
  z_hi = property(lambda self: self.floats[..., 1])
  w_lo = property(lambda self: self.floats[..., 2])
  w_hi = property(lambda self: self.floats[..., 3])

  def undone(self, r):
    """bool [N, C]: cuts still searched (no exact cut yet, and ``lo``, ``hi`` not adjacent)."""
    return (self.c_lo != r) & (self.hi - self.lo > 1)


class _CutTargets(NamedTuple):
  """The constants of every row and cut: the rank ``r`` int32 [N, C] and, packed like the
  state, floats [N, C, 3] = (probit(r), the row's mean, its std) for the Gaussian model."""
  r: jax.Array
  floats: jax.Array

  @classmethod
  def pack(cls, r, z_target, mean, std):
    """r, z_target [N, C] and mean, std broadcastable to them -> targets."""
    shape = r.shape
    return cls(r, jnp.stack([z_target, jnp.broadcast_to(mean, shape),
                             jnp.broadcast_to(std, shape)], -1))

  z_target = property(lambda self: self.floats[..., 0])
  mean = property(lambda self: self.floats[..., 1])
  std = property(lambda self: self.floats[..., 2])


def _propose(state, targets):
  """The next threshold of every cut: uint32 keys [N, C], strictly inside each bracket.

  The Gaussian quantile of the row at the first step, a Newton step from the last count at the
  second, then Illinois regula falsi between the bracket's ends (stepping out by a doubling
  stride while an end is still infinite); a bisection when two steps did not halve the
  bracket's count.
  """
  steps, lo, hi, last = state.steps, state.lo, state.hi, state.last
  z_lo, z_hi, w_lo, w_hi = state.z_lo, state.z_hi, state.w_lo, state.w_hi
  z_target, mean, std = targets.z_target, targets.mean, targets.std
  width = state.c_lo - state.c_hi
  v_lo, v_hi = _from_key(lo), _from_key(hi)
  # Illinois regula falsi in (value, probit(count)) coordinates: exact for Gaussian rows,
  # locally linear for any smooth distribution.
  a = (z_target - z_lo) * w_lo
  b = (z_hi - z_target) * w_hi
  interp = v_lo + (v_hi - v_lo) * (a / (a + b))
  # While one end is still infinite, step out from the other one, doubling the stride.
  stride = std * jnp.exp2((steps - 1).astype(jnp.float32))
  interp = jnp.where(jnp.isinf(v_hi), v_lo + stride * jnp.maximum(z_target - z_lo, 0.5), interp)
  interp = jnp.where(jnp.isinf(v_lo), v_hi - stride * jnp.maximum(z_hi - z_target, 0.5), interp)
  # The first two steps follow a Gaussian model of the row (robust to outliers such as the
  # anchor's own entry): its quantile, then a Newton step from the last count.
  newton = jnp.where(last == 1, v_lo + std * (z_target - z_lo), v_hi + std * (z_target - z_hi))
  t = jnp.where(steps == 0, mean + std * z_target, jnp.where(steps == 1, newton, interp))
  key = _to_key(jnp.clip(t, v_lo, v_hi))
  # Safeguard when two steps did not halve the bracket's count: try 0 if the bracket
  # straddles it; bisect the bit pattern if the bracket spans binades (this halves the
  # exponent range); bisect the value otherwise.
  crosses = (v_lo < 0) & (v_hi > 0)
  wide = (jnp.abs(v_hi) > 2 * jnp.abs(v_lo)) | (jnp.abs(v_lo) > 2 * jnp.abs(v_hi))
  mid = jnp.where(crosses, _to_key(jnp.float32(0.0)),
                  jnp.where(wide, lo + (hi - lo) // 2, _to_key(0.5 * v_lo + 0.5 * v_hi)))
  key = jnp.where(2 * width > state.width2, mid, key)
  return jnp.clip(key, lo + 1, jnp.maximum(hi, lo + 2) - 1)


def _update_bracket(rows, state, targets, key):
  """The state after counting the proposal ``key`` [N, C] in rows [N, P].

  A count still at or above ``r`` raises ``lo`` to the proposal, otherwise ``hi`` comes down
  to it. Illinois: an end that stays put for a second step in a row has its weight halved, so
  the next interpolation moves towards it; the moved end's weight is reset to 1.
  """
  lo, hi, c_lo, c_hi, last = state.lo, state.hi, state.c_lo, state.c_hi, state.last
  z_lo, z_hi, w_lo, w_hi = state.z_lo, state.z_hi, state.w_lo, state.w_hi
  cnt = _count_ge(rows, _from_key(key))
  z_cnt = _probit(cnt, rows.shape[1])
  up = cnt >= targets.r                          # threshold still inside the cut: raise lo
  half = jnp.float32(0.5)
  return _CutState.pack(
      state.steps + 1, jnp.where(up, key, lo), jnp.where(up, hi, key),
      jnp.where(up, cnt, c_lo), jnp.where(up, c_hi, cnt), jnp.where(up, 1, -1),
      c_lo - c_hi, state.width1, jnp.where(up, z_cnt, z_lo), jnp.where(up, z_hi, z_cnt),
      jnp.where(up, 1.0, jnp.where(last == -1, w_lo * half, w_lo)),
      jnp.where(up, jnp.where(last == 1, w_hi * half, w_hi), 1.0))


def _search_step(rows, state, targets):
  """One search step of rows [N, P]: unfinished cuts move one end of their bracket inwards,
  finished ones keep their state."""
  active = state.undone(targets.r)
  new = _update_bracket(rows, state, targets, _propose(state, targets))
  return jax.tree.map(lambda nw, old: jnp.where(active[..., None], nw, old), new, state)


def _step_chunk(x, targets, chunk, state):
  """Steps the ``chunk`` unfinished rows of x [N, P] with the fewest steps so far.

  They are gathered into a small block: finished rows cost nothing, and one compiled body
  serves all rows.
  """
  pending = jnp.any(state.undone(targets.r), axis=1)
  order = jnp.where(pending, state.steps[:, 0], jnp.iinfo(jnp.int32).max)
  idx = jnp.argsort(order)[:chunk]
  take = lambda a: a[idx]
  sub = _search_step(x[idx], jax.tree.map(take, state), jax.tree.map(take, targets))
  return jax.tree.map(lambda a, b: a.at[idx].set(b), state, sub)


def _search_cuts(x, ranks):
  """Per-row thresholds of the top-``r`` cuts, for each r in ``ranks``.

  Args:
    x: [N, P] float32 rows (no gradient).
    ranks: [C] or [N, C] int32 (the same cuts for every row, or per row), each in [1, P].

  Returns:
    (t, c_ge, c_gt): [N, C] each. ``t`` is a float threshold with ``c_gt < r <= c_ge =
    #{x >= t}``; ``c_ge == r`` means the cut is exactly ``x >= t`` (``c_gt`` is then only the
    count at the bracket's upper end); otherwise ``c_gt = #{x > t}``, ``t`` is the value of the
    rank ``r - 1`` entry and ``r - c_gt`` of its ties (by index) are in the cut.

  Every step (``_propose``, then ``_update_bracket``) moves one end of each row's bracket
  ``[lo, hi)`` (float bit patterns) strictly inwards, so the search ends; the safeguard
  bounds it by a few hundred steps in the worst case, and realistic rows need about 5 to 20.
  """
  n, p = x.shape
  c = ranks.shape[-1]
  r = jnp.broadcast_to(ranks if ranks.ndim == 2 else ranks[None, :], (n, c))
  mean, std = _row_moments(x)
  targets = _CutTargets.pack(r, _probit(r, p), mean, std)
  step = functools.partial(_step_chunk, x, targets, _chunk_rows(n))
  state = lax.while_loop(lambda s: jnp.any(s.undone(r)), step, _CutState.initial(n, c, p))
  return _from_key(state.lo), state.c_lo, state.c_hi


def _band_cuts(x, start, end):
  """Thresholds of the cuts at ranks ``start`` and ``end`` (scalars, or [N]: per row) of rows
  x [N, P].

  Returns ``(t, need, partial)``, each [N, 2] (cut at ``start``, cut at ``end``): thresholds
  ``t``, the number ``need`` of entries equal to ``t`` inside the cut, and whether that is
  fewer than all of them (a tie at the edge, resolved by index). A cut at rank 0 gets
  ``t = NaN``, which no comparison keeps.
  """
  n, p = x.shape
  ranks = jnp.broadcast_to(jnp.stack([start, end], -1), (n, 2))
  t, c_ge, c_gt = _search_cuts(x, jnp.clip(ranks, 1, p))
  empty = ranks <= 0
  t = jnp.where(empty, jnp.nan, t)
  partial = (c_ge != ranks) & ~empty
  need = ranks - c_gt
  return t, need, partial


def _tie_cutoffs(x, t, need, partial):
  """Index cutoffs J [N, C]: the first ``need`` entries equal to ``t`` are those below J.

  Only rows with a tie at a band edge (``partial``) are searched, a few rows at a time, by
  bisection over the index (about log2(P) counting passes each); other rows get J = P.
  """
  n, p = x.shape
  chunk = _chunk_rows(n)
  col = jnp.arange(p, dtype=jnp.int32)

  def resolve(rows, t, need):
    eq = rows[:, None, :] == t[:, :, None]

    def body(_, bounds):
      lo, hi = bounds                      # count(lo) < need <= count(hi)
      mid = (lo + hi) // 2
      ok = _row_sum(eq & (col[None, None, :] < mid[:, :, None])) >= need
      return jnp.where(ok, lo, mid), jnp.where(ok, mid, hi)

    init = (jnp.zeros_like(need), jnp.full_like(need, p))
    return lax.fori_loop(0, p.bit_length(), body, init)[1]

  def next_rows(carry):
    todo, cutoff = carry
    idx = jnp.argsort(~todo)[:chunk]
    found = resolve(x[idx], t[idx], jnp.maximum(need[idx], 1))
    cutoff = cutoff.at[idx].set(jnp.where(partial[idx], found, cutoff[idx]))
    return todo.at[idx].set(False), cutoff

  init = (jnp.any(partial, axis=1), jnp.full(t.shape, p, jnp.int32))
  return lax.while_loop(lambda carry: jnp.any(carry[0]), next_rows, init)[1]


def _cut_masks(x, t, cutoff=None):
  """(inner, band) bool [N, P]: entries in the start cut, and in the end cut but not the start.

  A cut keeps ``x > t`` and the entries equal to ``t`` with index below ``cutoff``;
  ``cutoff=None`` keeps every entry equal to ``t`` (each cut is ``x >= t``).
  """
  if cutoff is None:
    inner = x >= t[:, 0:1]
    return inner, (x >= t[:, 1:2]) & ~inner
  col = jnp.arange(x.shape[1], dtype=jnp.int32)[None, :]

  def cut(i):
    ti = t[:, i:i + 1]
    return (x > ti) | ((x == ti) & (col < cutoff[:, i:i + 1]))

  inner = cut(0)
  return inner, cut(1) & ~inner


def _masks(x, t, need, partial, fn=lambda inner, band: (inner, band)):
  """Applies ``fn`` to the cut masks. A tie at a band edge takes a slower path: it happens now
  and then even for float data (float32 similarities to a large pool), and always for pools
  with duplicate rows."""
  def with_ties():
    return fn(*_cut_masks(x, t, _tie_cutoffs(x, t, need, partial)))

  return lax.cond(jnp.any(partial), with_ties, lambda: fn(*_cut_masks(x, t)))


def _select(x, start, end, fn=lambda inner, band: (inner, band)):
  """The band's selection in rows x [N, P] (no gradient): ``fn(inner, band)`` of the masks of
  ranks ``[0, start)`` and ``[start, end)``. Every band, ball and ring of this module is cut
  here, so this is the one place that turns scores into a discrete choice of negatives."""
  t, need, partial = _band_cuts(x, start, end)
  return _masks(x, t, need, partial, fn)


def _rows(sims):
  sims = jnp.asarray(sims)
  lead = sims.shape[:-1]
  return lax.stop_gradient(sims.astype(jnp.float32)).reshape(-1, sims.shape[-1]), lead


@jax.jit
def _band_membership(sims, lower, upper):
  """(inner, band) bool masks shaped like ``sims``; shared by the mask functions below."""
  x, lead = _rows(sims)
  start, end = band_bounds(x.shape[1], lower, upper)
  inner, band = _select(x, start, end)
  return inner.reshape(sims.shape), band.reshape(sims.shape)


def ring_mask(sims, lower, upper):
  """Entries of each row inside the similarity band ``[lower, upper]``.

  Args:
    sims: [..., P] similarities (or critic scores: any increasing function of them).
    lower, upper: quantiles in [0, 1], 1.0 = most similar; python floats or traced scalars.

  Returns:
    bool [..., P], True on the ranks ``[start, end)`` of ``band_bounds(P, lower, upper)``:
    exactly ``max(end - start, 0)`` entries per row, ties broken by index. An empty band
    (``end <= start``) gives an all-False row. No gradient flows through the selection.
  """
  return _band_membership(sims, lower, upper)[1]


def ball_mask(sims, lower):
  """The nearest ``1 - lower`` fraction of each row: ranks ``[0, floor((1 - lower) * P))``.

  Same as ``ring_mask(sims, lower, 1.0)``. sims [..., P] -> bool [..., P].
  """
  return _band_membership(sims, lower, 1.0)[1]


def neighbour_masks(sims, lower, upper):
  """Inner ball and ring of the band ``[lower, upper]``, from one selection.

  For the LA-like "neighbour views" variant: the inner ball, ranks ``[0, start)`` (the entries
  more similar than the ring, ``ball_mask(sims, upper)``), counts as extra positives in the
  numerator, while the ring, ranks ``[start, end)`` (``ring_mask(sims, lower, upper)``), stays
  the denominator. The two masks are disjoint; their union is ``ball_mask(sims, lower)``.

  Returns:
    (inner, ring): bool [..., P] each.
  """
  return _band_membership(sims, lower, upper)


def band_thresholds(sims, lower, upper):
  """Similarity values at the band's edges, e.g. for logging the annealed ring.

  Returns:
    (low, high): [...] each, the smallest and the largest similarity inside each row's band
    (``low = +inf`` and ``high = -inf`` for an empty band).
  """
  sims = lax.stop_gradient(jnp.asarray(sims, jnp.float32))
  band = _band_membership(sims, lower, upper)[1]
  return (jnp.min(jnp.where(band, sims, jnp.inf), axis=-1),
          jnp.max(jnp.where(band, sims, -jnp.inf), axis=-1))


# ---------------------------------------------------------------------------------------------
# Uniform draws from the band without sorting.
# ---------------------------------------------------------------------------------------------


def _pack_words(mask):
  """bool [N, P] -> uint32 [N, ceil(P / 32)], bit b of word w = column 32 w + b."""
  n, p = mask.shape
  p0 = p - p % _WORD
  shifts = jnp.arange(_WORD, dtype=jnp.uint32)
  words = []
  if p0:
    bits = mask[:, :p0].reshape(n, p0 // _WORD, _WORD).astype(jnp.uint32) << shifts
    words.append(bits.sum(-1, dtype=jnp.uint32))
  if p0 < p:
    tail = mask[:, p0:].astype(jnp.uint32) << shifts[:p - p0]
    words.append(tail.sum(-1, dtype=jnp.uint32, keepdims=True))
  return jnp.concatenate(words, axis=1) if len(words) > 1 else words[0]


def _inclusive_cumsum(v):
  """Running sum over the last axis of a small int32 [N, W] array, by doubling steps."""
  return lax.associative_scan(jnp.add, v, axis=1)


def _search_right(table, u):
  """Per row, the number of entries of the sorted table [N, W] that are <= u [N, K]."""
  n, w = table.shape
  wp = 1 << max(w - 1, 0).bit_length()
  table = jnp.pad(table, ((0, 0), (0, wp - w)), constant_values=jnp.iinfo(jnp.int32).max)
  flat = table.reshape(-1)
  base = (jnp.arange(n, dtype=jnp.int32) * wp)[:, None]

  def body(i, pos):
    step = jnp.right_shift(jnp.int32(wp // 2), i)
    v = flat.at[base + pos + step - 1].get(mode="promise_in_bounds")
    return pos + jnp.where(v <= u, step, 0)

  return lax.fori_loop(0, max(wp.bit_length() - 1, 0), body, jnp.zeros(u.shape, jnp.int32))


def _select_bit(word, o):
  """Position of the o-th (0-based) set bit of each uint32 word; o < popcount(word)."""
  pos = jnp.zeros(word.shape, jnp.int32)
  for width in (16, 8, 4, 2, 1):
    low = lax.population_count(word & jnp.uint32((1 << width) - 1)).astype(jnp.int32)
    go = o >= low
    o = jnp.where(go, o - low, o)
    word = jnp.where(go, word >> width, word)
    pos = jnp.where(go, pos + width, pos)
  return pos


def _draw_from_words(words, u):
  """Column of the u-th set bit (in index order) of each row. words [N, W], u [N, K]."""
  counts = lax.population_count(words).astype(jnp.int32)
  upto = _inclusive_cumsum(counts)
  w = _search_right(upto, u)                                   # word holding the u-th member
  flat_idx = jnp.arange(words.shape[0], dtype=jnp.int32)[:, None] * words.shape[1] + w
  word = words.reshape(-1)[flat_idx]
  before = upto.reshape(-1)[flat_idx] - counts.reshape(-1)[flat_idx]
  return w * _WORD + _select_bit(word, u - before)


def _row_bounds(num_rows, lower, upper):
  """``band_bounds`` for rows of different sizes: num_rows int [N] -> (start, end) int [N]."""
  frac = lambda q: 1.0 - jnp.clip(jnp.asarray(q, jnp.float32), 0.0, 1.0)
  p = num_rows.astype(jnp.float32)
  tol = 1e-3 + p * 2.0 ** -23
  count = lambda q: jnp.clip(jnp.floor(frac(q) * p + tol), 0, num_rows).astype(jnp.int32)
  return count(upper), count(lower)


def _candidate_band(x, cand, lower, upper, exclude_rows, pool_rows):
  """The scores x [B, M] with excluded candidates set to -inf, and each row's band ``(start,
  end)`` (int32 scalars or [B]) over its remaining candidates, widened to one entry if empty.

  cand: None (the candidates are the pool rows) or int [M], the pool row of each candidate;
  exclude_rows, pool_rows: as in ``band_negatives``.
  """
  b, m = x.shape
  if exclude_rows is None and pool_rows is None:
    start, end = band_bounds(m, lower, upper)
    remaining = m
  else:
    source = jnp.arange(m, dtype=jnp.int32) if cand is None else cand
    excluded = jnp.zeros((b, m), bool)
    if exclude_rows is not None:
      exclude_rows = jnp.asarray(exclude_rows, jnp.int32)
      excluded = (source[None, :] == exclude_rows[:, None]) & (exclude_rows[:, None] >= 0)
    if pool_rows is not None:
      excluded = excluded | (source >= pool_rows)[None, :]
    x = jnp.where(excluded, -jnp.inf, x)        # ranks last: outside every band below
    remaining = m - jnp.sum(excluded, axis=1, dtype=jnp.int32)                     # [B]
    start, end = _row_bounds(remaining, lower, upper)
  start = jnp.minimum(start, remaining - 1)
  end = jnp.maximum(end, start + 1)
  return x, start, end


def _band_draws(draw_key, anchor_ids, size, num):
  """``num`` ranks per anchor, uniform in ``[0, size)``: int32 [B, num].

  anchor_ids: int [B]; anchor i draws with ``fold_in(draw_key, anchor_ids[i])``. size: int32
  scalar or [B], each at least 1.
  """
  keys = jax.vmap(lambda i: jax.random.fold_in(draw_key, i))(jnp.asarray(anchor_ids))
  # One 32-bit draw per negative, reduced modulo the band size: the bias is below
  # size / 2**32 (3e-5 relative for a 128k band), at half the cost of jax.random.randint.
  bits = jax.vmap(lambda k: jax.random.bits(k, (num,), jnp.uint32))(keys)
  return (bits % jnp.reshape(size, (-1, 1)).astype(jnp.uint32)).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("num", "candidates"))
def band_negatives(rng, anchors, pool, lower, upper, num, *, temperature, candidates=None,
                   anchor_ids=None, exclude_rows=None, pool_rows=None):
  """Draws ``num`` negatives per anchor uniformly, with replacement, from its similarity band.

  The IR Ring recipe of the reference code (``NCERing``: K - 1 ring members sampled uniformly
  with replacement), generalised to any band ``[lower, upper]`` and to a sampled candidate set.

  Args:
    rng: PRNG key. It is split into a candidate key (sampled form; the same on every device)
      and a draw key; anchor ``i`` draws with ``fold_in(draw_key, anchor_ids[i])``, so an
      anchor gets the same negatives however the batch is split across devices.
    anchors: [B, D] unit rows (gradients flow to them through the returned scores).
    pool: [P, D] unit rows (memory bank or queue; no gradient: it is stop_gradient-ed).
    lower, upper: band quantiles in [0, 1] (1.0 = most similar); may be traced.
    num: python int, negatives per anchor.
    temperature: critic temperature; scores are ``anchors . pool[idx] / temperature``.
    candidates: None for the exact band over the whole pool (a B x P score matrix). An int M
      for the sampled form: M pool rows drawn uniformly WITH replacement once per call, shared
      by the whole batch; the band is taken over those M scores (a B x M matrix), so the cost
      does not grow with P.
    anchor_ids: optional int [B] global ids of the anchors (default ``arange(B)``).
    exclude_rows: optional int [B], the pool row of each anchor's own positive (its memory
      bank row), or -1 for none. An excluded row is never returned, in the exact and in the
      sampled form (there every candidate that is a copy of it is dropped), and the band's
      quantiles are taken over the remaining rows: ``band_bounds`` of P - 1 (exact), or of M
      minus the copies (sampled). The paper's neighbourhoods are built around the anchor's own
      row, which is never one of its negatives; without this, a ball's nearest row is the
      positive itself once training is under way.
    pool_rows: optional int (may be traced): only the first pool_rows rows of the pool are
      candidates, the rest is padding that is never returned (a sharded bank's last shard).

  Returns:
    (scores [B, num] float32, indices [B, num] int32 into ``pool``). The scores are gathered
    from the B x P (or B x M) score matrix, so the backward pass is one dense matmul; the
    selection itself carries no gradient.

  An empty band (possible for tiny pools or ``upper < lower``) is widened to one entry: the
  entry at rank ``min(start, P' - 1)`` of the P' remaining candidates. Nothing is ever NaN.
  """
  anchors = jnp.asarray(anchors)
  pool = lax.stop_gradient(jnp.asarray(pool))
  b = anchors.shape[0]
  p = pool.shape[0]
  cand_key, draw_key = jax.random.split(rng)
  if candidates is None:
    cand = None
    rows = pool
  else:
    cand = jax.random.randint(cand_key, (int(candidates),), 0, p, dtype=jnp.int32)
    rows = pool[cand]
  logits = jnp.dot(anchors, rows.T.astype(anchors.dtype)) / temperature       # [B, M]

  x, start, end = _candidate_band(lax.stop_gradient(logits).astype(jnp.float32), cand,
                                  lower, upper, exclude_rows, pool_rows)
  if anchor_ids is None:
    anchor_ids = jnp.arange(b, dtype=jnp.int32)
  u = _band_draws(draw_key, anchor_ids, end - start, num)

  words = _select(x, start, end, lambda inner, band: _pack_words(band))
  local = _draw_from_words(words, u)

  scores = jnp.take_along_axis(logits, local, axis=1).astype(jnp.float32)
  indices = local if cand is None else cand[local]
  return scores, indices


def uniform_rows(rng, anchor_ids, exclude_rows, num_rows, num):
  """``num`` pool rows per anchor, uniformly with replacement from the ``num_rows`` rows other
  than its own: int [B, num].

  The uniform counterpart of ``band_negatives`` (IR's and CMC's uniform bank draws). Anchor i
  draws with ``fold_in(rng, anchor_ids[i])`` (independent of how the batch is split);
  exclude_rows: int [B], the anchor's own row (never drawn), or -1 to draw from all rows.
  """
  keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.asarray(anchor_ids))
  own = jnp.asarray(exclude_rows, jnp.int32)
  high = jnp.where(own >= 0, num_rows - 1, num_rows)
  drawn = jax.vmap(lambda key, h: jax.random.randint(key, (num,), 0, h))(keys, high)
  own = own[:, None]
  return jnp.where((own >= 0) & (drawn >= own), drawn + 1, drawn)


# ---------------------------------------------------------------------------------------------
# The false-negative diagnostic.
# ---------------------------------------------------------------------------------------------


def false_negative_counts(labels, anchor_rows, negative_rows, keep=None):
  """How many drawn negatives share their anchor's class: (same, total), int32 scalars.

  A diagnostic only: labels never enter an objective. The share same / total is the fraction
  of an anchor's negatives that are images of its own class (false negatives): about
  1 / classes for uniform draws of a balanced dataset, more for a ball or ring of nearest
  neighbours once the embedding groups classes.

  Args:
    labels: int [N], the class of each pool image (dataset row); -1: unknown.
    anchor_rows: int [n], the dataset row of each anchor.
    negative_rows: int [n, K], or [K] shared by every anchor: the dataset row of each negative;
      -1: no image (never counted).
    keep: optional bool [n, K] (or broadcastable): which entries are negatives.
  Returns:
    same: negatives whose label equals their anchor's; total: negatives counted, i.e. those
    with a row and a label >= 0, of anchors with a label >= 0.
  """
  labels = jnp.asarray(labels, jnp.int32)
  rows = jnp.asarray(negative_rows, jnp.int32)
  anchor = labels[jnp.asarray(anchor_rows, jnp.int32)][:, None]                   # [n, 1]
  negative = jnp.where(rows >= 0, labels[jnp.maximum(rows, 0)], -1)               # [n|1, K]
  counted = (negative >= 0) & (anchor >= 0)
  if keep is not None:
    counted = counted & keep
  same = counted & (negative == anchor)
  return jnp.sum(same, dtype=jnp.int32), jnp.sum(counted, dtype=jnp.int32)
