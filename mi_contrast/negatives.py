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
from jax.typing import ArrayLike

from mi_contrast import _contracts as _c

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
_OPEN_STEPS = 6                 # search steps that may step out from an infinite bracket end
_MOMENT_SAMPLE = 2048           # columns used to estimate a row's mean and spread


# ---------------------------------------------------------------------------------------------
# Quantiles and rank counts.
# ---------------------------------------------------------------------------------------------


def fractions_to_quantiles(outer: float | ArrayLike, inner: float | ArrayLike,
                           dynamic_inner: bool = True) -> tuple:
  """The authors' ring fractions ``(rho_outer, rho_inner)`` -> quantiles ``(lower, upper)``.

  With the reference's "dynamic inner" the ring is the nearest ``rho_outer`` fraction of the
  pool minus the nearest ``rho_inner`` fraction of that::

      lower = 1 - outer,   upper = 1 - inner * outer

  With ``dynamic_inner=False`` the inner cut is a fraction of the whole pool:
  ``upper = 1 - inner`` (the ring is empty unless ``inner < outer``). Defaults
  ``outer = inner = 0.1`` give the 90th..99th similarity percentiles. Works on python floats
  (returns floats; each must lie in [0, 1]) and on traced arrays (returns arrays).
  ``docs/method.md`` ("Ball and ring") compares the two parameterisations.

  Examples:
    >>> from mi_contrast import negatives
    >>> lower, upper = negatives.fractions_to_quantiles(0.1, 0.1)
    >>> round(lower, 6), round(upper, 6)
    (0.9, 0.99)
  """
  for name, value in (("outer", outer), ("inner", inner)):
    if _c.is_number(value):
      _c.number_in("fractions_to_quantiles", name, value, 0.0, 1.0)
  return 1.0 - outer, 1.0 - (inner * outer if dynamic_inner else inner)


def _check_band(fn, lower, upper):
  """lower and upper: scalars, each in [0, 1] when a Python number. A Python ``lower > upper``
  is allowed: it is an empty band (what an annealed band can reach)."""
  _c.number_in(fn, "lower", lower, 0.0, 1.0)
  _c.number_in(fn, "upper", upper, 0.0, 1.0)


def band_bounds(num_candidates: int, lower: ArrayLike, upper: ArrayLike
                ) -> tuple[jax.Array, jax.Array]:
  """Rank range ``(start, end)`` (int32 scalars) kept by the band ``[lower, upper]``.

  ``num_candidates`` (P) is a python int; ``lower`` and ``upper`` may be traced. The band keeps
  ranks ``[start, end)`` (rank 0 = most similar) with ``start = floor((1 - upper) * P)`` and
  ``end = floor((1 - lower) * P)``, both clipped to ``[0, P]`` and computed in float32 with a
  tolerance of ``1e-3 + P * 2**-23`` (see the module docstring). ``end <= start`` means the
  band is empty.

  Examples:
    >>> from mi_contrast import negatives
    >>> start, end = negatives.band_bounds(50000, 0.9, 0.99)
    >>> int(start), int(end)
    (500, 5000)
  """
  fn = "band_bounds"
  _c.static_int(fn, "num_candidates", num_candidates, 0)
  _check_band(fn, lower, upper)
  return _band_bounds(int(num_candidates), lower, upper)


