"""LA: local aggregation (Zhuang et al. 2019), warm-started from IR.

One view per image and step, a memory bank M as in IR. For anchor z_i and scores s_j = z_i.M[j]/tau:
  background neighbours  B_i = {i} + the config.la.background (= K) nearest other bank rows
  close neighbours       C_i = {j : j shares a k-means cluster with i in any of R clusterings}
  value_i = log( sum_{j in B_i and C_i} e^{s_j} / sum_{j in B_i} e^{s_j} ) + log(K + 1)   [nats]
The reference objective is the log-ratio; the constant log(K + 1) puts it on InfoNCE's scale,
so that with C_i = {i} it is exactly IR Ball's InfoNCE over the same K background rows (the
paper's LA-simple theorem; the close neighbours make LA a looser, not a tighter, bound).
`bound` is that InfoNCE of the same scores (positive M[i], negatives B_i - {i}); cap log(K+1).
k-means (R = config.la.num_clusterings runs of config.la.num_clusters centroids, Lloyd
iterations from distinct random rows, squared Euclidean distance on the unit rows) is refit on
the bank at the first LA step and once per epoch after it. The first config.la.warmup_epochs
epochs train IR (InfoNCE, K = config.num_negatives uniform negatives) instead.
Bank update: M[i] <- normalise(m M[i] + (1 - m) z_i), as IR.
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from mi_contrast import bounds
from mi_contrast import checks
from mi_contrast import memory
from mi_contrast.methods import base
from mi_contrast.methods import ir
from mi_contrast.methods.base import Objective

VIEWS = (1, 1, 1)
ONLINE_VIEWS = None
ENCODER = "single"


class LATargets(NamedTuple):
  """What LA's prepare hands its objective.

  warmup: bool scalar; True during the config.la.warmup_epochs of IR before the LA objective.
  """
  warmup: jax.Array


def validate(config, *, num_devices, num_train):
  """LA's negatives are its background neighbours; its bank rows bound them and the clusters."""
  del num_devices
  base.require_infonce_without_candidates(config, "the background neighbours")
  base.reject_neighbour_views(config)
  base.reject_first_batch_partition(config)
  if config.negatives != "uniform":
    checks.fail("negatives", config.negatives, "'uniform' for method 'la' (its negatives are "
                "the config.la.background nearest bank rows; 'uniform' names the IR warm-up's)")
  background = config.la.background
  if num_train is not None and background >= num_train:
    checks.fail("la.background", background,
                f"1..{num_train - 1} (bank rows other than the anchor)")
  if num_train is not None and config.la.num_clusters > num_train:
    checks.fail("la.num_clusters", config.la.num_clusters, f"1..{num_train} (bank rows)")
  if config.la.warmup_epochs >= config.num_epochs:
    checks.fail("la.warmup_epochs", config.la.warmup_epochs,
                f"0..{config.num_epochs - 1} (below num_epochs)")
  base.reject_bank_sharded(config)


def describe(config):
  """LA's negatives are its background neighbours ('background'), whatever config.negatives
  says (that names its IR warm-up's)."""
  return {"negatives": "background", "pool": f"the {config.la.background} nearest bank rows",
          "objective": "la"}


def init_state(rng, config, num_train, variables):
  del variables
  return {"bank": memory.bank_init(rng, num_train, config.embedding_dim,
                                   dtype=jnp.dtype(config.bank.dtype)),
          "labels": jnp.zeros((config.la.num_clusterings, num_train), jnp.int32)}


def _assign(x, centroids, chunk):
  """Nearest centroid of each row of x [N, D] (squared Euclidean), [N] int32, in row chunks."""
  half_norms = 0.5 * jnp.sum(jnp.square(centroids), axis=1)
  num = x.shape[0]
  pad = (-num) % chunk
  rows = jnp.pad(x, ((0, pad), (0, 0))).reshape(-1, chunk, x.shape[1])
  nearest = lambda r: jnp.argmax(r @ centroids.T - half_norms, axis=1).astype(jnp.int32)
  return jax.lax.map(nearest, rows).reshape(-1)[:num]


