"""IR: instance recognition with a memory bank (Wu et al. 2018), as InfoNCE (Wu et al. 2020).

One view per image and step (config.num_views = V > 1: every view is an anchor, the values are
averaged over views, and the bank stores the normalised mean of the views). For anchor z_i
(unit row) and bank M (unit rows, no gradient):
  positive  s_i+ = z_i . M[i] / tau                      (the image's own bank row)
  negatives s_ik = z_i . M[j_k] / tau,  k = 1..K         (uniform, ball or ring rows of M)
  value     = InfoNCE(s_i+, s_i)  = s_i+ - logsumexp([s_i+, s_i]) + log(K + 1)     [nats]
  or, with config.bound = 'nce', IR's original binary NCE with a partition estimate Z:
  log Z = log(N mean exp(z.M[j]/tau)) over the global batch and the bank, re-estimated every
  step (config.ir.nce_partition = 'per_batch'; no gradient) or, as the reference, on the first
  batch and then constant ('first_batch'; on digits it diverges, see the README).
Negatives: 'uniform' draws j_k uniformly from {0..N-1} minus {i}; 'ball' and 'ring' draw K
rows uniformly (with replacement) from each anchor's similarity band of the other N - 1 bank
rows (IR Ball / IR Ring; the band comes from the annealed outer/inner fractions). The anchor's
own row is its positive and never one of its negatives. config.ir.neighbour_views: the ring's
inner ball counts as extra positives (an LA-like objective with nearest neighbours as close
neighbours; see neighbour_view_objective), after config.ir.neighbour_views_warmup_epochs of IR
Ring. Bank update:
M[i] <- normalise(m M[i] + (1-m) z_i).
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from mi_contrast import bounds
from mi_contrast import checks
from mi_contrast import memory
from mi_contrast import negatives as negatives_lib
from mi_contrast.methods import base
from mi_contrast.methods import sharded_bank
from mi_contrast.methods.base import Objective
from mi_contrast.mesh import AXIS

VIEWS = (1, 1, 8)
ONLINE_VIEWS = None
ENCODER = "single"


class IRTargets(NamedTuple):
  """What IR's prepare hands its objective.

  warmup: bool scalar; True while the neighbour views' IR Ring warm-up lasts (only read with
    config.ir.neighbour_views).
  """
  warmup: jax.Array


def validate(config, *, num_devices, num_train):
  """IR's own rules: neighbour views (exact ring, after a warm-up) and the sharded bank."""
  del num_devices, num_train
  if config.ir.neighbour_views and (config.negatives != "ring" or config.bank.candidates
                                    or config.bound != "infonce"):
    base.reject_neighbour_views(config)
  if config.ir.neighbour_views and config.ir.neighbour_views_warmup_epochs >= config.num_epochs:
    checks.fail("ir.neighbour_views_warmup_epochs", config.ir.neighbour_views_warmup_epochs,
                f"0..{config.num_epochs - 1} (below num_epochs)")
  if config.bank.sharded and (config.bank.candidates or config.bound != "infonce"
                              or config.ir.neighbour_views or config.num_views > 1):
    base.reject_bank_sharded(config)


def describe(config):
  """What results.json reports: negatives from the memory bank; the objective is the bound
  (infonce or nce), or 'neighbour_views'."""
  return {"negatives": config.negatives, "pool": "memory bank",
          "objective": "neighbour_views" if config.ir.neighbour_views else config.bound}


def init_state(rng, config, num_train, variables):
  del variables
  state = {"bank": memory.bank_init(rng, num_train, config.embedding_dim,
                                    dtype=jnp.dtype(config.bank.dtype))}
  if config.bound == "nce" and config.ir.nce_partition == "first_batch":
    # log Z of the NCE partition: estimated on the first step's global batch, then constant.
    state["log_z"] = jnp.full((), jnp.nan, jnp.float32)
  return state


