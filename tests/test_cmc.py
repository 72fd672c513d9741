"""CMC: the Lab two-stream encoder, both directions, 1-vs-8 devices, loss decreases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mi_contrast import memory
from mi_contrast import methods
from mi_contrast import models
from mi_contrast import views
from mi_contrast.methods import cmc
from helpers import assert_devices_agree, tiny_config


def _config(negatives="uniform", **overrides):
  overrides.setdefault("views", "digits_cmc")
  return tiny_config(negatives, method="cmc", **overrides)


@pytest.mark.slow
def test_lab_encoder_streams():
  config = _config(**{"cmc.width": "half"})
  model = models.build_encoder(config, (0.5,), (0.25,))
  assert isinstance(model, models.LabEncoder) and model.width == config.width // 2
  grey = jax.random.uniform(jax.random.PRNGKey(0), (4, 16, 16, 1))
  variables = model.clone(bn_axis_name=None).init(jax.random.PRNGKey(1), grey, train=False)
  assert set(variables["params"]) == {"l", "ab"}
  apply = jax.jit(lambda x: model.clone(bn_axis_name=None).apply(variables, x, train=False))
  h, z = apply(grey)
  assert h.shape == (4, 2 * 4 * (config.width // 2)) and z.shape == (4, 2, config.embedding_dim)
  # Grey input is false-coloured exactly as the 'digits_cmc' views are.
  coloured = jax.vmap(views.colormap)(grey)
  h2, z2 = apply(coloured)
  np.testing.assert_allclose(h, h2, atol=1e-5)
  # L and ab really are different inputs: the ab stream sees the colour channels.
  lightness, ab = views.lab_split(coloured)
  assert lightness.shape[-1] == 1 and ab.shape[-1] == 2 and float(jnp.std(ab)) > 0.05


def _numpy_infonce(anchor, bank, rows, neg_rows, tau):
  pos = np.sum(anchor * bank[rows], -1) / tau
  neg = np.einsum("bd,bkd->bk", anchor, bank[neg_rows]) / tau
  logits = np.concatenate([pos[:, None], neg], 1).astype(np.float64)
  top = logits.max(1)
  lse = top + np.log(np.exp(logits - top[:, None]).sum(1))
  return pos - lse + np.log(1 + neg.shape[1])


@pytest.mark.slow   # over 2 s on a 2-core CPU
def test_both_directions_are_infonce_against_the_other_bank():
  b, n, d, k = 6, 32, 8, 31
  config = _dim(_config(num_negatives=k), d)
  z = memory.l2_normalize(jax.random.normal(jax.random.PRNGKey(2), (1, b, 2, d)))
  state = cmc.init_state(jax.random.PRNGKey(3), config, n, None)
  indices = jnp.arange(b) * 3
  band = methods.Band(jnp.float32(0.0), jnp.float32(1.0))
  rng = jax.random.PRNGKey(4)
  out = cmc.objective(config, z, indices, state, rng, band)
  assert out.value.shape == (2 * b,)
  np.testing.assert_allclose(out.cap, np.log(k + 1.0), rtol=1e-6)
  # The uniform draws: K of the other N - 1 rows per anchor from fold_in(rng, anchor id), ids i
  # (L -> ab) and N + i (ab -> L); the own row i is skipped.
  def draw(ids):
    drawn = np.asarray(jax.vmap(
        lambda i: jax.random.randint(jax.random.fold_in(rng, i), (k,), 0, n - 1))(ids))
    own = np.asarray(indices)[:, None]
    return np.where(drawn >= own, drawn + 1, drawn)
  zl, zab = np.asarray(z[0, :, 0]), np.asarray(z[0, :, 1])
  bank_l, bank_ab = np.asarray(state["bank_l"]), np.asarray(state["bank_ab"])
  rows = np.asarray(indices)
  l_to_ab = _numpy_infonce(zl, bank_ab, rows, draw(indices), config.temperature)
  ab_to_l = _numpy_infonce(zab, bank_l, rows, draw(indices + n), config.temperature)
  np.testing.assert_allclose(out.bound, np.concatenate([l_to_ab, ab_to_l]), rtol=1e-4,
                             atol=1e-4)
  # The loss -mean(value) is the sum of the two directions' losses per image (the reference).
  np.testing.assert_allclose(out.value, 2 * out.bound, rtol=1e-6)
  np.testing.assert_allclose(-np.mean(out.value), -np.mean(l_to_ab + ab_to_l), rtol=1e-4)


def _dim(config, d):
  config = config.copy_and_resolve_references()
  config.embedding_dim = d
  return config


def test_update_writes_each_stream_to_its_own_bank():
  config = _config()
  state = cmc.init_state(jax.random.PRNGKey(0), _dim(config, 4), 10, None)
  z = memory.l2_normalize(jax.random.normal(jax.random.PRNGKey(1), (1, 3, 2, 4)))
  new = cmc.update_state(config, state, jnp.array([1, 5, 7]), z)
  np.testing.assert_allclose(new["bank_l"][jnp.array([1, 5, 7])], z[0, :, 0], atol=1e-6)
  np.testing.assert_allclose(new["bank_ab"][jnp.array([1, 5, 7])], z[0, :, 1], atol=1e-6)
  np.testing.assert_array_equal(new["bank_l"][0], state["bank_l"][0])


@pytest.mark.slow
def test_one_device_and_eight_devices_agree():
  # Ring: the band masks on top of everything the uniform step computes.
  config = _config("ring")
  s1, s8, _ = assert_devices_agree(config, bound=True)
  for a, b in zip(jax.tree.leaves(s1.method_state), jax.tree.leaves(s8.method_state)):
    np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.slow
def test_loss_decreases_under_a_few_gradient_steps():
  config = _dim(_config("ring"), 8)
  band = methods.Band(jnp.float32(0.3), jnp.float32(0.97))
  state = cmc.init_state(jax.random.PRNGKey(0), config, 128, None)
  indices = jnp.arange(16)
  w = jax.random.normal(jax.random.PRNGKey(5), (1, 16, 2, 8))

  def loss(w):
    out = cmc.objective(config, memory.l2_normalize(w), indices, state, jax.random.PRNGKey(6),
                        band)
    return -jnp.mean(out.value)

  losses = []
  for _ in range(5):
    value, grad = jax.value_and_grad(loss)(w)
    losses.append(float(value))
    w = w - 0.5 * grad
  assert losses[-1] < losses[0] - 0.1, losses
