"""Variational lower bounds on mutual information, evaluated on critic scores.

Every function here is a pure ``jax.numpy`` function of arrays: jittable, vmappable, usable
inside ``jax.shard_map`` and ``jax.pmap`` with their defaults, and free of any dependency on
the trainer, so a bound can be imported into another JAX project with only jax and numpy
installed. The math is written out in ``docs/method.md`` ("Bounds").

Conventions shared by all functions
-----------------------------------
* Scores are critic values f(x, y) already divided by the temperature (for a cosine critic,
  ``z_a . z_b / tau``).
* ``pos`` has shape ``[...]`` (one positive score per example) and ``neg`` has shape
  ``[..., K]`` (K negative scores per example), with ``neg.shape[:-1] == pos.shape``. Any
  number of leading dimensions is allowed.
* The result is a per-example value of shape ``[...]`` in nats. Higher is better; the training
  loss is ``-mean(value)``.
* Which entries of ``neg`` are negatives: those where the optional bool ``neg_mask``
  (broadcastable to ``[..., K]``) is True and whose score is not ``-inf``. A ``-inf`` score
  means "not a negative", exactly as a masked entry: it is not counted in K and gets no
  gradient (optax's losses use the same convention). A masked entry may hold any value,
  ``nan`` included. A NaN score that is not masked stays NaN in the result. An example with
  no negative left has value 0.
* Inputs are cast to float32 and all arithmetic is done in float32, whatever the input dtype.
* Negatives are given per example. Where a published estimator takes an expectation over the
  product of marginals p(x)p(y), the per-example form uses the mean over that example's own
  negatives as the Monte-Carlo estimate of that expectation. The batch-level versions (for
  example DV with a log-mean-exp over all off-diagonal pairs of a batch) are recovered by
  averaging the per-example values, except where noted in the function's docstring.
* Arguments are checked when the function is called or traced: shapes and dtypes always,
  values (``temperature``, ``tau_plus``, ``beta``, ``alpha``) when they are Python numbers.
  A bad argument raises a ValueError or TypeError that names it.

References
----------
* van den Oord, Li, Vinyals (2018), "Representation Learning with Contrastive Predictive
  Coding" (InfoNCE).
* Wu, Zhuang, Mosse, Yamins, Goodman (2020), "On Mutual Information in Contrastive Learning for
  Visual Representations", and Wu et al. (ICLR 2021), "Conditional Negative Sampling for
  Contrastive Learning of Visual Representations" (restricted / ring negatives, CNCE).
* Wu, Xiong, Yu, Lin (2018), "Unsupervised Feature Learning via Non-Parametric Instance
  Discrimination" (binary NCE with a constant partition estimate).
* Poole, Ozair, van den Oord, Alemi, Tucker (2019), "On Variational Bounds of Mutual
  Information" (NWJ, DV, TUBA, JS, interpolated InfoNCE).
* Chuang, Robinson, Lin, Torralba, Jegelka (NeurIPS 2020), "Debiased Contrastive Learning"
  (DCL); Robinson, Chuang, Sra, Jegelka (ICLR 2021), "Contrastive Learning with Hard Negative
  Samples" (HCL).
"""

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from mi_contrast import _contracts as _c

__all__ = [
    "infonce",
    "infonce_cap",
    "nce",
    "nwj",
    "dv",
    "tuba",
    "js",
    "interpolated_infonce",
    "neighbour_view_objective",
    "dcl",
    "hcl",
    "hcl_clamped",
]


def _f32(x):
  return jnp.asarray(x, jnp.float32)


def _pos_neg(fn, pos, neg, neg_mask=None, neg_name="neg"):
  """Checked float32 ``pos`` [...] and ``neg`` [..., K], and the mask as given (bool, broadcast
  to ``neg``'s shape) or None."""
  _c.floating(fn, "pos", pos)
  _c.floating(fn, neg_name, neg)
  pos_shape = _c.shape_of(fn, "pos", pos)
  neg_shape = _c.rank_at_least(fn, neg_name, neg, 1, "[..., K]")
  if neg_shape[:-1] != pos_shape:
    raise ValueError(f"{fn}: {neg_name} must have shape pos.shape + (K,) = {pos_shape} + (K,), "
                     f"got pos {pos_shape} and {neg_name} {neg_shape}")
  pos, neg = _f32(pos), _f32(neg)
  if neg_mask is not None:
    _c.boolean(fn, "neg_mask", neg_mask)
    _c.broadcastable(fn, "neg_mask", neg_mask, neg_shape, neg_name)
    neg_mask = jnp.broadcast_to(jnp.asarray(neg_mask), neg_shape)
  return pos, neg, neg_mask


def _keep(neg, neg_mask):
  """bool [..., K]: the entries that are negatives (mask True and score not -inf)."""
  keep = neg != -jnp.inf
  return keep if neg_mask is None else keep & neg_mask


def _log_count(kept, k):
  """log(kept) [...] (float32), with the value of log(K) taken exactly as ``jnp.log(K)`` where
  every entry is kept."""
  full = jnp.log(jnp.float32(k))
  return jnp.where(kept == k, full, jnp.log(jnp.maximum(kept, 1).astype(jnp.float32)))


