"""SimCLR (Chen et al. 2020): two views per image, negatives from the whole global batch.

For the 2B unit embeddings of a global batch (view-major: view 0 of every image, then view 1),
each anchor a = (view v, image i) on this device scores every embedding of the global batch:
  scores  s_a = z_a . Z^T / tau                          [2B], all-gathered over the devices
  positive     the other view of the same image
  negatives    the other 2B - 2 embeddings (the anchor itself is masked out)
  value        InfoNCE(positive, negatives), both directions (every view is an anchor once)
The all-gather is differentiated through, so every embedding also gets the gradients of the
anchors that used it as a negative: the loss is the global batch's, on 1 device or many.
SimCLR Ring keeps only the negatives in the anchor's similarity band of those 2B - 2
(reference: rho_o = 0.5, rho_i = 0.1); self and positive are ranked last and never kept.
"""

import jax
import jax.numpy as jnp

from mi_contrast import bounds
from mi_contrast import negatives as negatives_lib
from mi_contrast.methods.base import Objective

NUM_VIEWS = 2
AXIS = "batch"


def init_state(rng, config, num_train):
  del rng, config, num_train
  return {}


def objective(config, z, indices, state, rng, band):
  """z: [2, b, D] unit rows of this device's images; returns per-anchor values [2b]."""
  del indices, state, rng
  _, local, dim = z.shape
  everyone = jax.lax.all_gather(z, AXIS, axis=1, tiled=True)   # [2, B, D]
  batch = everyone.shape[1]
  first = jax.lax.axis_index(AXIS) * local
  anchors = z.reshape(2 * local, dim)
  scores = anchors @ everyone.reshape(2 * batch, dim).T / config.temperature  # [2b, 2B]
  view = jnp.repeat(jnp.arange(2), local)
  image = first + jnp.tile(jnp.arange(local), 2)
  self_col = view * batch + image
  pos_col = (1 - view) * batch + image
  pos = jnp.take_along_axis(scores, pos_col[:, None], axis=1)[:, 0]
  columns = jnp.arange(2 * batch)[None, :]
  candidate = (columns != self_col[:, None]) & (columns != pos_col[:, None])
  if config.negatives == "uniform":
    keep = candidate
  else:
    # Rank only the 2B - 2 candidates: self and positive go below every real score.
    ranked = jnp.where(candidate, jax.lax.stop_gradient(scores), -1e9)
    keep = negatives_lib.ring_mask(ranked, band.lower, band.upper) & candidate
  value = bounds.infonce(pos, scores, keep)
  return Objective(value=value, bound=value, cap=bounds.infonce_cap(scores, keep))


def update_state(config, state, all_indices, all_z):
  del config, all_indices, all_z
  return state
