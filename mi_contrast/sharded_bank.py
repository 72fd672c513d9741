"""A memory bank split over the devices, for banks that do not fit on one device.

With `config.bank_sharded`, device s of S holds rows [s R, (s + 1) R) of the bank, R =
ceil(N / S). When S does not divide N, the last S R - N rows mirror rows 0.. (they are updated
together with their source row), so every shard is full; at most S - 1 rows appear twice.

IR's objective, per device, inside the step (collectives on the axis 'batch'):
  anchors   the global batch's z and indices, all-gathered (gradients flow back to each owner)
  positive  z_i . M[i] / tau, computed by the shard that holds row i, reduce-scattered back
  negatives each shard draws ceil(K / S) rows per anchor, uniformly from the anchor's band of
            that shard's own R rows (its shard is its candidate set, as in the sampled band);
            the [B, ceil(K / S)] scores go back to each anchor's device by an all-to-all, and
            the first K columns are its K negatives
  value     InfoNCE(positive, negatives), cap log(K + 1)
The cost per device is a B x R score matrix instead of b x N: the same FLOPs as the replicated
bank, 1/S of its memory. With S = 1 the band is the exact band over the whole bank.
Bank update: every shard applies the all-gathered (index, z) to the rows it holds. The
state also holds 'rows' = N, where the mirror rows start.
"""

import math

import jax
import jax.numpy as jnp

from mi_contrast import bounds
from mi_contrast import memory
from mi_contrast import negatives as negatives_lib
from mi_contrast.methods.base import Objective

AXIS = "batch"


def rows_per_shard(num_rows, num_shards):
  return -(-num_rows // num_shards)


def pad_rows(bank, num_shards):
  """[N, D] -> [S * ceil(N / S), D]: the extra rows mirror rows 0, 1, ... of the bank."""
  n = bank.shape[0]
  total = rows_per_shard(n, num_shards) * num_shards
  if total == n:
    return bank
  return jnp.take(bank, jnp.arange(total) % n, axis=0)


def _local_rows(global_rows, shard_rows):
  """Positions of global row ids in this device's shard, and whether the shard holds them."""
  local = global_rows - jax.lax.axis_index(AXIS) * shard_rows
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
  local, held = _local_rows(all_indices, shard_rows)
  own_rows = shard[local].astype(jnp.float32)
  pos_all = jnp.where(held, jnp.sum(everyone * own_rows, axis=-1) / tau, 0.0)
  pos = jax.lax.psum_scatter(pos_all, AXIS, tiled=True)            # [b]
  per_shard = -(-k // num_shards)
  shard_key = jax.random.fold_in(rng, jax.lax.axis_index(AXIS))
  if config.negatives == "uniform":
    keys = jax.vmap(lambda i: jax.random.fold_in(shard_key, i))(all_indices)
    rows = jax.vmap(lambda key: jax.random.randint(key, (per_shard,), 0, shard_rows))(keys)
    scores = jnp.dot(everyone, shard.T, preferred_element_type=jnp.float32) / tau
    neg_all = jnp.take_along_axis(scores, rows, axis=1)
  else:
    neg_all, _ = negatives_lib.band_negatives(
        shard_key, everyone, shard, band.lower, band.upper, per_shard, temperature=tau,
        anchor_ids=all_indices)
  # Row block j of neg_all (device j's anchors) goes to device j, next to the other shards'.
  neg = jax.lax.all_to_all(neg_all, AXIS, 0, 1, tiled=True)[:, :k]  # [b, K]
  value = bounds.infonce(pos, neg)
  return Objective(value=value, bound=value, cap=jnp.full_like(pos, math.log(k + 1)))


def ir_update_state(config, state, all_indices, all_z):
  """M[i] <- normalise(m M[i] + (1 - m) z_i) on the shard holding row i, and on the shard
  holding its mirror row N + i if there is one."""
  shard = state["bank"]
  shard_rows = shard.shape[0]
  total = shard_rows * jax.lax.axis_size(AXIS)
  z = jax.lax.stop_gradient(all_z[0]).astype(jnp.float32)
  new_shard = shard
  for rows in (all_indices, all_indices + state["rows"]):   # the row, then its mirror
    local, held = _local_rows(rows, shard_rows)
    held &= rows < total
    old = new_shard[local].astype(jnp.float32)
    new = memory.l2_normalize(config.bank_momentum * old + (1.0 - config.bank_momentum) * z)
    target = jnp.where(held, local, shard_rows)  # out of range: dropped
    new_shard = new_shard.at[target].set(new.astype(shard.dtype), mode="drop")
  return {**state, "bank": new_shard}


def shard_state(method_state, num_shards):
  """The replicated IR state {'bank': [N, D]} -> {'bank': [S R, D] (to be split over the
  devices), 'rows': N (replicated)}."""
  bank = method_state["bank"]
  return {**method_state, "bank": pad_rows(bank, num_shards),
          "rows": jnp.asarray(bank.shape[0], jnp.int32)}


def state_spec(method_state):
  """PartitionSpecs of a sharded IR state: the bank's rows over the devices, the rest
  replicated."""
  from jax.sharding import PartitionSpec as P
  return {k: P(AXIS) if k == "bank" else P() for k in method_state}
