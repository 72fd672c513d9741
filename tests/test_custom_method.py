"""A method defined outside the package plugs in with methods.register, and the normal trainer
trains, validates, checkpoints and reports it, with no edit anywhere in mi_contrast."""

import json
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mi_contrast import bounds
from mi_contrast import config as config_lib
from mi_contrast import methods
from mi_contrast import train
from mi_contrast.mesh import AXIS
from helpers import tiny_config

NAME = "inbatch_test"


def _make_method():
  """A minimal SimCLR: two views, each view-0 anchor against view 1 of the global batch (its
  own image the positive, every other image a uniform negative), and back."""
  method = types.ModuleType(NAME)
  method.VIEWS = (2, 2, 2)
  method.ONLINE_VIEWS = None
  method.ENCODER = "single"

  def validate(config, *, num_devices, num_train):
    del num_devices, num_train
    if config.bound != "infonce" or config.negatives != "uniform":
      raise ValueError(f"config.bound = {config.bound!r}, config.negatives = "
                       f"{config.negatives!r} are not allowed for method {NAME!r}; allowed "
                       "values: bound 'infonce' with negatives 'uniform'.")

  def describe(config):
    del config
    return {"negatives": "uniform", "pool": "the other view of the global batch",
            "objective": "infonce"}

  def init_state(rng, config, num_train, variables):
    del rng, config, num_train, variables
    return {"steps": jnp.zeros((), jnp.int32)}

  def objective(config, z, indices, state, rng, band, targets):
    del indices, state, rng, band, targets
    local = z.shape[1]
    everyone = jax.lax.all_gather(z, AXIS, axis=1, tiled=True)             # [2, B, D]
    image = jax.lax.axis_index(AXIS) * local + jnp.arange(local)          # [b]
    negative = jnp.arange(everyone.shape[1])[None, :] != image[:, None]    # [b, B]
    values, caps = [], []
    for anchor, other in ((0, 1), (1, 0)):
      scores = z[anchor] @ everyone[other].T / config.temperature         # [b, B]
      pos = jnp.take_along_axis(scores, image[:, None], axis=1)[:, 0]
      values.append(bounds.infonce(pos, scores, negative))
      caps.append(bounds.infonce_cap(scores, negative))
    value = jnp.concatenate(values)
    return methods.Objective(value=value, bound=value, cap=jnp.concatenate(caps))

  def update_state(config, state, all_indices, all_z, targets):
    del config, all_indices, all_z, targets
    return {"steps": state["steps"] + 1}

  method.validate, method.describe = validate, describe
  method.init_state, method.objective, method.update_state = init_state, objective, update_state
  return method


@pytest.fixture
def custom_method():
  method = methods.register(NAME, _make_method())
  try:
    yield method
  finally:
    methods.unregister(NAME)
  assert NAME not in methods.REGISTRY


def test_register_checks_the_name_and_the_method(custom_method):
  assert methods.get(NAME) is custom_method and NAME in config_lib.METHODS
  with pytest.raises(ValueError, match="already registered"):
    methods.register(NAME, custom_method)
  with pytest.raises(ValueError, match="already registered"):
    methods.register("ir", custom_method)
  incomplete = types.SimpleNamespace(VIEWS=(1, 1, 1), ONLINE_VIEWS=None, ENCODER="single")
  with pytest.raises(ValueError, match="lacks validate, describe"):
    methods.register("incomplete_test", incomplete)
  assert "incomplete_test" not in methods.REGISTRY


@pytest.mark.slow
def test_a_registered_method_trains_and_reports_itself(custom_method, tmp_path):
  config = tiny_config("uniform", method=NAME, views="digits", num_epochs=1, probe_epochs=2)
  config_lib.validate(config, num_devices=1)
  assert methods.encoder_kind(config) == "single"
  assert methods.describe_negatives(config) == ("uniform", "the other view of the global batch")
  with pytest.raises(ValueError, match=f"not allowed for method '{NAME}'"):
    config_lib.validate(tiny_config("ring", method=NAME), num_devices=1)
  with pytest.raises(ValueError, match="num_views"):
    config_lib.validate(tiny_config("uniform", method=NAME, num_views=3), num_devices=1)

  workdir = tmp_path / "run"
  first = train.train_and_evaluate(config, str(workdir), stop_after_steps=3)
  assert first.results["steps"] == 3
  losses = [json.loads(line)["loss"] for line in open(workdir / "metrics.jsonl")
            if '"loss"' in line]
  assert losses and np.all(np.isfinite(losses)), losses

  results = train.train_and_evaluate(config, str(workdir)).results   # resumes to the end
  on_disk = json.load(open(workdir / "results.json"))
  assert on_disk["method"] == NAME and on_disk["resumed_from_step"] == 3
  assert (on_disk["negatives"], on_disk["negative_pool"], on_disk["objective"]) == (
      "uniform", "the other view of the global batch", "infonce")
  assert np.isfinite(results["loss"])
  # Every anchor against the 63 other images of the global batch of 64: cap log(64).
  assert results["log_k_plus_1"] == pytest.approx(np.log(64.0), rel=1e-5)
  assert results["bound_nats"] <= results["log_k_plus_1"] + 1e-5
