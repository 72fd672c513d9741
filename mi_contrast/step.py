"""The train step: one jitted program over the mesh, written per device as under pmap.

  indices  <- order[step's slice], this device's share of the global batch, where order is the
              epoch's permutation(seed, epoch) of the bank rows (`EpochOrder`: computed once an
              epoch, not in the step)
  views    <- make_views(key(seed, step), images[indices], image_ids=indices)
  z        <- normalise(encoder(views)), BatchNorm statistics over the global batch
  objective<- method (bank scores, ring/ball/uniform negatives, bound), loss = -mean(value)
  params   <- optax update with gradients averaged over devices
  bank     <- updated with the all-gathered (indices, z), identical on every replica
  share    <- false_negative_share: of the negatives the objective drew, the fraction of the
              anchor's class (a diagnostic: only with run.labels, and nothing trains on it)
Data order and randomness are functions of (seed, step) only (run.RootStream, run.StepStream),
so a run restarted from a checkpoint continues exactly, and the device count never changes the
math.
"""

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mi_contrast import input_pipeline
from mi_contrast import memory
from mi_contrast import methods
from mi_contrast import negatives as negatives_lib
from mi_contrast import schedules
from mi_contrast import views as views_lib
from mi_contrast.mesh import AXIS
from mi_contrast.run import RootStream, StepStream, stream