def _masked(neg, keep):
  """(x, kept, empty): neg with every non-negative entry at -inf, except that a row with no
  negative becomes all zeros (so that no log or exp of an empty row is taken: its value is
  replaced by 0 at the end and gets no gradient); the count of negatives per row; and which
  rows are empty."""
  kept = jnp.sum(keep, axis=-1, dtype=jnp.int32)
  empty = kept == 0
  x = jnp.where(keep, neg, jnp.where(empty[..., None], 0.0, -jnp.inf))
  return x, kept, empty


def _logmeanexp(x, kept, k):
  """log mean_k exp(x_k) over the kept entries of x (the others at -inf)."""
  return jax.nn.logsumexp(x, axis=-1) - _log_count(kept, k)


def infonce(pos: ArrayLike, neg: ArrayLike, neg_mask: ArrayLike | None = None) -> jax.Array:
  """InfoNCE lower bound, optionally over a masked (restricted) set of negatives.

  Formula, per example, with y_0 the positive and S the kept negatives::

      value = f(x, y_0) - log( (1 / (1 + |S|)) * sum_{j in {0} u S} exp f(x, y_j) )
            = pos - logsumexp([pos, neg_S]) + log(1 + |S|)

  The value never exceeds ``log(1 + |S|)`` (the log-sum-exp includes ``pos``). Adding the
  same constant to ``pos`` and ``neg`` leaves it unchanged.

  With ``neg_mask`` the negatives are restricted to a region of the pool (for example a ring
  of similarity around the anchor). Per the conditional-negative bound of Wu et al. (2020,
  2021; CNCE) this is still a lower bound on I(X; Y), with higher bias and lower variance than
  InfoNCE; K is replaced by the number of kept negatives. Masked and ``-inf`` entries get
  exactly zero gradient and are not counted. An example with no kept negative has value 0.

  Relation to ``optax.losses.ntxent`` (SimCLR's NT-Xent): for 2N embeddings (two views of N
  images) with cosine similarity matrix C, let S = C / temperature, ``pos[i]`` the score of
  embedding i against its other view, and ``mask[i, j]`` False for j = i and for i's other
  view (True elsewhere). Then::

      ntxent(embeddings, labels, temperature) == log(2N - 1) - mean(infonce(pos, S, mask))

  to float rounding: NT-Xent's softmax includes the other view but not self, exactly the
  positive and the 2N - 2 negatives here, and the log(2N - 1) is the cap of this bound.

  Args:
    pos: ``[...]`` positive scores.
    neg: ``[..., K]`` negative scores; ``-inf`` marks an entry that is not a negative.
    neg_mask: optional bool array broadcastable to ``[..., K]``; False marks an entry that is
      not a negative. None keeps every entry that is not ``-inf``.

  Returns:
    ``[...]`` float32 bound values in nats.

  Examples:
    >>> import jax.numpy as jnp
    >>> from mi_contrast import bounds
    >>> pos = jnp.array([2.0, 0.0])
    >>> neg = jnp.zeros((2, 3))
    >>> value = bounds.infonce(pos, neg)
    >>> value.shape, bool(jnp.all(value <= jnp.log(4.0)))
    ((2,), True)
    >>> round(float(value[1]), 4)                 # equal scores: the bound is 0
    0.0
    >>> masked = bounds.infonce(pos, neg, jnp.array([True, True, False]))
    >>> same = bounds.infonce(pos, neg.at[:, 2].set(-jnp.inf))   # -inf = not a negative
    >>> bool(jnp.allclose(masked, same))
    True

  Source: van den Oord et al. (2018); masked form: Wu et al. (2020), Wu et al. (2021).
  """
  pos, neg, neg_mask = _pos_neg("infonce", pos, neg, neg_mask)
  k = neg.shape[-1]
  keep = _keep(neg, neg_mask)
  kept = jnp.sum(keep, axis=-1).astype(jnp.float32)
  # where on the input (not on exp of it) so masked entries contribute no value, no NaN
  # and no gradient, whatever they hold; a -inf entry contributes exp(-inf) = 0 as it is.
  masked_neg = neg if neg_mask is None else jnp.where(neg_mask, neg, -jnp.inf)
  logits = jnp.concatenate(
      [jnp.broadcast_to(pos[..., None], neg.shape[:-1] + (1,)), masked_neg], axis=-1)
  if neg_mask is None:
    cap = jnp.where(kept == k, jnp.log1p(jnp.float32(k)), jnp.log1p(kept))
  else:
    cap = jnp.log1p(kept)
  return pos - jax.nn.logsumexp(logits, axis=-1) + cap