@functools.partial(jax.jit, static_argnums=0)
def _band_bounds(p, lower, upper):
  """``band_bounds`` without the checks (p: a Python int)."""
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
  bracket's count (once both ends are finite, or after _OPEN_STEPS steps).
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
  # While one end is still infinite, step out from the other one: a Newton step of the
  # Gaussian model that doubles with every step. Its length is the finite end's distance to
  # the target, however small (a step of half a standard deviation overshot an end a few
  # ranks from the target by thousands of ranks, which the regula falsi then took several
  # steps to bring back).
  stride = std * jnp.exp2((steps - 1).astype(jnp.float32))
  interp = jnp.where(jnp.isinf(v_hi), v_lo + stride * jnp.maximum(z_target - z_lo, 0.0), interp)
  interp = jnp.where(jnp.isinf(v_lo), v_hi - stride * jnp.maximum(z_hi - z_target, 0.0), interp)
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
  # Not while an end is infinite (the count cannot halve before the bracket is closed), for
  # the first _OPEN_STEPS steps: the doubling step-out closes it first for any row short of
  # extreme tails, which the bisection of the bit pattern then handles.
  open_end = (jnp.isinf(v_lo) | jnp.isinf(v_hi)) & (steps < _OPEN_STEPS)
  key = jnp.where((2 * width > state.width2) & ~open_end, mid, key)
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
  init = _c.match_varying(_CutState.initial(n, c, p), x, r)
  state = lax.while_loop(lambda s: jnp.any(s.undone(r)), step, init)
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

    init = _c.match_varying((jnp.zeros_like(need), jnp.full_like(need, p)), rows, t, need)
    return lax.fori_loop(0, p.bit_length(), body, init)[1]

  def next_rows(carry):
    todo, cutoff = carry
    idx = jnp.argsort(~todo)[:chunk]
    found = resolve(x[idx], t[idx], jnp.maximum(need[idx], 1))
    cutoff = cutoff.at[idx].set(jnp.where(partial[idx], found, cutoff[idx]))
    return todo.at[idx].set(False), cutoff

  init = _c.match_varying((jnp.any(partial, axis=1), jnp.full(t.shape, p, jnp.int32)), x, t,
                          need, partial)
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
  start, end = _band_bounds(x.shape[1], lower, upper)
  inner, band = _select(x, start, end)
  return inner.reshape(sims.shape), band.reshape(sims.shape)


def _check_sims(fn, sims, lower, upper):
  _c.floating(fn, "sims", sims)
  shape = _c.rank_at_least(fn, "sims", sims, 1, "[..., P]")
  if shape[-1] == 0:
    raise ValueError(f"{fn}: sims has no columns (an empty pool, shape {shape}); a band "
                     f"needs at least one candidate")
  _check_band(fn, lower, upper)


def ring_mask(sims: ArrayLike, lower: ArrayLike, upper: ArrayLike) -> jax.Array:
  """Entries of each row inside the similarity band ``[lower, upper]``.

  Args:
    sims: [..., P] similarities (or critic scores: any increasing function of them), P >= 1.
      An entry at ``-inf`` ranks below every other one (so it is only selected when the band
      reaches the bottom ranks); NaN entries give an unspecified selection.
    lower, upper: quantiles in [0, 1], 1.0 = most similar; python floats or traced scalars.

  Returns:
    bool [..., P], True on the ranks ``[start, end)`` of ``band_bounds(P, lower, upper)``:
    exactly ``max(end - start, 0)`` entries per row, ties broken by index. An empty band
    (``end <= start``, e.g. ``lower > upper``) gives an all-False row. No gradient flows
    through the selection.

  Examples:
    >>> import jax.numpy as jnp
    >>> from mi_contrast import negatives
    >>> sims = jnp.array([[0.9, 0.1, 0.5, 0.7, 0.3, 0.8, 0.2, 0.6, 0.4, 0.0]])
    >>> negatives.ring_mask(sims, 0.5, 0.8).astype(int).tolist()   # ranks [2, 5): 0.7, 0.6, 0.5
    [[0, 0, 1, 1, 0, 0, 0, 1, 0, 0]]
  """
  _check_sims("ring_mask", sims, lower, upper)
  return _band_membership(sims, lower, upper)[1]


def ball_mask(sims: ArrayLike, lower: ArrayLike) -> jax.Array:
  """The nearest ``1 - lower`` fraction of each row: ranks ``[0, floor((1 - lower) * P))``.

  Same as ``ring_mask(sims, lower, 1.0)``. sims [..., P] -> bool [..., P].

  Examples:
    >>> import jax.numpy as jnp
    >>> from mi_contrast import negatives
    >>> sims = jnp.array([[0.9, 0.1, 0.5, 0.7, 0.3, 0.8, 0.2, 0.6, 0.4, 0.0]])
    >>> negatives.ball_mask(sims, 0.8).astype(int).tolist()        # the nearest 20%
    [[1, 0, 0, 0, 0, 1, 0, 0, 0, 0]]
  """
  _check_sims("ball_mask", sims, lower, 1.0)
  return _band_membership(sims, lower, 1.0)[1]


