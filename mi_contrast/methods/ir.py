"""IR: instance recognition with a memory bank (Wu et al. 2018), as InfoNCE (Wu et al. 2020).

One view per image and step (config.num_views = V > 1: every view is an anchor, the values are
averaged over views, and the bank stores the normalised mean of the views). For anchor z_i
(unit row) and bank M (unit rows, no gradient):
  positive  s_i+ = z_i . M[i] / tau                      (the image's own bank row)
  negatives s_ik = z_i . M[j_k] / tau,  k = 1..K         (uniform, ball or ring rows of M)
  value     = InfoNCE(s_i+, s_i)  = s_i+ - logsumexp([s_i+, s_i]) + log(K + 1)     [nats]
  or, with config.bound = 'nce', IR's original binary NCE with constant partition Z.
Negatives: 'uniform' draws j_k ~ U{0..N-1}; 'ball' and 'ring' draw K rows uniformly (with
replacement) from each anchor's similarity band of the bank (IR Ball / IR Ring; the band comes
from the annealed outer/inner fractions). config.neighbour_views: the ring's inner ball counts as extra positives (an LA-like objective with
nearest neighbours as close neighbours; see neighbour_view_objective). Bank update:
M[i] <- normalise(m M[i] + (1-m) z_i).
"""

import math

import jax
import jax.numpy as jnp

from mi_contrast import bounds
from mi_contrast import memory
from mi_contrast import negatives as negatives_lib
from mi_contrast.methods.base import Objective

VIEWS = (1, 1, 8)
ONLINE_VIEWS = None

# IR's partition constant, an ImageNet estimate rescaled by the dataset size (Wu et al. 2018).
_IR_Z_PER_ROW = 2876934.2 / 1281167


def init_state(rng, config, num_train, variables):
  del variables
  return {"bank": memory.bank_init(rng, num_train, config.embedding_dim)}


def objective(config, z, indices, state, rng, band, targets=None):
  """z: [V, b, D] unit rows of this device's anchors; indices: [b] their dataset rows.

  Returns per-anchor values [V * b] (view-major).
  """
  del targets
  num_views = z.shape[0]
  num_rows = state["bank"].shape[0]
  if config.neighbour_views:
    rows = jnp.tile(indices, num_views)
    return neighbour_view_objective(config, z.reshape(-1, z.shape[-1]), rows, state["bank"],
                                    band)
  # View v of image i draws its own negatives: key id v * N + i.
  anchor_ids = (jnp.arange(num_views)[:, None] * num_rows + indices[None, :]).reshape(-1)
  return bank_objective(config, z.reshape(-1, z.shape[-1]), jnp.tile(indices, num_views),
                        anchor_ids, state["bank"], rng, band)


def bank_scores(config, z, rows, anchor_ids, bank, rng, band):
  """Scores of anchors z [n, D] against a bank [N, D] (no gradient to the bank), / tau.

  rows: [n] each anchor's own bank row (its positive); anchor_ids: [n] ints that key each
  anchor's random negatives. Returns (pos [n], neg [n, K]): K = config.num_negatives rows
  drawn uniformly from the bank ('uniform') or from the anchor's band ('ball', 'ring').
  """
  bank = jax.lax.stop_gradient(bank).astype(jnp.float32)
  num_rows = bank.shape[0]
  k = config.num_negatives
  tau = config.temperature
  pos = jnp.sum(z * bank[rows], axis=-1) / tau
  if config.negatives == "uniform":
    keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(anchor_ids)
    neg_rows = jax.vmap(lambda key: jax.random.randint(key, (k,), 0, num_rows))(keys)
    # Scores against the whole bank, then gathered: the backward is one dense matmul instead
    # of a [B, K, D] gather of bank rows.
    scores = z @ bank.T / tau
    neg = jnp.take_along_axis(scores, neg_rows, axis=1)
  else:
    neg, _ = negatives_lib.band_negatives(
        rng, z, bank, band.lower, band.upper, k, temperature=tau,
        candidates=config.candidates or None, anchor_ids=anchor_ids)
  return pos, neg


def bank_objective(config, z, rows, anchor_ids, bank, rng, band):
  """IR's objective of anchors z [n, D] against a bank (see bank_scores): Objective of [n]."""
  pos, neg = bank_scores(config, z, rows, anchor_ids, bank, rng, band)
  infonce = bounds.infonce(pos, neg)
  if config.bound == "nce":
    num_rows = bank.shape[0]
    value = bounds.nce(pos, neg, math.log(_IR_Z_PER_ROW * num_rows), num_rows)
  else:
    value = infonce
  cap = jnp.full_like(pos, math.log(config.num_negatives + 1))
  return Objective(value=value, bound=infonce, cap=cap)


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
  return Objective(value=value, bound=bounds.infonce(pos, others, ring), cap=cap)


def update_state(config, state, all_indices, all_z, targets=None):
  del targets
  z = all_z[0] if all_z.shape[0] == 1 else memory.l2_normalize(jnp.mean(all_z, axis=0))
  return {"bank": memory.bank_update(state["bank"], all_indices, z, config.bank_momentum)}