def infonce_cap(neg: ArrayLike, neg_mask: ArrayLike | None = None) -> jax.Array:
  """Upper limit of the InfoNCE value: ``log(1 + number of negatives)`` per example.

  This is the largest value :func:`infonce` can return for these negatives (nats), the
  quantity reported alongside the bound as its cap ``log(K + 1)``. Masked and ``-inf``
  entries are not counted.

  Args:
    neg: ``[..., K]`` negative scores.
    neg_mask: optional bool array broadcastable to ``[..., K]``; False = not a negative.

  Returns:
    ``[...]`` float32, ``log(1 + kept)`` in nats.

  Examples:
    >>> import jax.numpy as jnp
    >>> from mi_contrast import bounds
    >>> cap = bounds.infonce_cap(jnp.zeros((2, 3)), jnp.array([[True] * 3, [True, False, False]]))
    >>> [round(float(c), 4) for c in cap]          # log 4, log 2
    [1.3863, 0.6931]

  Source: van den Oord et al. (2018); Poole et al. (2019).
  """
  fn = "infonce_cap"
  _c.floating(fn, "neg", neg)
  shape = _c.rank_at_least(fn, "neg", neg, 1, "[..., K]")
  if neg_mask is not None:
    _c.boolean(fn, "neg_mask", neg_mask)
    _c.broadcastable(fn, "neg_mask", neg_mask, shape, "neg")
  neg = _f32(neg)
  keep = _keep(neg, None if neg_mask is None else jnp.broadcast_to(neg_mask, shape))
  kept = jnp.sum(keep, axis=-1).astype(jnp.float32)
  if neg_mask is None:
    return jnp.where(kept == shape[-1], jnp.log1p(jnp.float32(shape[-1])), jnp.log1p(kept))
  return jnp.log1p(kept)


def nce(pos: ArrayLike, neg: ArrayLike, log_z: ArrayLike, num_data: ArrayLike,
        neg_mask: ArrayLike | None = None) -> jax.Array:
  """Binary NCE objective of instance recognition (IR) with a constant partition estimate.

  Noise-contrastive estimation (Gutmann & Hyvarinen) as used by the original IR method: the
  model density of data point i given an embedding is ``p = exp(score - log_z)`` with a
  constant partition estimate Z, the noise distribution is uniform ``P_n = 1 / num_data``,
  and k noise samples (the kept negatives) are drawn per positive, so
  ``c = k * P_n = k / num_data``::

      value = log( p_pos / (p_pos + c) ) + sum_k log( c / (p_neg_k + c) )
            = -softplus(log c - log p_pos) - sum_k softplus(log p_neg_k - log c)

  computed in the second (log-space) form, which stays finite for large scores. This is the
  objective being maximised (higher is better), not a bound on MI in nats; it is kept for
  comparison with InfoNCE, the default objective (``docs/method.md``, "Bounds").

  Args:
    pos: ``[...]`` positive scores.
    neg: ``[..., K]`` noise scores; ``-inf`` = not a noise sample.
    log_z: scalar or ``[...]`` log of the partition estimate Z (python or traced).
    num_data: scalar N > 0, the number of data points (python or traced).
    neg_mask: optional bool, broadcastable to ``[..., K]``; False = not a noise sample.

  Returns:
    ``[...]`` float32 per-example objective values (0 for an example with no noise sample).

  Examples:
    >>> import jax.numpy as jnp
    >>> from mi_contrast import bounds
    >>> value = bounds.nce(jnp.array([5.0]), jnp.zeros((1, 4)), log_z=0.0, num_data=100)
    >>> value.shape, bool(value[0] < 0)
    ((1,), True)

  Source: Wu et al. (2018), the NCE objective of instance discrimination.
  """
  pos, neg, neg_mask = _pos_neg("nce", pos, neg, neg_mask)
  _c.number_in("nce", "num_data", num_data, 0, None, low_open=True)
  k = neg.shape[-1]
  keep = _keep(neg, neg_mask)
  kept = jnp.sum(keep, axis=-1, dtype=jnp.int32)
  log_z = _f32(log_z)
  log_c = jnp.where(kept > 0, _log_count(kept, k), -jnp.inf) - jnp.log(_f32(num_data))
  log_p_pos = pos - log_z
  log_p_neg = jnp.where(keep, neg, 0.0) - jnp.expand_dims(log_z, -1)
  noise = jnp.where(keep, jax.nn.softplus(log_p_neg - jnp.expand_dims(log_c, -1)), 0.0)
  return -jax.nn.softplus(log_c - log_p_pos) - jnp.sum(noise, axis=-1)


def nwj(pos: ArrayLike, neg: ArrayLike, neg_mask: ArrayLike | None = None) -> jax.Array:
  """Nguyen-Wainwright-Jordan (NWJ, f-GAN KL) lower bound.

  ``I_NWJ = E_p(x,y)[f(x,y)] - e^{-1} E_p(x)p(y)[exp f(x,y)]``, per example::

      value = pos - exp(-1) * mean_k exp(neg_k)

  computed as ``pos - exp(logmeanexp(neg) - 1)``. Unbiased for the bound, high variance at
  large MI (the exponential of the negatives).

  Args:
    pos: ``[...]`` positive scores.
    neg: ``[..., K]`` negative scores; ``-inf`` = not a negative.
    neg_mask: optional bool, broadcastable to ``[..., K]``; False = not a negative.

  Returns:
    ``[...]`` float32 values in nats.

  Examples:
    >>> import jax.numpy as jnp
    >>> from mi_contrast import bounds
    >>> value = bounds.nwj(jnp.array([1.0]), jnp.ones((1, 4)))   # 1 - e^(1 - 1)
    >>> round(float(value[0]), 4)
    0.0

  Source: Nguyen, Wainwright, Jordan (2010); Poole et al. (2019) (TUBA with a = e).
  """
  pos, neg, neg_mask = _pos_neg("nwj", pos, neg, neg_mask)
  x, kept, empty = _masked(neg, _keep(neg, neg_mask))
  value = pos - jnp.exp(_logmeanexp(x, kept, neg.shape[-1]) - 1.0)
  return jnp.where(empty, 0.0, value)