def neighbour_masks(sims: ArrayLike, lower: ArrayLike, upper: ArrayLike
                    ) -> tuple[jax.Array, jax.Array]:
  """Inner ball and ring of the band ``[lower, upper]``, from one selection.

  For the LA-like "neighbour views" variant: the inner ball, ranks ``[0, start)`` (the entries
  more similar than the ring, ``ball_mask(sims, upper)``), counts as extra positives in the
  numerator, while the ring, ranks ``[start, end)`` (``ring_mask(sims, lower, upper)``), stays
  the denominator. The two masks are disjoint; their union is ``ball_mask(sims, lower)``.

  Returns:
    (inner, ring): bool [..., P] each.

  Examples:
    >>> import jax.numpy as jnp
    >>> from mi_contrast import negatives
    >>> sims = jnp.array([[0.9, 0.1, 0.5, 0.7, 0.3, 0.8, 0.2, 0.6, 0.4, 0.0]])
    >>> inner, ring = negatives.neighbour_masks(sims, 0.5, 0.8)
    >>> inner.astype(int).tolist(), int(ring.sum())
    ([[1, 0, 0, 0, 0, 1, 0, 0, 0, 0]], 3)
  """
  _check_sims("neighbour_masks", sims, lower, upper)
  return _band_membership(sims, lower, upper)


def band_thresholds(sims: ArrayLike, lower: ArrayLike, upper: ArrayLike
                    ) -> tuple[jax.Array, jax.Array]:
  """Similarity values at the band's edges, e.g. for logging the annealed ring.

  Returns:
    (low, high): [...] each, the smallest and the largest similarity inside each row's band
    (``low = +inf`` and ``high = -inf`` for an empty band).

  Examples:
    >>> import jax.numpy as jnp
    >>> from mi_contrast import negatives
    >>> sims = jnp.array([[0.9, 0.1, 0.5, 0.7, 0.3, 0.8, 0.2, 0.6, 0.4, 0.0]])
    >>> low, high = negatives.band_thresholds(sims, 0.5, 0.8)
    >>> round(float(low[0]), 3), round(float(high[0]), 3)
    (0.5, 0.7)
  """
  _check_sims("band_thresholds", sims, lower, upper)
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
  """Per row, the number of entries of the sorted table [N, W] that are <= u [N, K].

  A binary search over a window of each row that must hold the answer, rather than over the
  whole row: the table's entries deviate from the straight line from 0 to the row's last
  entry by at most ``dev`` (measured per row), so an entry more than ``dev`` below ``u`` on
  that line is <= u and one more than ``dev`` above it is > u. For a band spread over the
  pool (a bank in random order) the window is a few words wide, and the search takes about
  half the steps of one over the row; for any other table it is at worst the whole row. The
  answer is the same in every case.
  """
  n, w = table.shape
  table = table.astype(jnp.int32)
  total = jnp.maximum(table[:, -1:], 1).astype(jnp.float32)                   # [N, 1]
  slope = total / w                                         # the line: (i + 1) * slope
  line = (jnp.arange(1, w + 1, dtype=jnp.float32)[None, :]) * slope
  # + 1: float rounding of the line (relative 2**-24 of entries below 2**24).
  dev = jnp.max(jnp.abs(table.astype(jnp.float32) - line), axis=1, keepdims=True) + 1.0
  uf = u.astype(jnp.float32)
  # Entries i with (i + 1) * slope + dev <= u are <= u; entries with (i + 1) * slope - dev > u
  # are > u. One word of margin on each side covers the rounding of the division.
  lo = jnp.clip(jnp.floor((uf - dev) / slope) - 1.0, 0, w).astype(jnp.int32)
  hi = jnp.clip(jnp.floor((uf + dev) / slope) + 2.0, 0, w).astype(jnp.int32)
  lo = jnp.minimum(lo, hi)
  steps = jnp.max(hi - lo).astype(jnp.uint32)
  num_steps = (32 - lax.clz(steps)).astype(jnp.int32)     # bit length: 2**num_steps > hi - lo
  flat = table.reshape(-1)
  base = (jnp.arange(n, dtype=jnp.int32) * w)[:, None]

  def body(i, pos):
    step = jnp.left_shift(jnp.int32(1), num_steps - 1 - i)
    cand = pos + step
    v = flat.at[base + jnp.minimum(cand, hi) - 1].get(mode="promise_in_bounds")
    return jnp.where((cand <= hi) & (v <= u), cand, pos)

  init = _c.match_varying(lo, table, u)
  return lax.fori_loop(0, num_steps, body, init)


