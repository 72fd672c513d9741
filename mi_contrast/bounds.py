"""Variational lower bounds on mutual information, evaluated on critic scores.

Every function here is a pure ``jax.numpy`` function of arrays: jittable, vmappable, and free
of any dependency on the rest of ``mi_contrast``, so a single bound can be copied or imported
into another JAX project.

Conventions shared by all functions
-----------------------------------
* Scores are critic values f(x, y) already divided by the temperature (for a cosine critic,
  ``z_a . z_b / tau``).
* ``pos`` has shape ``[...]`` (one positive score per example) and ``neg`` has shape
  ``[..., K]`` (K negative scores per example). Any number of leading dimensions is allowed.
* The result is a per-example value of shape ``[...]`` in nats. Higher is better; the training
  loss is ``-mean(value)``.
* Inputs are cast to float32 and all arithmetic is done in float32, whatever the input dtype.
* Negatives are given per example. Where a published estimator takes an expectation over the
  product of marginals p(x)p(y), the per-example form uses the mean over that example's own K
  negatives as the Monte-Carlo estimate of that expectation. The batch-level versions (for
  example DV with a log-mean-exp over all off-diagonal pairs of a batch) are recovered by
  averaging the per-example values, except where noted in the function's docstring.

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
"""

import jax
import jax.numpy as jnp

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
]


def _f32(x):
  return jnp.asarray(x, jnp.float32)


def _logmeanexp(x, axis=-1):
  return jax.nn.logsumexp(x, axis=axis) - jnp.log(jnp.float32(x.shape[axis]))


def infonce(pos, neg, neg_mask=None):
  """InfoNCE lower bound, optionally over a masked (restricted) set of negatives.

  Formula, per example, with y_0 the positive and S the kept negatives::

      value = f(x, y_0) - log( (1 / (1 + |S|)) * sum_{j in {0} u S} exp f(x, y_j) )
            = pos - logsumexp([pos, neg_S]) + log(1 + |S|)

  The value never exceeds ``log(1 + |S|)`` (the log-sum-exp includes ``pos``). Adding the
  same constant to ``pos`` and ``neg`` leaves it unchanged.

  With ``neg_mask`` the negatives are restricted to a region of the pool (for example a ring
  of similarity around the anchor). Per the conditional-negative bound of Wu et al. (2020,
  2021; CNCE) this is still a lower bound on I(X; Y), with higher bias and lower variance than
  InfoNCE; K is replaced by the number of kept negatives. Masked entries get exactly zero
  gradient and may hold any value, including +-inf or NaN: they are replaced before any
  exponential is taken. An example with no kept negative has value 0.

  Args:
    pos: ``[...]`` positive scores.
    neg: ``[..., K]`` negative scores.
    neg_mask: optional bool array broadcastable to ``[..., K]``; False marks an entry that is
      not a negative. None keeps all K.

  Returns:
    ``[...]`` float32 bound values in nats.

  Source: van den Oord et al. (2018); masked form: Wu et al. (2020), Wu et al. (2021).
  """
  pos = _f32(pos)
  neg = _f32(neg)
  if neg_mask is None:
    kept = jnp.float32(neg.shape[-1])
    masked_neg = neg
  else:
    neg_mask = jnp.broadcast_to(jnp.asarray(neg_mask, bool), neg.shape)
    kept = jnp.sum(neg_mask, axis=-1).astype(jnp.float32)
    # where on the input (not on exp of it) so masked entries contribute no value, no NaN
    # and no gradient, whatever they hold.
    masked_neg = jnp.where(neg_mask, neg, -jnp.inf)
  logits = jnp.concatenate(
      [jnp.broadcast_to(pos[..., None], neg.shape[:-1] + (1,)), masked_neg], axis=-1)
  return pos - jax.nn.logsumexp(logits, axis=-1) + jnp.log1p(kept)