def dv(pos: ArrayLike, neg: ArrayLike, neg_mask: ArrayLike | None = None) -> jax.Array:
  """Donsker-Varadhan (DV, as in MINE) bound, per example.

  ``I_DV = E_p(x,y)[f] - log E_p(x)p(y)[exp f]``. Per example, with that example's
  negatives as the marginal sample::

      value = pos - logmeanexp_k(neg_k)

  The batch-level estimator takes one log-mean-exp over all negative pairs of the batch; the
  per-example form applies the log inside the mean over examples, so its mean is lower than
  the batch-level value by Jensen's inequality when the per-example partition terms differ.
  Both are biased estimates of the DV bound (the log of a Monte-Carlo mean).

  Args:
    pos: ``[...]`` positive scores.
    neg: ``[..., K]`` negative scores; ``-inf`` = not a negative.
    neg_mask: optional bool, broadcastable to ``[..., K]``; False = not a negative.

  Returns:
    ``[...]`` float32 values in nats.

  Examples:
    >>> import jax.numpy as jnp
    >>> from mi_contrast import bounds
    >>> value = bounds.dv(jnp.array([3.0]), jnp.ones((1, 4)))     # 3 - 1
    >>> round(float(value[0]), 4)
    2.0

  Source: Donsker & Varadhan (1983); Belghazi et al. (2018); Poole et al. (2019).
  """
  pos, neg, neg_mask = _pos_neg("dv", pos, neg, neg_mask)
  x, kept, empty = _masked(neg, _keep(neg, neg_mask))
  return jnp.where(empty, 0.0, pos - _logmeanexp(x, kept, neg.shape[-1]))


def tuba(pos: ArrayLike, neg: ArrayLike, log_baseline: ArrayLike,
         neg_mask: ArrayLike | None = None) -> jax.Array:
  """Tractable unnormalized Barber-Agakov (TUBA) lower bound with baseline a = exp(log_baseline).

  ``I_TUBA = E_p(x,y)[f] - E_p(x)[ E_p(y)[exp f] / a(x) + log a(x) - 1 ]``, per example::

      value = pos - log_baseline - mean_k exp(neg_k - log_baseline) + 1

  ``log_baseline`` may be a learned per-example function log a(x) or a constant; with
  ``log_baseline = 1`` this is exactly :func:`nwj`.

  Args:
    pos: ``[...]`` positive scores.
    neg: ``[..., K]`` negative scores; ``-inf`` = not a negative.
    log_baseline: scalar or ``[...]`` log a(x).
    neg_mask: optional bool, broadcastable to ``[..., K]``; False = not a negative.

  Returns:
    ``[...]`` float32 values in nats.

  Examples:
    >>> import jax.numpy as jnp
    >>> from mi_contrast import bounds
    >>> pos, neg = jnp.array([2.0]), jnp.zeros((1, 4))
    >>> bool(jnp.allclose(bounds.tuba(pos, neg, 1.0), bounds.nwj(pos, neg)))
    True

  Source: Poole et al. (2019).
  """
  pos, neg, neg_mask = _pos_neg("tuba", pos, neg, neg_mask)
  log_baseline = _f32(log_baseline)
  x, kept, empty = _masked(neg, _keep(neg, neg_mask))
  lme = _logmeanexp(x, kept, neg.shape[-1])
  value = pos - log_baseline - jnp.exp(lme - log_baseline) + 1.0
  return jnp.where(empty, 0.0, value)


def js(pos: ArrayLike, neg: ArrayLike, neg_mask: ArrayLike | None = None) -> jax.Array:
  """Jensen-Shannon (f-GAN JS dual) objective: a training objective, NOT a bound on MI.

  ``E_p(x,y)[-softplus(-f)] - E_p(x)p(y)[softplus(f)]``, per example::

      value = -softplus(-pos) - mean_k softplus(neg_k)

  Its maximiser is the log density ratio f* = log p(x,y)/(p(x)p(y)), and its value estimates a
  (shifted) JS divergence, not I(X; Y). The optimal NWJ critic is f* + 1, so an MI estimate
  of a JS-trained critic is :func:`nwj` on ``pos + 1`` and ``neg + 1``, as suggested by Poole
  et al. (2019) (JS-trained critics evaluated with NWJ).

  Args:
    pos: ``[...]`` positive scores.
    neg: ``[..., K]`` negative scores; ``-inf`` = not a negative.
    neg_mask: optional bool, broadcastable to ``[..., K]``; False = not a negative.

  Returns:
    ``[...]`` float32 objective values (nats, but not an MI bound).

  Examples:
    >>> import jax.numpy as jnp
    >>> from mi_contrast import bounds
    >>> value = bounds.js(jnp.array([0.0]), jnp.zeros((1, 4)))    # -2 log 2
    >>> round(float(value[0]), 4)
    -1.3863

  Source: Nowozin et al. (2016); Hjelm et al. (2019); Poole et al. (2019).
  """
  pos, neg, neg_mask = _pos_neg("js", pos, neg, neg_mask)
  keep = _keep(neg, neg_mask)
  kept = jnp.sum(keep, axis=-1, dtype=jnp.int32)
  terms = jnp.where(keep, jax.nn.softplus(jnp.where(keep, neg, 0.0)), 0.0)
  mean = jnp.sum(terms, axis=-1) / jnp.maximum(kept, 1).astype(jnp.float32)
  return jnp.where(kept == 0, 0.0, -jax.nn.softplus(-pos) - mean)


