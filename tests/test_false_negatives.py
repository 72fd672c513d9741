"""The false-negative diagnostic: the share of drawn negatives whose class is the anchor's.

Exact counts on a hand-made case, the pooling over devices, the chance level of uniform draws
(and a class-clustered ring far above it), the sharded bank's rows, training bit-identical with
the diagnostic on and off, the metric in metrics.jsonl and report.md, and its absence where the
pretraining images have no labels.
"""

import dataclasses
import functools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from mi_contrast import bounds
from mi_contrast import input_pipeline
from mi_contrast import methods
from mi_contrast import negatives
from mi_contrast import report
from mi_contrast import results
from mi_contrast import run as run_lib
from mi_contrast import step as step_lib
from mi_contrast import train
from mi_contrast.mesh import make_mesh
from mi_contrast.methods import ir
from mi_contrast.methods import moco
from mi_contrast.methods import sharded_bank
from helpers import tiny_config
from xla_options import DEFAULT_EMITTERS

# Six pool images: classes 0, 0, 1, 1, 2 and one without a label (-1).
LABELS = [0, 0, 1, 1, 2, -1]
# Anchors at rows 0 (class 0), 2 (class 1), 4 (class 2) and 5 (no label); four negatives each,
# -1 = no image. Same class / counted: row 0: 1 / 2 (row 5 has no label, -1 is none); row 2:
# 2 / 4; row 4: 0 / 4; row 5: nothing. In all 3 of 10.
ANCHORS = [0, 2, 4, 5]
ROWS = [[1, 2, 5, -1], [3, 3, 0, 4], [0, 1, 2, 3], [0, 1, 2, 3]]
# Kept entries only: row 0: 1 / 2; row 2: 1 / 3 (its second 3 is dropped); row 4: 0 / 1.
KEEP = [[True] * 4, [True, False, True, True], [False, False, False, True], [True] * 4]


def _counts(*args):
  return tuple(int(c) for c in negatives.false_negative_counts(*args))


def test_counts_of_a_hand_made_case():
  labels, anchors, rows = (jnp.asarray(x, jnp.int32) for x in (LABELS, ANCHORS, ROWS))
  assert _counts(labels, anchors, rows) == (3, 10)
  assert _counts(labels, anchors, rows, jnp.asarray(KEEP)) == (2, 6)
  # A pool every anchor scores ([K] rows), minus the anchor's own entry: row 0 (class 0) sees
  # 1 same of 1, 2, 3, 4 (row 5 unlabelled); row 2 (class 1) sees 3 of 0, 1, 3, 4.
  shared = jnp.arange(6)
  own = shared[None, :] == jnp.asarray([0, 2])[:, None]
  assert _counts(labels, jnp.asarray([0, 2]), shared, ~own) == (2, 8)


def test_share_pools_the_counts_of_every_device():
  """Device 0 holds anchors 0 and 2 (3 same of 6), device 1 anchors 4 and 5 (0 of 4): the
  share is 3 / 10 on two devices, as on one, not the mean of 1/2 and 0."""
  drawn = methods.DrawnNegatives(jnp.asarray(ANCHORS), jnp.asarray(ROWS))
  labels = jnp.asarray(LABELS)
  shares = []
  for num_devices in (1, 2):
    fn = jax.shard_map(step_lib.false_negative_share, mesh=make_mesh(jax.devices()[:num_devices]),
                       in_specs=(P(), P("batch")), out_specs=P(), check_vma=False)
    shares.append(float(jax.jit(fn)(labels, drawn)))
  assert shares == [np.float32(3) / np.float32(10)] * 2


def _clustered_bank(num_rows, num_classes, dim, noise, seed=0):
  """Unit rows around one random centre per class; labels = row mod classes."""
  rng = np.random.default_rng(seed)
  labels = np.arange(num_rows) % num_classes
  centres = rng.normal(size=(num_classes, dim))
  bank = centres[labels] + noise * rng.normal(size=(num_rows, dim))
  return jnp.asarray(bank / np.linalg.norm(bank, axis=1, keepdims=True), jnp.float32), labels


