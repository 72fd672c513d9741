"""The training loop does not synchronise with the host inside its steps."""

import contextlib

import jax
import numpy as np
import pytest

from mi_contrast import train
from test_train import tiny_config


# ----------------------------------------------------------------------------------------------
# No host synchronisation inside the loop.
# ----------------------------------------------------------------------------------------------


class _HostReads:
  """Counts reads of device values on the host (float(), int(), bool(), str(), .item(),
  .tolist(), jax.device_get, block_until_ready) while `active`. On the CPU backend JAX's
  transfer guard does not see device-to-host reads (they copy nothing there), so this
  detector stands in for it. (np.asarray of a CPU array uses the buffer protocol and is not
  seen.)"""

  def __init__(self, monkeypatch):
    from jax._src import array as array_lib
    self.active = False
    self.reads = []
    cls = array_lib.ArrayImpl
    value = cls._value

    def note(what):
      if self.active:
        self.reads.append(what)

    monkeypatch.setattr(cls, "_value", property(lambda a: (note("value"), value.fget(a))[1]))
    for name in ("item", "block_until_ready"):
      original = getattr(cls, name)
      monkeypatch.setattr(cls, name, (lambda original, name: lambda a, *args, **kw: (
          note(name), original(a, *args, **kw))[1])(original, name))


def test_loop_steps_do_not_synchronise_with_the_host(tmp_path, monkeypatch):
  """Every step of train_and_evaluate's real loop runs under jax.transfer_guard('disallow')
  (train._step_guard), and, inside that same context, no device value is read on the host;
  metric writes, evaluation and checkpoints happen outside it. A step that reads its loss on
  the host, slipped into that loop, is caught."""
  assert train.STEP_TRANSFER_GUARD == "disallow"
  reads = _HostReads(monkeypatch)
  real_guard = train._step_guard
  entered = []

  @contextlib.contextmanager
  def watched_guard():
    with real_guard():
      reads.active = True
      entered.append(len(reads.reads))
      try:
        yield
      finally:
        reads.active = False

  monkeypatch.setattr(train, "_step_guard", watched_guard)
  config = tiny_config("ring", log_every_steps=3, checkpoint_every_steps=4)
  outcome = train.train_and_evaluate(config, str(tmp_path / "clean"), stop_after_steps=7)
  assert outcome.results["steps"] == 7 and len(entered) == 7
  assert reads.reads == []
  # The loop itself does read metrics on the host (outside the steps): the detector sees those.
  reads.active = True
  assert float(jax.numpy.ones(())) == 1.0 and reads.reads == ["value"]
  reads.active, reads.reads = False, []

  real_step = train.make_train_step

  def syncing_step(*args, **kwargs):
    step = real_step(*args, **kwargs)

    def run(state, *inputs):
      state, metrics = step(state, *inputs)
      float(metrics["loss"])  # a host sync inside the step
      return state, metrics

    return run

  monkeypatch.setattr(train, "make_train_step", syncing_step)
  train.train_and_evaluate(config, str(tmp_path / "syncing"), stop_after_steps=2)
  assert reads.reads, "the host read inside the step was not detected"


def test_transfer_guard_stops_host_values_entering_a_step():
  """What the guard raises on every backend: an implicit host-to-device transfer."""
  step = jax.jit(lambda x: x + 1)
  with pytest.raises(Exception, match="Disallowed host-to-device transfer"):
    with jax.transfer_guard(train.STEP_TRANSFER_GUARD):
      step(np.ones(3, np.float32))
