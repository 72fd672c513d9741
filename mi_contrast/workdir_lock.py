"""One run per workdir: a lock file that process 0 of a run holds for the run's whole life.

Two runs started on the same workdir would both write checkpoints and metrics. So
`train.train_and_evaluate` takes `<workdir>/run.lock` first, before it writes anything, and
removes it on every way out (a normal end, an exception, the SIGTERM path: inside the training
loop SIGTERM checkpoints and returns; elsewhere, e.g. while probing, `exit_on_sigterm` turns it
into SystemExit). Only SIGKILL (or a crash of the machine) leaves the file behind. The peers of
a multi-process run share the workdir legitimately and take no lock.

The lock file is created atomically (os.open with O_CREAT | O_EXCL) and holds JSON: host name,
pid, start time (and the process's start tick from /proc, which tells a reused pid apart). A
second run finding it:
  * same host, the holder's process alive: refuses at once (WorkdirLockedError), naming the
    holder (host, pid, since when) and the lock file;
  * same host, the holder's process gone (os.kill(pid, 0) raises ProcessLookupError, or the pid
    now belongs to a younger process or a zombie): a stale lock, e.g. of a run killed with
    SIGKILL. It is reported with a warning and replaced;
  * another host: nothing here can tell whether that run still lives, so the lock is never
    broken silently: an error that says so and asks the user to delete the file if that run is
    really gone.
"""

import contextlib
import json
import os
import signal
import socket
import time
import uuid
import warnings

from absl import logging

LOCK_NAME = "run.lock"


class WorkdirLockedError(RuntimeError):
  """The workdir is in use by another run (or its lock cannot be checked from this host)."""


def lock_path(workdir):
  return os.path.join(os.path.abspath(workdir), LOCK_NAME)


def _proc_start(pid):
  """(start tick, state) of a process from /proc/<pid>/stat, or None where unreadable."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      stat = f.read()
  except OSError:
    return None
  # Fields after the command name (which may hold spaces and parentheses): state is the
  # first, the start time (clock ticks since boot) the 20th.
  fields = stat[stat.rindex(")") + 2:].split()
  try:
    return int(fields[19]), fields[0]
  except (IndexError, ValueError):
    return None


def _describe(holder):
  return (f"host {holder.get('host')!r}, pid {holder.get('pid')}, since "
          f"{holder.get('started', 'an unknown time')}")


def _holder_alive(holder):
  """Whether the process named by a lock of this host is still running."""
  pid = holder.get("pid")
  if not isinstance(pid, int) or pid <= 0:
    return False
  try:  # (this very process counts as alive: a second run started from the same program)
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass  # alive, owned by another user
  proc = _proc_start(pid)
  if proc is not None:
    start, state = proc
    if state in ("Z", "X"):  # a zombie: it has ended, its parent has not reaped it yet
      return False
    if holder.get("proc_start") is not None and holder["proc_start"] != start:
      return False  # the pid now belongs to another process
  return True


def _read(path, attempts=20):
  """The lock's JSON, or None if it is gone. Retries briefly while it is empty or partial
  (created by a process that is writing it right now)."""
  for attempt in range(attempts):
    try:
      with open(path) as f:
        text = f.read()
    except FileNotFoundError:
      return None
    try:
      holder = json.loads(text)
      if isinstance(holder, dict):
        return holder
    except ValueError:
      pass
    if attempt + 1 < attempts:
      time.sleep(0.05)
  raise WorkdirLockedError(
      f"the lock file {path} exists but cannot be read as a lock (content {text[:200]!r}). If "
      "no run is using this workdir, delete the file and start again.")


def _break_stale(path, holder):
  """Removes the stale lock `holder` at `path`, unless another run replaced it meanwhile."""
  aside = f"{path}.stale-{os.getpid()}-{uuid.uuid4().hex[:8]}"
  try:
    os.rename(path, aside)  # atomic: two runs breaking the same stale lock cannot both win
  except FileNotFoundError:
    return
  try:
    moved = _read(aside, attempts=1)
  except WorkdirLockedError:
    moved = None
  if moved is not None and moved.get("token") != holder.get("token"):
    # A fresh lock of another run landed between our read and the rename: put it back.
    try:
      os.link(aside, path)
    except FileExistsError:
      pass
  os.unlink(aside)


def acquire(workdir):
  """Takes the workdir's lock; returns its record (pass it to `release`).

  Raises:
    WorkdirLockedError: another live run on this host holds the lock, or a run on another
      host does (never broken silently), or the lock file cannot be read.
  """
  path = lock_path(workdir)
  proc = _proc_start(os.getpid())
  record = {"host": socket.gethostname(), "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "started_unix": time.time(),
            "proc_start": proc[0] if proc else None, "token": uuid.uuid4().hex}
  for _ in range(10):
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      holder = _read(path)
      if holder is None:
        continue  # released meanwhile: try again
      if holder.get("host") != record["host"]:
        raise WorkdirLockedError(
            f"{os.path.dirname(path)} is locked by a run on another host ({_describe(holder)}; "
            f"lock file {path}). A run on another host cannot be checked from "
            f"{record['host']!r}, so the lock is not broken. If that run is really gone, delete "
            f"{path} and start again.")
      if _holder_alive(holder):
        raise WorkdirLockedError(
            f"{os.path.dirname(path)} is in use by another run ({_describe(holder)}; lock file "
            f"{path}). Wait for it to end, or use another --workdir.")
      message = (f"stale lock {path} of a run that is no longer running ({_describe(holder)}); "
                 "replacing it.")
      logging.warning(message)
      warnings.warn(message, UserWarning)
      _break_stale(path, holder)
      continue
    with os.fdopen(fd, "w") as f:
      json.dump(record, f, indent=2, sort_keys=True)
      f.flush()
      os.fsync(f.fileno())
    return record
  raise WorkdirLockedError(f"could not take the lock {path}: other runs keep taking it.")


def release(workdir, record):
  """Removes the lock if it is still `record`'s (a lock replaced by another run is kept)."""
  path = lock_path(workdir)
  try:
    holder = _read(path, attempts=1)
  except WorkdirLockedError:
    return
  if holder is not None and holder.get("token") == record.get("token"):
    try:
      os.unlink(path)
    except FileNotFoundError:
      pass


@contextlib.contextmanager
def exit_on_sigterm():
  """While active, a SIGTERM that would kill the process (default action) raises
  SystemExit(128 + SIGTERM) instead, so `finally` blocks (the lock's release) run. A handler
  installed by someone else is left alone; so is any thread but the main one."""
  try:
    install = signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
  except ValueError:
    install = False
  if install:
    def handler(signum, frame):
      del frame
      raise SystemExit(128 + signum)
    try:
      signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
      install = False
  try:
    yield
  finally:
    if install:
      signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def held(workdir, enabled=True):
  """Holds the workdir's lock for the body (`enabled=False`: no lock, e.g. a peer process)."""
  if not enabled:
    yield None
    return
  record = acquire(workdir)
  try:
    yield record
  finally:
    release(workdir, record)