def _log_loo_sum(pos, neg):
  """log( exp(pos) + sum_{k != j} exp(neg_k) ) for each dropped negative j: ``[..., K]``."""
  full = jax.nn.logsumexp(jnp.concatenate([pos[..., None], neg], axis=-1), axis=-1)
  # log(S - e^{n_j}) = log S + log1p(-e^{n_j} / S). For every j but the largest negative,
  # e^{n_j} / S <= 1/2, so this is well conditioned and cannot overflow. The largest one is
  # dropped by a direct log-sum-exp instead: when it dominates, the subtraction would cancel.
  k = neg.shape[-1]
  is_top = jax.nn.one_hot(jnp.argmax(neg, axis=-1), k, dtype=bool)
  without_top = jax.nn.logsumexp(
      jnp.concatenate([pos[..., None], jnp.where(is_top, -jnp.inf, neg)], axis=-1), axis=-1)
  share = jnp.where(is_top, 0.0, jnp.exp(neg - full[..., None]))
  by_difference = full[..., None] + jnp.log1p(-share)
  return jnp.where(is_top, without_top[..., None], by_difference)


def interpolated_infonce(pos: ArrayLike, neg: ArrayLike, alpha: ArrayLike,
                         log_baseline: ArrayLike = 1.0,
                         neg_mask: ArrayLike | None = None) -> jax.Array:
  """alpha-interpolated bound between NWJ/TUBA (alpha = 0) and InfoNCE (alpha = 1).

  Poole et al. (2019) ("nonlinearly interpolated lower bounds") replace the baseline of TUBA by a
  mixture of the multi-sample InfoNCE baseline m and a single-sample baseline a::

      I_alpha = 1 + E[ log( e^{f(x_1,y)} / (alpha m(y) + (1 - alpha) a(y)) ) ]
                  - E[ e^{f(x',y)} / (alpha m(y) + (1 - alpha) a(y)) ]

  What is implemented is the per-example form of the authors' reference implementation,
  where each example is one row of their [B, B] score matrix (positive = diagonal, the K
  negatives = off-diagonal row entries)::

      loo_j    = log mean( exp(pos), exp(neg_k) for k != j )          # K terms, j = 1..K
      base_j   = log( alpha * exp(loo_j) + (1 - alpha) * exp(log_baseline) )
      joint    = mean_j (pos - base_j)
      base_neg = log( alpha * mean_k exp(neg_k) + (1 - alpha) * exp(log_baseline) )
      marginal = mean_k exp(neg_k - base_neg)
      value    = 1 + joint - marginal

  Special cases: alpha = 0 gives :func:`tuba` with ``log_baseline`` (with the default
  ``log_baseline = 1``, i.e. a = e, exactly :func:`nwj`); alpha = 1 gives ``marginal = 1`` and
  ``value = mean_j infonce(pos, neg without j)``, the leave-one-out InfoNCE with K - 1
  negatives, capped at ``log K``. Intermediate alpha trade the variance of NWJ against the
  ``log K`` cap of InfoNCE. With masked or ``-inf`` entries, K is the number of negatives
  of the example; an example with fewer than 2 has value 0.

  Args:
    pos: ``[...]`` positive scores.
    neg: ``[..., K]`` negative scores, K >= 2; ``-inf`` = not a negative.
    alpha: scalar in [0, 1] (python or traced).
    log_baseline: scalar or ``[...]`` log a of the single-sample baseline (default 1, NWJ).
    neg_mask: optional bool, broadcastable to ``[..., K]``; False = not a negative.

  Returns:
    ``[...]`` float32 values in nats.

  Examples:
    >>> import jax.numpy as jnp
    >>> from mi_contrast import bounds
    >>> pos, neg = jnp.array([2.0]), jnp.array([[0.0, 0.5, -1.0]])
    >>> bool(jnp.allclose(bounds.interpolated_infonce(pos, neg, 0.0), bounds.nwj(pos, neg)))
    True

  Source: Poole et al. (2019) and their reference code (``interpolated_lower_bound``).
  """
  fn = "interpolated_infonce"
  pos, neg, neg_mask = _pos_neg(fn, pos, neg, neg_mask)
  k = neg.shape[-1]
  if k < 2:
    raise ValueError(f"{fn}: neg must hold K >= 2 negatives per example, got K={k}")
  _c.number_in(fn, "alpha", alpha, 0.0, 1.0)
  keep = _keep(neg, neg_mask)
  kept = jnp.sum(keep, axis=-1, dtype=jnp.int32)
  short = kept < 2
  # A row with fewer than 2 negatives is computed on zeros (all kept) and reported as 0.
  keep = keep | short[..., None]
  neg = jnp.where(keep, neg, -jnp.inf)
  neg = jnp.where(short[..., None], 0.0, neg)
  kept = jnp.where(short, k, kept)
  alpha = _f32(alpha)
  log_baseline = _f32(log_baseline)
  log_k = _log_count(kept, k)
  # log(alpha) and log(1 - alpha) are -inf at the ends; log-sum-exp with weights handles that.
  log_alpha = jnp.log(alpha)
  log_one_minus_alpha = jnp.log1p(-alpha)

  def mix(log_m, log_a):
    return jnp.logaddexp(log_alpha + log_m, log_one_minus_alpha + log_a)

  loo = _log_loo_sum(pos, neg) - log_k[..., None]
  base = mix(loo, log_baseline[..., None])
  joint = (jnp.sum(jnp.where(keep, pos[..., None] - base, 0.0), axis=-1)
           / kept.astype(jnp.float32))
  lme = _logmeanexp(neg, kept, k)
  base_neg = mix(lme, log_baseline)
  marginal = jnp.exp(lme - base_neg)
  return jnp.where(short, 0.0, 1.0 + joint - marginal)


