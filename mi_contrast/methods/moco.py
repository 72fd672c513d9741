"""MoCo v2 (He et al. 2020; Chen et al. 2020): query encoder, momentum key encoder, FIFO queue.

Two views per image and step. View 0 goes through the online (query) encoder f_theta with
gradients, view 1 through the key encoder f_xi without:
  xi    <- m xi + (1 - m) theta                      EMA of the parameters, before the keys
  q      = normalise(f_theta(view 0))                [b, D]
  k+     = normalise(f_xi(view 1))                   [b, D], shuffle-BN (below)
  value  = InfoNCE(q.k+ / tau, q.Q^T / tau)          Q: the queue of K past keys [K, D], nats
  Q     <- FIFO enqueue of the global batch's k+     (pointer += B mod K; K % B == 0)
MoCo Ring keeps only the queue entries in the query's similarity band (every entry of the band,
as the reference MoCoRing does, so K follows the band and the cap is log(1 + kept)).
Shuffle-BN: the key encoder's BatchNorm statistics are computed per group of B / G images
(G = config.moco.bn_groups) of a random permutation of the global batch, built from
collectives: all-gather the key views, take this device's share of the permutation, embed
G / n_devices groups, all-gather the keys and undo the permutation. The groups do not depend
on the device count, so one device computes the same keys as eight. The key encoder's running
statistics are the mean of its groups' (they only matter if the key encoder is evaluated).
Query BatchNorm: the query encoder is the trained encoder, whose BatchNorm (config.sync_batch_norm,
default True) takes its statistics over the whole global batch of query views, on any device
count. That batch holds the other view of every image of every key group, so each key group's
statistics are correlated with the queries' statistics: a group is 1/G of the query batch (its
batch mean correlates with the query batch mean as about 1/sqrt(G) for the same views), while
the reference's per-GPU query BatchNorm shares only about B/G^2 images with a random key group
(a correlation of about 1/G). Shuffle-BN is meant to stop BatchNorm from marking the positive
key, the only key of the current batch in each query's comparison (the negatives are the queue's
older keys), so with global query statistics it does so less than in the reference; with G = 1
(one key group: the whole batch) both statistics are of the same images, as without shuffling.
More groups weaken the correlation (1/sqrt(G)). config.sync_batch_norm = False gives the
reference's per-device query statistics, but then the step depends on the device count (one
device: the whole batch again). Its effect on the numbers here has not been measured.
Queue init: random unit rows (reference). The state's queue_ids [K] hold the dataset row of
each entry's image (-1: an initial random key), enqueued with the keys; only the false-negative
diagnostic reads them. A checkpoint of an earlier version has none: evaluation and export
restore it as it is (its own tree), and these functions take a state without queue_ids (no
diagnostic), but training does not resume from it (the restore names method_state.queue_ids).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from mi_contrast import bounds
from mi_contrast import checks
from mi_contrast import memory
from mi_contrast import negatives as negatives_lib
from mi_contrast.methods import base
from mi_contrast.methods.base import Objective
from mi_contrast.mesh import AXIS

VIEWS = (2, 2, 2)
ONLINE_VIEWS = 1
ENCODER = "single"


class MocoTargets(NamedTuple):
  """What MoCo's prepare hands its objective and update_state.

  keys: [b, D] float32 unit keys k+ of this device's images (view 1 through the EMA key
    encoder with shuffle-BN; no gradient).
  """
  keys: jax.Array


def validate(config, *, num_devices, num_train):
  """The queue holds whole global batches; shuffle-BN groups split the devices' batches."""
  del num_train
  base.require_infonce_without_candidates(config, "the queue", base.INFONCE_SHAPED)
  if config.num_negatives % config.global_batch_size:
    checks.fail("num_negatives", config.num_negatives, "a multiple of global_batch_size "
                f"({config.global_batch_size}) for method 'moco' (the queue length K; each "
                "step enqueues one global batch of keys)")
  bn_groups = config.moco.bn_groups
  groups = bn_groups or num_devices
  if groups % num_devices or config.global_batch_size % groups:
    checks.fail("moco.bn_groups", bn_groups, f"0 (one group per device) or a multiple of the "
                f"device count ({num_devices}) that divides global_batch_size "
                f"({config.global_batch_size})")
  base.reject_ir_options(config)


def describe(config):
  return {"negatives": config.negatives, "pool": "queue", "objective": config.bound}


def init_state(rng, config, num_train, variables):
  del num_train
  queue = memory.l2_normalize(
      jax.random.normal(rng, (config.num_negatives, config.embedding_dim), jnp.float32))
  copy = lambda tree: jax.tree.map(jnp.array, tree)
  # queue_ids: the dataset row of each queue entry's image, -1 for the initial random keys;
  # only the false-negative diagnostic reads it (step.py), never the objective.
  return {"key_params": copy(variables["params"]),
          "key_batch_stats": copy(variables["batch_stats"]),
          "queue": queue.astype(jnp.dtype(config.bank.dtype)),
          "queue_ids": jnp.full((config.num_negatives,), -1, jnp.int32),
          "queue_ptr": jnp.zeros((), jnp.int32)}


