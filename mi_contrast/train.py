"""Training: the train state, the sharded step, the loop, checkpoints, logging and results.

One step, written per device as under pmap (collectives on the axis 'batch') and wrapped in
`jax.jit(jax.shard_map(...))` over a 1-D mesh of every device:
  indices  <- permutation(seed, epoch)[step's slice], this device's share of the global batch
  views    <- make_views(key(seed, step), images[indices], image_ids=indices)
  z        <- normalise(encoder(views)), BatchNorm statistics over the global batch
  objective<- method (bank scores, ring/ball/uniform negatives, bound), loss = -mean(value)
  params   <- optax update with gradients averaged over devices
  bank     <- updated with the all-gathered (indices, z), identical on every replica
Data order and randomness are functions of (seed, step) only, so a run restarted from a
checkpoint continues exactly, and the device count never changes the math.
"""

import collections
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import signal
import time
import warnings
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mi_contrast import config as config_lib
from mi_contrast import evaluate
from mi_contrast import input_pipeline
from mi_contrast import memory
from mi_contrast.mesh import AXIS, make_mesh  # noqa: F401  (make_mesh: train.make_mesh)
from mi_contrast import methods
from mi_contrast import models
from mi_contrast import multihost
from mi_contrast import negatives as negatives_lib
from mi_contrast import report
from mi_contrast import schedules
from mi_contrast.methods import sharded_bank
from mi_contrast import views as views_lib
from mi_contrast import writers
from mi_contrast import workdir_lock

# Every training step of the loop runs under this transfer guard: an implicit transfer between
# host and device inside a step (a stray float(), a host constant, a resharded input) raises
# instead of silently synchronising every step. Metrics are fetched, evaluation runs and
# checkpoints are written outside it. (On the CPU backend JAX does not guard device-to-host
# reads, which copy nothing there; tests/test_scale.py adds a detector for those.)
STEP_TRANSFER_GUARD = "disallow"


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  method_state: Any
  ring_state: Any          # adaptive ring schedule state (schedules.AdaptiveState)
  rng: jax.Array           # raw uint32[2] key: the run's root randomness


# ----------------------------------------------------------------------------------------------
# Building blocks.
# ----------------------------------------------------------------------------------------------


def steps_per_epoch(config, num_train):
  return num_train // config.global_batch_size


def total_steps(config, num_train):
  return config.num_epochs * steps_per_epoch(config, num_train)


def make_optimizer(config, num_train):
  spe = steps_per_epoch(config, num_train)
  total = total_steps(config, num_train)
  warmup = config.warmup_epochs * spe
  lr = config.learning_rate
  if config.lr_schedule == "cosine":
    main = optax.cosine_decay_schedule(lr, max(1, total - warmup))
  elif config.lr_schedule == "step":
    main = optax.piecewise_constant_schedule(
        lr, {int(0.68 * total) - warmup: 0.1, int(0.83 * total) - warmup: 0.1})
  else:
    main = optax.constant_schedule(lr)
  schedule = (optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])
              if warmup else main)
  tx = optax.chain(optax.add_decayed_weights(config.weight_decay),
                   optax.sgd(schedule, momentum=config.momentum))
  return tx, schedule


def make_band_fn(config, num_train):
  """(step, ring_state) -> (Band, outer fraction): traced, so annealing never recompiles.

  A ball is the band with inner fraction 0, i.e. upper = 1.0; methods use the band as given.
  """
  spe = steps_per_epoch(config, num_train)
  total = total_steps(config, num_train)
  ring = config.ring
  if ring.schedule == "adaptive":
    outer_of = lambda step, state: state.value
  else:
    fn = schedules.build(ring.schedule, init=ring.outer_start, final=ring.outer,
                         anneal_steps=max(1, int(round(ring.anneal_fraction * total))),
                         steps_per_epoch=spe, rate=ring.exponential_rate, name="config.ring")
    outer_of = lambda step, state: fn(step)

  def band(step, state):
    outer = jnp.asarray(outer_of(step, state), jnp.float32)
    inner = 0.0 if config.negatives == "ball" else ring.inner
    lower, upper = negatives_lib.fractions_to_quantiles(outer, inner, ring.dynamic_inner)
    return methods.Band(jnp.asarray(lower, jnp.float32), jnp.asarray(upper, jnp.float32)), outer

  return band