def neighbour_view_objective(pos: ArrayLike, scores: ArrayLike, positive_mask: ArrayLike,
                             negative_mask: ArrayLike, *,
                             positives_in_denominator: bool = True) -> jax.Array:
  """Neighbour views (LA-like): pool entries in ``positive_mask`` count as extra positives.

  Formula, per example, with P the extra positives (e.g. the inner ball of the ring,
  ``negatives.neighbour_masks``) and S the negatives (e.g. the ring)::

      value = logsumexp([pos, scores_P]) - logsumexp([pos, scores_P, scores_S])

  the log-probability that the positive set wins against the negatives: Local Aggregation's
  objective log p(C_i ∩ B_i) / p(B_i) with close neighbours C_i = {i} u P and background
  B_i = {i} u P u S (Zhuang et al. 2019; the close neighbours lie in the background, so they
  are in the denominator too). It is <= 0 and not an MI bound by itself: close neighbours act
  as noisy copies of the anchor, which loosens the bound (Wu et al. 2020, Cor. 5.4.1); report
  ``infonce`` of the same scores as the bound. With an empty P it equals
  ``infonce(pos, scores, negative_mask) - log(1 + |S|)``.

  This is not the form of the reference code's ``neighbor_views`` option (Wu et al. 2020,
  ``NCERing`` / ``NCEBall``): there the extra positives are in the numerator only, and the
  denominator is the positive and the negatives::

      value = logsumexp([pos, scores_P]) - logsumexp([pos, scores_S])

  (``positives_in_denominator=False``). That value is not a log-probability and not <= 0
  (all scores equal: log(1 + |P|) - log(1 + |S|)); raising an extra positive's score raises it
  without limit, as no term of the denominator holds that score. (The reference draws K - 1
  ring entries with replacement for its denominator; here S is whatever ``negative_mask``
  keeps.)

  Args:
    pos: ``[...]`` positive scores.
    scores: ``[..., P]`` scores of the pool; a ``-inf`` entry is in neither set.
    positive_mask, negative_mask: bool, broadcastable to ``[..., P]``; entries in neither are
      ignored (masked entries get no gradient). An entry in both counts as a positive.
    positives_in_denominator: True (default): LA's form above, used by
      ``methods.ir.neighbour_view_objective``; False: the reference code's form.

  Returns:
    ``[...]`` float32 values in nats.

  Examples:
    >>> import jax.numpy as jnp
    >>> from mi_contrast import bounds
    >>> scores = jnp.zeros((1, 4))
    >>> close = jnp.array([[True, False, False, False]])
    >>> value = bounds.neighbour_view_objective(jnp.zeros(1), scores, close, ~close)
    >>> round(float(value[0]), 4)                 # log(2 / 5)
    -0.9163
  """
  fn = "neighbour_view_objective"
  pos, scores, _ = _pos_neg(fn, pos, scores, neg_name="scores")
  for name, mask in (("positive_mask", positive_mask), ("negative_mask", negative_mask)):
    _c.boolean(fn, name, mask)
    _c.broadcastable(fn, name, mask, scores.shape, "scores")
  positive_mask = jnp.broadcast_to(jnp.asarray(positive_mask, bool), scores.shape)
  negative_mask = jnp.broadcast_to(jnp.asarray(negative_mask, bool), scores.shape)
  column = pos[..., None]
  numerator = jnp.concatenate([column, jnp.where(positive_mask, scores, -jnp.inf)], axis=-1)
  if positives_in_denominator:
    kept = positive_mask | negative_mask
  else:
    kept = negative_mask & ~positive_mask
  denominator = jnp.concatenate([column, jnp.where(kept, scores, -jnp.inf)], axis=-1)
  return jax.nn.logsumexp(numerator, axis=-1) - jax.nn.logsumexp(denominator, axis=-1)


