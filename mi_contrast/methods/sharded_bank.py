"""A memory bank split over the devices, for banks that do not fit on one device.

With `config.bank.sharded`, the bank's N rows are placed in S R slots, R = ceil(N / S), and
device s of S holds slots [s R, (s + 1) R). Dataset row i sits in slot `slot[i]`, a fixed random
permutation of the rows (seed 0), so a shard's rows are a random sample of the bank whatever the
order of the dataset (a dataset sorted by class would otherwise give each shard its own
classes, and each shard's band would be cut among them). When S does not divide N, the last
S R - N slots (all in the last shard) are padding: never a positive, never a negative.

IR's objective, per device, inside the step (collectives on the axis 'batch'):
  anchors   the global batch's z and indices, all-gathered (gradients flow back to each owner)
  positive  z_i . M[i] / tau, computed by the shard that holds row i, reduce-scattered back
  negatives each shard draws ceil(K / S) rows per anchor, uniformly from the anchor's band of
            that shard's own rows (its shard is its candidate set, as in the sampled band;
            the anchor's own row and the padding are never candidates); the [B, ceil(K / S)]
            scores go back to each anchor's device by an all-to-all, and the first K columns
            are its K negatives
  value     InfoNCE(positive, negatives), cap log(K + 1)
The cost per device is a B x R score matrix instead of b x N: the same FLOPs as the replicated
bank, 1/S of its memory. With S = 1 the band is the exact band over the whole bank.
Bank update: every shard applies the all-gathered (index, z) to the slots it holds. The state
also holds 'rows' = N and 'slot' [N] (replicated).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from mi_contrast import memory
from mi_contrast import negatives as negatives_lib
from mi_contrast.methods import base
from mi_contrast.methods.base import DrawnNegatives, Objective
from mi_contrast.mesh import AXIS



def rows_per_shard(num_rows, num_shards):
  return -(-num_rows // num_shards)


def row_slots(num_rows):
  """slot[i]: the bank slot of dataset row i, a fixed random permutation (int32 [N])."""
  return np.random.RandomState(0).permutation(num_rows).astype(np.int32)


def pad_rows(bank, num_shards, slot=None):
  """[N, D] -> [S * ceil(N / S), D]: row i in slot[i] (default: row_slots), zeros after N."""
  n = bank.shape[0]
  total = rows_per_shard(n, num_shards) * num_shards
  slot = row_slots(n) if slot is None else slot
  return jnp.zeros((total,) + bank.shape[1:], bank.dtype).at[slot].set(bank)


def _local_rows(slots, shard_rows):
  """Positions of global slots in this device's shard, and whether the shard holds them."""
  local = slots - jax.lax.axis_index(AXIS) * shard_rows
  held = (local >= 0) & (local < shard_rows)
  return jnp.where(held, local, 0), held


def ir_objective(config, z, indices, state, rng, band):
  """IR / IR Ring with a sharded bank. z: [1, b, D] this device's anchors; state['bank']: this
  device's [R, D] shard."""
  z = z[0]
  shard = jax.lax.stop_gradient(state["bank"])
  shard_rows = shard.shape[0]
  num_shards = jax.lax.axis_size(AXIS)
  k = config.num_negatives
  tau = config.temperature
  everyone = jax.lax.all_gather(z, AXIS, tiled=True)              # [B, D], differentiable
  all_indices = jax.lax.all_gather(indices, AXIS, tiled=True)     # [B]
  local, held = _local_rows(state["slot"][all_indices], shard_rows)
  own_rows = shard[local].astype(jnp.float32)
  pos_all = jnp.where(held, jnp.sum(everyone * own_rows, axis=-1) / tau, 0.0)
  pos = jax.lax.psum_scatter(pos_all, AXIS, tiled=True)            # [b]
  per_shard = -(-k // num_shards)
  shard_key = jax.random.fold_in(rng, jax.lax.axis_index(AXIS))
  # The anchor's own row in this shard is its positive, never a negative; the slots past N
  # (padding, last shard only) are never candidates.
  own = jnp.where(held, local, -1)
  valid = jnp.clip(state["rows"] - jax.lax.axis_index(AXIS) * shard_rows, 0, shard_rows)
  if config.negatives == "uniform":
    rows = negatives_lib.uniform_rows(shard_key, all_indices, own, valid, per_shard)
    scores = jnp.dot(everyone, shard.T, preferred_element_type=jnp.float32) / tau
    neg_all = jnp.take_along_axis(scores, rows, axis=1)
  else:
    neg_all, rows = negatives_lib.band_negatives(
        shard_key, everyone, shard, band.lower, band.upper, per_shard, temperature=tau,
        anchor_ids=all_indices, exclude_rows=own, pool_rows=valid)
  # Row block j of neg_all (device j's anchors) goes to device j, next to the other shards'.
  to_anchors = lambda x: jax.lax.all_to_all(x, AXIS, 0, 1, tiled=True)[:, :k]   # [b, K]
  neg = to_anchors(neg_all)
  value, bound, clamped = base.contrastive_value(config, pos, neg)
  drawn = DrawnNegatives(anchors=indices,
                         rows=to_anchors(_dataset_rows(state, rows, shard_rows)))
  return Objective(value=value, bound=bound, cap=jnp.full_like(pos, math.log(k + 1)),
                   drawn=drawn, clamped=clamped)


def _dataset_rows(state, local, shard_rows):
  """The dataset rows of this device's shard positions `local` (int, any shape): -1 for a
  padding slot."""
  num_rows = state["slot"].shape[0]
  row_of_slot = jnp.full((shard_rows * jax.lax.axis_size(AXIS),), -1, jnp.int32).at[
      state["slot"]].set(jnp.arange(num_rows, dtype=jnp.int32))
  return row_of_slot[jax.lax.axis_index(AXIS) * shard_rows + local]


def ir_update_state(config, state, all_indices, all_z):
  """M[i] <- normalise(m M[i] + (1 - m) z_i), in the slot of row i, on the shard holding it."""
  shard = state["bank"]
  shard_rows = shard.shape[0]
  z = jax.lax.stop_gradient(all_z[0]).astype(jnp.float32)
  local, held = _local_rows(state["slot"][all_indices], shard_rows)
  old = shard[local].astype(jnp.float32)
  new = memory.l2_normalize(config.bank.momentum * old + (1.0 - config.bank.momentum) * z)
  target = jnp.where(held, local, shard_rows)  # out of range: dropped
  return {**state, "bank": shard.at[target].set(new.astype(shard.dtype), mode="drop")}


def shard_state(method_state, num_shards):
  """The replicated IR state {'bank': [N, D]} -> {'bank': [S R, D] (to be split over the
  devices; row i in slot[i]), 'rows': N, 'slot': [N] (both replicated)}."""
  bank = method_state["bank"]
  slot = row_slots(bank.shape[0])
  return {**method_state, "bank": pad_rows(bank, num_shards, slot),
          "rows": jnp.asarray(bank.shape[0], jnp.int32), "slot": jnp.asarray(slot)}


def state_spec(method_state):
  """PartitionSpecs of a sharded IR state: the bank's rows over the devices, the rest
  replicated."""
  from jax.sharding import PartitionSpec as P
  return {k: P(AXIS) if k == "bank" else P() for k in method_state}
