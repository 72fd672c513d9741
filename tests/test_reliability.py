"""Reliability: SIGKILL and resume, SIGTERM preemption (tests/test_checkpoint_faults.py: the rest)."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from test_train import REPO

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
