"""The trainer: 1-vs-8-device equality, exact resume, bad configs, a short end-to-end run."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from mi_contrast import config as config_lib
from mi_contrast import methods
from mi_contrast import run as run_lib
from mi_contrast import step as step_lib
from mi_contrast import train
import helpers
from helpers import REPO, TINY_MAIN_FLAGS, assert_devices_agree, child_xla_flags, tiny_config


@pytest.mark.slow
@pytest.mark.parametrize("negatives, overrides", [
    ("uniform", {}), ("ring", {}),
    # The first step of 'first_batch' uses the per-batch estimate and stores it: both paths.
    ("uniform", {"bound": "nce", "ir.nce_partition": "first_batch"}), ("ball", {"num_views": 2})])
def test_one_device_and_eight_devices_agree(negatives, overrides):
  assert jax.device_count() == 8
  config = tiny_config(negatives, **overrides)
  s1, s8, _ = assert_devices_agree(config, bound=True)
  np.testing.assert_allclose(s1.method_state["bank"], s8.method_state["bank"], atol=1e-5)
  for a, b in zip(jax.tree.leaves(s1.batch_stats), jax.tree.leaves(s8.batch_stats)):
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_bound_below_cap_and_band_annealed(tmp_path):
  config = tiny_config("ring")
  outcome = train.train_and_evaluate(config, str(tmp_path))
  results = outcome.results
  for record in _records(tmp_path):
    if "bound_nats" in record:
      assert record["bound_nats"] <= record["log_k_plus_1"] + 1e-5
  assert results["log_k_plus_1"] == pytest.approx(np.log(65.0), rel=1e-6)
  assert results["band_start"] == pytest.approx([0.0, 0.9], abs=1e-6)
  assert results["band_end"] == pytest.approx([0.9, 0.99], abs=1e-6)
  on_disk = json.load(open(tmp_path / "results.json"))
  for key in ("method", "negatives", "bound", "knn_top1", "nn1_top1", "linear_top1",
              "raw_pixels_linear_top1", "random_init_knn_top1", "random_init_linear_top1",
              "bound_nats", "log_k_plus_1", "band_start", "band_end", "steps",
              "resumed_from_step", "wall_seconds", "params_sha256", "params_l2",
              "raw_pixels_knn_top1", "fewshot"):
    assert key in on_disk, key
  assert on_disk["method"] == "ir" and on_disk["negatives"] == "ring"
  assert on_disk["resumed_from_step"] == 0
  assert 0.0 <= on_disk["raw_pixels_knn_top1"] <= 1.0
  assert sorted(on_disk["fewshot"], key=int) == ["1", "5", "10"]
  for row in on_disk["fewshot"].values():
    assert sorted(row) == ["random_init", "raw_pixels", "trained"]
    for stats in row.values():
      assert sorted(stats) == ["mean", "std"] and 0.0 <= stats["mean"] <= 1.0, stats


def _records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


@pytest.mark.parametrize("field,value,needle", [
    ("ring.inner", 0.5, "ring"),
    ("num_negatives", 5000, "num_negatives"),
    ("global_batch_size", 60, "global_batch_size"),
    ("temperature", 0.0, "temperature"),
    ("temperature", -1.0, "temperature"),
    ("negatives", "annulus", "negatives"),
    ("knn_features", "pixels", "knn_features"),
    ("pretrain_split", "unlabelled", "pretrain_split"),
    ("stream_resize", 4, "stream_resize"),
])
def test_bad_config_raises_before_compiling(tmp_path, monkeypatch, field, value, needle):
  overrides = {field: value}
  if field == "ring.inner":
    overrides["ring.dynamic_inner"] = False  # static inner 0.5 lies above rho_o = 0.1
  negatives = overrides.pop("negatives", "ring")
  config = tiny_config(negatives, **overrides)

  def no_compile(*args, **kwargs):
    raise AssertionError("the train step was built for an invalid config")

  monkeypatch.setattr(step_lib, "make_train_step", no_compile)
  with pytest.raises(ValueError, match=needle) as info:
    train.train_and_evaluate(config, str(tmp_path))
  assert "allowed" in str(info.value)


def test_unknown_preset_and_unknown_field():
  with pytest.raises(ValueError,
                     match="allowed values: digits, cifar10, cifar100, stl10, imagenet2012"):
    config_lib.default_config("imagenet")
  config = config_lib.default_config()
  config.bogus = 1
  with pytest.raises(ValueError, match="bogus is not a known field"):
    config_lib.validate(config, num_devices=1)


@pytest.mark.slow
def test_main_runs_without_tensorflow(tmp_path):
  """The main job with `import tensorflow` failing, as on a machine without it."""
  blocker = tmp_path / "blocker"
  (blocker / "tensorflow").mkdir(parents=True)
  (blocker / "tensorflow" / "__init__.py").write_text(
      "raise ImportError('TensorFlow is not installed (blocked by the test)')\n")
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join([str(blocker), REPO, env.get("PYTHONPATH", "")])
  env["XLA_FLAGS"] = child_xla_flags(2)
  workdir = tmp_path / "run"
  cmd = [sys.executable, "-m", "mi_contrast.main", f"--workdir={workdir}", *TINY_MAIN_FLAGS]
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.load(open(workdir / "results.json"))
  assert results["steps"] == 1438 // 64
  assert not (workdir / "tensorboard").exists()
  assert "tensorflow" not in proc.stdout.lower() or "not installed" in proc.stdout.lower()


def test_view_recipes_one_name_or_one_per_view():
  method = methods.get("ir")
  assert run_lib.view_recipes(tiny_config(views="digits_crop"), method) == ["digits_crop"]
  with pytest.raises(ValueError, match="give one name, or 1 names"):
    run_lib.view_recipes(tiny_config(views="digits,digits_crop"), method)
  with pytest.raises(ValueError, match="config.views"):
    config_lib.validate(tiny_config(views="digits,"), num_devices=1)


@pytest.mark.slow
def test_a_replayed_selection_is_the_one_the_step_uses_on_1_and_8_devices():
  """The replay behind assert_devices_agree (tests/helpers.py), checked on every machine: a
  changed selection (one anchor's last band member swapped for the first row of its inner
  ball: at step 0 the band and the ball cover the bank) replayed on 1 and on 8 devices gives the
  same step, and not the recorded one."""
  config = tiny_config("ring")
  devices = jax.devices()
  with helpers.recording(config, 1) as record:
    recorded = helpers.one_step(config, devices[:1])
  (x, (inner, band)), = record.rows["band"][(0, 0)]
  # The draws take the u-th member in index order: dropping the last member and adding the
  # first ball row shifts every draw between them.
  member = np.flatnonzero(band)[-1]
  outside = np.flatnonzero(inner & ~band & np.isfinite(x))[0]
  band[member], band[outside] = False, True
  with helpers.replaying(record, config, 1):
    one = helpers.one_step(config, devices[:1])
  with helpers.replaying(record, config, len(devices)):
    eight = helpers.one_step(config, devices)
  helpers.assert_close_steps(one, eight, bound=True)
  assert one[0]["loss"] != recorded[0]["loss"]
