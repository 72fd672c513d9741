"""MoCo: shuffle-BN keys, EMA, FIFO queue, 1-vs-8 devices, loss decreases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from mi_contrast import config as config_lib
from mi_contrast import memory
from mi_contrast import methods
from mi_contrast import models
from mi_contrast.mesh import make_mesh
from mi_contrast.methods import moco
from helpers import assert_devices_agree, build_step, tiny_config


def _config(negatives="uniform", **overrides):
  return tiny_config(negatives, method="moco", **overrides)


def _model_and_variables(config):
  model = models.build_encoder(config, (0.5,), (0.25,))
  x = jnp.zeros((2, config.image_size, config.image_size, 3))
  variables = model.clone(bn_axis_name=None).init(jax.random.PRNGKey(0), x, train=False)
  return model, variables


@pytest.mark.slow
@pytest.mark.parametrize("devices", [1, 8])
def test_shuffled_keys_equal_per_group_batch_norm_of_the_permuted_batch(devices):
  config = _config()
  model, variables = _model_and_variables(config)
  images = jax.random.uniform(jax.random.PRNGKey(1), (64, 16, 16, 3))
  rng = jax.random.PRNGKey(2)
  mesh = make_mesh(jax.devices()[:devices])
  fn = lambda x: moco.shuffled_keys(config, model, variables, x, rng)
  keys, stats = jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=P("batch"),
                                      out_specs=(P("batch"), P()), check_vma=False))(images)
  # Reference: permute the whole batch, 8 groups of 8 with their own BN statistics, unpermute.
  perm = np.asarray(jax.random.permutation(rng, 64))
  plain = model.clone(bn_axis_name=None)
  expected = np.zeros((64, config.embedding_dim), np.float32)
  means = []
  for g in range(8):
    rows = perm[g * 8:(g + 1) * 8]
    (_, k), upd = plain.apply(variables, images[rows], train=True, mutable=["batch_stats"])
    expected[rows] = np.asarray(memory.l2_normalize(k))
    means.append(upd["batch_stats"])
  np.testing.assert_allclose(keys, expected, atol=2e-5)
  mean_stats = jax.tree.map(lambda *s: np.mean(np.stack(s), axis=0), *means)
  for a, b in zip(jax.tree.leaves(stats), jax.tree.leaves(mean_stats)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


def test_queue_is_fifo():
  config = _config(num_negatives=8, global_batch_size=4, embedding_dim=2)
  mesh = make_mesh(jax.devices()[:1])
  fn = lambda s, k: moco.update_state(config, s, None, None, moco.MocoTargets(k))
  enqueue = jax.shard_map(fn, mesh=mesh, in_specs=(P(), P()), out_specs=P(), check_vma=False)
  state = {"queue": jnp.zeros((8, 2)), "queue_ptr": jnp.int32(4)}
  first, second = jnp.arange(8.0).reshape(4, 2), -jnp.arange(8.0).reshape(4, 2)
  state = enqueue(state, first)
  np.testing.assert_array_equal(state["queue"][4:], first)
  assert int(state["queue_ptr"]) == 0
  state = enqueue(state, second)   # wraps around: the oldest keys (rows 0..3) are replaced
  np.testing.assert_array_equal(state["queue"], np.concatenate([second, first]))
  assert int(state["queue_ptr"]) == 4
  with pytest.raises(ValueError, match="multiple of global_batch_size"):
    config_lib.validate(_config(num_negatives=100), num_devices=1)


@pytest.mark.slow
def test_one_device_and_eight_devices_agree():
  # Ring: the band masks on top of everything the uniform step computes.
  config = _config("ring")
  s1, s8, _ = assert_devices_agree(config)
  for a, b in zip(jax.tree.leaves(s1.method_state), jax.tree.leaves(s8.method_state)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_key_encoder_is_the_ema_of_the_query_encoder():
  config = _config(**{"moco.momentum": 0.9})
  state, step, images, _, _ = build_step(config, jax.devices()[:1])
  state, _ = step(state, images)
  p1 = jax.device_get(state.params)
  key1 = jax.device_get(state.method_state["key_params"])   # EMA of p0 with p0: p0
  state, metrics = step(state, images)
  key2 = jax.device_get(state.method_state["key_params"])
  for k1, p, k2 in zip(jax.tree.leaves(key1), jax.tree.leaves(p1), jax.tree.leaves(key2)):
    np.testing.assert_allclose(k2, 0.9 * k1 + 0.1 * p, rtol=1e-5, atol=1e-6)
  queue = np.asarray(state.method_state["queue"])
  np.testing.assert_allclose(np.linalg.norm(queue, axis=1), 1.0, rtol=1e-5)
  assert int(state.method_state["queue_ptr"]) == (2 * config.global_batch_size) % len(queue)
  assert metrics["bound_nats"] <= metrics["log_k_plus_1"] + 1e-6


@pytest.mark.slow
def test_loss_decreases_under_a_few_gradient_steps():
  config = _config("ring")
  band = methods.Band(jnp.float32(0.3), jnp.float32(0.97))
  keys = memory.l2_normalize(jax.random.normal(jax.random.PRNGKey(3), (16, 8)))
  queue = memory.l2_normalize(jax.random.normal(jax.random.PRNGKey(4), (64, 8)))
  state = {"queue": queue}
  w = jax.random.normal(jax.random.PRNGKey(5), (1, 16, 8))

  def loss(w):
    out = moco.objective(config, memory.l2_normalize(w), None, state, None, band,
                         moco.MocoTargets(keys))
    return -jnp.mean(out.value)

  losses = []
  for _ in range(5):
    value, grad = jax.value_and_grad(loss)(w)
    losses.append(float(value))
    w = w - 0.5 * grad
  assert losses[-1] < losses[0] - 0.1, losses