def make_train_step(run, *, state_spec=None):
  """The jitted step of `run` (state_spec: `run.state_specs(config, state)` when the bank is
  sharded; default: the whole state replicated).

  In-memory data: (state, train_images[, order]) -> (state, metrics); order is the epoch's
  permutation of the bank rows on the devices (`EpochOrder`, which the training loop computes
  once an epoch), and the step takes its slice of it and gathers the images on the device.
  Without `order`, the call computes it from the state's step (the same rows, at the cost of a
  permutation per call: for one-off calls).
  Streaming data: (state, images, indices) -> (state, metrics), with images [B, S, S, C] and
  dataset indices [B] split over the devices.
  With `run.labels` (not None), the jitted program takes them as one more input, which the
  returned function passes, and the metrics gain `false_negative_share`; the rest of the step
  is the same program, so training is bit-identical with and without them (a run without
  labels: `dataclasses.replace(run, labels=None)`).
  """
  plan = run.plan

  def in_memory(state, train_images, order, labels=None):
    indices = _device_indices(state, order, plan)
    return per_device(state, train_images[indices], indices, labels)

  def per_device(state, images, indices, labels=None):
    step = state.step
    step_key = jax.random.fold_in(stream(state.rng, RootStream.STEPS), step)
    views = views_lib.make_views(stream(step_key, StepStream.VIEWS),
                                 input_pipeline.as_float(images), run.recipes,
                                 image_ids=indices)
    band, outer = run.band_fn(step, state.ring_state)
    context = methods.StepContext(
        model=run.model, variables={"params": state.params, "batch_stats": state.batch_stats},
        views=views, indices=indices, step=step, steps_per_epoch=plan.steps_per_epoch,
        rng=stream(step_key, StepStream.PREPARE))
    targets, method_state = methods.prepare(run.method, run.config, state.method_state, context)
    loss_fn = _loss_fn(run, state, views, indices, method_state, band, targets,
                       stream(step_key, StepStream.OBJECTIVE))
    (loss, (out, z, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    diagnostics = {}
    if labels is not None and out.drawn is not None:
      diagnostics["false_negative_share"] = false_negative_share(labels, out.drawn)
      if out.drawn.log_weights is not None:
        diagnostics["false_negative_weight"] = false_negative_weight(labels, out.drawn)
    new_state, metrics = _apply(run, state, grads, loss, out, z, batch_stats, indices,
                                method_state, targets, band, outer, diagnostics)
    return new_state, {**metrics, **diagnostics}

  # pmap semantics (check_vma=False): the per-device program states its collectives itself,
  # and every state leaf it returns is replicated by construction (pmean, all_gather), or
  # split as state_spec says (a sharded bank).
  state_spec = P() if state_spec is None else state_spec
  if run.streaming:
    fn, in_specs = per_device, (state_spec, P(AXIS), P(AXIS))
  else:
    fn, in_specs = in_memory, (state_spec, P(), P())   # the images and the order, replicated
  if run.labels is not None:
    in_specs += (P(),)           # the labels, replicated
  sharded = jax.shard_map(fn, mesh=run.mesh, in_specs=in_specs, out_specs=(state_spec, P()),
                          check_vma=False)
  step = jax.jit(sharded, donate_argnums=(0,))
  extra = () if run.labels is None else (run.labels,)
  if run.streaming:
    return (lambda state, *inputs: step(state, *inputs, *extra)) if extra else step
  order_of = epoch_order_fn(run)

  def in_memory_step(state, train_images, order=None):
    # The labels are already on the devices, so a call moves nothing from the host.
    if order is None:
      order = order_of(state.rng, state.step)
    return step(state, train_images, order, *extra)

  return in_memory_step


def epoch_order_fn(run):
  """(rng, step) -> the order of step's epoch: the permutation of the bank rows (int32
  [bank_rows], replicated on the mesh) of stream DATA_ORDER folded with step // steps_per_epoch,
  jitted; rng is the state's root key, step an int32 scalar on the devices (the state's step),
  so a call moves nothing from the host."""
  plan = run.plan

  def order(rng, step):
    data_key = stream(rng, RootStream.DATA_ORDER)
    return jax.random.permutation(jax.random.fold_in(data_key, step // plan.steps_per_epoch),
                                  plan.bank_rows)

  return jax.jit(order, out_shardings=NamedSharding(run.mesh, P()))


class EpochOrder:
  """The in-memory step's `order` input, computed once an epoch: `orders(state, step)` with
  `step` the state's step as a host int (the training loop counts it) returns the order of the
  step's epoch, computing it on the devices (epoch_order_fn) when the epoch changes and
  returning the kept array otherwise. A run resumed mid-epoch computes its epoch's order
  afresh: the same rows in the same order."""

  def __init__(self, run):
    self._order_of = epoch_order_fn(run)
    self._steps_per_epoch = run.plan.steps_per_epoch
    self._epoch = None
    self._order = None

  def __call__(self, state, step):
    epoch = int(step) // self._steps_per_epoch
    if epoch != self._epoch:
      self._order, self._epoch = self._order_of(state.rng, state.step), epoch
    return self._order


def false_negative_share(labels, drawn):
  """The fraction of the global batch's drawn negatives whose class is their anchor's,
  float32 scalar (NaN when no drawn negative has a label: MoCo's first step, whose queue
  holds random keys only).

  labels: int [N] of the pool's images; drawn: methods.DrawnNegatives of this device's
  anchors. Counts are summed over the devices before the division, so 1 and 8 devices give
  the same share; for a fixed number of negatives per anchor it is the mean over anchors.
  """
  same, total = negatives_lib.false_negative_counts(labels, drawn.anchors, drawn.rows,
                                                    drawn.keep)
  same, total = jax.lax.psum((same, total), AXIS)
  return same.astype(jnp.float32) / total.astype(jnp.float32)


def false_negative_weight(labels, drawn):
  """The share of the objective's negative sum (sum_k w_k e_k; w = 1 but for HCL) that falls on
  negatives of the anchor's class, averaged over the global batch's anchors that have a
  labelled negative; float32 scalar (NaN when none has). The hardest negatives dominate the
  sum, so this can exceed the share of the count (`false_negative_share`).

  labels: int [N]; drawn: methods.DrawnNegatives with log_weights (the log of each term).
  """
  labels = jnp.asarray(labels, jnp.int32)
  anchor = labels[drawn.anchors][:, None]
  rows = jnp.broadcast_to(drawn.rows, drawn.log_weights.shape)
  negative = jnp.where(rows >= 0, labels[jnp.maximum(rows, 0)], -1)
  counted = (negative >= 0) & (anchor >= 0)
  if drawn.keep is not None:
    counted = counted & drawn.keep
  logw = jnp.where(counted, drawn.log_weights, -jnp.inf)
  top = jnp.max(logw, axis=1, keepdims=True)
  has = jnp.isfinite(top[:, 0])
  w = jnp.where(counted, jnp.exp(logw - jnp.where(has[:, None], top, 0.0)), 0.0)
  share = (jnp.sum(jnp.where(negative == anchor, w, 0.0), axis=1)
           / jnp.maximum(jnp.sum(w, axis=1), jnp.finfo(jnp.float32).tiny))
  total, anchors = jax.lax.psum((jnp.sum(jnp.where(has, share, 0.0)),
                                 jnp.sum(has, dtype=jnp.int32)), AXIS)
  return total / anchors.astype(jnp.float32)


def _device_indices(state, order, plan):
  """[b] dataset rows of this device's share of the step's global batch: the step's slice of
  `order`, the epoch's permutation of the bank rows (epoch_order_fn)."""
  step, spe, batch = state.step, plan.steps_per_epoch, plan.global_batch
  global_idx = jax.lax.dynamic_slice(order, ((step % spe) * batch,), (batch,))
  return global_idx.reshape(plan.num_devices, plan.per_device_batch)[jax.lax.axis_index(AXIS)]


def _after(values, tree):
  """`tree` unchanged, bit for bit, but computed after every leaf of `values` in the program's
  dataflow.

  The method's state update (a memory bank's rows, a queue) writes into the donated state in
  place only where XLA can order it after every read of that state in the step; reads that the
  update does not depend on (the drawn rows' gather in the forward pass, the bank or queue read
  again by the backward pass) made XLA copy the whole bank twice per step (two 30 MB copies for
  the Fashion-MNIST preset's 60,000 x 128 bank). Every read feeds the loss or the gradients, so
  data derived from them orders the update after the reads: each leaf of `tree`, seen as
  integers of its width, AND-ed with all ones computed from one element of every leaf of
  `values`.
  """
  firsts = [jnp.ravel(v)[0].astype(jnp.float32) for v in jax.tree.leaves(values)]
  bits = jax.lax.bitcast_convert_type(jnp.sum(jnp.stack(firsts)), jnp.int32)
  ones = bits | ~bits      # -1 whatever the values (NaN included)

  def after(x):
    x = jnp.asarray(x)
    if x.dtype == jnp.bool_:
      return x & (ones == -1)
    if jnp.issubdtype(x.dtype, jnp.integer):
      return x & ones.astype(x.dtype)
    width = {1: jnp.int8, 2: jnp.int16, 4: jnp.int32, 8: jnp.int64}[x.dtype.itemsize]
    return jax.lax.bitcast_convert_type(
        jax.lax.bitcast_convert_type(x, width) & ones.astype(width), x.dtype)
  return jax.tree.map(after, tree)


def _loss_fn(run, state, views, indices, method_state, band, targets, rng):
  """params -> (loss, (Objective, z, updated batch_stats)) of the online views: the encoder
  embeds them, the method's objective scores them."""
  num_online = methods.online_views(run.method, run.config)
  local = run.plan.per_device_batch
  online = views[:num_online]

  def loss_fn(params):
    flat = online.reshape((num_online * local,) + online.shape[2:])
    (_, z), updated = run.model.apply({"params": params, "batch_stats": state.batch_stats},
                                      flat, train=True, mutable=["batch_stats"])
    # z [V*b, D], or [V*b, S, D] for a multi-stream encoder (CMC: S = 2).
    z = memory.l2_normalize(z.astype(jnp.float32))
    z = z.reshape((num_online, local) + z.shape[1:])
    out = run.method.objective(run.config, z, indices, method_state, rng, band, targets)
    return -jnp.mean(out.value), (out, z, updated["batch_stats"])

  return loss_fn


def _apply(run, state, grads, loss, out, z, batch_stats, indices, method_state, targets, band,
           outer, reads=()):
  """The update: gradients averaged over devices, the optimiser step, the method's state from
  the all-gathered batch (after `reads`, the other values computed from the old state), the
  adaptive ring schedule; -> (new state, metrics)."""
  config = run.config
  grads = jax.lax.pmean(grads, AXIS)
  updates, opt_state = run.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  all_idx = jax.lax.all_gather(indices, AXIS, tiled=True)
  all_z = jax.lax.all_gather(jax.lax.stop_gradient(z), AXIS, axis=1, tiled=True)
  all_idx, all_z, targets = _after((loss, grads, reads), (all_idx, all_z, targets))
  method_state = run.method.update_state(config, method_state, all_idx, all_z, targets)
  loss = jax.lax.pmean(loss, AXIS)
  ring_state = state.ring_state
  if config.ring.schedule == "adaptive":
    ring_state = schedules.adaptive_update(
        ring_state, loss, delta=config.ring.adaptive_delta, lower=config.ring.outer,
        upper=config.ring.outer_start)
  metrics = _metrics(run, state.step, loss, out, band, outer)
  new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                            opt_state=opt_state, method_state=method_state,
                            ring_state=ring_state)
  return new_state, metrics


def _metrics(run, step, loss, out, band, outer):
  """The step's scalars: loss, bound and its cap (nats, means over the global batch), the
  learning rate, and the band for ball and ring runs."""
  metrics = {
      "loss": loss,
      "bound_nats": jax.lax.pmean(jnp.mean(out.bound), AXIS),
      "log_k_plus_1": jax.lax.pmean(jnp.mean(out.cap), AXIS),
      "learning_rate": run.lr_schedule(step),
  }
  if run.config.negatives != "uniform":
    metrics.update(band_lower=band.lower, band_upper=band.upper, ring_outer=outer)
  if out.clamped is not None:      # dcl, hcl: the share of anchors whose Ng is clamped
    metrics["clamped_fraction"] = jax.lax.pmean(
        jnp.mean(out.clamped.astype(jnp.float32)), AXIS)
  return metrics