def _log_mean_exp(z, bank, temperature):
  """log mean exp(z . M[j] / tau) over the rows of z and every bank row, in log space.

  Scores / tau reach 1 / tau, and exp of that overflows float32 for tau below ~0.0113
  (1 / tau > 88.7): a logsumexp (max subtracted) stays finite at any temperature."""
  scores = jax.lax.stop_gradient(z) @ jax.lax.stop_gradient(bank).astype(jnp.float32).T
  scores = scores / temperature
  return jax.nn.logsumexp(scores) - jnp.log(jnp.float32(scores.size))


def partition_estimate(z, bank, temperature):
  """log Z = log(N * mean exp(z . M[j] / tau)) over the global batch's anchors and every bank
  row: the reference's first-batch estimate (Wu et al. 2018). z [n, D]: this device's anchors
  (inside the sharded step; the mean is over the axis 'batch').

  In log space: each device's log mean l_d (a logsumexp), then, every device holding as many
  anchors, log mean_d exp(l_d) = m + log pmean(exp(l_d - m)) with m = pmax(l_d)."""
  local = _log_mean_exp(z, bank, temperature)
  top = jax.lax.pmax(local, AXIS)
  log_mean = top + jnp.log(jax.lax.pmean(jnp.exp(local - top), AXIS))
  return log_mean + jnp.log(jnp.float32(bank.shape[0]))


def prepare(config, state, ctx):
  """Neighbour views: IR Ring (sampled) for config.ir.neighbour_views_warmup_epochs, then exact
  neighbour views; the inner ball only means something once the embedding does."""
  warm = config.ir.neighbour_views_warmup_epochs * ctx.steps_per_epoch
  return IRTargets(warmup=ctx.step < warm), state


def objective(config, z, indices, state, rng, band, targets=None):
  """z: [V, b, D] unit rows of this device's anchors; indices: [b] their dataset rows.

  targets: IRTargets (read with config.ir.neighbour_views). Returns per-anchor values [V * b]
  (view-major).
  """
  if config.bank.sharded:  # state['bank'] holds this device's rows only (one view)
    return sharded_bank.ir_objective(config, z, indices, state, rng, band)
  num_views = z.shape[0]
  num_rows = state["bank"].shape[0]
  if config.ir.neighbour_views:
    rows = jnp.tile(indices, num_views)
    flat = z.reshape(-1, z.shape[-1])
    anchor_ids = (jnp.arange(num_views)[:, None] * num_rows + indices[None, :]).reshape(-1)
    # Both branches report their negatives as [n, max(K, N)] (base.pad_drawn).
    width = max(config.num_negatives, num_rows)
    padded = lambda out: out._replace(drawn=base.pad_drawn(out.drawn, width))
    warm_up = lambda z: padded(bank_objective(config, z, rows, anchor_ids, state["bank"], rng,
                                              band))
    neighbours = lambda z: padded(neighbour_view_objective(config, z, rows, state["bank"], band))
    return jax.lax.cond(targets.warmup, warm_up, neighbours, flat)
  # View v of image i draws its own negatives: key id v * N + i.
  anchor_ids = (jnp.arange(num_views)[:, None] * num_rows + indices[None, :]).reshape(-1)
  z = z.reshape(-1, z.shape[-1])
  log_z = None
  if config.bound == "nce":
    log_z = partition_estimate(z, state["bank"], config.temperature)
    if config.ir.nce_partition == "first_batch":
      log_z = jnp.where(jnp.isnan(state["log_z"]), log_z, state["log_z"])
  return bank_objective(config, z, jnp.tile(indices, num_views), anchor_ids, state["bank"], rng,
                        band, log_z)