def create_train_state(config, model, tx, method, num_train, image_shape):
  root = jax.random.PRNGKey(config.seed)
  dummy = jnp.zeros((2,) + tuple(image_shape), jnp.float32)
  variables = model.clone(bn_axis_name=None).init(jax.random.fold_in(root, 0), dummy, train=False)
  params = variables["params"]
  ring_state = schedules.adaptive_init(config.ring.outer_start, config.ring.adaptive_window)
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=params, batch_stats=variables["batch_stats"],
      opt_state=tx.init(params),
      method_state=method.init_state(jax.random.fold_in(root, 3), config, num_train,
                                     {"params": params, "batch_stats": variables["batch_stats"]}),
      ring_state=ring_state, rng=root)


def shard_bank(config, state, num_devices):
  """With config.bank_sharded, pads the bank to whole shards (see methods/sharded_bank.py)."""
  if not config.bank_sharded:
    return state
  return state.replace(method_state=sharded_bank.shard_state(state.method_state, num_devices))


def state_specs(config, state):
  """PartitionSpecs of the train state: replicated, except a sharded bank's rows."""
  specs = jax.tree.map(lambda _: P(), state)
  if config.bank_sharded:
    specs = specs.replace(method_state=sharded_bank.state_spec(state.method_state))
  return specs


def state_shardings(config, state, mesh):
  return jax.tree.map(lambda spec: NamedSharding(mesh, spec), state_specs(config, state),
                      is_leaf=lambda x: isinstance(x, P))


def view_recipes(config, method):
  """One recipe name per view: `config.views` is one name for every view, or one name per
  view separated by commas (e.g. 'mocov2,simclr')."""
  recipes = [name.strip() for name in config.views.split(",")]
  num_views = methods.num_views(method, config)
  if len(recipes) == 1:
    return recipes * num_views
  if len(recipes) != num_views:
    raise ValueError(f"config.views = {config.views!r} names {len(recipes)} recipes; method "
                     f"{config.method!r} uses {num_views} view(s): give one name, or "
                     f"{num_views} names separated by commas.")
  return recipes


def _device_prefetch(host_batches, sharding, depth=2):
  """Host batches -> global device arrays, `depth` batches ahead of the step that uses them
  (the transfers are asynchronous, so they overlap the running step)."""
  queue = collections.deque()
  to_global = lambda batch: tuple(jax.make_array_from_process_local_data(sharding, x)
                                  for x in batch)
  for batch in host_batches:
    queue.append(to_global(batch))
    if len(queue) > depth:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


