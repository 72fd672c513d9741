"""Scale options: the transfer guard over the real loop, bfloat16 bank and activations, and the
bank sharded over the devices."""

import contextlib
import json

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import PartitionSpec as P

from mi_contrast import config as config_lib
from mi_contrast import methods
from mi_contrast import negatives
from mi_contrast.methods import sharded_bank
from mi_contrast import step as step_lib
from mi_contrast import train
from mi_contrast.mesh import make_mesh
from helpers import build_step, tiny_config


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


@pytest.mark.slow
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

  real_step = step_lib.make_train_step

  def syncing_step(*args, **kwargs):
    step = real_step(*args, **kwargs)

    def run(state, *inputs):
      state, metrics = step(state, *inputs)
      float(metrics["loss"])  # a host sync inside the step
      return state, metrics

    return run

  monkeypatch.setattr(step_lib, "make_train_step", syncing_step)
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
  state, step, images, model, data = build_step(config, devices)
  new_state, metrics = step(state, images)
  return jax.device_get(metrics), new_state, model, data


@pytest.mark.slow
def test_bfloat16_bank_and_activations_agree_on_1_and_8_devices():
  config = tiny_config("ring", compute_dtype="bfloat16", **{"bank.dtype": "bfloat16"})
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


@pytest.mark.slow
def test_bfloat16_run_trains_with_finite_loss_and_a_bfloat16_bank_checkpoint(tmp_path):
  config = tiny_config("ring", compute_dtype="bfloat16", log_every_steps=2,
                       checkpoint_every_steps=10, **{"bank.dtype": "bfloat16"})
  outcome = train.train_and_evaluate(config, str(tmp_path), stop_after_steps=10)
  assert outcome.results["steps"] == 10
  records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  losses = [r["loss"] for r in records if "loss" in r]
  assert len(losses) == 5 and all(np.isfinite(losses))
  metadata = ocp.StandardCheckpointer().metadata(tmp_path / "checkpoints" / "10" / "default")
  tree = getattr(metadata, "item_metadata", metadata)
  assert str(tree["method_state"]["bank"].dtype) == "bfloat16"
  assert str(tree["params"]["backbone"]["conv1"]["kernel"].dtype) == "float32"


