"""python -m mi_contrast.evaluate --workdir=<run>: the newest checkpoint, evaluated and recorded."""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mi_contrast import checkpoints
from mi_contrast import evaluation_cli
from mi_contrast import results as results_lib
from mi_contrast import run as run_lib

pytestmark = pytest.mark.slow   # every test reads a trained run (conftest.tiny_run)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def stopped_run(tiny_run):
  """A tiny run stopped at step 2 of 22, with checkpoints at steps 1 and 2."""
  return tiny_run


def test_cli_evaluates_the_newest_checkpoint(stopped_run):
  workdir, config = stopped_run
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join([REPO, env.get("PYTHONPATH", "")])
  # What `python -m mi_contrast.evaluate` runs.
  proc = subprocess.run([sys.executable, "-c",
                         "from mi_contrast import evaluation_cli; evaluation_cli.run()",
                         f"--workdir={workdir}"], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(workdir / "evaluation.json") as f:
    evaluation = json.load(f)
  assert evaluation["checkpoint_step"] == 2
  assert evaluation["total_steps"] == 1438 // 64 and evaluation["finished"] is False
  for key in ("knn_top1", "nn1_top1", "linear_top1", "linear_top5"):
    assert 0.0 <= evaluation[key] <= 1.0, key
  assert evaluation["linear_top5"] >= evaluation["linear_top1"]
  assert evaluation["method"] == "ir" and evaluation["dataset"] == "digits"
  protocol = evaluation["protocol"]
  assert protocol["knn_k"] == config.knn_k
  assert protocol["knn_temperature"] == config.knn_temperature
  assert protocol["knn_features"] == config.knn_features
  assert protocol["linear_probe"]["epochs"] == config.probe_epochs
  assert protocol["linear_probe"]["learning_rate"] == config.probe_learning_rate
  assert protocol["num_train"] == 1438 and protocol["num_test"] == 359
  printed = json.loads(proc.stdout.strip().splitlines()[-1])
  assert printed["knn_top1"] == evaluation["knn_top1"]
  assert printed["checkpoint_step"] == 2


def test_restore_run_matches_the_trainers_restore(stopped_run):
  """The state shapes read from the checkpoint give what the trainer's own restore gives."""
  workdir, config = stopped_run
  loaded = checkpoints.load_run_config(str(workdir))
  assert loaded.to_dict() == config.to_dict()
  # Without the dataset: the bank's shapes come from the checkpoint.
  bare = run_lib.build_run(loaded, bank_rows=config.global_batch_size,
                           channel_stats=((0.5,), (0.25,)), training=False)
  state, step = checkpoints.restore_run(str(workdir), bare)
  assert step == 2

  # The trainer's way: the training-set size from the data.
  run = run_lib.build_run(config)
  target = jax.eval_shape(lambda: run_lib.create_train_state(run))
  reference, reference_step = checkpoints.restore_latest(
      checkpoints.checkpoint_manager(str(workdir), config), target,
      NamedSharding(run.mesh, P()))
  assert reference_step == 2
  assert results_lib.params_digest(state.params) == results_lib.params_digest(reference.params)
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(reference)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_missing_run_and_missing_checkpoint(stopped_run, tmp_path):
  workdir, _ = stopped_run
  with pytest.raises(FileNotFoundError, match="config.json"):
    evaluation_cli.evaluate_run(str(tmp_path / "nothing"))
  empty = tmp_path / "no_checkpoints"
  empty.mkdir()
  shutil.copy(workdir / "config.json", empty / "config.json")
  with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
    evaluation_cli.evaluate_run(str(empty))


def test_run_config_from_an_older_or_newer_version(stopped_run, tmp_path):
  workdir, config = stopped_run
  with open(workdir / "config.json") as f:
    saved = json.load(f)
  del saved["knn_temperature"]       # a field added after the run was started
  del saved["ring"]["adaptive_delta"]
  (tmp_path / "older").mkdir()
  with open(tmp_path / "older" / "config.json", "w") as f:
    json.dump(saved, f)
  loaded = checkpoints.load_run_config(str(tmp_path / "older"))
  assert loaded.knn_temperature == config.knn_temperature
  assert loaded.ring.adaptive_delta == config.ring.adaptive_delta
  assert loaded.negatives == config.negatives and loaded.width == config.width

  saved["bank_size"] = 10            # a field this version does not know
  (tmp_path / "newer").mkdir()
  with open(tmp_path / "newer" / "config.json", "w") as f:
    json.dump(saved, f)
  with pytest.raises(ValueError, match="bank_size is not a known field"):
    checkpoints.load_run_config(str(tmp_path / "newer"))