def make_train_step(config, model, tx, method, num_train, mesh, *, streaming=False,
                    state_spec=None):
  """The jitted step, state replicated (state_spec: `state_specs(config, state)` when the
  bank is sharded).

  In-memory data: (state, train_images) -> (state, metrics); the step draws its own indices
  from (seed, epoch) and gathers the images on the device.
  Streaming data: (state, images, indices) -> (state, metrics), with images [B, S, S, C] and
  dataset indices [B] split over the devices.
  """
  num_devices = mesh.devices.size
  spe = steps_per_epoch(config, num_train)
  batch = config.global_batch_size
  local = batch // num_devices
  recipes = view_recipes(config, method)
  num_online = methods.online_views(method, config)
  band_fn = make_band_fn(config, num_train)
  _, lr_schedule = make_optimizer(config, num_train)

  def in_memory(state, train_images):
    step = state.step
    data_key = jax.random.fold_in(state.rng, 1)
    order = jax.random.permutation(jax.random.fold_in(data_key, step // spe), num_train)
    global_idx = jax.lax.dynamic_slice(order, ((step % spe) * batch,), (batch,))
    indices = global_idx.reshape(num_devices, local)[jax.lax.axis_index(AXIS)]
    return per_device(state, train_images[indices], indices)

  def per_device(state, images, indices):
    step = state.step
    step_key = jax.random.fold_in(jax.random.fold_in(state.rng, 2), step)
    images = input_pipeline.as_float(images)
    views = views_lib.make_views(jax.random.fold_in(step_key, 0), images, recipes,
                                 image_ids=indices)
    band, outer = band_fn(step, state.ring_state)
    context = methods.StepContext(
        model=model, variables={"params": state.params, "batch_stats": state.batch_stats},
        views=views, indices=indices, step=step, steps_per_epoch=spe,
        rng=jax.random.fold_in(step_key, 2))
    targets, method_state = methods.prepare(method, config, state.method_state, context)
    online = views[:num_online]

    def loss_fn(params):
      flat = online.reshape((num_online * local,) + online.shape[2:])
      (_, z), updated = model.apply({"params": params, "batch_stats": state.batch_stats}, flat,
                                    train=True, mutable=["batch_stats"])
      # z [V*b, D], or [V*b, S, D] for a multi-stream encoder (CMC: S = 2).
      z = memory.l2_normalize(z.astype(jnp.float32))
      z = z.reshape((num_online, local) + z.shape[1:])
      out = method.objective(config, z, indices, method_state,
                             jax.random.fold_in(step_key, 1), band, targets)
      return -jnp.mean(out.value), (out, z, updated["batch_stats"])

    (loss, (out, z, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    grads = jax.lax.pmean(grads, AXIS)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    all_idx = jax.lax.all_gather(indices, AXIS, tiled=True)
    all_z = jax.lax.all_gather(jax.lax.stop_gradient(z), AXIS, axis=1, tiled=True)
    method_state = method.update_state(config, method_state, all_idx, all_z, targets)
    loss = jax.lax.pmean(loss, AXIS)
    ring_state = state.ring_state
    if config.ring.schedule == "adaptive":
      ring_state = schedules.adaptive_update(
          ring_state, loss, delta=config.ring.adaptive_delta, lower=config.ring.outer,
          upper=config.ring.outer_start)
    metrics = {
        "loss": loss,
        "bound_nats": jax.lax.pmean(jnp.mean(out.bound), AXIS),
        "log_k_plus_1": jax.lax.pmean(jnp.mean(out.cap), AXIS),
        "learning_rate": lr_schedule(step),
    }
    if config.negatives != "uniform":
      metrics.update(band_lower=band.lower, band_upper=band.upper, ring_outer=outer)
    new_state = state.replace(step=step + 1, params=params, batch_stats=batch_stats,
                              opt_state=opt_state, method_state=method_state,
                              ring_state=ring_state)
    return new_state, metrics

  # pmap semantics (check_vma=False): the per-device program states its collectives itself,
  # and every state leaf it returns is replicated by construction (pmean, all_gather), or
  # split as state_spec says (a sharded bank).
  state_spec = P() if state_spec is None else state_spec
  if streaming:
    fn, in_specs = per_device, (state_spec, P(AXIS), P(AXIS))
  else:
    fn, in_specs = in_memory, (state_spec, P())
  sharded = jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=(state_spec, P()),
                          check_vma=False)
  return jax.jit(sharded, donate_argnums=(0,))


# ----------------------------------------------------------------------------------------------
# Checkpoints.
# ----------------------------------------------------------------------------------------------


def _state_dict(state):
  return flax.serialization.to_state_dict(state)


def checkpoint_manager(workdir, config):
  options = ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints, create=True,
                                         enable_async_checkpointing=False)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"),
                               options=options)


def restore_latest(manager, state, sharding):
  """Restores the newest readable checkpoint into `state`'s structure; None if there is none.

  `sharding`: one sharding for every leaf, or a TrainState of shardings (`state_shardings`).

  A corrupt or half-written newest checkpoint falls back to the previous one with a warning.
  """
  steps = sorted(manager.all_steps(), reverse=True)
  if isinstance(sharding, TrainState):
    target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          _state_dict(state), _state_dict(sharding))
  else:
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                          _state_dict(state))
  errors = []
  for step in steps:
    try:
      restored = manager.restore(step, args=ocp.args.StandardRestore(target))
    except Exception as e:  # orbax raises many types for damaged files
      message = (f"checkpoint at step {step} in {manager.directory} is unreadable "
                 f"({type(e).__name__}: {e}); falling back to an older one.")
      logging.warning(message)
      warnings.warn(message, UserWarning)
      errors.append(f"step {step}: {type(e).__name__}: {e}")
      continue
    if errors:
      if multihost.is_lead():
        _move_aside(manager, [s for s in steps if s > step])
      multihost.sync("checkpoints moved aside")
      manager.reload()
    return flax.serialization.from_state_dict(state, restored), step
  if steps:
    raise RuntimeError(f"{manager.directory} holds checkpoints {steps} but none can be read:\n  "
                       + "\n  ".join(errors) + "\nMove them aside to start from scratch.")
  return None


def _move_aside(manager, steps):
  """Moves unreadable checkpoints to <workdir>/damaged_checkpoints/: kept, never deleted."""
  root = os.path.dirname(str(manager.directory))
  for step in steps:
    source = os.path.join(str(manager.directory), str(step))
    target = os.path.join(root, "damaged_checkpoints", f"{step}-{int(time.time())}")
    os.makedirs(os.path.dirname(target), exist_ok=True)
    os.replace(source, target)
    logging.warning("moved the unreadable checkpoint of step %d to %s", step, target)


# ----------------------------------------------------------------------------------------------
# Results.
# ----------------------------------------------------------------------------------------------


