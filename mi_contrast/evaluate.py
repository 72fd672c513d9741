"""Evaluation: feature extraction, weighted kNN and 1-NN, and the linear probe.

Protocols (method-spec.md section 6):
- kNN monitor (Wu et al. 2018): weighted kNN on L2-normalised embeddings, k neighbours from the
  training set, each voting exp(s / tau) for its class (k = 200, tau = 0.07); and 1-NN.
- Linear probe: frozen backbone features h, standardised with the training statistics, a
  linear softmax classifier trained by SGD with momentum and weight decay (reference: lr 0.01,
  momentum 0.9, wd 1e-5, 100 epochs, batch 256); top-1 (and top-5) accuracy on the test split.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

from mi_contrast import input_pipeline
from mi_contrast import memory


def extract_features(model, variables, images, mesh, chunk=512):
  """Backbone features h and unit embeddings z of `images` (no augmentation, eval-mode BN).

  Args:
    model: a ContrastiveEncoder.
    variables: {'params', 'batch_stats'}, replicated.
    images: [N, H, W, C] device array (uint8 or float in [0, 1]), replicated on `mesh`.
    mesh: 1-D device mesh with axis 'batch' (may span several processes); each chunk is split
      over its devices and the features are gathered back onto every device, so every process
      gets all N rows.
  Returns:
    (h [N, F], z [N, D]) as host float32 numpy arrays.
  """
  num_devices = mesh.devices.size
  n = images.shape[0]
  chunk = max(num_devices, chunk - chunk % num_devices)
  if n < chunk:  # one chunk: pad the rows up to a multiple of the device count
    chunk = n + (-n) % num_devices
  fn = _chunk_feature_fn(model, mesh, chunk)
  hs, zs = [], []
  for start in range(0, n, chunk):
    # Chunks have one static size: the last one starts earlier and overlaps the previous one
    # (or, with fewer rows than one chunk, repeats rows), and only its new rows are kept.
    first = max(0, min(start, n - chunk))
    h, z = fn(variables, images, first)
    keep = slice(start - first, start - first + min(chunk, n - start))
    hs.append(np.asarray(h)[keep])
    zs.append(np.asarray(z)[keep])
  return np.concatenate(hs), np.concatenate(zs)


@functools.lru_cache(maxsize=None)
def _chunk_feature_fn(model, mesh, chunk):
  """(variables, images [N, ...] replicated, first row) -> features of rows first..first+chunk,
  replicated (fetchable by every process). Rows past N repeat row N - 1."""
  sharded = _feature_fn(model, mesh)
  replicated = jax.sharding.NamedSharding(mesh, P())

  def features(variables, images, first):
    rows = jnp.minimum(first + jnp.arange(chunk), images.shape[0] - 1)
    return sharded(variables, images[rows])

  return jax.jit(features, out_shardings=(replicated, replicated))


def extract_features_stream(model, variables, batches, mesh):
  """Features of a stream of host batches: (h [N, F], z [N, D], labels [N]) as numpy.

  Args:
    batches: iterable of (images [b, H, W, C], labels [b], valid [b] bool), this process's
      share (b divisible by its local devices); padded rows have valid = False.
  Every process gets the features of all processes' examples.
  """
  from jax.experimental import multihost_utils
  fn = _feature_fn(model, mesh)
  sharding = jax.sharding.NamedSharding(mesh, P("batch"))
  hs, zs, labels = [], [], []
  for images, batch_labels, valid in batches:
    h, z = fn(variables, jax.make_array_from_process_local_data(sharding, images))
    local = (np.asarray(batch_labels), np.asarray(valid))
    h, z = (multihost_utils.process_allgather(x, tiled=True) for x in (h, z))
    batch_labels, valid = (multihost_utils.process_allgather(x, tiled=True) for x in local)
    valid = np.asarray(valid, bool)
    hs.append(np.asarray(h)[valid])
    zs.append(np.asarray(z)[valid])
    labels.append(np.asarray(batch_labels)[valid])
  return np.concatenate(hs), np.concatenate(zs), np.concatenate(labels)


@functools.lru_cache(maxsize=None)
def _feature_fn(model, mesh):
  def apply(variables, images):
    h, z = model.apply(variables, input_pipeline.as_float(images), train=False)
    z = memory.l2_normalize(z)
    if z.ndim == 3:  # a multi-stream encoder (CMC): the unit streams side by side, unit again
      z = memory.l2_normalize(z.reshape(z.shape[0], -1))
    return h, z
  return jax.jit(jax.shard_map(apply, mesh=mesh, in_specs=(P(), P("batch")),
                               out_specs=(P("batch"), P("batch"))))


def normalize(features):
  """Rows scaled to unit L2 norm (host numpy)."""
  features = np.asarray(features, np.float32)
  return features / np.maximum(np.linalg.norm(features, axis=-1, keepdims=True), 1e-12)


@functools.partial(jax.jit, static_argnames=("k", "num_classes"))
def _knn_chunk(test, train, train_labels, k, temperature, num_classes):
  sims = test @ train.T
  top, idx = jax.lax.top_k(sims, k)
  votes = jax.nn.one_hot(train_labels[idx], num_classes) * jnp.exp(top / temperature)[..., None]
  weighted = jnp.argmax(votes.sum(axis=1), axis=-1)
  nearest = train_labels[idx[:, 0]]
  return weighted, nearest


def knn_accuracy(train_z, train_labels, test_z, test_labels, *, k, temperature, num_classes,
                 chunk=1024):
  """Weighted kNN top-1 and 1-NN top-1 accuracy of unit embeddings (fractions in [0, 1])."""
  k = min(k, train_z.shape[0])
  train = jnp.asarray(train_z, jnp.float32)
  labels = jnp.asarray(train_labels, jnp.int32)
  weighted, nearest = [], []
  for start in range(0, test_z.shape[0], chunk):
    w, n = _knn_chunk(jnp.asarray(test_z[start:start + chunk], jnp.float32), train, labels, k,
                      temperature, num_classes)
    weighted.append(np.asarray(w))
    nearest.append(np.asarray(n))
  weighted, nearest = np.concatenate(weighted), np.concatenate(nearest)
  test_labels = np.asarray(test_labels)
  return float(np.mean(weighted == test_labels)), float(np.mean(nearest == test_labels))


def linear_probe(train_x, train_y, test_x, test_y, *, num_classes, epochs, learning_rate,
                 weight_decay, batch_size, seed=0, momentum=0.9):
  """Softmax regression on frozen features; returns {'top1', 'top5'} test accuracies.

  Features are standardised with the training mean and std; minibatches follow a fixed
  permutation per epoch (seeded), so the probe is deterministic.
  """
  train_x = np.asarray(train_x, np.float32).reshape(len(train_x), -1)
  test_x = np.asarray(test_x, np.float32).reshape(len(test_x), -1)
  mean, std = train_x.mean(0), train_x.std(0) + 1e-6
  train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
  n, dim = train_x.shape
  batch_size = min(batch_size, n)
  steps_per_epoch = n // batch_size
  schedule = optax.cosine_decay_schedule(learning_rate, epochs * steps_per_epoch)
  tx = optax.chain(optax.add_decayed_weights(weight_decay),
                   optax.sgd(schedule, momentum=momentum))
  params = {"w": jnp.zeros((dim, num_classes)), "b": jnp.zeros((num_classes,))}
  weights, bias = _fit_probe(tx, params, jnp.asarray(train_x), jnp.asarray(train_y, jnp.int32),
                             jax.random.PRNGKey(seed), epochs, steps_per_epoch, batch_size)
  logits = np.asarray(jnp.asarray(test_x) @ weights + bias)
  test_y = np.asarray(test_y)
  top1 = float(np.mean(np.argmax(logits, -1) == test_y))
  top5_idx = np.argsort(-logits, axis=-1)[:, :min(5, num_classes)]
  top5 = float(np.mean(np.any(top5_idx == test_y[:, None], axis=-1)))
  return {"top1": top1, "top5": top5}


@functools.partial(jax.jit, static_argnums=(0, 5, 6, 7))
def _fit_probe(tx, params, x, y, rng, epochs, steps_per_epoch, batch_size):
  def loss_fn(p, xb, yb):
    logits = xb @ p["w"] + p["b"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

  def epoch(carry, key):
    order = jax.random.permutation(key, x.shape[0])[:steps_per_epoch * batch_size]
    order = order.reshape(steps_per_epoch, batch_size)

    def step(carry, rows):
      p, opt_state = carry
      grads = jax.grad(loss_fn)(p, x[rows], y[rows])
      updates, opt_state = tx.update(grads, opt_state, p)
      return (optax.apply_updates(p, updates), opt_state), None

    return jax.lax.scan(step, carry, order)[0], None

  carry = (params, tx.init(params))
  (params, _), _ = jax.lax.scan(epoch, carry, jax.random.split(rng, epochs))
  return params["w"], params["b"]


if __name__ == "__main__":
  from mi_contrast import evaluation_cli
  evaluation_cli.run()
