"""SimCLR (Chen et al. 2020): V >= 2 views per image, negatives from the whole global batch.

For the V*B unit embeddings of a global batch (view-major: view 0 of every image, then view 1,
...), each anchor a = (view v, image i) on this device scores every embedding of the batch:
  scores  s_a = z_a . Z^T / tau                          [V*B], all-gathered over the devices
  positives    the other V - 1 views of the same image
  negatives    the V*B - V embeddings of the other images (self and own views masked out)
  value        mean over positives p of InfoNCE(s_ap, negatives); every view is an anchor once
With V = 2 this is NT-Xent (symmetric, self-similarity masked). The all-gather is
differentiated through, so every embedding also gets the gradients of the anchors that used it
as a negative: the loss is the global batch's, on 1 device or many.
SimCLR Ring keeps only the negatives in the anchor's similarity band of those V*B - V
(reference: rho_o = 0.5, rho_i = 0.1); self and positives are ranked last and never kept.
"""

import jax
import jax.numpy as jnp

from mi_contrast import bounds
from mi_contrast import negatives as negatives_lib
from mi_contrast.methods import base
from mi_contrast.methods.base import Objective
from mi_contrast.mesh import AXIS

VIEWS = (2, 2, 8)
ONLINE_VIEWS = None
ENCODER = "single"


def validate(config, *, num_devices, num_train):
  """InfoNCE over the global batch: no bank options."""
  del num_devices, num_train
  base.require_infonce_without_candidates(config, "the global batch", base.INFONCE_SHAPED)
  base.reject_ir_options(config)


def describe(config):
  return {"negatives": config.negatives, "pool": "global batch", "objective": config.bound}


def init_state(rng, config, num_train, variables):
  del rng, config, num_train, variables
  return {}


def objective(config, z, indices, state, rng, band, targets=None):
  """z: [V, b, D] unit rows of this device's images, indices: [b] their dataset rows; returns
  per-anchor values [V * b], and as drawn negatives the batch's images (its kept columns)."""
  del state, rng, targets
  num_views, local, dim = z.shape
  everyone = jax.lax.all_gather(z, AXIS, axis=1, tiled=True)   # [V, B, D]
  batch = everyone.shape[1]
  first = jax.lax.axis_index(AXIS) * local
  anchors = z.reshape(num_views * local, dim)
  scores = anchors @ everyone.reshape(num_views * batch, dim).T / config.temperature
  view = jnp.repeat(jnp.arange(num_views), local)                  # [V*b]
  image = first + jnp.tile(jnp.arange(local), num_views)           # [V*b]
  columns = jnp.arange(num_views * batch)
  same_image = (columns % batch)[None, :] == image[:, None]        # [V*b, V*B]
  candidate = ~same_image
  if config.negatives == "uniform":
    keep = candidate
  else:
    # Rank only the V*B - V candidates: self and positives go below every real score (-inf,
    # which the band search also leaves out of its starting guess).
    ranked = jnp.where(candidate, jax.lax.stop_gradient(scores), -jnp.inf)
    keep = negatives_lib.ring_mask(ranked, band.lower, band.upper) & candidate
  # Positive p = (view u != v, same image): the other views, in view order.
  others = jnp.stack([jnp.where(jnp.arange(num_views - 1) < v, jnp.arange(num_views - 1),
                                jnp.arange(num_views - 1) + 1) for v in range(num_views)])
  pos_cols = others[view] * batch + image[:, None]                 # [V*b, V-1]
  pos = jnp.take_along_axis(scores, pos_cols, axis=1)
  per_positive = jax.vmap(lambda p: base.contrastive_value(config, p, scores, keep))
  value, bound, clamped = per_positive(jnp.moveaxis(pos, 1, 0))      # [V-1, V*b] each
  value, bound = jnp.mean(value, axis=0), jnp.mean(bound, axis=0)
  if clamped is not None:                          # the share of the anchor's terms clamped
    clamped = jnp.mean(clamped.astype(jnp.float32), axis=0)
  return Objective(value=value, bound=bound, cap=bounds.infonce_cap(scores, keep),
                   clamped=clamped,
                   drawn=_drawn(indices, num_views, keep, base.negative_terms(config, scores)))


def _drawn(indices, num_views, keep, log_weights):
  """DrawnNegatives of the [V*b] anchors: column c of the [V*B] batch is the image of global
  row c mod B; None without indices."""
  if indices is None:
    return None
  all_indices = jax.lax.all_gather(indices, AXIS, tiled=True)       # [B]
  return base.DrawnNegatives(anchors=jnp.tile(indices, num_views),
                             rows=jnp.tile(all_indices, num_views), keep=keep,
                             log_weights=log_weights)


def update_state(config, state, all_indices, all_z, targets=None):
  del config, all_indices, all_z, targets
  return state
