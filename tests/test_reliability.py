"""Reliability: SIGKILL and resume, SIGTERM preemption (tests/test_checkpoint_faults.py: the rest).

The signalled run cannot finish before the signal, however fast the machine: a `sitecustomize`
module on the child's PYTHONPATH (written by the test; nothing in the package knows of it) holds
the run inside `CheckpointManager.save` once it has saved the step `HOLD_AT_STEP`, until the file
`RELEASE` appears. The SIGKILL moment is random: it is sent at a random delay after an earlier
checkpoint appeared, so it lands anywhere between that checkpoint and the held one (mid-step,
mid-save or while held).
"""

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from helpers import REPO, TINY_MAIN_FLAGS, child_xla_flags, no_tensorflow
from helpers import checkpoint_steps as _checkpoint_steps

pytestmark = pytest.mark.slow   # child processes that train and are killed

EVERY = 4  # checkpoint_every_steps
FLAGS = TINY_MAIN_FLAGS + [f"--config.checkpoint_every_steps={EVERY}",
                           "--config.log_every_steps=2", "--config.eval_every_steps=1000"]

HOLD = textwrap.dedent("""
    import os, time
    import orbax.checkpoint as ocp

    _save = ocp.CheckpointManager.save

    def save(self, step, *args, **kwargs):
      out = _save(self, step, *args, **kwargs)
      hold, marker = int(os.environ["HOLD_AT_STEP"]), os.environ["HOLD_MARKER"]
      if step >= hold and not os.path.exists(os.environ["HOLD_RELEASE"]):
        open(marker, "w").write(str(step))
        while not os.path.exists(os.environ["HOLD_RELEASE"]):
          time.sleep(0.01)
      return out

    ocp.CheckpointManager.save = save
    """)


def _command(workdir):
  return [sys.executable, "-m", "mi_contrast.main", f"--workdir={workdir}"] + FLAGS


def _env(workdir, hook_dir=None, **extra):
  # Without TensorFlow (no TensorBoard summaries): each process starts 4-5 s sooner, and what
  # these tests check does not involve it.
  env = dict(os.environ)
  paths = ([str(hook_dir)] if hook_dir else []) + [
      no_tensorflow(os.path.dirname(workdir)), REPO, env.get("PYTHONPATH", "")]
  env["PYTHONPATH"] = os.pathsep.join(paths)
  env["XLA_FLAGS"] = child_xla_flags(2)
  env.update(extra)
  return env


def _run_to_end(workdir):
  proc = subprocess.run(_command(workdir), cwd=REPO, env=_env(workdir), capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
  return json.load(open(os.path.join(workdir, "results.json"))), proc.stdout + proc.stderr


def _start_held(tmp_path, workdir, hold_at_step):
  """Starts the main job, which stops inside the save of step `hold_at_step` until released."""
  hook = tmp_path / "hook"
  hook.mkdir()
  (hook / "sitecustomize.py").write_text(HOLD)
  marker, release = tmp_path / "held", tmp_path / "release"
  env = _env(workdir, hook, HOLD_AT_STEP=str(hold_at_step), HOLD_MARKER=str(marker),
             HOLD_RELEASE=str(release))
  proc = subprocess.Popen(_command(workdir), cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  return proc, marker, release


def _wait(proc, condition, what):
  deadline = time.time() + 300
  while not condition():
    assert proc.poll() is None, f"the run ended before {what}:\n" + proc.communicate()[0][-2000:]
    assert time.time() < deadline, f"no {what} within 300 s"
    time.sleep(0.01)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("whole")
  results, _ = _run_to_end(str(workdir))
  return results


def test_sigkill_then_same_command_ends_bit_identical(tmp_path, uninterrupted):
  workdir = str(tmp_path / "killed")
  after = random.randint(1, 3)                      # the kill comes after checkpoint `after`
  proc, _, _ = _start_held(tmp_path, workdir, hold_at_step=(after + 1) * EVERY)
  _wait(proc, lambda: max(_checkpoint_steps(workdir), default=0) >= after * EVERY,
        f"checkpoint {after * EVERY}")
  time.sleep(random.uniform(0.0, 0.5))              # a random moment before the held save
  proc.send_signal(signal.SIGKILL)
  proc.communicate(timeout=60)
  assert proc.returncode == -signal.SIGKILL
  assert not os.path.exists(os.path.join(workdir, "results.json"))
  results, _ = _run_to_end(workdir)
  assert results["resumed_from_step"] > 0
  assert results["params_sha256"] == uninterrupted["params_sha256"]


def test_sigterm_checkpoints_exits_zero_and_resumes(tmp_path, uninterrupted):
  workdir = str(tmp_path / "preempted")
  proc, marker, release = _start_held(tmp_path, workdir, hold_at_step=EVERY)
  _wait(proc, marker.exists, "the held checkpoint")
  proc.send_signal(signal.SIGTERM)
  release.write_text("")
  out = proc.communicate(timeout=300)[0]
  assert proc.returncode == 0, out[-2000:]
  assert "SIGTERM" in out
  stopped_at = max(_checkpoint_steps(workdir))
  assert EVERY <= stopped_at < uninterrupted["steps"]  # where the signal came, not the end
  results, _ = _run_to_end(workdir)
  assert results["resumed_from_step"] == stopped_at
  assert results["params_sha256"] == uninterrupted["params_sha256"]
