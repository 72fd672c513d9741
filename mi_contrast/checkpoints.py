"""Checkpoints of a run: the orbax manager, restore with fallback, the resume check, preemption,
and a run restored from its workdir alone (`load_run_config`, `restore_run`)."""

import json
import os
import signal
import time
import warnings

import flax
import jax
import orbax.checkpoint as ocp
from absl import logging

from mi_contrast import config as config_lib
from mi_contrast import multihost
from mi_contrast import run as run_lib


def state_dict(state):
  return flax.serialization.to_state_dict(state)


def checkpoint_dir(workdir):
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def checkpoint_manager(workdir, config):
  options = ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints, create=True,
                                         enable_async_checkpointing=False)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def save(manager, step, state):
  """Writes the checkpoint of `step` and waits until it is on disk."""
  manager.save(step, args=ocp.args.StandardSave(state_dict(state)), force=True)
  manager.wait_until_finished()


def restore_latest(manager, state, sharding):
  """Restores the newest readable checkpoint into `state`'s structure; None if there is none.

  `sharding`: one sharding for every leaf, or a TrainState of shardings (`run.state_shardings`).

  A corrupt or half-written newest checkpoint falls back to the previous one with a warning;
  the unreadable ones are moved aside (`<workdir>/damaged_checkpoints/`), never deleted.
  Returns:
    (state, step), or None when the manager holds no checkpoint.
  """
  steps = sorted(manager.all_steps(), reverse=True)
  target = _abstract_target(state, sharding)
  errors = []
  for step in steps:
    try:
      restored = _restore_step(manager, step, target, state)
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


def _abstract_target(state, sharding):
  """`state`'s state dict as ShapeDtypeStructs placed by `sharding` (one sharding, or a
  TrainState of shardings): what orbax restores into."""
  if isinstance(sharding, run_lib.TrainState):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        state_dict(state), state_dict(sharding))
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                      state_dict(state))


def _restore_step(manager, step, target, state):
  """The checkpoint of `step` restored into `target` (a state dict of ShapeDtypeStructs).

  A checkpoint of an earlier version may lack leaves this version's state has (MoCo's
  queue_ids): those keep their initial values from `state`, placed as the target says, with
  a warning that names them; every other leaf is restored.
  """
  present = _checkpoint_tree(manager.directory, step)
  if present is None:  # no readable metadata: let the restore report the damage
    return manager.restore(step, args=ocp.args.StandardRestore(target))
  missing = []

  def split(target, present, path):
    if not isinstance(target, dict):
      return target
    kept = {}
    for key, value in target.items():
      if key not in present:
        missing.append(path + (key,))
      else:
        kept[key] = split(value, present[key], path + (key,))
    return kept

  kept = split(target, present, ())
  restored = manager.restore(step, args=ocp.args.StandardRestore(kept))
  initial = state_dict(state)
  for path in missing:
    value, spec, into = initial, target, restored
    for key in path:
      value, spec = value[key], spec[key]
    for key in path[:-1]:
      into = into[key]
    place = lambda x, s: jax.device_put(x, s.sharding) if s.sharding is not None else x
    into[path[-1]] = jax.tree.map(place, value, spec)
  if missing:
    names = ", ".join(".".join(str(k) for k in path) for path in missing)
    message = (f"checkpoint at step {step} in {manager.directory} is of an earlier version "
               f"without {names}: starting those from their initial values.")
    logging.warning(message)
    warnings.warn(message, UserWarning)
  return restored


def _checkpoint_tree(directory, step):
  """The nested dict of a checkpoint's leaves' metadata, or None if it cannot be read."""
  reader = ocp.CheckpointManager(directory, item_handlers=ocp.StandardCheckpointHandler())
  try:
    return reader.item_metadata(step)
  except Exception:  # orbax raises many types for damaged files
    return None
  finally:
    reader.close()


def _move_aside(manager, steps):
  """Moves unreadable checkpoints to <workdir>/damaged_checkpoints/: kept, never deleted."""
  root = os.path.dirname(str(manager.directory))
  for step in steps:
    source = os.path.join(str(manager.directory), str(step))
    target = os.path.join(root, "damaged_checkpoints", f"{step}-{int(time.time())}")
    os.makedirs(os.path.dirname(target), exist_ok=True)
    os.replace(source, target)
    logging.warning("moved the unreadable checkpoint of step %d to %s", step, target)


class Preemption:
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


# The config fields that define a run's checkpoints: a config that differs in any of them may
# not continue them (a section: any of its fields).
RUN_DEFINING_FIELDS = ("dataset", "model", "width", "stem", "head_hidden", "embedding_dim",
                       "method", "negatives", "num_negatives", "global_batch_size", "seed",
                       "split_seed", "test_fraction", "eval_split", "validation_fraction",
                       "image_size", "views", "num_views", "bound", "tau_plus", "hcl_beta",
                       "ir", "cmc", "la", "bank")


