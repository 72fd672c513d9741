"""SimCLR: NT-Xent equality with optax, device-count invariance, loss decreases."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from mi_contrast import methods
from mi_contrast import memory
from mi_contrast.mesh import make_mesh
from helpers import assert_devices_agree, tiny_config


def _objective(config, z, band=None):
  """The method's objective on one device (axis 'batch' of size 1)."""
  mesh = make_mesh(jax.devices()[:1])
  band = band or methods.Band(jnp.float32(0.0), jnp.float32(1.0))
  fn = lambda z: methods.get("simclr").objective(config, z, None, {}, None, band, None)
  return jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=P(), out_specs=P(), check_vma=False))(z)


def test_equals_optax_ntxent():
  config = tiny_config("uniform", method="simclr")
  z = memory.l2_normalize(jax.random.normal(jax.random.PRNGKey(0), (2, 12, 16)))
  out = _objective(config, z)
  ours = -jnp.mean(out.value - out.cap)  # InfoNCE without its + log(K + 1)
  labels = jnp.concatenate([jnp.arange(12), jnp.arange(12)])
  reference = optax.losses.ntxent(z.reshape(24, 16), labels, temperature=config.temperature)
  np.testing.assert_allclose(ours, reference, rtol=1e-5)
  np.testing.assert_allclose(out.cap, np.log(2 * 12 - 1), rtol=1e-6)


def test_ring_keeps_the_band_of_the_other_negatives():
  config = tiny_config("ring", method="simclr")
  z = memory.l2_normalize(jax.random.normal(jax.random.PRNGKey(1), (2, 16, 8)))
  band = methods.Band(jnp.float32(0.5), jnp.float32(0.95))
  out = _objective(config, z, band)
  # The band of 2B = 32 candidates keeps ranks [floor(0.05 * 32), floor(0.5 * 32)) = [1, 16);
  # self and positive rank last, so 15 negatives are kept for every anchor.
  np.testing.assert_allclose(out.cap, np.log(1 + 15), rtol=1e-6)
  full = _objective(tiny_config("uniform", method="simclr"), z)
  assert np.all(np.asarray(out.cap) < np.asarray(full.cap))


@pytest.mark.slow
@pytest.mark.parametrize("negatives", ["uniform", "ring"])
def test_one_device_and_eight_devices_agree(negatives):
  config = tiny_config(negatives, method="simclr")
  assert_devices_agree(config)


@pytest.mark.slow
def test_loss_decreases_under_a_few_gradient_steps():
  config = tiny_config("ring", method="simclr")
  band = methods.Band(jnp.float32(0.3), jnp.float32(0.97))
  w = jax.random.normal(jax.random.PRNGKey(2), (2, 16, 8))
  loss = lambda w: -jnp.mean(_objective(config, memory.l2_normalize(w), band).value)
  value_and_grad = jax.jit(jax.value_and_grad(loss))
  losses = []
  for _ in range(5):
    value, grad = value_and_grad(w)
    losses.append(float(value))
    w = w - 0.5 * grad
  assert losses[-1] < losses[0] - 0.1, losses


def test_more_than_two_views_average_infonce_over_the_other_views():
  config = tiny_config("uniform", method="simclr", num_views=3)
  v, b, d = 3, 5, 8
  z = memory.l2_normalize(jax.random.normal(jax.random.PRNGKey(7), (v, b, d)))
  out = _objective(config, z)
  flat = np.asarray(z, np.float64).reshape(v * b, d)
  scores = flat @ flat.T / config.temperature
  image = np.tile(np.arange(b), v)
  expected = []
  for a in range(v * b):
    negatives = scores[a, image != image[a]]                 # V*B - V other-image embeddings
    values = []
    for p in np.flatnonzero((image == image[a]) & (np.arange(v * b) != a)):
      logits = np.concatenate([[scores[a, p]], negatives])
      values.append(scores[a, p] - np.log(np.exp(logits).sum()) + np.log(1 + len(negatives)))
    expected.append(np.mean(values))
  np.testing.assert_allclose(out.value, expected, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(out.cap, np.log(1 + v * b - v), rtol=1e-6)


@pytest.mark.parametrize("method, views", [("moco", 3), ("cmc", 2), ("la", 2), ("simclr", 1)])
def test_unsupported_view_counts_are_errors(method, views):
  from mi_contrast import config as config_lib
  config = tiny_config("uniform", method=method, num_views=views)
  with pytest.raises(ValueError, match="num_views"):
    config_lib.validate(config, num_devices=1)


@pytest.mark.slow
def test_three_views_one_device_and_eight_devices_agree():
  config = tiny_config("ring", method="simclr", num_views=3)
  assert_devices_agree(config)
