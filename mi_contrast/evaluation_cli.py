"""Evaluation of a run on disk: python -m mi_contrast.evaluate --workdir=<run>

Restores the newest checkpoint of <run> (its configuration is <run>/config.json), evaluates the
network it holds with the protocol of method-spec.md section 6, as the trainer does at the end
of a run (weighted kNN and 1-NN against the training set's features, the linear probe on frozen
backbone features; for in-memory data also the weighted kNN on raw pixels and the few-shot
linear probes of the network, the untrained network and raw pixels), and writes
<run>/evaluation.json. A run that is still training or was stopped is evaluated at its newest
checkpoint; the file says which step that is.

`load_run_config` and `restore_run` rebuild a run from its workdir; `mi_contrast.export` uses
them too.
"""

import inspect
import json
import os

import jax
import orbax.checkpoint as ocp
from absl import app
from absl import flags
from absl import logging
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mi_contrast import config as config_lib
from mi_contrast import evaluate
from mi_contrast import input_pipeline
from mi_contrast import methods
from mi_contrast import models
from mi_contrast import train

FLAGS = flags.FLAGS


def load_run_config(workdir):
  """The ConfigDict a run was started with (<workdir>/config.json), validated.

  Fields this version has and the saved file lacks (added since the run) keep their defaults.
  """
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist: {workdir} is not a training run directory "
                            "(python -m mi_contrast.main writes config.json when a run starts).")
  with open(path) as f:
    saved = json.load(f)
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