def check_resume_config(workdir, config, bank_rows):
  """A workdir's checkpoints may only be continued by a config that defines the same run.

  config.json may be in an older version's layout (config.upgrade_saved); fields added since
  it was saved take their defaults.
  """
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  with open(path) as f:
    saved = config_lib.upgrade_saved(json.load(f))
  current = json.loads(config.to_json())
  defaults = json.loads(config_lib.base_config().to_json())
  diffs = []
  for key in RUN_DEFINING_FIELDS:
    old, new = saved.get(key, defaults[key]), current.get(key)
    if isinstance(defaults[key], dict) and isinstance(old, dict) and isinstance(new, dict):
      old = {**defaults[key], **old}  # a section's fields added since: their defaults
      diffs += [f"{key}.{k}: checkpoint {old.get(k)!r} vs config {new.get(k)!r}"
                for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    elif old != new:
      diffs.append(f"{key}: checkpoint {old!r} vs config {new!r}")
  saved_rows = read_run_record(workdir).get("memory_bank_rows")
  if saved_rows is not None and saved_rows != bank_rows:
    diffs.append(f"memory bank size (dataset rows): checkpoint {saved_rows} vs "
                 f"this run {bank_rows}")
  if diffs:
    raise ValueError(f"{workdir} holds checkpoints of a run with another configuration:\n  "
                     + "\n  ".join(diffs) + "\nUse a new --workdir, or the saved config "
                     f"({path}).")


def read_run_record(workdir):
  """<workdir>/run.json ({} if absent): the sizes a run was built with (memory_bank_rows,
  num_devices, num_processes, channel_mean, channel_std)."""
  path = os.path.join(workdir, "run.json")
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def load_run_config(workdir):
  """The ConfigDict a run was started with (<workdir>/config.json), validated.

  Fields this version has and the saved file lacks (added since the run) keep their defaults;
  the flat fields of older versions move to their sections (config.upgrade_saved).
  """
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist: {workdir} is not a training run directory "
                            "(python -m mi_contrast.main writes config.json when a run starts).")
  with open(path) as f:
    saved = config_lib.upgrade_saved(json.load(f))  # an older version's layout too
  config = config_lib.base_config()

  def merge(target, values, prefix):
    for key, value in values.items():
      if key not in target:
        raise ValueError(f"{path}: config.{prefix}{key} is not a known field of this version.")
      if isinstance(value, dict):
        merge(target[key], value, f"{prefix}{key}.")
      else:
        target[key] = value

  merge(config, saved, "")
  # One device: nothing here splits the training batch, so the device count is not checked.
  return config_lib.validate(config, num_devices=1)


def saved_method_state(workdir):
  """Shapes and dtypes of the method state (memory bank, queue) in the newest checkpoint.

  The bank's rows are the training-set size, which the config alone does not give; reading
  them from the checkpoint lets a run be restored without loading its dataset.
  """
  reader = ocp.CheckpointManager(checkpoint_dir(workdir),
                                 item_handlers=ocp.StandardCheckpointHandler())
  errors = []
  try:
    for step in sorted(reader.all_steps(), reverse=True):
      try:
        metadata = reader.item_metadata(step)
        tree = metadata["method_state"] if "method_state" in metadata else {}
      except Exception as e:  # orbax raises many types for damaged files
        errors.append(f"step {step}: {type(e).__name__}: {e}")
        continue
      return jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype), dict(tree))
  finally:
    reader.close()
  raise RuntimeError(f"no readable checkpoint metadata in {checkpoint_dir(workdir)}:\n  "
                     + "\n  ".join(errors))


def restore_run(workdir, run, step=None):
  """The newest checkpoint of a run (or the one of `step`), in the structure
  `create_train_state(run)` builds.

  Args:
    workdir: the run's directory.
    run: `run.build_run` of its config (`load_run_config`), with or without its dataset.
    step: None for the newest readable checkpoint (falling back as `restore_latest` does), or
      the step of one checkpoint the manager keeps, restored exactly.
  Returns:
    (state, step): the replicated TrainState and the step of the checkpoint it came from.
  Raises:
    FileNotFoundError: the run has no checkpoint, or none of `step`.
  """
  directory = checkpoint_dir(workdir)
  missing = FileNotFoundError(f"{directory} holds no checkpoint: train the run first "
                              "(python -m mi_contrast.main) or check --workdir.")
  if not os.path.isdir(directory):
    raise missing
  manager = checkpoint_manager(workdir, run.config)
  if not manager.all_steps():
    raise missing
  # The method state's shapes (bank rows) are read from the checkpoint: they hold for a run
  # restored without its dataset as for one with it.
  target = jax.eval_shape(lambda: run_lib.create_train_state(run))
  target = target.replace(method_state=saved_method_state(workdir))
  replicated = jax.sharding.NamedSharding(run.mesh, jax.sharding.PartitionSpec())
  if step is not None:
    if step not in manager.all_steps():
      raise FileNotFoundError(f"{directory} holds no checkpoint of step {step}; it holds "
                              f"{sorted(manager.all_steps())}.")
    restored = _restore_step(manager, step, _abstract_target(target, replicated), target)
    return flax.serialization.from_state_dict(target, restored), step
  restored = restore_latest(manager, target, replicated)
  if restored is None:
    raise missing
  return restored
