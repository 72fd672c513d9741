"""Scale options: the transfer guard over the real loop, bfloat16 bank and activations."""

import contextlib
import json

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mi_contrast import config as config_lib
from mi_contrast import input_pipeline
from mi_contrast import methods
from mi_contrast import models
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


# ----------------------------------------------------------------------------------------------
# bfloat16.
# ----------------------------------------------------------------------------------------------


def _one_step(config, devices):
  mesh = train.make_mesh(devices)
  replicated = NamedSharding(mesh, P())
  data = input_pipeline.load_dataset(config)
  images = input_pipeline.to_device(data.train_images, config.image_size, replicated)
  mean, std = data.channel_stats()
  model = models.build_encoder(config, mean, std)
  method = methods.get(config.method)
  tx, _ = train.make_optimizer(config, data.num_train)
  state = train.create_train_state(config, model, tx, method, data.num_train, images.shape[1:])
  step = train.make_train_step(config, model, tx, method, data.num_train, mesh)
  state = jax.device_put(state, replicated)
  new_state, metrics = step(state, images)
  return jax.device_get(metrics), new_state, model, data


def test_bfloat16_bank_and_activations_agree_on_1_and_8_devices():
  config = tiny_config("ring", compute_dtype="bfloat16", bank_dtype="bfloat16")
  m1, s1, model, data = _one_step(config, jax.devices()[:1])
  m8, s8, _, _ = _one_step(config, jax.devices())
  assert s1.method_state["bank"].dtype == jnp.bfloat16
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(s1.params))
  assert np.isfinite(m1["loss"]) and np.isclose(m1["loss"], m8["loss"], rtol=2e-2, atol=2e-2)
  np.testing.assert_allclose(np.asarray(s1.method_state["bank"], np.float32),
                             np.asarray(s8.method_state["bank"], np.float32), atol=2e-2)
  # The convolutions run in bfloat16; the outputs the methods see are float32.
  jaxpr = str(jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False))(
      {"params": s1.params, "batch_stats": s1.batch_stats}, jnp.zeros((2, 16, 16, 1))))
  assert "conv_general_dilated" in jaxpr and "bf16[2,16,16,8]" in jaxpr
  h, z = model.apply({"params": s1.params, "batch_stats": s1.batch_stats},
                     jnp.zeros((2, 16, 16, 1)), train=False)
  assert h.dtype == z.dtype == jnp.float32


def test_bfloat16_run_trains_with_finite_loss_and_a_bfloat16_bank_checkpoint(tmp_path):
  config = tiny_config("ring", compute_dtype="bfloat16", bank_dtype="bfloat16",
                       log_every_steps=2, checkpoint_every_steps=10)
  outcome = train.train_and_evaluate(config, str(tmp_path), stop_after_steps=10)
  assert outcome.results["steps"] == 10
  records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  losses = [r["loss"] for r in records if "loss" in r]
  assert len(losses) == 5 and all(np.isfinite(losses))
  metadata = ocp.StandardCheckpointer().metadata(tmp_path / "checkpoints" / "10" / "default")
  tree = getattr(metadata, "item_metadata", metadata)
  assert str(tree["method_state"]["bank"].dtype) == "bfloat16"
  assert str(tree["params"]["backbone"]["conv1"]["kernel"].dtype) == "float32"


@pytest.mark.parametrize("overrides,needle", [
    ({"compute_dtype": "float16"}, "compute_dtype"),
    ({"bank_dtype": "int8"}, "bank_dtype"),
])
def test_bad_scale_options_are_named(overrides, needle):
  negatives = overrides.pop("negatives", "ring")
  config = tiny_config(negatives, **overrides)
  with pytest.raises(ValueError, match=needle) as info:
    config_lib.validate(config, num_devices=8)
  assert "allowed" in str(info.value)