def infonce_cap(neg, neg_mask=None):
  """Upper limit of the InfoNCE value: ``log(1 + number of kept negatives)`` per example.

  This is the largest value :func:`infonce` can return for these negatives (nats), the
  quantity reported alongside the bound as its cap ``log(K + 1)``.

  Args:
    neg: ``[..., K]`` negative scores (only the shape is used).
    neg_mask: optional bool array broadcastable to ``[..., K]``; False = not a negative.

  Returns:
    ``[...]`` float32, ``log(1 + kept)`` in nats.

  Source: van den Oord et al. (2018); Poole et al. (2019).
  """
  neg = jnp.asarray(neg)
  if neg_mask is None:
    return jnp.full(neg.shape[:-1], jnp.log1p(jnp.float32(neg.shape[-1])), jnp.float32)
  neg_mask = jnp.broadcast_to(jnp.asarray(neg_mask, bool), neg.shape)
  return jnp.log1p(jnp.sum(neg_mask, axis=-1).astype(jnp.float32))


def nce(pos, neg, log_z, num_data):
  """Binary NCE objective of instance recognition (IR) with a constant partition estimate.

  Noise-contrastive estimation (Gutmann & Hyvarinen) as used by the original IR method: the
  model density of data point i given an embedding is ``p = exp(score - log_z)`` with a
  constant partition estimate Z, the noise distribution is uniform ``P_n = 1 / num_data``,
  and k = K noise samples are drawn per positive, so ``c = k * P_n = K / num_data``::

      value = log( p_pos / (p_pos + c) ) + sum_k log( c / (p_neg_k + c) )
            = -softplus(log c - log p_pos) - sum_k softplus(log p_neg_k - log c)

  computed in the second (log-space) form, which stays finite for large scores. This is the
  objective being maximised (higher is better), not a bound on MI in nats; it is kept for
  comparison with InfoNCE, which the method specification uses by default.

  Args:
    pos: ``[...]`` positive scores.
    neg: ``[..., K]`` noise scores.
    log_z: scalar or ``[...]`` log of the partition estimate Z (python or traced).
    num_data: scalar N, the number of data points (python or traced).

  Returns:
    ``[...]`` float32 per-example objective values.

  Source: Wu et al. (2018), the NCE objective of instance discrimination.
  """
  pos = _f32(pos)
  neg = _f32(neg)
  log_z = _f32(log_z)
  log_c = jnp.log(jnp.float32(neg.shape[-1])) - jnp.log(_f32(num_data))
  log_p_pos = pos - log_z
  log_p_neg = neg - jnp.expand_dims(log_z, -1)
  return (-jax.nn.softplus(log_c - log_p_pos)
          - jnp.sum(jax.nn.softplus(log_p_neg - log_c), axis=-1))


def nwj(pos, neg):
  """Nguyen-Wainwright-Jordan (NWJ, f-GAN KL) lower bound.

  ``I_NWJ = E_p(x,y)[f(x,y)] - e^{-1} E_p(x)p(y)[exp f(x,y)]``, per example::

      value = pos - exp(-1) * mean_k exp(neg_k)

  computed as ``pos - exp(logmeanexp(neg) - 1)``. Unbiased for the bound, high variance at
  large MI (the exponential of the negatives).

  Args:
    pos: ``[...]`` positive scores. neg: ``[..., K]`` negative scores.

  Returns:
    ``[...]`` float32 values in nats.

  Source: Nguyen, Wainwright, Jordan (2010); Poole et al. (2019) (TUBA with a = e).
  """
  pos = _f32(pos)
  neg = _f32(neg)
  return pos - jnp.exp(_logmeanexp(neg) - 1.0)


def dv(pos, neg):
  """Donsker-Varadhan (DV, as in MINE) bound, per example.

  ``I_DV = E_p(x,y)[f] - log E_p(x)p(y)[exp f]``. Per example, with that example's K
  negatives as the marginal sample::

      value = pos - logmeanexp_k(neg_k)

  The batch-level estimator takes one log-mean-exp over all negative pairs of the batch; the
  per-example form applies the log inside the mean over examples, so its mean is lower than
  the batch-level value by Jensen's inequality when the per-example partition terms differ.
  Both are biased estimates of the DV bound (the log of a Monte-Carlo mean).

  Args:
    pos: ``[...]`` positive scores. neg: ``[..., K]`` negative scores.

  Returns:
    ``[...]`` float32 values in nats.

  Source: Donsker & Varadhan (1983); Belghazi et al. (2018); Poole et al. (2019).
  """
  pos = _f32(pos)
  neg = _f32(neg)
  return pos - _logmeanexp(neg)


