"""Reliability: kill and resume, preemption, non-finite loss, damaged checkpoints, bad resumes."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from mi_contrast import train
from test_train import REPO, tiny_config

FLAGS = ["--config=configs/ring.py", "--config.num_epochs=2", "--config.width=8",
         "--config.head_hidden=32", "--config.embedding_dim=16", "--config.num_negatives=64",
         "--config.global_batch_size=64", "--config.probe_epochs=2", "--config.warmup_epochs=0",
         "--config.checkpoint_every_steps=4", "--config.log_every_steps=2",
         "--config.eval_every_steps=1000"]


def _command(workdir):
  return [sys.executable, "-m", "mi_contrast.main", f"--workdir={workdir}"] + FLAGS


def _env():
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join([REPO, env.get("PYTHONPATH", "")])
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
  return env


def _checkpoint_steps(workdir):
  path = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(path):
    return []
  return sorted(int(d) for d in os.listdir(path) if d.isdigit())


def _run_to_end(workdir):
  proc = subprocess.run(_command(workdir), cwd=REPO, env=_env(), capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
  return json.load(open(os.path.join(workdir, "results.json"))), proc.stdout + proc.stderr


def _start_and_signal(workdir, sig, after_checkpoints):
  """Starts the main job and sends `sig` once `after_checkpoints` checkpoints exist."""
  proc = subprocess.Popen(_command(workdir), cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  deadline = time.time() + 300
  while len(_checkpoint_steps(workdir)) < after_checkpoints and proc.poll() is None:
    assert time.time() < deadline, "no checkpoint appeared"
    time.sleep(0.05)
  time.sleep(random.uniform(0.0, 0.1))  # a random moment, well before the run can finish
  if proc.poll() is None:
    proc.send_signal(sig)
  out, _ = proc.communicate(timeout=300)
  return proc.returncode, out


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("whole")
  results, _ = _run_to_end(str(workdir))
  return results


def test_sigkill_then_same_command_ends_bit_identical(tmp_path, uninterrupted):
  workdir = str(tmp_path / "killed")
  code, _ = _start_and_signal(workdir, signal.SIGKILL, after_checkpoints=random.randint(1, 3))
  assert code == -signal.SIGKILL
  assert not os.path.exists(os.path.join(workdir, "results.json"))
  results, _ = _run_to_end(workdir)
  assert results["resumed_from_step"] > 0
  assert results["params_sha256"] == uninterrupted["params_sha256"]


def test_sigterm_checkpoints_exits_zero_and_resumes(tmp_path, uninterrupted):
  workdir = str(tmp_path / "preempted")
  code, out = _start_and_signal(workdir, signal.SIGTERM, after_checkpoints=1)
  assert code == 0, out[-2000:]
  assert "SIGTERM" in out
  stopped_at = max(_checkpoint_steps(workdir))
  results, _ = _run_to_end(workdir)
  assert results["resumed_from_step"] == stopped_at
  assert results["params_sha256"] == uninterrupted["params_sha256"]


def test_truncated_checkpoint_falls_back_to_previous(tmp_path):
  config = tiny_config("ring", checkpoint_every_steps=3, keep_checkpoints=3)
  whole = train.train_and_evaluate(config, str(tmp_path / "whole")).results
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
