"""LA and neighbour views: k-means, the LA-simple theorem, numpy reference, refits, devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mi_contrast import bounds
from mi_contrast import memory
from mi_contrast import methods
from mi_contrast import negatives
from mi_contrast.methods import ir
from mi_contrast.methods import la
from helpers import assert_devices_agree, tiny_config


def _config(**overrides):
  overrides.setdefault("la.background", 64)
  overrides.setdefault("la.num_clusters", 20)
  overrides.setdefault("la.num_clusterings", 3)
  overrides.setdefault("la.warmup_epochs", 0)
  return tiny_config("uniform", method="la", **overrides)


def _scores(seed, b=8, n=100, d=16, tau=0.1):
  z = memory.l2_normalize(jax.random.normal(jax.random.PRNGKey(seed), (b, d)))
  bank = memory.l2_normalize(jax.random.normal(jax.random.PRNGKey(seed + 1), (n, d)))
  rows = jnp.arange(b) * 7
  scores = z @ bank.T / tau
  pos = jnp.take_along_axis(scores, rows[:, None], 1)[:, 0]
  return z, bank, rows, scores, pos


def test_kmeans_finds_separated_clusters():
  centres = 10.0 * jnp.eye(4)[:3]
  x = jnp.repeat(centres, 50, axis=0) + 0.1 * jax.random.normal(jax.random.PRNGKey(0), (150, 4))
  labels, centroids = la.kmeans(jax.random.PRNGKey(1), x, 3, 10)
  labels = np.asarray(labels).reshape(3, 50)
  assert all(len(set(row)) == 1 for row in labels) and len(set(labels[:, 0])) == 3
  for c in range(3):
    np.testing.assert_allclose(centroids[labels[c, 0]], x[c * 50:(c + 1) * 50].mean(0),
                               atol=1e-4)


def test_kmeans_never_increases_the_within_cluster_distance():
  x = memory.l2_normalize(jax.random.normal(jax.random.PRNGKey(2), (300, 8)))
  cost = []
  for iterations in (1, 3, 10):
    labels, centroids = la.kmeans(jax.random.PRNGKey(3), x, 12, iterations)
    cost.append(float(jnp.sum(jnp.square(x - centroids[labels]))))
  assert cost[0] >= cost[1] - 1e-4 >= cost[2] - 2e-4, cost


@pytest.mark.slow
def test_la_with_every_image_its_own_cluster_is_ball():
  """The LA-simple theorem: C_i = {i} gives IR Ball's InfoNCE over the same K neighbours."""
  k = 20
  z, bank, rows, scores, pos = _scores(4)
  n = bank.shape[0]
  labels = jnp.tile(jnp.arange(n), (3, 1))
  out = la.la_objective(pos, scores, rows, labels, k)
  own = jnp.arange(n)[None, :] == rows[:, None]
  others = jnp.where(own, -jnp.inf, scores)
  ball = negatives.ball_mask(others, 1.0 - (k + 0.5) / n)        # ranks [0, K): all members
  assert np.all(np.asarray(ball.sum(1)) == k)
  expected = bounds.infonce(pos, others, ball)
  np.testing.assert_allclose(out.value, expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out.bound, expected, rtol=1e-5, atol=1e-5)
  # The same through the method's objective, with its own bank and clusterings.
  config = _config(**{"la.background": k, "embedding_dim": 16, "temperature": 0.1})
  state = {"bank": bank, "labels": labels}
  band = methods.Band(jnp.float32(0.0), jnp.float32(1.0))
  via_method = la.objective(config, z[None], rows, state, jax.random.PRNGKey(0), band,
                            la.LATargets(warmup=jnp.bool_(False)))
  np.testing.assert_allclose(via_method.value, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.slow   # over 2 s on a 2-core CPU
def test_la_matches_a_numpy_reference_and_is_looser_than_its_infonce():
  k = 30
  _, _, rows, scores, pos = _scores(6)
  labels = jax.random.randint(jax.random.PRNGKey(8), (4, scores.shape[1]), 0, 6)
  out = la.la_objective(pos, scores, rows, labels, k)
  s, lab, r = np.asarray(scores, np.float64), np.asarray(labels), np.asarray(rows)
  expected = []
  for a in range(s.shape[0]):
    order = [j for j in np.argsort(-s[a]) if j != r[a]][:k]
    background = [r[a]] + order
    close = [j for j in background if np.any(lab[:, j] == lab[:, r[a]])]
    ratio = np.exp(s[a, close]).sum() / np.exp(s[a, background]).sum()
    expected.append(np.log(ratio) + np.log(k + 1))
  np.testing.assert_allclose(out.value, expected, rtol=1e-5, atol=1e-5)
  assert np.all(np.asarray(out.value) >= np.asarray(out.bound) - 1e-6)
  assert np.all(np.asarray(out.value) <= np.log(k + 1) + 1e-5)


def test_refit_at_the_first_la_step_and_once_per_epoch():
  config = _config(**{"la.warmup_epochs": 2, "la.num_clusters": 5})
  state = la.init_state(jax.random.PRNGKey(0), config, 60, None)
  spe = 4

  def prepared(step, state):
    ctx = methods.StepContext(None, None, None, None, jnp.int32(step), spe,
                              jax.random.PRNGKey(step))
    return la.prepare(config, state, ctx)

  targets, same = prepared(7, state)                  # warm-up: IR, no clustering
  assert bool(targets.warmup) and np.all(np.asarray(same["labels"]) == 0)
  targets, fitted = prepared(8, state)                # first LA step: refit
  assert not bool(targets.warmup) and len(np.unique(fitted["labels"])) > 1
  _, kept = prepared(9, fitted)                       # within the epoch: kept
  np.testing.assert_array_equal(kept["labels"], fitted["labels"])
  _, refit = prepared(12, fitted)                     # next epoch: refit
  assert not np.array_equal(np.asarray(refit["labels"]), np.asarray(fitted["labels"]))


@pytest.mark.slow
def test_one_device_and_eight_devices_agree():
  # The warm-up's branch is IR's objective (tests/test_train.py); this step runs LA's.
  config = _config()
  s1, s8, _ = assert_devices_agree(config, bound=True)
  np.testing.assert_array_equal(s1.method_state["labels"], s8.method_state["labels"])


@pytest.mark.slow
def test_la_loss_decreases_under_a_few_gradient_steps():
  z, bank, rows, _, _ = _scores(10, b=16, n=128, d=8)
  labels = jax.random.randint(jax.random.PRNGKey(11), (3, 128), 0, 8)

  def loss(w):
    w = memory.l2_normalize(w)
    scores = w @ bank.T / 0.1
    pos = jnp.take_along_axis(scores, rows[:, None], 1)[:, 0]
    return -jnp.mean(la.la_objective(pos, scores, rows, labels, 32).value)

  w, losses = z, []
  for _ in range(5):
    value, grad = jax.value_and_grad(loss)(w)
    losses.append(float(value))
    w = w - 0.5 * grad
  assert losses[-1] < losses[0] - 0.1, losses


@pytest.mark.slow   # over 2 s on a 2-core CPU
def test_neighbour_views_without_an_inner_ball_is_the_ring_infonce():
  config = tiny_config("ring", temperature=0.1, **{"ir.neighbour_views": True})
  z, bank, rows, scores, pos = _scores(12)
  own = jnp.arange(bank.shape[0])[None, :] == rows[:, None]
  others = jnp.where(own, -jnp.inf, scores)
  lower = jnp.float32(0.6)
  out = ir.neighbour_view_objective(config, z, rows, bank, methods.Band(lower, 1.0))
  ring = negatives.ring_mask(others, lower, 1.0)
  np.testing.assert_allclose(out.value, bounds.infonce(pos, others, ring), rtol=1e-5, atol=1e-5)
  # With an inner ball: numpy, the inner rows join the numerator.
  upper = jnp.float32(0.9)
  out = ir.neighbour_view_objective(config, z, rows, bank, methods.Band(lower, upper))
  inner, ring = negatives.neighbour_masks(others, lower, upper)
  s, inner, ring = np.asarray(scores, np.float64), np.asarray(inner), np.asarray(ring)
  for a in range(s.shape[0]):
    assert inner[a].sum() > 0 and not inner[a, rows[a]] and not ring[a, rows[a]]
    top = np.exp(s[a, rows[a]]) + np.exp(s[a, inner[a]]).sum()
    expected = np.log(top / (top + np.exp(s[a, ring[a]]).sum())) + np.log1p(ring[a].sum())
    np.testing.assert_allclose(out.value[a], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_neighbour_views_one_device_and_eight_devices_agree():
  config = tiny_config("ring", **{"ir.neighbour_views": True})
  assert_devices_agree(config)