def _draw_from_words(words, u):
  """Column of the u-th set bit (in index order) of each row. words [N, W], u [N, K].

  u must be below the row's number of set bits; a larger u (only non-finite scores give one:
  their band may hold fewer members than counted) gets a column of the row's last word.
  """
  counts = lax.population_count(words).astype(jnp.int32)
  upto = _inclusive_cumsum(counts)
  w = jnp.minimum(_search_right(upto, u), words.shape[1] - 1)   # word holding the u-th member
  flat_idx = jnp.arange(words.shape[0], dtype=jnp.int32)[:, None] * words.shape[1] + w
  word = words.reshape(-1)[flat_idx]
  before = upto.reshape(-1)[flat_idx] - lax.population_count(word).astype(jnp.int32)
  return w * _WORD + _select_bit(word, jnp.clip(u - before, 0, _WORD - 1))


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
    start, end = _band_bounds(m, lower, upper)
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
  # An empty band is widened to one entry. With no candidate left at all (every one excluded),
  # that entry is the lowest-indexed excluded one: a pool row, never an index past the pool.
  start = jnp.minimum(start, jnp.maximum(remaining, 1) - 1)
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


def band_negatives(rng: ArrayLike, anchors: ArrayLike, pool: ArrayLike, lower: ArrayLike,
                   upper: ArrayLike, num: int, *, temperature: ArrayLike,
                   candidates: int | None = None, anchor_ids: ArrayLike | None = None,
                   exclude_rows: ArrayLike | None = None, pool_rows: ArrayLike | None = None
                   ) -> tuple[jax.Array, jax.Array]:
  """Draws ``num`` negatives per anchor uniformly, with replacement, from its similarity band.

  The IR Ring recipe of the reference code (``NCERing``: K - 1 ring members sampled uniformly
  with replacement), generalised to any band ``[lower, upper]`` and to a sampled candidate set.

  Args:
    rng: PRNG key. It is split into a candidate key (sampled form; the same on every device)
      and a draw key; anchor ``i`` draws with ``fold_in(draw_key, anchor_ids[i])``, so an
      anchor gets the same negatives however the batch is split across devices.
    anchors: [B, D] unit rows (gradients flow to them through the returned scores).
    pool: [P, D] unit rows, P >= 1 (memory bank or queue; no gradient: it is
      stop_gradient-ed).
    lower, upper: band quantiles in [0, 1] (1.0 = most similar); may be traced.
    num: python int >= 1, negatives per anchor.
    temperature: critic temperature > 0; scores are ``anchors . pool[idx] / temperature``.
    candidates: None for the exact band over the whole pool (a B x P score matrix). A python
      int M >= 1 for the sampled form: M rows drawn uniformly WITH replacement from the pool's
      first ``pool_rows`` rows (all P by default) once per call, shared by the whole batch;
      the band is taken over those M scores (a B x M matrix), so the cost does not grow
      with P.
    anchor_ids: optional int [B] global ids of the anchors (default ``arange(B)``).
    exclude_rows: optional int [B], the pool row of each anchor's own positive (its memory
      bank row), or -1 for none. An excluded row is never returned while another candidate
      remains, in the exact and in the sampled form (there every candidate that is a copy of
      it is dropped), and the band's quantiles are taken over the remaining rows:
      ``band_bounds`` of P - 1 (exact), or of M minus the copies (sampled). The paper's
      neighbourhoods are built around the anchor's own row, which is never one of its
      negatives; without this, a ball's nearest row is the positive itself once training is
      under way. A row outside ``[0, P)`` excludes nothing.
    pool_rows: optional int in [1, P] (may be traced): only the first pool_rows rows of the
      pool are candidates, the rest is padding that is never returned (a sharded bank's last
      shard, a queue still filling up).

  Returns:
    (scores [B, num] float32, indices [B, num] int32 into ``pool``). The scores are gathered
    from the B x P (or B x M) score matrix, so the backward pass is one dense matmul; the
    selection itself carries no gradient.

  An empty band (possible for tiny pools or ``upper < lower``) is widened to one entry: the
  entry at rank ``min(start, P' - 1)`` of the P' remaining candidates. Nothing is ever NaN for
  finite inputs, and every index is a row of the pool below ``pool_rows``. What cannot be
  checked when the function is traced: a traced ``pool_rows`` outside ``[1, P]`` (it is
  clipped to that range) and NaN in the pool or anchors (an unspecified, but valid, choice of
  rows). With no candidate left at all (``pool_rows = 1`` and that row excluded) the excluded
  row is returned.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from mi_contrast import negatives
    >>> unit = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)
    >>> bank = unit(jax.random.normal(jax.random.key(0), (1000, 16)))
    >>> anchors = unit(jax.random.normal(jax.random.key(1), (4, 16)))
    >>> scores, rows = negatives.band_negatives(
    ...     jax.random.key(2), anchors, bank, 0.9, 0.99, 64, temperature=0.1)
    >>> scores.shape, rows.shape
    ((4, 64), (4, 64))
    >>> ring = negatives.ring_mask(anchors @ bank.T, 0.9, 0.99)   # ranks [10, 100) of 1000
    >>> bool(jnp.all(jnp.take_along_axis(ring, rows, axis=1)))
    True
    >>> _, own = negatives.band_negatives(                    # bank rows 0..3 as anchors
    ...     jax.random.key(2), bank[:4], bank, 0.9, 1.0, 64, temperature=0.1,
    ...     exclude_rows=jnp.arange(4))
    >>> bool(jnp.all(own != jnp.arange(4)[:, None]))          # never the anchor's own row
    True
  """
  num, candidates = _check_band_negatives(rng, anchors, pool, lower, upper, num, temperature,
                                          candidates, anchor_ids, exclude_rows, pool_rows)
  return _band_negatives(rng, anchors, pool, lower, upper, num, temperature=temperature,
                         candidates=candidates, anchor_ids=anchor_ids,
                         exclude_rows=exclude_rows, pool_rows=pool_rows)