# ---------------------------------------------------------------------------------------------
# Debiased (DCL) and hardness-tilted (HCL) negatives.
# ---------------------------------------------------------------------------------------------


def _check_debiased(fn, beta, tau_plus, temperature):
  _c.number_in(fn, "beta", beta, 0.0, None)
  _c.number_in(fn, "tau_plus", tau_plus, 0.0, 1.0, high_open=True)
  _c.number_in(fn, "temperature", temperature, 0.0, None, low_open=True)


def _debiased(pos, neg, keep, beta, tau_plus, temperature):
  """(value, clamped) of HCL with tilt ``beta`` (DCL: beta = 0), in log space. See :func:`hcl`."""
  kept = jnp.sum(keep, axis=-1, dtype=jnp.int32)
  empty = kept == 0
  # Scores of the negatives, 0 elsewhere (finite, so that beta * x is never 0 * inf); an empty
  # row takes its K zeros as negatives, and its value is replaced by 0 at the end.
  rows = keep | empty[..., None]
  x = jnp.where(keep, neg, 0.0)
  n = kept.astype(jnp.float32)
  log_n = jnp.log(jnp.maximum(n, 1.0))
  beta = _f32(beta)
  tau_plus = _f32(tau_plus)
  temperature = _f32(temperature)
  lse = lambda a: jax.nn.logsumexp(jnp.where(rows, a, -jnp.inf), axis=-1)
  # log sum_k w_k e_k, w_k = exp(beta n_k) / mean_j exp(beta n_j).
  log_s = lse((1.0 + beta) * x) - lse(beta * x) + log_n
  # log of tau_plus N e_p / S: the share of the sum that the correction removes.
  ratio = jnp.log(tau_plus) + log_n + pos - log_s
  below = ratio < 0.0
  remaining = -jnp.expm1(jnp.where(below, ratio, -1.0))          # 1 - tau_plus N e_p / S
  tiny = jnp.finfo(jnp.float32).tiny
  log_ng = log_s + jnp.log(jnp.maximum(remaining, tiny)) - jnp.log1p(-tau_plus)
  floor = log_n - 1.0 / temperature                    # N exp(-1 / temperature)
  clamped = ~below | (log_ng < floor)
  log_ng = jnp.where(clamped, floor, log_ng)
  value = pos - jnp.logaddexp(pos, log_ng) + jnp.log1p(n)
  return jnp.where(empty, 0.0, value), clamped & ~empty


def dcl(pos: ArrayLike, neg: ArrayLike, *, tau_plus: ArrayLike, temperature: ArrayLike,
        neg_mask: ArrayLike | None = None) -> jax.Array:
  """Debiased contrastive objective (DCL), per example, in nats, on InfoNCE's scale.

  DCL corrects the negative term of InfoNCE for the probability ``tau_plus`` that a drawn
  "negative" shares the anchor's class (a false negative). Over the N negatives of a row,
  with ``e_p = exp(pos)`` and ``e_k = exp(neg_k)``::

      Ng    = (sum_k e_k - tau_plus * N * e_p) / (1 - tau_plus),
              clamped below at N * exp(-1 / temperature)
      value = pos - log(e_p + Ng) + log(N + 1)

  It is :func:`hcl` with ``beta = 0``; computed in log space (no overflow at any temperature).
  The clamp is the smallest value a cosine critic's sum can take (every cosine >= -1); a
  clamped row's negatives get no gradient (:func:`hcl_clamped` tells which rows).

  What differs from :func:`infonce`: with ``tau_plus = 0`` the two are equal to float
  rounding, provided every kept score is at least ``-1 / temperature`` (true for a cosine
  critic); otherwise the clamp applies. Unlike InfoNCE, DCL is not invariant to adding a
  constant to all scores (the clamp and the correction are not), and for ``tau_plus > 0`` it
  is not a lower bound on I(X; Y): report :func:`infonce` of the same scores as the bound.

  Args:
    pos: ``[...]`` positive scores (cosine / temperature).
    neg: ``[..., K]`` negative scores (cosine / temperature); ``-inf`` = not a negative.
    tau_plus: class prior of a false negative, in [0, 1) (python or traced).
    temperature: the critic's temperature > 0 (python or traced), for the clamp.
    neg_mask: optional bool, broadcastable to ``[..., K]``; False = not a negative.

  Returns:
    ``[...]`` float32 values in nats (0 for an example with no negative).

  Examples:
    >>> import jax.numpy as jnp
    >>> from mi_contrast import bounds
    >>> pos, neg = jnp.array([5.0, 2.0]), jnp.array([[0.0, 1.0, -1.0], [2.0, 1.0, 0.5]])
    >>> v0 = bounds.dcl(pos, neg, tau_plus=0.0, temperature=0.1)
    >>> bool(jnp.allclose(v0, bounds.infonce(pos, neg), atol=1e-6))
    True
    >>> bool(jnp.all(bounds.dcl(pos, neg, tau_plus=0.1, temperature=0.1) >= v0))
    True

  Source: Chuang, Robinson, Lin, Torralba, Jegelka (NeurIPS 2020), "Debiased Contrastive
  Learning".
  """
  fn = "dcl"
  pos, neg, neg_mask = _pos_neg(fn, pos, neg, neg_mask)
  _check_debiased(fn, 0.0, tau_plus, temperature)
  return _debiased(pos, neg, _keep(neg, neg_mask), 0.0, tau_plus, temperature)[0]


