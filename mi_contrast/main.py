"""Entry point: python -m mi_contrast.main --config=configs/ring.py --workdir=/tmp/run

`--config=configs/ring.py:cifar10` picks a dataset preset; `--config.num_epochs=10` overrides
one field. The run resumes from the workdir's newest checkpoint, and a finished run is not
trained again: started again, it prints its saved results.json and exits (in seconds), unless
--reevaluate asks to probe it again. SIGTERM writes a checkpoint at the next step and exits 0.
A second run on a workdir in use is refused (exit status 1; see mi_contrast/workdir_lock.py).

Several processes (one per host or per GPU; see launch/README.md): every process runs the same
command, plus --coordinator_address=host:port --num_processes=N --process_id=i, or nothing
extra under SLURM (srun), Open MPI, or on a TPU pod slice with --distributed=on. Process 0
writes the logs and files; checkpoints are written and restored by all processes together.
"""

import importlib.util
import json
import logging as py_logging
import os
import sys

# The trainer's dependencies come with the `train` extra; the light modules (bounds, negatives,
# schedules, views) need only jax and numpy. Stop before any of them is imported.
_TRAIN_MODULES = ("absl", "ml_collections", "flax", "optax", "orbax", "clu",
                  "tensorflow_datasets", "sklearn", "matplotlib")
_MISSING = [m for m in _TRAIN_MODULES if importlib.util.find_spec(m) is None]
if _MISSING:
  sys.exit(f"mi_contrast.main: the trainer needs the 'train' extra, and {', '.join(_MISSING)} "
           f"{'is' if len(_MISSING) == 1 else 'are'} not installed. Install it with\n"
           f"  pip install -e \".[train]\"\n(from a clone of the repository; "
           f"pip install \"mi_contrast[train]\" otherwise).")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training configuration file.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
flags.DEFINE_enum("distributed", "auto", ["auto", "on", "off"],
                  "auto: start jax.distributed when the flags below, JAX_COORDINATOR_ADDRESS, "
                  "SLURM (more than one task) or Open MPI ask for several processes; on: always "
                  "(JAX detects TPU pods, SLURM, Open MPI); off: never.")
flags.DEFINE_string("coordinator_address", None,
                    "host:port of process 0's coordinator, for a multi-process run.")
flags.DEFINE_integer("num_processes", None, "Processes of a multi-process run.")
flags.DEFINE_integer("process_id", None, "This process's index, 0..num_processes-1.")
flags.DEFINE_bool("reevaluate", False,
                  "A finished run: probe the final network again (kNN, linear, few-shot, "
                  "untrained network, pixels) and rewrite results.json, instead of printing the "
                  "saved results.")
flags.mark_flags_as_required(["config", "workdir"])


class _QuietCheckpointing(py_logging.Filter):
  """Drops orbax's per-save INFO chatter from the log; its warnings and errors stay."""

  def filter(self, record):
    return record.levelno >= py_logging.WARNING or "/orbax/" not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  # Before JAX starts its backend: on a CPU, glibc's allocator set to keep the step's buffers
  # (mi_contrast/host_malloc.py; the same numbers, fewer page faults).
  from mi_contrast import host_malloc
  malloc_settings = host_malloc.tune()
  # Imported here so that flag parsing (and --help) stays fast.
  from mi_contrast import multihost
  multihost.initialize(FLAGS.distributed, FLAGS.coordinator_address, FLAGS.num_processes,
                       FLAGS.process_id)
  from mi_contrast import train
  logging.get_absl_handler().python_handler.stream = sys.stdout
  logging.get_absl_handler().addFilter(_QuietCheckpointing())
  if not multihost.is_lead():  # process 0 logs the run; the others only warnings and errors
    logging.set_verbosity(logging.WARNING)
  if malloc_settings:
    logging.info("%s", malloc_settings)
  from mi_contrast import workdir_lock
  try:
    outcome = train.train_and_evaluate(FLAGS.config, FLAGS.workdir,
                                       reevaluate=FLAGS.reevaluate)
  except workdir_lock.WorkdirLockedError as e:
    logging.error("%s", e)
    sys.exit(1)
  path = os.path.join(FLAGS.workdir, "results.json")
  if outcome.preempted:
    logging.info("Preempted at step %d; run the same command to resume.",
                 outcome.results["steps"])
  elif outcome.reused and multihost.is_lead():
    print(json.dumps(outcome.results, indent=2, sort_keys=True))
    logging.info("Saved results of the finished run: %s (--reevaluate probes again)", path)
  elif multihost.is_lead():
    logging.info("Results written to %s", path)


if __name__ == "__main__":
  app.run(main)