def _check_band_negatives(rng, anchors, pool, lower, upper, num, temperature, candidates,
                          anchor_ids, exclude_rows, pool_rows):
  """band_negatives' contracts; returns (num, candidates) as Python ints (or None)."""
  fn = "band_negatives"
  _c.prng_key(fn, "rng", rng)
  _c.floating(fn, "anchors", anchors)
  _c.floating(fn, "pool", pool)
  b, d = _c.rank_exactly(fn, "anchors", anchors, 2, "[B, D]")
  p, d_pool = _c.rank_exactly(fn, "pool", pool, 2, "[P, D]")
  if p == 0:
    raise ValueError(f"{fn}: pool has no rows (shape {(p, d_pool)}); it needs at least one")
  if d_pool != d:
    raise ValueError(f"{fn}: anchors and pool must have the same width D, got anchors "
                     f"{(b, d)} and pool {(p, d_pool)}")
  _check_band(fn, lower, upper)
  num = _c.static_int(fn, "num", num, 1)
  if candidates is not None:
    candidates = _c.static_int(fn, "candidates", candidates, 1)
  _c.number_in(fn, "temperature", temperature, 0.0, None, low_open=True)
  for name, ids in (("anchor_ids", anchor_ids), ("exclude_rows", exclude_rows)):
    if ids is not None:
      _c.integer(fn, name, ids)
      _c.rank_exactly(fn, name, ids, 1, f"[B] = [{b}]")
      if jnp.shape(ids)[0] != b:
        raise ValueError(f"{fn}: {name} must have shape [B] = [{b}] (one per anchor), got "
                         f"{tuple(jnp.shape(ids))}")
  if pool_rows is not None:
    _c.number_in(fn, "pool_rows", pool_rows, 1, p)
  return num, candidates