def params_digest(params):
  """(sha256 hex of the parameters' bytes in tree order, L2 norm of all parameters)."""
  digest = hashlib.sha256()
  total = 0.0
  for leaf in jax.tree.leaves(params):
    array = np.ascontiguousarray(np.asarray(leaf, np.float32))
    digest.update(array.tobytes())
    total += float(np.sum(array.astype(np.float64) ** 2))
  return digest.hexdigest(), math.sqrt(total)


def device_images(config, data, mesh):
  """In-memory data on every device ({'train', 'test', 'pretrain'}) and the encoder's input
  shape [H, W, C]; streaming data has no device copy ({})."""
  if isinstance(data, input_pipeline.StreamingData):
    return {}, (config.image_size, config.image_size, 3)
  replicated = NamedSharding(mesh, P())
  put = lambda x: input_pipeline.to_device(x, config.image_size, replicated)
  images = {"train": put(data.train_images), "test": put(data.test_images)}
  images["pretrain"] = images["train"] if data.pretrain_images is None else put(data.pretrain)
  return images, tuple(images["train"].shape[1:])


def split_features(config, model, variables, data, images, mesh):
  """Features of the labelled train and test splits: ((h, z, labels), (h, z, labels)).

  In-memory data: from the images on the device. Streaming data: centre crops read from disk
  (train and validation splits), each process reading its own shard.
  """
  if isinstance(data, input_pipeline.StreamingData):
    local = config.global_batch_size // jax.process_count()
    return tuple(evaluate.extract_features_stream(model, variables,
                                                  data.eval_batches(split, local), mesh)
                 for split in ("train", "validation"))
  train = evaluate.extract_features(model, variables, images["train"], mesh)
  test = evaluate.extract_features(model, variables, images["test"], mesh)
  return (*train, data.train_labels), (*test, data.test_labels)


def probe_model(config, model, variables, data, images, mesh):
  """kNN / 1-NN, the linear probe and, for in-memory data, the few-shot probes (backbone
  features) of a network.

  Returns:
    {'knn_top1', 'nn1_top1', 'linear_top1', 'linear_top5'} (floats) and, unless the data are
    streamed, 'fewshot': `fewshot_probe`'s {str(n): {'mean', 'std'}}.
  """
  train, test = split_features(config, model, variables, data, images, mesh)
  results = _knn(config, data.num_classes, train, test)
  probe = evaluate.linear_probe(train[0], train[2], test[0], test[2],
                                **probe_options(config, data))
  results.update(linear_top1=probe["top1"], linear_top5=probe["top5"])
  if not isinstance(data, input_pipeline.StreamingData):
    results["fewshot"] = fewshot_probe(train[0], train[2], test[0], test[2])
  return results


# The few-shot draws' seed: fixed, so every network and every run of a dataset is probed on the
# same labelled images (evaluate.fewshot_indices).
FEWSHOT_SEED = 0


def fewshot_probe(train_x, train_y, test_x, test_y):
  """evaluate.fewshot_probe with the protocol's settings (n = 1, 5, 10; 5 draws;
  FEWSHOT_SEED): {str(n): {'mean', 'std'}} test top-1 accuracy."""
  return evaluate.fewshot_probe(train_x, train_y, test_x, test_y, shots=evaluate.FEWSHOT_SHOTS,
                                num_draws=evaluate.FEWSHOT_DRAWS, seed=FEWSHOT_SEED)


def fewshot_settings():
  """The few-shot protocol's settings, recorded next to its numbers."""
  return {"shots": list(evaluate.FEWSHOT_SHOTS), "num_draws": evaluate.FEWSHOT_DRAWS,
          "seed": FEWSHOT_SEED, "weight_decay": evaluate.FEWSHOT_WEIGHT_DECAY,
          "features": "standardised with the whole training split's statistics",
          "networks": ["trained", "random_init", "raw_pixels"]}


def untrained_variables(config, model, tx, method, num_rows, image_shape):
  """{'params', 'batch_stats'} of the network before training, built again from config.seed
  as `create_train_state` builds them (a run's initial buffers are donated to its first step)."""
  fresh = create_train_state(config, model, tx, method, num_rows, image_shape)
  return {"params": fresh.params, "batch_stats": fresh.batch_stats}