def _checkpoint_dir(workdir):
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def _saved_method_state(workdir):
  """Shapes and dtypes of the method state (memory bank, queue) in the newest checkpoint.

  The bank's rows are the training-set size, which the config alone does not give; reading
  them from the checkpoint lets a run be restored without loading its dataset.
  """
  reader = ocp.CheckpointManager(_checkpoint_dir(workdir),
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
  raise RuntimeError(f"no readable checkpoint metadata in {_checkpoint_dir(workdir)}:\n  "
                     + "\n  ".join(errors))


def restore_run(workdir, config, model, image_shape):
  """The newest checkpoint of a run, in the structure `train.train_and_evaluate` builds.

  Args:
    workdir: the run's directory.
    config: its config (`load_run_config`).
    model: the encoder `models.build_encoder(config, ...)` returns.
    image_shape: (H, W, C) of the images the encoder sees.
  Returns:
    (state, step): the replicated TrainState and the step of the checkpoint it came from.
  Raises:
    FileNotFoundError: the run has no checkpoint.
  """
  directory = _checkpoint_dir(workdir)
  missing = FileNotFoundError(f"{directory} holds no checkpoint: train the run first "
                              "(python -m mi_contrast.main) or check --workdir.")
  if not os.path.isdir(directory):
    raise missing
  manager = train.checkpoint_manager(workdir, config)
  if not manager.all_steps():
    raise missing
  method = methods.get(config.method)
  # The training-set size only enters the optimizer's schedules (no state shape) and the
  # method state, whose shapes are read from the checkpoint instead.
  tx, _ = train.make_optimizer(config, config.global_batch_size)
  target = jax.eval_shape(lambda: train.create_train_state(
      config, model, tx, method, config.global_batch_size, image_shape))
  target = target.replace(method_state=_saved_method_state(workdir))
  restored = train.restore_latest(manager, target, NamedSharding(train.make_mesh(), P()))
  if restored is None:
    raise missing
  return restored


def protocol_settings(config, data):
  """The evaluation protocol's settings, recorded next to its numbers."""
  probe = {k: v for k, v in train.probe_options(config, data).items() if k != "num_classes"}
  probe["momentum"] = inspect.signature(evaluate.linear_probe).parameters["momentum"].default
  probe["features"] = "backbone (pooled h), standardised with the training statistics"
  streaming = isinstance(data, input_pipeline.StreamingData)
  return {
      "knn_features": config.knn_features,
      "knn_k": min(config.knn_k, data.num_train),
      "knn_temperature": config.knn_temperature,
      "linear_probe": probe,
      "fewshot": None if streaming else train.fewshot_settings(),
      "num_train": data.num_train,
      "num_test": data.num_test,
      "num_classes": data.num_classes,
  }


def evaluate_run(workdir):
  """Evaluates the newest checkpoint of `workdir`; writes and returns evaluation.json's dict.

  Returns:
    {'knn_top1', 'nn1_top1', 'linear_top1', 'linear_top5', 'raw_pixels_knn_top1' (fractions in
     [0, 1]; the last None for streamed data), 'fewshot' (as in results.json:
     {str(n): {'trained', 'random_init', 'raw_pixels': {'mean', 'std'}}}, None for streamed
     data), 'checkpoint_step', 'total_steps', 'finished', 'dataset', 'method', 'negatives',
     'bound', 'model', 'num_devices', 'protocol': {...}}.
  """
  config = load_run_config(workdir)
  data = input_pipeline.load_dataset(config)
  mesh = train.make_mesh()
  images, image_shape = train.device_images(config, data, mesh)
  mean, std = data.channel_stats()
  model = models.build_encoder(config, mean, std, bn_axis_name=train.AXIS)
  state, step = restore_run(workdir, config, model, image_shape)
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  numbers = train.probe_model(config, model, variables, data, images, mesh)
  raw = train.raw_pixel_probes(config, data, images, linear=False)
  fewshot = None
  if "fewshot" in numbers:  # in-memory data: the untrained network and raw pixels too
    method = methods.get(config.method)
    tx, _ = train.make_optimizer(config, data.num_pretrain)
    init_vars = train.untrained_variables(config, model, tx, method, data.num_pretrain,
                                          image_shape)
    untrained, untrained_test = train.split_features(config, model, init_vars, data, images,
                                                     mesh)
    fewshot = evaluate.fewshot_table({
        "trained": numbers.pop("fewshot"),
        "random_init": train.fewshot_probe(untrained[0], untrained[2], untrained_test[0],
                                           untrained_test[2]),
        "raw_pixels": raw["fewshot"]})
  total = train.total_steps(config, data.num_pretrain)
  evaluation = {
      **{k: float(v) for k, v in numbers.items()},
      "raw_pixels_knn_top1": raw["knn_top1"],
      "fewshot": fewshot,
      "checkpoint_step": int(step),
      "total_steps": int(total),
      "finished": bool(step >= total),
      "dataset": config.dataset,
      "method": config.method,
      "negatives": config.negatives,
      "bound": config.bound,
      "model": config.model,
      "num_devices": int(mesh.devices.size),
      "protocol": protocol_settings(config, data),
  }
  if jax.process_index() == 0:
    path = os.path.join(workdir, "evaluation.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      json.dump(evaluation, f, indent=2, sort_keys=True)
    os.replace(tmp, path)
  logging.info("checkpoint step %d of %d: kNN top-1 %.4f, 1-NN top-1 %.4f, linear top-1 %.4f, "
               "top-5 %.4f", step, total, evaluation["knn_top1"], evaluation["nn1_top1"],
               evaluation["linear_top1"], evaluation["linear_top5"])
  return evaluation


def define_flags():
  """--workdir (defined once, so that this CLI and the trainer's may share a process)."""
  if "workdir" not in FLAGS:
    flags.DEFINE_string("workdir", None, "Run directory (holds config.json and checkpoints/).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not FLAGS.workdir:
    raise app.UsageError("--workdir is required.")
  try:
    evaluation = evaluate_run(FLAGS.workdir)
  except FileNotFoundError as e:
    raise app.UsageError(str(e)) from e
  print(json.dumps({k: v for k, v in evaluation.items() if k != "protocol"}, sort_keys=True))


def run():
  """The command line: python -m mi_contrast.evaluate --workdir=<run>."""
  define_flags()
  app.run(main)