def bank_scores(config, z, rows, anchor_ids, bank, rng, band):
  """Scores of anchors z [n, D] against a bank [N, D] (no gradient to the bank), / tau.

  rows: [n] each anchor's own bank row (its positive); anchor_ids: [n] ints that key each
  anchor's random negatives. Returns (pos [n], neg [n, K], neg_rows [n, K]): K =
  config.num_negatives rows drawn uniformly from the bank ('uniform') or from the anchor's
  band ('ball', 'ring'), and their bank rows; the anchor's own row is never one of them (the
  band is cut over the other N - 1 rows).
  """
  bank = jax.lax.stop_gradient(bank).astype(jnp.float32)
  num_rows = bank.shape[0]
  k = config.num_negatives
  tau = config.temperature
  pos = jnp.sum(z * bank[rows], axis=-1) / tau
  if config.negatives == "uniform":
    neg_rows = negatives_lib.uniform_rows(rng, anchor_ids, rows, num_rows, k)
    # Scores against the whole bank, then gathered: the backward is one dense matmul instead
    # of a [B, K, D] gather of bank rows.
    scores = z @ bank.T / tau
    neg = jnp.take_along_axis(scores, neg_rows, axis=1)
  else:
    neg, neg_rows = negatives_lib.band_negatives(
        rng, z, bank, band.lower, band.upper, k, temperature=tau,
        candidates=config.bank.candidates or None, anchor_ids=anchor_ids, exclude_rows=rows)
  return pos, neg, neg_rows


def bank_objective(config, z, rows, anchor_ids, bank, rng, band, log_z=None):
  """IR's objective of anchors z [n, D] against a bank (see bank_scores): Objective of [n].

  config.bound = 'nce' needs log_z, the log partition estimate (partition_estimate).
  """
  pos, neg, neg_rows = bank_scores(config, z, rows, anchor_ids, bank, rng, band)
  value, infonce, clamped = base.contrastive_value(config, pos, neg)
  if config.bound == "nce":
    value = bounds.nce(pos, neg, log_z, bank.shape[0])
  cap = jnp.full_like(pos, math.log(config.num_negatives + 1))
  return Objective(value=value, bound=infonce, cap=cap,
                   drawn=base.DrawnNegatives(anchors=rows, rows=neg_rows,
                                             log_weights=base.negative_terms(config, neg)),
                   clamped=clamped)


def neighbour_view_objective(config, z, rows, bank, band):
  """IR with neighbour views: the inner ball of the band as extra positives, the ring as the
  negatives, exactly over the whole bank (no sampling); z [n, D], rows [n] own rows.

  value = logsumexp([s+, s_inner]) - logsumexp([s+, s_inner, s_ring]) + log(1 + |ring|), i.e.
  bounds.neighbour_view_objective on InfoNCE's scale: with an empty inner ball it is the ring's
  InfoNCE. bound = the ring's InfoNCE of the same scores; cap = log(1 + |ring|).
  """
  bank = jax.lax.stop_gradient(bank).astype(jnp.float32)
  scores = z @ bank.T / config.temperature
  pos = jnp.take_along_axis(scores, rows[:, None], axis=1)[:, 0]
  own = jnp.arange(bank.shape[0])[None, :] == rows[:, None]
  others = jnp.where(own, -jnp.inf, scores)        # the own row ranks last: never selected
  inner, ring = negatives_lib.neighbour_masks(jax.lax.stop_gradient(others), band.lower,
                                              band.upper)
  inner, ring = inner & ~own, ring & ~own
  cap = bounds.infonce_cap(others, ring)
  value = bounds.neighbour_view_objective(pos, others, inner, ring) + cap
  drawn = base.DrawnNegatives(anchors=rows, rows=jnp.arange(bank.shape[0]), keep=ring)
  return Objective(value=value, bound=bounds.infonce(pos, others, ring), cap=cap, drawn=drawn)


def update_state(config, state, all_indices, all_z, targets=None):
  del targets
  if config.bank.sharded:
    return sharded_bank.ir_update_state(config, state, all_indices, all_z)
  z = all_z[0] if all_z.shape[0] == 1 else memory.l2_normalize(jnp.mean(all_z, axis=0))
  new = dict(state, bank=memory.bank_update(state["bank"], all_indices, z,
                                            config.bank.momentum))
  if "log_z" in state:  # the first step's estimate, from the bank before its update
    first = (_log_mean_exp(all_z.reshape(-1, all_z.shape[-1]), state["bank"],
                           config.temperature) + jnp.log(jnp.float32(state["bank"].shape[0])))
    new["log_z"] = jnp.where(jnp.isnan(state["log_z"]), first, state["log_z"])
  return new