@functools.partial(jax.jit, static_argnames=("num", "candidates"))
def _band_negatives(rng, anchors, pool, lower, upper, num, *, temperature, candidates,
                    anchor_ids, exclude_rows, pool_rows):
  """``band_negatives`` without the checks."""
  anchors = jnp.asarray(anchors)
  pool = lax.stop_gradient(jnp.asarray(pool))
  b = anchors.shape[0]
  p = pool.shape[0]
  if pool_rows is not None:
    pool_rows = jnp.clip(jnp.asarray(pool_rows, jnp.int32), 1, p)
  cand_key, draw_key = jax.random.split(rng)
  if candidates is None:
    cand = None
    rows = pool
  else:
    high = p if pool_rows is None else pool_rows
    cand = jax.random.randint(cand_key, (int(candidates),), 0, high, dtype=jnp.int32)
    rows = pool[cand]
  logits = jnp.dot(anchors, rows.T.astype(anchors.dtype)) / temperature       # [B, M]

  x, start, end = _candidate_band(lax.stop_gradient(logits).astype(jnp.float32), cand,
                                  lower, upper, exclude_rows, pool_rows)
  if anchor_ids is None:
    anchor_ids = jnp.arange(b, dtype=jnp.int32)
  u = _band_draws(draw_key, anchor_ids, end - start, num)

  words = _select(x, start, end, lambda inner, band: _pack_words(band))
  # The u-th member of the band; the clip only matters for non-finite scores, whose band may
  # hold fewer members than counted.
  local = jnp.clip(_draw_from_words(words, u), 0, x.shape[1] - 1)

  # A flat gather of in-bounds indices (local is clipped above): take_along_axis builds [B,
  # num, 2] index pairs and masks out-of-bounds reads, which cost more than the gather itself.
  # (Only while a flat int32 index reaches every entry.)
  m = logits.shape[1]
  if b * m < 2 ** 31:
    flat = jnp.arange(b, dtype=jnp.int32)[:, None] * m + local
    scores = logits.reshape(-1).at[flat].get(mode="promise_in_bounds")
  else:
    scores = jnp.take_along_axis(logits, local, axis=1)
  scores = scores.astype(jnp.float32)
  indices = local if cand is None else cand[local]
  if pool_rows is not None and cand is None:
    indices = jnp.minimum(indices, pool_rows - 1)
  return scores, indices