def raw_pixel_probes(config, data, images, *, linear=True):
  """The linear probe, the weighted kNN and the few-shot probes on raw pixels.

  In-memory data: the flattened images the encoder sees (`device_images`: resized to
  config.image_size), with the protocols of the backbone features (kNN on L2-normalised
  pixels with config.knn_k and config.knn_temperature). Streamed pixels are never all in
  memory: every value is None. linear=False skips the linear probe ('linear_top1' None).
  Returns:
    {'linear_top1': float, 'knn_top1': float, 'fewshot': {str(n): {'mean', 'std'}}}.
  """
  if isinstance(data, input_pipeline.StreamingData):
    return {"linear_top1": None, "knn_top1": None, "fewshot": None}
  train_x = np.asarray(images["train"])
  train_x = train_x.reshape(len(train_x), -1)
  test_x = np.asarray(images["test"])
  test_x = test_x.reshape(len(test_x), -1)
  probe = {"top1": None}
  if linear:
    probe = evaluate.linear_probe(train_x, data.train_labels, test_x, data.test_labels,
                                  **probe_options(config, data))
  knn, _ = evaluate.knn_accuracy(evaluate.normalize(train_x), data.train_labels,
                                 evaluate.normalize(test_x), data.test_labels, k=config.knn_k,
                                 temperature=config.knn_temperature,
                                 num_classes=data.num_classes)
  return {"linear_top1": probe["top1"], "knn_top1": knn,
          "fewshot": fewshot_probe(train_x, data.train_labels, test_x, data.test_labels)}


def _knn(config, num_classes, train, test):
  """kNN and 1-NN top-1 from (h, z, labels) of the train and test splits."""
  if config.knn_features == "backbone":
    train_f, test_f = evaluate.normalize(train[0]), evaluate.normalize(test[0])
  else:
    train_f, test_f = train[1], test[1]
  knn, nn1 = evaluate.knn_accuracy(train_f, train[2], test_f, test[2], k=config.knn_k,
                                   temperature=config.knn_temperature, num_classes=num_classes)
  return {"knn_top1": knn, "nn1_top1": nn1}


def probe_options(config, data):
  return dict(num_classes=data.num_classes, epochs=config.probe_epochs,
              learning_rate=config.probe_learning_rate, weight_decay=config.probe_weight_decay,
              batch_size=config.probe_batch_size, seed=config.seed)