# ----------------------------------------------------------------------------------------------
# Sharded bank.
# ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sharded_bank_places_rows_by_a_fixed_permutation_and_updates_like_the_replicated_bank():
  config = tiny_config("ring")
  _, replicated, _, data = _one_step(config, jax.devices())
  config.bank.sharded = True
  metrics, sharded, _, _ = _one_step(config, jax.devices())
  n = data.num_train
  bank = sharded.method_state["bank"]
  per_device = sharded_bank.rows_per_shard(n, 8)
  assert bank.shape == (8 * per_device, config.embedding_dim) and n % 8  # 1438 -> 1440 slots
  assert bank.sharding.spec == P("batch")
  assert {s.data.shape[0] for s in bank.addressable_shards} == {per_device}
  assert int(sharded.method_state["rows"]) == n
  slot = np.asarray(sharded.method_state["slot"])
  assert sorted(slot) == list(range(n))                        # a permutation of the rows
  # Rows in dataset order land in every shard alike: each shard holds about N / 8 of the
  # first half of the dataset (contiguous blocks would put it all in shards 0-3).
  first_half = np.bincount(slot[:n // 2] // per_device, minlength=8)
  assert first_half.min() > 0.6 * n / 16 and first_half.max() < 1.4 * n / 16
  bank = np.asarray(bank)
  # Same embeddings, same update: row i in slot[i] equals the replicated bank's row i after
  # the step; the padding slots stay zero (never candidates).
  np.testing.assert_allclose(bank[slot], np.asarray(replicated.method_state["bank"]), atol=1e-5)
  np.testing.assert_array_equal(bank[n:], 0.0)
  assert np.isfinite(metrics["loss"])
  assert metrics["log_k_plus_1"] == pytest.approx(np.log(config.num_negatives + 1), rel=1e-6)


@pytest.mark.slow   # over 2 s on a 2-core CPU
def test_sharded_bank_objective_scores_each_shard_band():
  """Positives come from the row's shard; each shard's negatives lie in that shard's band."""
  devices = jax.devices()
  mesh = make_mesh(devices)
  config = tiny_config("ring", num_negatives=16, **{"bank.sharded": True})
  rng = np.random.default_rng(0)
  n, dim, b = 160, 8, 16
  bank = rng.normal(size=(n, dim)).astype(np.float32)
  bank /= np.linalg.norm(bank, axis=1, keepdims=True)
  z = rng.normal(size=(1, b, dim)).astype(np.float32)
  z /= np.linalg.norm(z, axis=-1, keepdims=True)
  indices = np.arange(b, dtype=np.int32) * 7
  band = methods.Band(jnp.float32(0.8), jnp.float32(0.95))

  slot = sharded_bank.row_slots(n)
  state = {"bank": sharded_bank.pad_rows(jnp.asarray(bank), 8, slot),
           "rows": jnp.int32(n), "slot": jnp.asarray(slot)}

  def objective(z, indices, state):
    out = sharded_bank.ir_objective(config, z, indices, state, jax.random.key(1), band)
    return out.value, out.bound

  specs = {"bank": P("batch"), "rows": P(), "slot": P()}
  fn = jax.jit(jax.shard_map(objective, mesh=mesh, in_specs=(P(None, "batch"), P("batch"),
                                                             specs),
                             out_specs=(P("batch"), P("batch")), check_vma=False))
  value, bound = fn(z, indices, state)
  value = np.asarray(value)
  assert value.shape == (b,) and np.all(np.isfinite(value))
  # Recompute with the returned value: InfoNCE of (pos, neg) with pos = z . M[i] / tau and neg
  # drawn from each shard's band; check the value is bounded by the best and worst negatives
  # any shard's band allows.
  tau = config.temperature
  pos = np.sum(z[0] * bank[indices], axis=1) / tau
  lo, hi = np.full(b, np.inf), np.full(b, -np.inf)
  for s in range(8):
    rows = np.flatnonzero(slot // (n // 8) == s)                # the shard's rows
    shard = bank[rows]
    scores = z[0] @ shard.T / tau
    own = rows[None, :] == indices[:, None]
    scores = np.where(own, -np.inf, scores)                     # never its own row
    descending = -np.sort(-scores, axis=1)             # rank 0 = most similar
    for a in range(b):                                 # the band of the shard's other rows
      start, end = (int(x) for x in negatives.band_bounds(len(rows) - own[a].sum(), 0.8, 0.95))
      lo[a] = min(lo[a], descending[a, end - 1])
      hi[a] = max(hi[a], descending[a, start])
  k = config.num_negatives
  logk1 = np.log(k + 1)

  def infonce(neg):
    return pos - np.logaddexp(pos, np.log(k) + neg) + logk1

  assert np.all(value <= infonce(lo) + 1e-4) and np.all(value >= infonce(hi) - 1e-4)


@pytest.mark.slow
def test_sharded_bank_trains_checkpoints_and_resumes(tmp_path):
  config = tiny_config("ring", checkpoint_every_steps=4, num_epochs=1,
                       **{"bank.sharded": True})
  first = train.train_and_evaluate(config, str(tmp_path), stop_after_steps=4)
  assert first.results["steps"] == 4
  rest = train.train_and_evaluate(config, str(tmp_path)).results
  assert rest["resumed_from_step"] == 4 and np.isfinite(rest["loss"])
  assert rest["knn_top1"] > 0.5


@pytest.mark.parametrize("overrides,needle", [
    ({"compute_dtype": "float16"}, "compute_dtype"),
    ({"bank.dtype": "int8"}, r"bank\.dtype"),
    ({"bank.sharded": True, "method": "simclr"}, r"bank\.sharded"),
    ({"bank.sharded": True, "bank.candidates": 256}, r"bank\.sharded"),
    ({"bank.sharded": True, "negatives": "uniform", "bound": "nce"}, r"bank\.sharded"),
])
def test_bad_scale_options_are_named(overrides, needle):
  negatives = overrides.pop("negatives", "ring")
  config = tiny_config(negatives, **overrides)
  with pytest.raises(ValueError, match=needle) as info:
    config_lib.validate(config, num_devices=8)
  assert "allowed" in str(info.value)
