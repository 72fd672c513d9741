"""results.json: what a finished run reports, the digests that identify it, and a finished
run's saved results returned without probing again."""

import hashlib
import json
import math
import os
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from mi_contrast import checkpoints
from mi_contrast import checks
from mi_contrast import methods
from mi_contrast import probes
from mi_contrast import run as run_lib


def params_digest(params):
  """(sha256 hex of the parameters' bytes in tree order, L2 norm of all parameters)."""
  digest = hashlib.sha256()
  total = 0.0
  for leaf in jax.tree.leaves(params):
    array = np.ascontiguousarray(np.asarray(leaf, np.float32))
    digest.update(array.tobytes())
    total += float(np.sum(array.astype(np.float64) ** 2))
  return digest.hexdigest(), math.sqrt(total)


config_digest = checks.config_digest     # results.json's `config_sha256`


def probe_networks(run, state):
  """The end-of-run probes: the trained network, the untrained one (built again from
  config.seed) and raw pixels; the few-shot table of the three (None for streamed data).

  Returns:
    (trained, random_init, raw_pixels, fewshot): `probes.probe_model` of the first two,
    `probes.raw_pixel_probes`, and {str(n): {'trained', 'random_init', 'raw_pixels'}}.
  """
  args = (run.config, run.model)
  where = (run.data, run.images, run.mesh)
  trained = probes.probe_model(*args, {"params": state.params, "batch_stats": state.batch_stats},
                               *where)
  random_init = probes.probe_model(*args, run_lib.untrained_variables(run), *where)
  raw = probes.raw_pixel_probes(run.config, run.data, run.images)  # all None when streamed
  fewshot = None
  if not run.streaming:
    fewshot = probes.fewshot_table({"trained": trained["fewshot"],
                                    "random_init": random_init["fewshot"],
                                    "raw_pixels": raw["fewshot"]})
  return trained, random_init, raw, fewshot


def results_record(run, state, probed, training, start_time):
  """results.json's dict.

  probed: `probe_networks`'s tuple. training: {'metrics': the last logged training scalars,
  'band_start': [lower, upper], 'resumed_from': step}.
  """
  config, data = run.config, run.data
  final, random_init, raw, fewshot = probed
  last = training["metrics"]
  step = int(state.step)
  banded = config.negatives != "uniform"
  final_band = [float(x) for x in run.band_fn(step - 1, state.ring_state)[0]]
  sha, l2 = params_digest(state.params)
  negatives, pool = methods.describe_negatives(config)
  return {
      "method": config.method, "negatives": negatives, "negative_pool": pool,
      "bound": config.bound, "tau_plus": config.tau_plus, "hcl_beta": config.hcl_beta,
      "objective": methods.describe_objective(config),
      "dataset": config.dataset,
      "eval_split": config.eval_split,   # 'validation': the probes' split came from training
      "knn_top1": final["knn_top1"], "nn1_top1": final["nn1_top1"],
      "linear_top1": final["linear_top1"], "linear_top5": final["linear_top5"],
      "raw_pixels_linear_top1": raw["linear_top1"], "raw_pixels_knn_top1": raw["knn_top1"],
      "random_init_knn_top1": random_init["knn_top1"],
      "random_init_nn1_top1": random_init["nn1_top1"],
      "random_init_linear_top1": random_init["linear_top1"],
      "fewshot": fewshot,
      "bound_nats": last["bound_nats"], "log_k_plus_1": last["log_k_plus_1"],
      "clamped_fraction": last.get("clamped_fraction"),    # dcl, hcl; None otherwise
      "loss": last["loss"],
      "band_start": training["band_start"] if banded else None,
      "band_end": final_band if banded else None,
      "steps": step, "resumed_from_step": training["resumed_from"],
      "wall_seconds": time.time() - start_time,
      "params_sha256": sha, "params_l2": l2, "config_sha256": config_digest(config),
      "num_devices": run.plan.num_devices, "num_processes": jax.process_count(),
      "num_train": data.num_train, "num_pretrain": run.plan.bank_rows,
      "num_test": data.num_test,
  }


def saved_results(config, workdir, manager, devices=None):
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
  if not steps or not os.path.exists(results_path):
    return None
  try:
    with open(results_path) as f:
      saved = json.load(f)
    record = checkpoints.read_run_record(workdir)
    num_rows = int(record["memory_bank_rows"])
    stats = (list(record["channel_mean"]), list(record["channel_std"]))
  except (OSError, ValueError, KeyError, TypeError):
    return None
  run = run_lib.build_run(config, devices, bank_rows=num_rows, channel_stats=stats)
  num_steps = run.plan.total_steps
  if (max(steps) != num_steps or not isinstance(saved, dict)
      or saved.get("steps") != num_steps or saved.get("num_pretrain") != num_rows
      or saved.get("config_sha256") != config_digest(config)):
    return None
  checkpoints.check_resume_config(workdir, config, num_rows)
  target = checkpoints.state_dict(run_lib.abstract_state(run))
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
