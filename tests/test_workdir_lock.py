"""The workdir lock (mi_contrast/workdir_lock.py): one run per workdir.

One subprocess in all: a real `python -m mi_contrast.main` run started on a workdir whose lock
this test process holds (taken with the package's own function, so the first run holds it for
as long as the test needs, deterministically). The other cases call the lock functions and
`train.train_and_evaluate` in this process, and cost milliseconds.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from mi_contrast import input_pipeline
from mi_contrast import multihost
from mi_contrast import train
from mi_contrast import workdir_lock
from helpers import REPO, child_xla_flags, tiny_config

FLAGS = ["--config=configs/ring.py", "--config.num_epochs=1", "--config.width=8",
         "--config.head_hidden=32", "--config.embedding_dim=16", "--config.num_negatives=64",
         "--config.global_batch_size=64", "--config.probe_epochs=2", "--config.warmup_epochs=0"]


def _write_lock(workdir, **holder):
  with open(workdir_lock.lock_path(workdir), "w") as f:
    json.dump(holder, f)


def _dead_pid():
  proc = subprocess.Popen(["true"])
  proc.wait()  # reaped: the pid names no process (until the system reuses it)
  return proc.pid


@pytest.mark.slow
def test_second_run_on_a_locked_workdir_is_refused_naming_the_first(tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  path = workdir_lock.lock_path(workdir)
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join([REPO, env.get("PYTHONPATH", "")])
  env["XLA_FLAGS"] = child_xla_flags(1)
  with workdir_lock.held(str(workdir)) as first:
    proc = subprocess.run([sys.executable, "-m", "mi_contrast.main", f"--workdir={workdir}"]
                          + FLAGS, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    assert "in use by another run" in out, out[-3000:]
    for part in (repr(socket.gethostname()), f"pid {os.getpid()}", first["started"], path):
      assert part in out, (part, out[-3000:])
    assert "Traceback" not in out
    assert os.listdir(workdir) == ["run.lock"]          # the second run wrote nothing
    assert json.load(open(path))["token"] == first["token"]  # and left the lock alone
  assert not os.path.exists(path)


def test_stale_lock_of_a_dead_process_on_this_host_is_replaced_with_a_warning(tmp_path):
  dead = _dead_pid()
  _write_lock(tmp_path, host=socket.gethostname(), pid=dead, started="2026-01-01 00:00:00 UTC")
  with pytest.warns(UserWarning, match=rf"stale lock .*pid {dead}, since 2026-01-01"):
    record = workdir_lock.acquire(str(tmp_path))
  on_disk = json.load(open(workdir_lock.lock_path(tmp_path)))
  assert on_disk["pid"] == os.getpid() and on_disk["token"] == record["token"]
  assert sorted(os.listdir(tmp_path)) == ["run.lock"]   # the stale one is gone, not set aside
  workdir_lock.release(str(tmp_path), record)
  assert not os.listdir(tmp_path)


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs /proc")
def test_reused_pid_is_a_stale_lock(tmp_path):
  """A live pid that started after the lock was written (its start tick differs)."""
  start, _ = workdir_lock._proc_start(os.getpid())
  _write_lock(tmp_path, host=socket.gethostname(), pid=os.getpid(), proc_start=start - 1,
              started="earlier")
  with pytest.warns(UserWarning, match="stale lock"):
    record = workdir_lock.acquire(str(tmp_path))
  workdir_lock.release(str(tmp_path), record)


def test_lock_of_another_host_is_an_error_never_broken(tmp_path):
  holder = dict(host="elsewhere.example", pid=_dead_pid(), started="2026-01-01 00:00:00 UTC")
  _write_lock(tmp_path, **holder)
  before = open(workdir_lock.lock_path(tmp_path)).read()
  with pytest.raises(workdir_lock.WorkdirLockedError) as info:
    train.train_and_evaluate(tiny_config("uniform"), str(tmp_path))
  message = str(info.value)
  for part in ("another host", "'elsewhere.example'", f"pid {holder['pid']}", "2026-01-01",
               "delete " + workdir_lock.lock_path(tmp_path), "really gone"):
    assert part in message, (part, message)
  assert open(workdir_lock.lock_path(tmp_path)).read() == before
  assert os.listdir(tmp_path) == ["run.lock"]


def _holder(workdir):
  return json.load(open(workdir_lock.lock_path(workdir)))


def test_lock_is_held_during_the_run_and_released_after_a_normal_end(tmp_path, monkeypatch):
  seen = []

  def run(config, workdir, **kwargs):
    seen.append(_holder(workdir))
    return train.RunOutcome({"steps": 0})

  monkeypatch.setattr(train, "_train_and_evaluate", run)
  outcome = train.train_and_evaluate(tiny_config("uniform"), str(tmp_path / "run"))
  assert outcome.results == {"steps": 0}
  assert seen[0]["pid"] == os.getpid() and seen[0]["host"] == socket.gethostname()
  # The lock is gone; so is the workdir, which this run created and left empty.
  assert not (tmp_path / "run").exists()


def test_lock_released_after_an_exception(tmp_path, monkeypatch):
  seen = []

  def load_dataset(config):
    seen.append(_holder(tmp_path))
    raise OSError("disk gone (raised by the test)")

  monkeypatch.setattr(input_pipeline, "load_dataset", load_dataset)
  with pytest.raises(OSError, match="raised by the test"):
    train.train_and_evaluate(tiny_config("uniform"), str(tmp_path))
  assert seen and seen[0]["pid"] == os.getpid()
  assert not os.path.exists(workdir_lock.lock_path(tmp_path))
  record = workdir_lock.acquire(str(tmp_path))  # free again, without a warning
  workdir_lock.release(str(tmp_path), record)


@pytest.mark.skipif(signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL,
                    reason="SIGTERM has a handler in this process")
def test_sigterm_outside_the_training_loop_releases_the_lock(tmp_path, monkeypatch):
  """(Inside the loop SIGTERM checkpoints and returns: the normal end.)"""
  seen = []

  def run(config, workdir, **kwargs):  # e.g. probing when the signal comes
    seen.append(_holder(workdir))
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)  # the handler raises here
    raise AssertionError("SIGTERM did not stop the run")

  monkeypatch.setattr(train, "_train_and_evaluate", run)
  with pytest.raises(SystemExit) as info:
    train.train_and_evaluate(tiny_config("uniform"), str(tmp_path))
  assert info.value.code == 128 + signal.SIGTERM
  assert seen and not os.path.exists(workdir_lock.lock_path(tmp_path))
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_peer_processes_take_no_lock(tmp_path, monkeypatch):
  _write_lock(tmp_path, host=socket.gethostname(), pid=os.getpid(), started="now")
  seen = []
  monkeypatch.setattr(multihost, "is_lead", lambda: False)
  monkeypatch.setattr(train, "_train_and_evaluate",
                      lambda config, workdir, **kwargs: seen.append(1) or train.RunOutcome({}))
  train.train_and_evaluate(tiny_config("uniform"), str(tmp_path))  # process 0's lock: no error
  assert seen == [1] and os.path.exists(workdir_lock.lock_path(tmp_path))


def test_release_keeps_a_lock_that_another_run_took_over(tmp_path):
  record = workdir_lock.acquire(str(tmp_path))
  _write_lock(tmp_path, host=socket.gethostname(), pid=os.getpid(), token="someone else")
  workdir_lock.release(str(tmp_path), record)
  assert _holder(tmp_path)["token"] == "someone else"