def shuffled_keys(config, model, key_variables, images, rng):
  """Keys of this device's images [b, ...] with shuffle-BN: ([b, D] unit keys, batch_stats).

  Must run inside a shard_map over the axis 'batch'.
  """
  local = images.shape[0]
  everyone = jax.lax.all_gather(images, AXIS, tiled=True)           # [B, ...]
  batch = everyone.shape[0]
  num_devices = batch // local
  groups = config.moco.bn_groups or num_devices
  if groups % num_devices or batch % groups:
    raise ValueError(f"config.moco.bn_groups = {groups} must be a multiple of the device count "
                     f"({num_devices}) and divide the global batch ({batch}).")
  perm = jax.random.permutation(rng, batch)                         # the same on every device
  first = jax.lax.axis_index(AXIS) * local
  mine = everyone[jax.lax.dynamic_slice(perm, (first,), (local,))]
  per_device = groups // num_devices
  grouped = mine.reshape((per_device, local // per_device) + mine.shape[1:])
  key_model = model.clone(bn_axis_name=None)  # statistics per group, never across devices

  def embed(x):
    (_, k), updated = key_model.apply(key_variables, x, train=True, mutable=["batch_stats"])
    return memory.l2_normalize(k.astype(jnp.float32)), updated["batch_stats"]

  keys, stats = jax.vmap(embed)(grouped)
  keys = keys.reshape(local, -1)
  all_keys = jax.lax.all_gather(keys, AXIS, tiled=True)             # [B, D], permuted order
  unshuffled = jnp.zeros_like(all_keys).at[perm].set(all_keys)
  stats = jax.lax.pmean(jax.tree.map(lambda s: jnp.mean(s, axis=0), stats), AXIS)
  return jax.lax.dynamic_slice_in_dim(unshuffled, first, local), stats


def prepare(config, state, ctx):
  """EMA of the key encoder, then the keys of view 1 (no gradient)."""
  m = config.moco.momentum
  key_params = jax.tree.map(lambda k, q: m * k + (1.0 - m) * q, state["key_params"],
                            ctx.variables["params"])
  keys, key_stats = shuffled_keys(
      config, ctx.model, {"params": key_params, "batch_stats": state["key_batch_stats"]},
      ctx.views[1], ctx.rng)
  keys = jax.lax.stop_gradient(keys)
  return MocoTargets(keys=keys), dict(state, key_params=key_params, key_batch_stats=key_stats)


def objective(config, z, indices, state, rng, band, targets):
  """z: [1, b, D] unit queries; indices: [b] their dataset rows; targets: MocoTargets, their
  unit keys. Values [b]; drawn: the queue's images (state['queue_ids']), the band's entries
  for ball and ring (None for a state without queue_ids, or without indices)."""
  del rng
  keys = targets.keys
  q = z[0]
  tau = config.temperature
  queue = jax.lax.stop_gradient(state["queue"]).astype(jnp.float32)
  pos = jnp.sum(q * keys, axis=-1) / tau
  neg = q @ queue.T / tau                                            # [b, K]
  keep = None
  if config.negatives != "uniform":
    keep = negatives_lib.ring_mask(jax.lax.stop_gradient(neg), band.lower, band.upper)
  value, bound, clamped = base.contrastive_value(config, pos, neg, keep)
  drawn = None
  if "queue_ids" in state and indices is not None:
    drawn = base.DrawnNegatives(anchors=indices, rows=state["queue_ids"], keep=keep,
                                log_weights=base.negative_terms(config, neg))
  return Objective(value=value, bound=bound, cap=bounds.infonce_cap(neg, keep), drawn=drawn,
                   clamped=clamped)


def update_state(config, state, all_indices, all_z, targets):
  """Enqueue the global batch's keys (FIFO), and their images' dataset rows all_indices [B]
  in queue_ids (a state without queue_ids stays without); targets: MocoTargets."""
  del config, all_z
  keys = jax.lax.all_gather(targets.keys, AXIS,
                            tiled=True)                             # [B, D]
  enqueue = lambda old, new: jax.lax.dynamic_update_slice_in_dim(
      old, new.astype(old.dtype), state["queue_ptr"], axis=0)
  new = dict(state, queue=enqueue(state["queue"], keys))
  if "queue_ids" in state:
    new["queue_ids"] = enqueue(state["queue_ids"], all_indices)
  ptr = (state["queue_ptr"] + keys.shape[0]) % state["queue"].shape[0]
  return dict(new, queue_ptr=ptr.astype(jnp.int32))