def _write_json(path, payload):
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(payload, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


class _Preemption:
  """SIGTERM -> checkpoint at the next step boundary, then a clean exit.

  With several processes, JAX's preemption service catches the signal instead: any process's
  notice reaches all of them, and `reached(step)` turns True at the same step everywhere, so
  every process joins the same collective checkpoint.
  """

  def __init__(self):
    self.requested = False
    self._previous = None
    self._multiprocess = jax.process_count() > 1

  def __enter__(self):
    if self._multiprocess:
      return self
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread: no handler
      self._previous = None
    return self

  def reached(self, step):
    """Whether to checkpoint and stop after `step` (no device synchronisation)."""
    if self._multiprocess:
      from jax.experimental import multihost_utils
      return multihost_utils.reached_preemption_sync_point(step)
    return self.requested

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


_RUN_DEFINING_FIELDS = ("dataset", "model", "width", "stem", "head_hidden", "embedding_dim",
                        "method", "negatives", "num_negatives", "global_batch_size", "seed",
                        "split_seed", "test_fraction", "eval_split", "validation_fraction",
                        "image_size", "views", "num_views", "bound", "nce_partition",
                        "neighbour_views", "cmc", "la", "bank_dtype", "bank_sharded")


def _check_resume_config(workdir, config, num_train):
  """A workdir's checkpoints may only be continued by a config that defines the same run."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  with open(path) as f:
    saved = json.load(f)
  current = json.loads(config.to_json())
  defaults = config_lib.base_config()  # fields added since the checkpoint's config was saved
  saved = {**{k: defaults[k] for k in _RUN_DEFINING_FIELDS if k not in saved}, **saved}
  diffs = [f"{k}: checkpoint {saved.get(k)!r} vs config {current.get(k)!r}"
           for k in _RUN_DEFINING_FIELDS if saved.get(k) != current.get(k)]
  run_path = os.path.join(workdir, "run.json")
  saved_rows = None
  if os.path.exists(run_path):
    with open(run_path) as f:
      saved_rows = json.load(f).get("memory_bank_rows")
  if saved_rows is not None and saved_rows != num_train:
    diffs.append(f"memory bank size (dataset rows): checkpoint {saved_rows} vs "
                 f"this run {num_train}")
  if diffs:
    raise ValueError(f"{workdir} holds checkpoints of a run with another configuration:\n  "
                     + "\n  ".join(diffs) + "\nUse a new --workdir, or the saved config "
                     f"({path}).")


# ----------------------------------------------------------------------------------------------
# The loop.
# ----------------------------------------------------------------------------------------------


def _step_guard():
  """The context every step of the loop runs in (inputs fetched and step dispatched)."""
  return jax.transfer_guard(STEP_TRANSFER_GUARD)


@dataclasses.dataclass
class RunOutcome:
  results: dict
  preempted: bool = False
  reused: bool = False     # a finished run's saved results.json, returned without probing


def train_and_evaluate(config, workdir, *, stop_after_steps=None, reevaluate=False):
  """Trains (resuming from `workdir`'s newest checkpoint), evaluates, writes results.json.

  Process 0 holds the workdir's lock (workdir_lock: `<workdir>/run.lock`) for the whole call,
  so a second run on the same workdir is refused before it writes anything.

  A finished run started again (its newest checkpoint is at the last step) returns the saved
  results.json without probing, when that file is of the same run: the same steps, the same
  config (`config_sha256`) and the checkpoint's `params_sha256`. Otherwise, or with
  `reevaluate`, it probes the final network again and rewrites results.json.

  Args:
    config: a ConfigDict from configs/*.py.
    workdir: directory for checkpoints, metrics and results.
    stop_after_steps: stop (with a checkpoint) once this step is reached; for tests of resume.
    reevaluate: probe a finished run again even if its results.json is up to date.
  Returns:
    RunOutcome with the results dict (also written to workdir/results.json when finished). For
    saved results (`reused`), 'resumed_from_step' is this call's (the last step).
  """
  is_lead = multihost.is_lead()
  created = is_lead and not os.path.exists(workdir)
  if is_lead:
    os.makedirs(workdir, exist_ok=True)
  # One process: a SIGTERM outside the loop (loading, compiling, probing) exits through the
  # lock's release. Several: JAX's preemption service owns SIGTERM.
  on_sigterm = (workdir_lock.exit_on_sigterm() if jax.process_count() == 1
                else contextlib.nullcontext())
  try:
    with workdir_lock.held(workdir, enabled=is_lead), on_sigterm:
      multihost.sync("workdir lock")  # the peers write nothing before process 0 holds the lock
      return _train_and_evaluate(config, workdir, stop_after_steps=stop_after_steps,
                                 reevaluate=reevaluate)
  finally:
    if created:  # a run that failed before writing anything leaves no empty workdir behind
      _remove_if_empty(workdir)


def _remove_if_empty(workdir):
  """Removes `workdir` if it holds nothing but an empty checkpoints/ folder (or nothing)."""
  checkpoints = os.path.join(workdir, "checkpoints")
  if os.listdir(workdir) == ["checkpoints"] and not os.listdir(checkpoints):
    os.rmdir(checkpoints)
  if not os.listdir(workdir):
    os.rmdir(workdir)


def _config_digest(config):
  """sha256 of the whole config (sorted JSON): results.json's `config_sha256`."""
  text = json.dumps(json.loads(config.to_json()), sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()


def _saved_results(config, workdir, manager, method, mesh):
  """A finished run's results.json if it is this run's, else None (then the run probes).

  Cheap, for a finished run started again: no dataset, no network initialisation, no images on
  the device, no probe. It reads run.json (the memory-bank rows and channel statistics the run
  was built with) and results.json, and restores the newest checkpoint into an abstract target.
  It returns the results only if that checkpoint is at the run's last step, results.json has
  the same steps and the same config digest (config_sha256: probe settings included), and the
  checkpoint's parameters hash to results.json's params_sha256. Anything else means None:
  the normal path then restores (damaged checkpoints are handled by `restore_latest`) and
  probes.
  """
  steps = manager.all_steps()
  results_path = os.path.join(workdir, "results.json")
  run_path = os.path.join(workdir, "run.json")
  if not steps or not os.path.exists(results_path) or not os.path.exists(run_path):
    return None
  try:
    with open(results_path) as f:
      saved = json.load(f)
    with open(run_path) as f:
      run = json.load(f)
    num_rows = int(run["memory_bank_rows"])
    mean, std = list(run["channel_mean"]), list(run["channel_std"])
  except (OSError, ValueError, KeyError, TypeError):
    return None
  num_steps = total_steps(config, num_rows)
  if (max(steps) != num_steps or not isinstance(saved, dict)
      or saved.get("steps") != num_steps or saved.get("num_pretrain") != num_rows
      or saved.get("config_sha256") != _config_digest(config)):
    return None
  _check_resume_config(workdir, config, num_rows)
  model = models.build_encoder(config, mean, std, bn_axis_name=AXIS)
  tx, _ = make_optimizer(config, num_rows)
  image_shape = (config.image_size, config.image_size, len(mean))  # as device_images gives
  abstract = jax.eval_shape(lambda: shard_bank(
      config, create_train_state(config, model, tx, method, num_rows, image_shape),
      mesh.devices.size))
  shardings = _state_dict(state_shardings(config, abstract, mesh))
  target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        _state_dict(abstract), shardings)
  try:
    restored = manager.restore(num_steps, args=ocp.args.StandardRestore(target))
  except Exception as e:  # left to restore_latest, which reports and handles damage
    logging.info("finished run: the checkpoint of step %d did not restore here (%s: %s); "
                 "probing.", num_steps, type(e).__name__, e)
    return None
  sha, _ = params_digest(restored["params"])
  if sha != saved.get("params_sha256"):
    logging.info("finished run: results.json's params_sha256 is not the checkpoint's; probing.")
    return None
  return dict(saved, resumed_from_step=num_steps)


def _train_and_evaluate(config, workdir, *, stop_after_steps, reevaluate):
  start_time = time.time()
  mesh = make_mesh()
  num_devices = mesh.devices.size
  config_lib.validate(config, num_devices=num_devices)
  method = methods.get(config.method)
  for recipe in view_recipes(config, method):
    views_lib.normalize_recipe(recipe)
  is_lead = multihost.is_lead()
  manager = checkpoint_manager(workdir, config)
  saved = None if reevaluate else _saved_results(config, workdir, manager, method, mesh)
  if saved is not None:  # a finished run started again: its saved results, not probed again
    logging.info("The run finished (step %d of %d) and %s is up to date: not probing again "
                 "(--reevaluate probes again).", saved["steps"], saved["steps"],
                 os.path.join(workdir, "results.json"))
    return RunOutcome(saved, reused=True)
  data = input_pipeline.load_dataset(config)
  config_lib.validate(config, num_devices=num_devices, num_train=data.num_pretrain)
  if manager.all_steps():
    _check_resume_config(workdir, config, data.num_pretrain)

  streaming = isinstance(data, input_pipeline.StreamingData)
  num_rows = data.num_pretrain  # memory-bank rows: one per pretraining image
  mean, std = data.channel_stats()
  model = models.build_encoder(config, mean, std, bn_axis_name=AXIS)
  tx, _ = make_optimizer(config, num_rows)
  num_steps = total_steps(config, num_rows)
  images, image_shape = device_images(config, data, mesh)
  init_state = shard_bank(
      config, create_train_state(config, model, tx, method, num_rows, image_shape), num_devices)
  shardings = state_shardings(config, init_state, mesh)

  restored = restore_latest(manager, init_state, shardings)
  if restored is None:
    state, resumed_from = jax.device_put(init_state, shardings), 0
    if is_lead:
      _write_json(os.path.join(workdir, "config.json"), json.loads(config.to_json()))
      _write_json(os.path.join(workdir, "run.json"), {
          "memory_bank_rows": num_rows, "num_devices": num_devices,
          "num_processes": jax.process_count(),
          "channel_mean": list(mean), "channel_std": list(std)})
  else:
    state, resumed_from = restored
    logging.info("Resuming from the checkpoint at step %d of %d.", resumed_from, num_steps)

  writer = writers.create(workdir, is_lead=is_lead)
  if resumed_from == 0:
    writer.write_hparams({k: v for k, v in json.loads(config.to_json()).items()
                          if not isinstance(v, dict)})
  train_step = make_train_step(config, model, tx, method, num_rows, mesh, streaming=streaming,
                               state_spec=state_specs(config, init_state))
  if streaming:
    stream = data.train_batches(config.seed, resumed_from, config.global_batch_size,
                                steps_per_epoch(config, num_rows))
    step_inputs = _device_prefetch(stream, NamedSharding(mesh, P(AXIS))).__next__
  else:
    step_inputs = lambda: (images["pretrain"],)
  band_fn = make_band_fn(config, num_rows)
  band_start = [float(x) for x in band_fn(0, init_state.ring_state)[0]]

  pending = []        # (step, device metrics) not yet fetched: no host sync per step
  last_good = resumed_from if resumed_from else None
  step = resumed_from
  last_metrics = {}
  progress = writers.Progress(num_steps, resumed_from, config.global_batch_size, num_devices)
  preempted = False
  stop_at = num_steps if stop_after_steps is None else min(num_steps, stop_after_steps)

  def flush_metrics():
    nonlocal pending, last_metrics
    if not pending:
      return
    fetched = jax.device_get(pending)
    pending = []
    for s, m in fetched:
      m = {k: float(v) for k, v in m.items()}
      if not math.isfinite(m["loss"]):
        where = (f"the last good checkpoint is step {last_good} in {manager.directory}"
                 if last_good is not None else "no checkpoint was written yet")
        raise FloatingPointError(
            f"non-finite loss {m['loss']} at step {s}; stopping without checkpointing the bad "
            f"state ({where}). Lower config.learning_rate or check the data.")
      last_metrics = m
    writer.write_scalars(fetched[-1][0], last_metrics)
    progress.report(fetched[-1][0], last_metrics)

  def save(at_step):
    nonlocal last_good
    flush_metrics()  # never checkpoint a state whose loss is not finite
    manager.save(at_step, args=ocp.args.StandardSave(_state_dict(state)), force=True)
    manager.wait_until_finished()
    last_good = at_step

  with _Preemption() as preemption:
    while step < stop_at:
      with _step_guard():
        state, metrics = train_step(state, *step_inputs())
      step += 1
      pending.append((step, metrics))
      if step % config.log_every_steps == 0 or step == stop_at:
        flush_metrics()
      if step % config.eval_every_steps == 0 and step < num_steps:
        knn = probe_knn(config, model, state, data, images, mesh)
        writer.write_scalars(step, knn)
        logging.info("step %d: kNN top-1 %.4f, 1-NN top-1 %.4f", step, knn["knn_top1"],
                     knn["nn1_top1"])
      if step % config.checkpoint_every_steps == 0 or step == stop_at:
        save(step)
      if preemption.reached(step):
        if last_good != step:
          save(step)
        logging.warning("SIGTERM: checkpoint written at step %d; the same command resumes.",
                        step)
        preempted = True
        break
    flush_metrics()

  if step < num_steps:
    writer.flush()
    return RunOutcome({"steps": step, "resumed_from_step": resumed_from}, preempted=preempted)

  variables = {"params": state.params, "batch_stats": state.batch_stats}
  final = probe_model(config, model, variables, data, images, mesh)
  init_vars = untrained_variables(config, model, tx, method, num_rows, image_shape)
  random_init = probe_model(config, model, init_vars, data, images, mesh)
  raw = raw_pixel_probes(config, data, images)  # all None for streamed data
  fewshot = None  # streamed data: no few-shot probes
  if not streaming:
    fewshot = evaluate.fewshot_table({"trained": final["fewshot"],
                                      "random_init": random_init["fewshot"],
                                      "raw_pixels": raw["fewshot"]})
  final_band = band_fn(step - 1, state.ring_state)[0]
  sha, l2 = params_digest(state.params)
  if not last_metrics:  # a finished run started again: its last logged training metrics
    last_metrics = writers.last_scalars(workdir, ("loss", "bound_nats", "log_k_plus_1"))
  results = {
      "method": config.method,
      "negatives": methods.describe_negatives(config)[0],
      "negative_pool": methods.describe_negatives(config)[1],
      "bound": config.bound,
      "objective": methods.describe_objective(config),
      "dataset": config.dataset,
      "eval_split": config.eval_split,   # 'validation': the probes' split came from training
      "knn_top1": final["knn_top1"],
      "nn1_top1": final["nn1_top1"],
      "linear_top1": final["linear_top1"],
      "linear_top5": final["linear_top5"],
      "raw_pixels_linear_top1": raw["linear_top1"],
      "raw_pixels_knn_top1": raw["knn_top1"],
      "random_init_knn_top1": random_init["knn_top1"],
      "random_init_nn1_top1": random_init["nn1_top1"],
      "random_init_linear_top1": random_init["linear_top1"],
      "fewshot": fewshot,
      "bound_nats": last_metrics["bound_nats"],
      "log_k_plus_1": last_metrics["log_k_plus_1"],
      "loss": last_metrics["loss"],
      "band_start": band_start if config.negatives != "uniform" else None,
      "band_end": ([float(x) for x in final_band] if config.negatives != "uniform" else None),
      "steps": step,
      "resumed_from_step": resumed_from,
      "wall_seconds": time.time() - start_time,
      "params_sha256": sha,
      "params_l2": l2,
      "config_sha256": _config_digest(config),
      "num_devices": num_devices,
      "num_processes": jax.process_count(),
      "num_train": data.num_train,
      "num_pretrain": num_rows,
      "num_test": data.num_test,
  }
  writer.write_scalars(step, {k: v for k, v in final.items() if k != "fewshot"})
  writer.flush()
  if is_lead:
    _write_json(os.path.join(workdir, "results.json"), results)
    report.write_report(workdir)
  logging.info("results: %s", json.dumps(results, sort_keys=True))
  return RunOutcome(results)


def probe_knn(config, model, state, data, images, mesh):
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  train, test = split_features(config, model, variables, data, images, mesh)
  return _knn(config, data.num_classes, train, test)