def hcl(pos: ArrayLike, neg: ArrayLike, *, beta: ArrayLike, tau_plus: ArrayLike,
        temperature: ArrayLike, neg_mask: ArrayLike | None = None) -> jax.Array:
  """Hard-negative contrastive objective (HCL), per example, in nats, on InfoNCE's scale.

  HCL tilts the negative distribution towards the anchor by ``exp(beta * score)`` and debiases
  it as :func:`dcl` does. Over the N negatives of a row, with ``e_p = exp(pos)``,
  ``e_k = exp(neg_k)`` and importance weights ``w_k = exp(beta * neg_k) / mean_j
  exp(beta * neg_j)``::

      Ng    = (sum_k w_k e_k - tau_plus * N * e_p) / (1 - tau_plus),
              clamped below at N * exp(-1 / temperature)
      value = pos - log(e_p + Ng) + log(N + 1)

  computed in log space. ``beta`` multiplies scores that are already divided by the
  temperature: a tilt of ``exp(b * cosine)`` at temperature T is ``beta = b * T``. As in the
  published code, the gradient flows through the weights too.

  With ``beta = 0`` this is :func:`dcl`; with ``beta = tau_plus = 0`` it equals
  :func:`infonce` to float rounding when every kept score is at least ``-1 / temperature``.
  Not invariant to adding a constant to all scores, and not a lower bound on I(X; Y) for
  ``tau_plus > 0`` or ``beta > 0``: report :func:`infonce` of the same scores as the bound.

  Args:
    pos: ``[...]`` positive scores (cosine / temperature).
    neg: ``[..., K]`` negative scores (cosine / temperature); ``-inf`` = not a negative.
    beta: concentration of the tilt, >= 0 (python or traced).
    tau_plus: class prior of a false negative, in [0, 1) (python or traced).
    temperature: the critic's temperature > 0 (python or traced), for the clamp.
    neg_mask: optional bool, broadcastable to ``[..., K]``; False = not a negative.

  Returns:
    ``[...]`` float32 values in nats (0 for an example with no negative).

  Examples:
    >>> import jax.numpy as jnp
    >>> from mi_contrast import bounds
    >>> pos, neg = jnp.array([5.0]), jnp.array([[0.0, 1.0, -1.0]])
    >>> tilted = bounds.hcl(pos, neg, beta=0.5, tau_plus=0.0, temperature=0.1)
    >>> bool(tilted[0] < bounds.infonce(pos, neg)[0])   # the harder negatives weigh more
    True
    >>> bool(jnp.allclose(bounds.hcl(pos, neg, beta=0.0, tau_plus=0.05, temperature=0.1),
    ...                   bounds.dcl(pos, neg, tau_plus=0.05, temperature=0.1)))
    True

  Source: Robinson, Chuang, Sra, Jegelka (ICLR 2021), "Contrastive Learning with Hard Negative
  Samples".
  """
  fn = "hcl"
  pos, neg, neg_mask = _pos_neg(fn, pos, neg, neg_mask)
  _check_debiased(fn, beta, tau_plus, temperature)
  return _debiased(pos, neg, _keep(neg, neg_mask), beta, tau_plus, temperature)[0]


def hcl_clamped(pos: ArrayLike, neg: ArrayLike, *, beta: ArrayLike, tau_plus: ArrayLike,
                temperature: ArrayLike, neg_mask: ArrayLike | None = None) -> jax.Array:
  """bool ``[...]``: the examples whose corrected negative term Ng of :func:`hcl` (or of
  :func:`dcl`, ``beta = 0``) is clamped at ``N * exp(-1 / temperature)``.

  A clamped example's negatives get no gradient. The clamp is active when
  ``pos - log(mean_k w_k e_k) > log(1 / tau_plus)`` (roughly): positives far above their
  negatives, which a well-trained encoder produces, so a large ``tau_plus`` can silence most
  rows. Examples with no negative are never counted as clamped.

  Examples:
    >>> import jax.numpy as jnp
    >>> from mi_contrast import bounds
    >>> pos, neg = jnp.array([8.0, 0.0]), jnp.zeros((2, 4))
    >>> bounds.hcl_clamped(pos, neg, beta=0.0, tau_plus=0.1, temperature=0.1).tolist()
    [True, False]
  """
  fn = "hcl_clamped"
  pos, neg, neg_mask = _pos_neg(fn, pos, neg, neg_mask)
  _check_debiased(fn, beta, tau_plus, temperature)
  return _debiased(pos, neg, _keep(neg, neg_mask), beta, tau_plus, temperature)[1]
