"""Entry point: python -m mi_contrast.main --config=configs/ring.py --workdir=/tmp/run

`--config=configs/ring.py:cifar10` picks a dataset preset; `--config.num_epochs=10` overrides
one field. The run resumes from the workdir's newest checkpoint, and a finished run is not
trained again. SIGTERM writes a checkpoint at the next step and exits 0.
"""

import logging as py_logging
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training configuration file.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
flags.mark_flags_as_required(["config", "workdir"])


class _QuietCheckpointing(py_logging.Filter):
  """Drops orbax's per-save INFO chatter from the log; its warnings and errors stay."""

  def filter(self, record):
    return record.levelno >= py_logging.WARNING or "/orbax/" not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  # Imported here so that flag parsing (and --help) stays fast.
  from mi_contrast import train
  logging.get_absl_handler().python_handler.stream = sys.stdout
  logging.get_absl_handler().addFilter(_QuietCheckpointing())
  outcome = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  if outcome.preempted:
    logging.info("Preempted at step %d; run the same command to resume.",
                 outcome.results["steps"])
  else:
    logging.info("Results written to %s", os.path.join(FLAGS.workdir, "results.json"))


if __name__ == "__main__":
  app.run(main)
