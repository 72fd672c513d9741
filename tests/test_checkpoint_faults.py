"""Checkpoints: exact resume, damaged and unreadable checkpoints, non-finite loss, bad resumes,
user files.

(The kill / preemption tests are in tests/test_reliability.py.)
"""

import json
import os

import numpy as np
import pytest

from mi_contrast import train
from helpers import checkpoint_steps as _checkpoint_steps
from helpers import tiny_config

pytestmark = pytest.mark.slow   # every test trains or resumes a run


def _ring_config():
  return tiny_config("ring", num_epochs=1, checkpoint_every_steps=3, keep_checkpoints=3)


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
  """The uninterrupted run that the resumed ones must reproduce bit for bit."""
  workdir = tmp_path_factory.mktemp("whole")
  return train.train_and_evaluate(_ring_config(), str(workdir)).results


def test_resume_continues_exactly(tmp_path, whole):
  config = _ring_config()
  first = train.train_and_evaluate(config, str(tmp_path / "split"), stop_after_steps=5)
  assert first.results["steps"] == 5
  rest = train.train_and_evaluate(config, str(tmp_path / "split")).results
  assert rest["resumed_from_step"] == 5
  assert rest["params_sha256"] == whole["params_sha256"]
  assert rest["params_l2"] == whole["params_l2"]
  # A finished run is not trained again.
  again = train.train_and_evaluate(config, str(tmp_path / "split")).results
  assert again["resumed_from_step"] == again["steps"] == whole["steps"]
  assert again["params_sha256"] == whole["params_sha256"]


def test_truncated_checkpoint_falls_back_to_previous(tmp_path, whole):
  config = _ring_config()
  workdir = str(tmp_path / "damaged")
  train.train_and_evaluate(config, workdir, stop_after_steps=9)
  assert _checkpoint_steps(workdir) == [3, 6, 9]
  newest = os.path.join(workdir, "checkpoints", "9")
  files = [os.path.join(root, f) for root, _, names in os.walk(newest) for f in names]
  for path in files:  # half-written: every file cut to half its size
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
      f.truncate(size // 2)
  with pytest.warns(UserWarning, match="step 9"):
    results = train.train_and_evaluate(config, workdir).results
  assert results["resumed_from_step"] == 6
  assert results["params_sha256"] == whole["params_sha256"]


def test_all_checkpoints_unreadable_is_an_error_not_a_fresh_start(tmp_path):
  config = tiny_config("uniform", checkpoint_every_steps=3)
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(config, workdir, stop_after_steps=3)
  for root, _, names in os.walk(os.path.join(workdir, "checkpoints", "3")):
    for name in names:
      open(os.path.join(root, name), "wb").close()
  with pytest.raises(RuntimeError, match="none can be read"):
    train.train_and_evaluate(config, workdir)


def test_non_finite_loss_stops_without_checkpointing_bad_state(tmp_path):
  config = tiny_config("uniform", learning_rate=1e30, checkpoint_every_steps=1,
                       log_every_steps=1)
  workdir = str(tmp_path / "nan")
  with pytest.raises(FloatingPointError, match=r"non-finite loss .* at step \d+") as info:
    train.train_and_evaluate(config, workdir)
  bad_step = int(str(info.value).split("at step ")[1].split(";")[0])
  assert all(step < bad_step for step in _checkpoint_steps(workdir))
  assert "last good checkpoint" in str(info.value) or "no checkpoint" in str(info.value)


def test_resume_with_incompatible_config_names_the_difference(tmp_path):
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(tiny_config("uniform", checkpoint_every_steps=3), workdir,
                           stop_after_steps=3)
  with pytest.raises(ValueError, match="width: checkpoint 8 vs config 16"):
    train.train_and_evaluate(tiny_config("uniform", width=16), workdir)
  with pytest.raises(ValueError, match="dataset rows|bank"):
    train.train_and_evaluate(tiny_config("uniform", test_fraction=0.3), workdir)


def test_workdir_files_of_the_user_are_kept(tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "notes.txt").write_text("mine")
  (workdir / "checkpoints").mkdir()
  (workdir / "checkpoints" / "README").write_text("also mine")
  train.train_and_evaluate(tiny_config("uniform", num_epochs=1, checkpoint_every_steps=2),
                           str(workdir))
  assert (workdir / "notes.txt").read_text() == "mine"
  assert (workdir / "checkpoints" / "README").read_text() == "also mine"
  assert np.isfinite(json.load(open(workdir / "results.json"))["params_l2"])


def test_restore_run_of_a_kept_step(tmp_path, whole):
  """checkpoints.restore_run(workdir, run, step) restores that kept checkpoint exactly (what
  experiments/accuracy_curve.py probes); a step it does not keep is a clear error."""
  from mi_contrast import checkpoints
  from mi_contrast import results as results_lib
  from mi_contrast import run as run_lib
  config = _ring_config()
  config.keep_checkpoints = 10     # every checkpoint of the run is kept
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(config, workdir, stop_after_steps=3)
  run = run_lib.build_run(checkpoints.load_run_config(workdir), training=False)
  at_stop, stop_step = checkpoints.restore_run(workdir, run)    # then the newest
  assert stop_step == 3
  train.train_and_evaluate(config, workdir)
  state, step = checkpoints.restore_run(workdir, run, 3)
  assert step == 3 and int(state.step) == 3
  assert results_lib.params_digest(state.params) == results_lib.params_digest(at_stop.params)
  newest, newest_step = checkpoints.restore_run(workdir, run)
  assert newest_step == whole["steps"]
  assert results_lib.params_digest(newest.params)[0] == whole["params_sha256"]
  with pytest.raises(FileNotFoundError, match="no checkpoint of step 2"):
    checkpoints.restore_run(workdir, run, 2)