def kmeans(rng, x, num_clusters, iterations):
  """Lloyd's k-means of the rows of x [N, D]: (labels [N] int32, centroids [k, D]).

  Starts from k distinct random rows; an empty cluster keeps its centroid.
  """
  num, dim = x.shape
  x = x.astype(jnp.float32)
  chunk = max(1, min(num, (1 << 24) // max(1, num_clusters)))
  centroids = x[jax.random.choice(rng, num, (num_clusters,), replace=False)]

  def step(_, centroids):
    labels = _assign(x, centroids, chunk)
    sums = jax.ops.segment_sum(x, labels, num_clusters)
    counts = jax.ops.segment_sum(jnp.ones((num,), jnp.float32), labels, num_clusters)
    return jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1.0)[:, None], centroids)

  centroids = jax.lax.fori_loop(0, iterations, step, centroids)
  return _assign(x, centroids, chunk), centroids


def warmup_steps(config, steps_per_epoch):
  return config.la.warmup_epochs * steps_per_epoch


def prepare(config, state, ctx):
  """Refits the clusterings on the bank at the first LA step and every epoch after it."""
  warm = warmup_steps(config, ctx.steps_per_epoch)
  refit = (ctx.step >= warm) & ((ctx.step - warm) % ctx.steps_per_epoch == 0)
  la = config.la

  def fit(bank):
    keys = jax.random.split(ctx.rng, la.num_clusterings)
    fit_one = lambda key: kmeans(key, bank, la.num_clusters, la.kmeans_iterations)[0]
    return jax.lax.map(fit_one, keys)

  labels = jax.lax.cond(refit, fit, lambda bank: state["labels"],
                        jax.lax.stop_gradient(state["bank"]))
  return LATargets(warmup=ctx.step < warm), dict(state, labels=labels)


def background_rows(scores, background):
  """The `background` highest-scoring columns of each row of scores [b, N] (the anchor's
  background neighbours), int [b, K]; no gradient flows through the choice."""
  return jax.lax.top_k(jax.lax.stop_gradient(scores), background)[1]


def la_objective(pos, scores, rows, labels, background):
  """LA of anchors with scores against the whole bank.

  pos: [b] the anchors' scores with their own rows; scores: [b, N] against every row (the own
  row's entry is ignored); rows: [b] own rows; labels: [R, N] cluster of each row per
  clustering; background: K. Returns Objective of [b] (value, InfoNCE bound, cap).
  """
  own = jnp.arange(scores.shape[1])[None, :] == rows[:, None]
  others = jnp.where(own, -jnp.inf, scores)
  near = background_rows(others, background)                                  # [b, K]
  neg = jnp.take_along_axis(scores, near, axis=1)
  close = jnp.any(labels[:, near] == labels[:, rows][:, :, None], axis=0)     # [b, K]
  cap = math.log(background + 1)
  value = bounds.neighbour_view_objective(pos, neg, close, ~close) + cap
  return Objective(value=value, bound=bounds.infonce(pos, neg),
                   cap=jnp.full_like(pos, cap), aux={"close": jnp.sum(close, axis=1)},
                   drawn=base.DrawnNegatives(anchors=rows, rows=near))


def objective(config, z, indices, state, rng, band, targets):
  """z: [1, b, D] unit rows; indices: [b]; targets: LATargets. Values [b]: IR's during the
  warm-up, then LA's."""
  z = z[0]
  bank = jax.lax.stop_gradient(state["bank"]).astype(jnp.float32)
  # Both branches report their negatives as [b, max(K, background)] (base.pad_drawn).
  width = max(config.num_negatives, config.la.background)

  def warm_up(z):
    out = ir.bank_objective(config, z, indices, indices, bank, rng, band)
    return Objective(out.value, out.bound, out.cap, {"close": jnp.zeros_like(indices)},
                     base.pad_drawn(out.drawn, width))

  def local_aggregation(z):
    scores = z @ bank.T / config.temperature
    pos = jnp.sum(z * bank[indices], axis=-1) / config.temperature
    out = la_objective(pos, scores, indices, state["labels"], config.la.background)
    return out._replace(drawn=base.pad_drawn(out.drawn, width))

  return jax.lax.cond(targets.warmup, warm_up, local_aggregation, z)


def update_state(config, state, all_indices, all_z, targets=None):
  del targets
  bank = memory.bank_update(state["bank"], all_indices, all_z[0], config.bank.momentum)
  return dict(state, bank=bank)
