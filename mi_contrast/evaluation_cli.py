"""Evaluation of a run on disk: python -m mi_contrast.evaluate --workdir=<run>

Restores the newest checkpoint of <run> (its configuration is <run>/config.json), evaluates the
network it holds with the protocol of docs/method.md, "Evaluation protocol", as the trainer
does at the end of a run (weighted kNN and 1-NN against the training set's features, the linear
probe on frozen backbone features; for in-memory data also the weighted kNN on raw pixels and
the few-shot linear probes of the network, the untrained network and raw pixels), and writes
<run>/evaluation.json. A run that is still training or was stopped is evaluated at its newest
checkpoint; the file says which step that is.

The run is rebuilt by `run.build_run` from its saved config and restored by
`checkpoints.restore_run`, as `mi_contrast.export` does.
"""

import inspect
import json
import os

import jax
from absl import app
from absl import flags
from absl import logging

from mi_contrast import checkpoints
from mi_contrast import files
from mi_contrast import input_pipeline
from mi_contrast import probes
from mi_contrast import run as run_lib

FLAGS = flags.FLAGS


def protocol_settings(config, data):
  """The evaluation protocol's settings, recorded next to its numbers."""
  probe = {k: v for k, v in probes.probe_options(config, data).items() if k != "num_classes"}
  probe["momentum"] = inspect.signature(probes.linear_probe).parameters["momentum"].default
  probe["features"] = "backbone (pooled h), standardised with the training statistics"
  streaming = isinstance(data, input_pipeline.StreamingData)
  return {
      "knn_features": config.knn_features,
      "knn_k": min(config.knn_k, data.num_train),
      "knn_temperature": config.knn_temperature,
      "linear_probe": probe,
      "fewshot": None if streaming else probes.fewshot_settings(),
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
  config = checkpoints.load_run_config(workdir)
  run = run_lib.build_run(config, training=False)
  data, mesh = run.data, run.mesh
  state, step = checkpoints.restore_run(workdir, run)
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  numbers = probes.probe_model(config, run.model, variables, data, run.images, mesh)
  raw = probes.raw_pixel_probes(config, data, run.images, linear=False)
  fewshot = None
  if "fewshot" in numbers:  # in-memory data: the untrained network and raw pixels too
    untrained, untrained_test = probes.split_features(
        config, run.model, run_lib.untrained_variables(run), data, run.images, mesh)
    fewshot = probes.fewshot_table({
        "trained": numbers.pop("fewshot"),
        "random_init": probes.fewshot_protocol(untrained[0], untrained[2], untrained_test[0],
                                               untrained_test[2]),
        "raw_pixels": raw["fewshot"]})
  total = run.plan.total_steps
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
    files.write_json(os.path.join(workdir, "evaluation.json"), evaluation)
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
