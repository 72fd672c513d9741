"""CMC (Tian et al. 2019): the L and ab channels of Lab colour space as two views.

One augmented view per image; the encoder (models.LabEncoder) converts it to Lab and embeds L
and ab with two encoders: z [1, b, 2, D], z[..., 0, :] = zL, z[..., 1, :] = zab (unit rows).
Two memory banks M_L, M_ab (one row per image, no gradient), in both directions:
  L -> ab   value_i = InfoNCE(zL_i . M_ab[i] / tau, zL_i . M_ab[j_k] / tau, k = 1..K)
  ab -> L   value_i = InfoNCE(zab_i . M_L[i] / tau, zab_i . M_L[j_k] / tau, k = 1..K)
Each direction is an anchor (values [2b]: L -> ab first) whose value is twice its InfoNCE, so
that the loss, -mean(value), is the SUM of the two directions' losses per image, as the
reference's L_CMC = L(L -> ab) + L(ab -> L) (HobbitLong/CMC): the same learning rate and weight
decay then mean what they mean there. The bound is each direction's bound on I(L; ab).
Negatives j_k != i: uniform over the other view's bank, or (CMC Ring / Ball) from the anchor's
band of the other view's bank, selected in each direction; row i of the other bank is the
positive and never a negative. config.bound = 'nce' gives the
reference's NCE approximation in both directions (Z re-estimated on every batch).
Bank update: M_L[i] <- normalise(m M_L[i] + (1 - m) zL_i), M_ab likewise.
"""

import jax
import jax.numpy as jnp

from mi_contrast import memory
from mi_contrast.methods import base
from mi_contrast.methods import ir
from mi_contrast.methods.base import Objective

VIEWS = (1, 1, 1)
ONLINE_VIEWS = None
ENCODER = "lab"   # models.LabEncoder: one view in, (L, ab) embeddings out


def validate(config, *, num_devices, num_train):
  """CMC takes the bank's options (bound infonce or nce, bank.candidates), not IR's own ones
  (config.ir) nor the sharded bank."""
  del num_devices, num_train
  base.reject_ir_options(config)


def describe(config):
  """Negatives from the other view's memory bank; the objective is the bound."""
  return {"negatives": config.negatives, "pool": "the other view's memory bank",
          "objective": config.bound}


def init_state(rng, config, num_train, variables):
  del variables
  dtype = jnp.dtype(config.bank.dtype)
  return {"bank_l": memory.bank_init(rng, num_train, config.embedding_dim, dtype),
          "bank_ab": memory.bank_init(jax.random.fold_in(rng, 1), num_train,
                                     config.embedding_dim, dtype)}


def objective(config, z, indices, state, rng, band, targets=None):
  """z: [1, b, 2, D] unit (L, ab) embeddings; indices: [b]. Values [2b] (L -> ab, ab -> L)."""
  del targets
  z_l, z_ab = z[0, :, 0], z[0, :, 1]
  num_rows = state["bank_l"].shape[0]
  log_z = lambda anchors, bank: (ir.partition_estimate(anchors, bank, config.temperature)
                                 if config.bound == "nce" else None)
  l_to_ab = ir.bank_objective(config, z_l, indices, indices, state["bank_ab"], rng, band,
                              log_z(z_l, state["bank_ab"]))
  ab_to_l = ir.bank_objective(config, z_ab, indices, indices + num_rows, state["bank_l"], rng,
                              band, log_z(z_ab, state["bank_l"]))
  value, bound, cap = (jnp.concatenate([a, b]) for a, b in zip(l_to_ab[:3], ab_to_l[:3]))
  drawn = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), l_to_ab.drawn, ab_to_l.drawn)
  clamped = (None if l_to_ab.clamped is None
             else jnp.concatenate([l_to_ab.clamped, ab_to_l.clamped]))
  return Objective(value=2.0 * value, bound=bound, cap=cap, drawn=drawn, clamped=clamped)


def update_state(config, state, all_indices, all_z, targets=None):
  del targets
  m = config.bank.momentum
  return {"bank_l": memory.bank_update(state["bank_l"], all_indices, all_z[0, :, 0], m),
          "bank_ab": memory.bank_update(state["bank_ab"], all_indices, all_z[0, :, 1], m)}