def uniform_rows(rng: ArrayLike, anchor_ids: ArrayLike, exclude_rows: ArrayLike | None,
                 num_rows: ArrayLike, num: int) -> jax.Array:
  """``num`` pool rows per anchor, uniformly with replacement from the ``num_rows`` rows other
  than its own: int32 [B, num].

  The uniform counterpart of ``band_negatives`` (IR's and CMC's uniform bank draws). Anchor i
  draws with ``fold_in(rng, anchor_ids[i])`` (independent of how the batch is split).

  Args:
    rng: PRNG key.
    anchor_ids: int [B], the global id of each anchor.
    exclude_rows: int [B], the anchor's own row (never drawn), or -1 to draw from all rows;
      None: no exclusion.
    num_rows: the number of rows N >= 1 (python int or traced scalar).
    num: python int >= 1, rows per anchor.

  Every returned row is in ``[0, N)``. With N = 1 and that row excluded, nothing else can be
  drawn: the row itself is returned.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from mi_contrast import negatives
    >>> rows = negatives.uniform_rows(jax.random.key(0), jnp.arange(3), jnp.arange(3), 10, 100)
    >>> rows.shape, bool(jnp.all(rows != jnp.arange(3)[:, None])), bool(jnp.all(rows < 10))
    ((3, 100), True, True)
  """
  fn = "uniform_rows"
  _c.prng_key(fn, "rng", rng)
  _c.integer(fn, "anchor_ids", anchor_ids)
  (b,) = _c.rank_exactly(fn, "anchor_ids", anchor_ids, 1, "[B]")
  if exclude_rows is not None:
    _c.integer(fn, "exclude_rows", exclude_rows)
    if tuple(_c.rank_exactly(fn, "exclude_rows", exclude_rows, 1, "[B]")) != (b,):
      raise ValueError(f"{fn}: exclude_rows must have shape [B] = [{b}] like anchor_ids, got "
                       f"{tuple(jnp.shape(exclude_rows))}")
  _c.number_in(fn, "num_rows", num_rows, 1, None)
  num = _c.static_int(fn, "num", num, 1)
  keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.asarray(anchor_ids))
  if exclude_rows is None:
    return jax.vmap(lambda key: jax.random.randint(key, (num,), 0, num_rows))(keys)
  own = jnp.asarray(exclude_rows, jnp.int32)
  high = jnp.where(own >= 0, num_rows - 1, num_rows)
  drawn = jax.vmap(lambda key, h: jax.random.randint(key, (num,), 0, h))(keys, high)
  own = own[:, None]
  drawn = jnp.where((own >= 0) & (drawn >= own), drawn + 1, drawn)
  return jnp.minimum(drawn, jnp.asarray(num_rows) - 1)


# ---------------------------------------------------------------------------------------------
# The false-negative diagnostic.
# ---------------------------------------------------------------------------------------------


def false_negative_counts(labels: ArrayLike, anchor_rows: ArrayLike, negative_rows: ArrayLike,
                          keep: ArrayLike | None = None) -> tuple[jax.Array, jax.Array]:
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

  Examples:
    >>> import jax.numpy as jnp
    >>> from mi_contrast import negatives
    >>> labels = jnp.array([0, 0, 1, 1])
    >>> same, total = negatives.false_negative_counts(labels, jnp.array([0, 2]),
    ...                                               jnp.array([[1, 2], [3, -1]]))
    >>> int(same), int(total)                     # row 1 shares anchor 0's class, row 3 anchor 2's
    (2, 3)
  """
  fn = "false_negative_counts"
  for name, x in (("labels", labels), ("anchor_rows", anchor_rows),
                  ("negative_rows", negative_rows)):
    _c.integer(fn, name, x)
  _c.rank_exactly(fn, "labels", labels, 1, "[N]")
  (n,) = _c.rank_exactly(fn, "anchor_rows", anchor_rows, 1, "[n]")
  shape = _c.rank_at_least(fn, "negative_rows", negative_rows, 1, "[n, K] or [K]")
  if len(shape) > 2 or (len(shape) == 2 and shape[0] != n):
    raise ValueError(f"{fn}: negative_rows must have shape [n, K] = [{n}, K] or [K], got "
                     f"{shape}")
  if keep is not None:
    _c.boolean(fn, "keep", keep)
    _c.broadcastable(fn, "keep", keep, (n, shape[-1]), "[n, K]")
  labels = jnp.asarray(labels, jnp.int32)
  rows = jnp.asarray(negative_rows, jnp.int32)
  anchor = labels[jnp.asarray(anchor_rows, jnp.int32)][:, None]                   # [n, 1]
  negative = jnp.where(rows >= 0, labels[jnp.maximum(rows, 0)], -1)               # [n|1, K]
  counted = (negative >= 0) & (anchor >= 0)
  if keep is not None:
    counted = counted & keep
  same = counted & (negative == anchor)
  return jnp.sum(same, dtype=jnp.int32), jnp.sum(counted, dtype=jnp.int32)