def tuba(pos, neg, log_baseline):
  """Tractable unnormalized Barber-Agakov (TUBA) lower bound with baseline a = exp(log_baseline).

  ``I_TUBA = E_p(x,y)[f] - E_p(x)[ E_p(y)[exp f] / a(x) + log a(x) - 1 ]``, per example::

      value = pos - log_baseline - mean_k exp(neg_k - log_baseline) + 1

  ``log_baseline`` may be a learned per-example function log a(x) or a constant; with
  ``log_baseline = 1`` this is exactly :func:`nwj`.

  Args:
    pos: ``[...]`` positive scores.
    neg: ``[..., K]`` negative scores.
    log_baseline: scalar or ``[...]`` log a(x).

  Returns:
    ``[...]`` float32 values in nats.

  Source: Poole et al. (2019).
  """
  pos = _f32(pos)
  neg = _f32(neg)
  log_baseline = _f32(log_baseline)
  return pos - log_baseline - jnp.exp(_logmeanexp(neg) - log_baseline) + 1.0


def js(pos, neg):
  """Jensen-Shannon (f-GAN JS dual) objective: a training objective, NOT a bound on MI.

  ``E_p(x,y)[-softplus(-f)] - E_p(x)p(y)[softplus(f)]``, per example::

      value = -softplus(-pos) - mean_k softplus(neg_k)

  Its maximiser is the log density ratio f* = log p(x,y)/(p(x)p(y)), and its value estimates a
  (shifted) JS divergence, not I(X; Y). The optimal NWJ critic is f* + 1, so an MI estimate
  of a JS-trained critic is :func:`nwj` on ``pos + 1`` and ``neg + 1``, as suggested by Poole
  et al. (2019) (JS-trained critics evaluated with NWJ).

  Args:
    pos: ``[...]`` positive scores. neg: ``[..., K]`` negative scores.

  Returns:
    ``[...]`` float32 objective values (nats, but not an MI bound).

  Source: Nowozin et al. (2016); Hjelm et al. (2019); Poole et al. (2019).
  """
  pos = _f32(pos)
  neg = _f32(neg)
  return -jax.nn.softplus(-pos) - jnp.mean(jax.nn.softplus(neg), axis=-1)


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


def interpolated_infonce(pos, neg, alpha, log_baseline=1.0):
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
  ``log K`` cap of InfoNCE. Requires K >= 2.

  Args:
    pos: ``[...]`` positive scores.
    neg: ``[..., K]`` negative scores, K >= 2.
    alpha: scalar in [0, 1] (python or traced).
    log_baseline: scalar or ``[...]`` log a of the single-sample baseline (default 1, NWJ).

  Returns:
    ``[...]`` float32 values in nats.

  Source: Poole et al. (2019) and the accompanying reference code
  (``interpolated_lower_bound``).
  """
  pos = _f32(pos)
  neg = _f32(neg)
  k = neg.shape[-1]
  if k < 2:
    raise ValueError(f"interpolated_infonce needs K >= 2 negatives per example, got K={k}")
  alpha = _f32(alpha)
  log_baseline = _f32(log_baseline)
  log_k = jnp.log(jnp.float32(k))
  # log(alpha) and log(1 - alpha) are -inf at the ends; log-sum-exp with weights handles that.
  log_alpha = jnp.log(alpha)
  log_one_minus_alpha = jnp.log1p(-alpha)

  def mix(log_m, log_a):
    return jnp.logaddexp(log_alpha + log_m, log_one_minus_alpha + log_a)

  loo = _log_loo_sum(pos, neg) - log_k
  base = mix(loo, log_baseline[..., None])
  joint = jnp.mean(pos[..., None] - base, axis=-1)
  base_neg = mix(_logmeanexp(neg), log_baseline)
  marginal = jnp.exp(_logmeanexp(neg) - base_neg)
  return 1.0 + joint - marginal


def neighbour_view_objective(pos, scores, positive_mask, negative_mask, *,
                             positives_in_denominator=True):
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
    scores: ``[..., P]`` scores of the pool.
    positive_mask, negative_mask: bool, broadcastable to ``[..., P]``; entries in neither are
      ignored (masked entries get no gradient). An entry in both counts as a positive.
    positives_in_denominator: True (default): LA's form above, used by
      ``methods.ir.neighbour_view_objective``; False: the reference code's form.

  Returns:
    ``[...]`` float32 values in nats.
  """
  pos = _f32(pos)
  scores = _f32(scores)
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
