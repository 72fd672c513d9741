"""A finished run started again (saved results, --reevaluate), IR's log-space NCE partition at
small temperatures, and the reference form of the neighbour-view objective.

(The adaptive ring schedule's accuracy mode was removed: tests/test_schedules.py checks that
it is refused. The workdir lock: tests/test_workdir_lock.py.)
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from mi_contrast import bounds
from mi_contrast import input_pipeline
from mi_contrast import checkpoints
from mi_contrast import probes
from mi_contrast import results as results_lib
from mi_contrast import run as run_lib
from mi_contrast import train
from mi_contrast import workdir_lock
from mi_contrast.mesh import AXIS, make_mesh
from mi_contrast.methods import ir
from helpers import tiny_config


# ----------------------------------------------------------------------------------------------
# A finished run started again.
# ----------------------------------------------------------------------------------------------


class Probed(Exception):
  """Raised by a patched probe: the run probed."""


def _raise(exception):
  def fn(*args, **kwargs):
    raise exception
  return fn


@pytest.mark.slow
def test_finished_run_returns_saved_results_without_probing_and_reevaluate_probes(
    tmp_path, monkeypatch):
  # 1438 // 512 = 2 steps on the 8 simulated devices: the shortest finished run.
  config = tiny_config("ring", num_epochs=1, global_batch_size=512, probe_epochs=1)
  workdir = str(tmp_path / "run")
  first = train.train_and_evaluate(config, workdir)
  assert not first.reused and first.results["steps"] == 2
  assert not os.path.exists(workdir_lock.lock_path(workdir))  # released after a normal end
  path = os.path.join(workdir, "results.json")
  on_disk = open(path).read()
  saved = json.loads(on_disk)
  assert saved["config_sha256"] == results_lib.config_digest(config)

  with monkeypatch.context() as m:  # nothing is probed, nor even loaded
    for name in ("probe_model", "probe_knn", "raw_pixel_probes", "split_features"):
      m.setattr(probes, name, _raise(AssertionError(f"probes.{name} was called")))
    m.setattr(run_lib, "device_images", _raise(AssertionError("run.device_images was called")))
    m.setattr(input_pipeline, "load_dataset", _raise(AssertionError("the data were loaded")))
    again = train.train_and_evaluate(config, workdir)
  assert again.reused and not again.preempted
  assert again.results == dict(saved, resumed_from_step=saved["steps"])
  assert open(path).read() == on_disk                      # results.json untouched
  assert not os.path.exists(workdir_lock.lock_path(workdir))

  # Not this run's results: the digests are checked without probing, and any mismatch probes.
  manager = checkpoints.checkpoint_manager(workdir, config)
  assert results_lib.saved_results(config, workdir, manager) == again.results
  assert results_lib.saved_results(tiny_config("ring", num_epochs=1, global_batch_size=512,
                                               probe_epochs=2), workdir, manager) is None
  with open(path, "w") as f:
    json.dump(dict(saved, params_sha256="0" * 64), f)
  assert results_lib.saved_results(config, workdir, manager) is None
  with open(path, "w") as f:
    f.write(on_disk)

  monkeypatch.setattr(probes, "probe_model", _raise(Probed()))
  with pytest.raises(Probed):
    train.train_and_evaluate(config, workdir, reevaluate=True)
  assert not os.path.exists(workdir_lock.lock_path(workdir))  # released after an exception


# ----------------------------------------------------------------------------------------------
# IR's NCE partition estimate in log space.
# ----------------------------------------------------------------------------------------------


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _np_log_z(z, bank, tau):
  """log(N mean exp(z . M / tau)) in float64, with the max subtracted."""
  s = z.astype(np.float64) @ bank.astype(np.float64).T / tau
  top = s.max()
  return top + np.log(np.mean(np.exp(s - top))) + np.log(bank.shape[0])


def _anchors_and_bank(seed=0, per_device=4, rows=50, dim=16):
  rng = np.random.default_rng(seed)
  bank = _unit(rng.normal(size=(rows, dim))).astype(np.float32)
  z = _unit(rng.normal(size=(8 * per_device, dim))).astype(np.float32)
  z[:per_device] = bank[:per_device]  # device 0's anchors are bank rows: scores 1 / tau
  return z, bank


def _sharded_log_z(z, bank, tau):
  mesh = make_mesh()
  fn = jax.shard_map(lambda z, bank: ir.partition_estimate(z, bank, tau), mesh=mesh,
                     in_specs=(P(AXIS), P()), out_specs=P(), check_vma=False)
  return float(jax.jit(fn)(z, bank))


def test_partition_estimate_is_finite_at_tau_001_and_matches_float64():
  assert jax.device_count() == 8
  z, bank = _anchors_and_bank()
  tau = 0.01
  # The linear-space mean overflows float32 here: exp(100) > 3.4e38.
  assert not np.isfinite(float(jnp.log(jnp.mean(jnp.exp(jnp.asarray(z @ bank.T) / tau)))))
  got = _sharded_log_z(z, bank, tau)
  assert np.isfinite(got)
  np.testing.assert_allclose(got, _np_log_z(z, bank, tau), rtol=0, atol=2e-4)
  # The first batch's estimate stored by update_state (all views of the global batch).
  config = tiny_config("uniform", bound="nce", temperature=tau,
                       **{"ir.nce_partition": "first_batch"})
  state = {"bank": jnp.asarray(bank), "log_z": jnp.full((), jnp.nan, jnp.float32)}
  new = ir.update_state(config, state, jnp.arange(len(z)) % len(bank), jnp.asarray(z)[None])
  assert np.isfinite(float(new["log_z"]))
  np.testing.assert_allclose(float(new["log_z"]), _np_log_z(z, bank, tau), rtol=0, atol=2e-4)


@pytest.mark.parametrize("tau", [0.07, 0.2, 1.0])
def test_partition_estimate_unchanged_at_ordinary_temperatures(tau):
  z, bank = _anchors_and_bank(seed=1)
  linear = np.log(np.mean(np.exp((z @ bank.T) / np.float32(tau)))) + np.log(len(bank))
  got = _sharded_log_z(z, bank, tau)
  np.testing.assert_allclose(got, linear, rtol=2e-6)
  np.testing.assert_allclose(got, _np_log_z(z, bank, tau), rtol=2e-6)


# ----------------------------------------------------------------------------------------------
# The neighbour-view objective: LA's form (default) and the reference code's form.
# ----------------------------------------------------------------------------------------------


def _np_lse(x):
  x = np.asarray(x, np.float64)
  top = np.max(x)
  return top + np.log(np.sum(np.exp(x - top)))


def test_neighbour_view_objective_both_forms_match_numpy():
  rng = np.random.default_rng(0)
  pos = rng.normal(size=(6,)).astype(np.float32) * 3
  scores = rng.normal(size=(6, 20)).astype(np.float32) * 3
  positive = rng.random((6, 20)) < 0.2
  negative = rng.random((6, 20)) < 0.6        # some entries in both: they count as positives
  positive[0] = False                         # row 0: no extra positive
  both = {}
  for in_denominator in (True, False):
    got = np.asarray(bounds.neighbour_view_objective(
        pos, scores, positive, negative, positives_in_denominator=in_denominator))
    want = []
    for i in range(6):
      numerator = [pos[i], *scores[i][positive[i]]]
      kept = (positive[i] | negative[i]) if in_denominator else (negative[i] & ~positive[i])
      want.append(_np_lse(numerator) - _np_lse([pos[i], *scores[i][kept]]))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    both[in_denominator] = got
  # LA's form is a log-probability; the reference's is not bounded by 0.
  assert np.all(both[True] <= 1e-6)
  assert np.all(both[False] >= both[True] - 1e-6)
  # Without extra positives both are InfoNCE over the negatives minus its cap.
  neg_only = negative[0]
  infonce = float(bounds.infonce(pos[0], scores[0], neg_only)) - np.log1p(neg_only.sum())
  np.testing.assert_allclose([both[True][0], both[False][0]], [infonce] * 2, rtol=1e-5,
                             atol=1e-5)
  # All scores equal: log(1 + |P|) - log(1 + |S|) for the reference's form.
  flat = bounds.neighbour_view_objective(
      np.float32(1.0), np.ones((10,), np.float32), np.arange(10) < 6, np.arange(10) >= 6,
      positives_in_denominator=False)
  np.testing.assert_allclose(float(flat), np.log(7.0) - np.log(5.0), rtol=1e-6)