@pytest.mark.slow
def test_uniform_draws_give_the_chance_share_and_a_class_ring_far_more():
  """10 balanced classes of 100 rows: a uniform draw from the other 999 rows is of the
  anchor's class with probability 99 / 999; a ring of the nearest rows of a bank clustered by
  class holds almost only the anchor's class."""
  bank, labels = _clustered_bank(1000, 10, 16, noise=0.3)
  rows = jnp.arange(64, dtype=jnp.int32) * 7
  z = bank[rows]                         # each anchor at its own row's embedding
  band = methods.Band(jnp.float32(0.9), jnp.float32(0.99))
  shares = {}
  for kind in ("uniform", "ring"):
    config = tiny_config(kind, num_negatives=1024)
    out = ir.bank_objective(config, z, rows, rows, bank, jax.random.key(0), band)
    assert out.drawn.rows.shape == (64, 1024)
    same, total = negatives.false_negative_counts(jnp.asarray(labels), out.drawn.anchors,
                                                  out.drawn.rows)
    assert int(total) == 64 * 1024
    shares[kind] = int(same) / int(total)
  # 65,536 draws: the standard error is 0.0012.
  assert shares["uniform"] == pytest.approx(99 / 999, abs=0.006)
  assert shares["ring"] > 0.9


@pytest.mark.slow
def test_sharded_bank_reports_the_rows_it_scored():
  """Eight shards: the value is InfoNCE of the positive and the drawn rows' scores, and the
  rows of column block s come from shard s (dataset rows through the slot permutation)."""
  mesh = make_mesh(jax.devices())
  config = tiny_config("ring", num_negatives=16, **{"bank.sharded": True})
  n, b = 160, 16
  bank, _ = _clustered_bank(n, 4, 8, noise=1.0, seed=1)
  z = jax.random.normal(jax.random.key(2), (1, b, 8))
  z = z / jnp.linalg.norm(z, axis=-1, keepdims=True)
  indices = jnp.arange(b, dtype=jnp.int32) * 7
  slot = sharded_bank.row_slots(n)
  state = {"bank": sharded_bank.pad_rows(bank, 8, slot), "rows": jnp.int32(n),
           "slot": jnp.asarray(slot)}
  band = methods.Band(jnp.float32(0.5), jnp.float32(0.95))

  def objective(z, indices, state):
    out = sharded_bank.ir_objective(config, z, indices, state, jax.random.key(1), band)
    return out.value, out.drawn.anchors, out.drawn.rows

  specs = {"bank": P("batch"), "rows": P(), "slot": P()}
  value, anchors, rows = jax.jit(jax.shard_map(
      objective, mesh=mesh, in_specs=(P(None, "batch"), P("batch"), specs),
      out_specs=P("batch"), check_vma=False))(z, indices, state)
  rows = np.asarray(rows)
  np.testing.assert_array_equal(anchors, indices)
  assert rows.shape == (b, 16) and rows.min() >= 0 and rows.max() < n
  assert not np.any(rows == np.asarray(indices)[:, None])                  # never the own row
  np.testing.assert_array_equal(slot[rows] // (n // 8), np.tile(np.arange(16) // 2, (b, 1)))
  tau = config.temperature
  pos = jnp.sum(z[0] * bank[indices], axis=1) / tau
  neg = jnp.einsum("bd,bkd->bk", z[0], bank[rows]) / tau
  np.testing.assert_allclose(value, bounds.infonce(pos, neg), rtol=1e-5, atol=1e-5)


def _config(**overrides):
  """The tiny digits IR Ring run the step tests share, on every device as the trainer runs it
  (so that their steps compile once: the session's compilation cache)."""
  return tiny_config("ring", **overrides)


def _train(run, steps):
  """(params, metrics of every step) after `steps` steps of `run` from its initial state."""
  state = run_lib.create_train_state(run)
  state = jax.device_put(state, run_lib.state_shardings(run.config, state, run.mesh))
  step = step_lib.make_train_step(run, state_spec=run_lib.state_specs(run.config, state))
  logged = []
  for _ in range(steps):
    state, metrics = step(state, run.images["pretrain"])
    logged.append(jax.device_get(metrics))
  return jax.device_get(state.params), logged


@pytest.mark.slow
def test_training_is_bit_identical_with_the_diagnostic_on_and_off(monkeypatch):
  # Both steps compiled with XLA's default fusion emitters: with the older ones of the tests'
  # session, the diagnostic's outputs change how XLA fuses the step, and with it the rounding.
  monkeypatch.setattr(jax, "jit", functools.partial(jax.jit, compiler_options=DEFAULT_EMITTERS))
  run = run_lib.build_run(_config())
  assert run.labels is not None and run.labels.shape == (run.plan.bank_rows,)
  on_params, on = _train(run, 3)
  off_params, off = _train(dataclasses.replace(run, labels=None), 3)
  monkeypatch.undo()
  assert results.params_digest(on_params) == results.params_digest(off_params)
  for with_share, without in zip(on, off):
    assert set(with_share) - set(without) == {"false_negative_share", "false_negative_weight"}
    assert all(with_share[k] == without[k] for k in without)
    assert 0.0 <= with_share["false_negative_share"] <= 1.0
    assert 0.0 <= with_share["false_negative_weight"] <= 1.0


@pytest.mark.slow
def test_no_labels_no_metric():
  """Unlabelled pretraining images (stl10's 'unlabelled' split; here digits given as
  pretraining images of their own), streaming data and a run without its dataset: no labels,
  and the step logs no share, not a zero."""
  data = input_pipeline.load_digits(0, 0.2)
  unlabelled = dataclasses.replace(data, pretrain_images=data.train_images.copy())
  run = run_lib.build_run(_config(), data=unlabelled)
  assert run.labels is None
  _, logged = _train(run, 1)
  assert "false_negative_share" not in logged[0] and "loss" in logged[0]
  streaming = input_pipeline.StreamingData("imagenet2012", None, 1000, 100, 10, 32, 36)
  assert run_lib.pretrain_labels(streaming, run.mesh) is None
  restored = run_lib.build_run(_config(), bank_rows=1438,
                               channel_stats=((0.5,), (0.25,)))
  assert restored.labels is None


@pytest.mark.slow
def test_share_in_metrics_jsonl_and_report(tmp_path):
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(_config(log_every_steps=1), workdir, stop_after_steps=2)
  with open(f"{workdir}/metrics.jsonl") as f:
    shares = [r["false_negative_share"] for r in map(json.loads, f)
              if "false_negative_share" in r]
  assert len(shares) == 2 and all(0.0 <= s <= 1.0 for s in shares)
  report.write_report(workdir)
  text = open(f"{workdir}/report.md").read()
  assert f"![Share of drawn negatives of the anchor's class]({report.FALSE_NEGATIVES_PLOT})" in text
  assert f"false_negative_share`): {shares[-1]:.4f}" in text
  with open(f"{workdir}/{report.FALSE_NEGATIVES_PLOT}", "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_report_without_the_metric_has_no_such_plot(tmp_path):
  records = [{"step": s, "loss": 1.0 / s, "bound_nats": math.log(s + 1), "log_k_plus_1": 4.2}
             for s in (1, 2, 3)]
  with open(tmp_path / "metrics.jsonl", "w") as f:
    f.write("".join(json.dumps(r) + "\n" for r in records))
  report.write_report(str(tmp_path))
  assert not (tmp_path / report.FALSE_NEGATIVES_PLOT).exists()
  assert "false_negative" not in (tmp_path / "report.md").read_text()


@pytest.mark.slow
def test_resume_an_old_moco_checkpoint(tmp_path, monkeypatch):
  config = tiny_config("ring", method="moco", log_every_steps=1, checkpoint_every_steps=2)
  real = moco.init_state
  def old_init(*args):
    state = real(*args)
    del state["queue_ids"]
    return state
  monkeypatch.setattr(moco, "init_state", old_init)
  train.train_and_evaluate(config, str(tmp_path), stop_after_steps=2)
  monkeypatch.setattr(moco, "init_state", real)
  with pytest.warns(UserWarning, match="method_state.queue_ids"):
    out = train.train_and_evaluate(config, str(tmp_path), stop_after_steps=4)
  assert out.results["steps"] == 4
  records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  shares = {r["step"]: r.get("false_negative_share") for r in records if "loss" in r}
  assert np.isnan(shares[3]) and 0 <= shares[4] <= 1
