"""Probes of a network: feature extraction, weighted kNN and 1-NN, the linear probe and the
few-shot probes; and the protocol that applies them to a run's network, its untrained
initialisation and raw pixels.

Protocols (docs/method.md, "Evaluation protocol"):
- kNN monitor (Wu et al. 2018): weighted kNN on L2-normalised embeddings, k neighbours from the
  training set, each voting exp(s / tau) for its class (k = 200, tau = 0.07); and 1-NN.
- Linear probe: frozen backbone features h, standardised with the training statistics, a
  linear softmax classifier trained by SGD with momentum and weight decay (reference: lr 0.01,
  momentum 0.9, wd 1e-5, 100 epochs, batch 256); top-1 (and top-5) accuracy on the test split.
- Few-shot linear probes: the same kind of classifier trained on n labelled training images per
  class (n = 1, 5, 10), each n over 5 fixed draws of those images (`fewshot_indices`, the same
  draws for every network), mean and std of the test top-1 accuracy (`fewshot_probe`).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

from mi_contrast import input_pipeline
from mi_contrast import memory
from mi_contrast.mesh import AXIS


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
  sharding = jax.sharding.NamedSharding(mesh, P(AXIS))
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
  return jax.jit(jax.shard_map(apply, mesh=mesh, in_specs=(P(), P(AXIS)),
                               out_specs=(P(AXIS), P(AXIS))))


def normalize(features):
  """Rows scaled to unit L2 norm (host numpy)."""
  features = np.asarray(features, np.float32)
  return features / np.maximum(np.linalg.norm(features, axis=-1, keepdims=True), 1e-12)


@functools.partial(jax.jit, static_argnames=("k", "num_classes"))
def _knn_chunk(test, train, train_labels, k, temperature, num_classes):
  sims = test @ train.T
  # The barrier keeps XLA's CPU backend from turning this top_k into a full sort of every row
  # (it does when the gathers below consume it): 13.8 s -> 0.35 s for 1,024 x 60,000, k = 200,
  # the same neighbours (benchmarks/knn_probe.py).
  top, idx = jax.lax.optimization_barrier(jax.lax.top_k(sims, k))
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


FEWSHOT_SHOTS = (1, 5, 10)
FEWSHOT_DRAWS = 5
# scikit-learn's C = 1 at n = 1 with 10 classes; chosen on validation rows of the digits
# training split: accuracy was flat within ~1 point between 0.01 and 0.3 for pixels and random
# ReLU features.
FEWSHOT_WEIGHT_DECAY = 0.1
FEWSHOT_MAX_STEPS = 5000
_FEWSHOT_E_FOLDS = 16  # Nesterov steps per sqrt(condition number): the gap shrinks by e^-16


def fewshot_indices(labels, shots, num_draws, seed=0):
  """The labelled training rows of few-shot probes: `shots` rows of every class, per draw.

  Draw d takes, for every class in increasing label order, `shots` distinct rows of that class
  with numpy.random.RandomState(seed + 1000 * shots + d) (`choice` without replacement, one
  call per class in that order). The draws are thus a pure function of (labels, shots, d, seed):
  the same for any features of the same split, and reproducible.

  Args:
    labels: [N] integer class labels of the training split.
    shots: images per class (n >= 1).
    num_draws: number of draws (at most 1000, so that no two (shots, draw) share a seed).
    seed: integer base seed.
  Returns:
    A list of `num_draws` int64 arrays of shots * num_classes row indices into `labels`,
    class-major (the rows of the smallest label first).
  Raises:
    ValueError: a class has fewer than `shots` rows, or the arguments are out of range.
  """
  labels = np.asarray(labels).reshape(-1)
  shots, num_draws, seed = int(shots), int(num_draws), int(seed)
  if shots < 1 or not 0 <= num_draws <= 1000:
    raise ValueError(f"fewshot_indices: need shots >= 1 and 0 <= num_draws <= 1000, got "
                     f"shots={shots}, num_draws={num_draws}.")
  classes = np.unique(labels)
  rows = [np.flatnonzero(labels == c) for c in classes]
  small = [(int(c), len(r)) for c, r in zip(classes, rows) if len(r) < shots]
  if small:
    raise ValueError(f"fewshot_indices: {shots} shots per class, but these (class, rows) have "
                     f"fewer: {small}.")
  draws = []
  for draw in range(num_draws):
    rng = np.random.RandomState(seed + 1000 * shots + draw)
    draws.append(np.concatenate([rng.choice(r, shots, replace=False) for r in rows])
                 .astype(np.int64))
  return draws


def feature_statistics(features, chunk=8192):
  """Per-feature mean and std (float64, ddof 0) of [N, ...] features, flattened per row.

  Accumulated over chunks of rows in float64: uint8 pixels are never copied whole to floats.
  """
  features = np.asarray(features)
  features = features.reshape(len(features), -1)
  total = np.zeros(features.shape[1])
  squares = np.zeros(features.shape[1])
  for start in range(0, len(features), chunk):
    block = features[start:start + chunk].astype(np.float64)
    total += block.sum(0)
    squares += np.einsum("ij,ij->j", block, block)
  mean = total / len(features)
  return mean, np.sqrt(np.maximum(squares / len(features) - mean ** 2, 0.0))


def fewshot_probe(train_features, train_labels, test_features, test_labels, *,
                  shots=FEWSHOT_SHOTS, num_draws=FEWSHOT_DRAWS, seed=0,
                  weight_decay=FEWSHOT_WEIGHT_DECAY, max_steps=FEWSHOT_MAX_STEPS):
  """Few-shot linear probes: test top-1 accuracy of a softmax classifier trained on `shots`
  labelled training rows per class, as mean and std over `num_draws` draws.

  Protocol:
  - The rows of draw d for n shots are `fewshot_indices(train_labels, n, num_draws, seed)[d]`,
    the same for any features of the same split.
  - Features are flattened per row and standardised with the mean and std of the whole
    training split (label-free statistics, the same for every draw; a constant feature keeps
    its scale, so its weight stays zero). The statistics of one image per class would be
    degenerate at n = 1.
  - The classifier (W, b) minimises the mean softmax cross-entropy over the selected rows plus
    (weight_decay / 2) * (||W||^2 + ||b||^2): the bias is the weight of a constant feature 1,
    penalised like the others (as in liblinear), which makes the problem strongly convex. The
    strength is the same for every n and draw and fixed in advance: nothing is fitted on the
    test split. This is scikit-learn's LogisticRegression(C=1 / (weight_decay * rows),
    fit_intercept=False) on the standardised features with a column of ones appended.
  - Full-batch Nesterov accelerated gradient descent from zero with the step size 1 / L and the
    momentum of a kappa = L / weight_decay-conditioned problem, L the bound
    1/2 lambda_max(X'^T X' / rows) + weight_decay on the Hessian (X' = [X, 1]). The objective's
    gap shrinks at least like (1 - 1 / sqrt(kappa))^steps, and ceil(16 sqrt(kappa)) steps of
    the worst-conditioned selection are run (at most `max_steps`): a gap below e^-16 of the
    initial one, i.e. converged (with the default weight decay: ~250 steps for the 64 digits
    pixels, ~800 for them upsampled to 784). The iterates stay in the span of the selected
    rows, so they are run there (W = X^T A, b = 1^T A; the same iterates as in the primal): one
    step costs O(rows^2 * classes), whatever the feature dimension. All shots and draws are
    padded to one size and solved in one jitted, batched call (compiled once per (shots,
    draws, classes), whatever the features); the test split's logits are then one matrix
    product. Cost for 10 classes: ~0.2-0.4 s for 60,000 x 784 uint8 pixels and 10,000 test
    images on 2 CPU cores (~0.7 s with the compilation); it grows like classes^3 (n = 10 with 100
    classes is 1,000 rows).
  - The default weight decay: see FEWSHOT_WEIGHT_DECAY.

  Args:
    train_features: [N, ...] training-split features (floats or uint8 pixels).
    train_labels: [N] integer labels.
    test_features: [M, ...] test-split features, the same per-row size.
    test_labels: [M] integer labels.
    shots: the n of the probes.
    num_draws: draws per n.
    seed: base seed of the draws.
    weight_decay: L2 strength (> 0) on the mean-loss scale.
    max_steps: at most this many optimisation steps.
  Returns:
    {str(n): {'mean': float, 'std': float}} for n in `shots`: test top-1 accuracy (fraction),
    mean and std (ddof 0) over the draws.
  """
  if not weight_decay > 0:
    raise ValueError(f"fewshot_probe: weight_decay must be > 0, got {weight_decay}.")
  train_labels = np.asarray(train_labels).reshape(-1)
  test_labels = np.asarray(test_labels).reshape(-1)
  train_features = np.asarray(train_features)
  train_features = train_features.reshape(len(train_features), -1)
  classes = np.unique(train_labels)
  mean, std = feature_statistics(train_features)
  scale = np.where(std > 1e-8 * max(1.0, float(np.max(std, initial=0.0))), std, 1.0)
  mean, inv_std = mean.astype(np.float32), (1.0 / scale).astype(np.float32)

  shots = tuple(int(n) for n in shots)
  selections = [(n, rows) for n in shots
                for rows in fewshot_indices(train_labels, n, num_draws, seed)]
  problems, selected = _fewshot_problems(train_features, train_labels, classes, selections,
                                         mean, inv_std, weight_decay)
  grams, onehot, weights, lipschitz = problems
  root_kappa = np.sqrt(lipschitz / weight_decay)
  steps = min(int(max_steps), int(np.ceil(_FEWSHOT_E_FOLDS * root_kappa.max())))
  coefficients = jax.device_get(_fit_fewshot(
      jnp.asarray(grams), jnp.asarray(onehot), jnp.asarray(weights),
      jnp.asarray(1.0 / lipschitz, jnp.float32),
      jnp.asarray((root_kappa - 1.0) / (root_kappa + 1.0), jnp.float32),
      jnp.float32(weight_decay), jnp.int32(steps)))
  accuracy = _fewshot_accuracy(coefficients, selected, mean, inv_std, classes, test_features,
                               test_labels)
  results = {}
  for n in shots:
    values = accuracy[[i for i, (m, _) in enumerate(selections) if m == n]]
    results[str(n)] = {"mean": float(np.mean(values)), "std": float(np.std(values))}
  return results


def _fewshot_problems(train_features, train_labels, classes, selections, mean, inv_std,
                      weight_decay):
  """The padded problems of every selection: ((grams [S, R, R] of X' = [X, 1], one-hot labels
  [S, R, C], row weights 1 / rows [S, R], Lipschitz bounds [S]), the standardised rows of each
  selection)."""
  num_classes = len(classes)
  width = max(len(rows) for _, rows in selections)
  grams = np.zeros((len(selections), width, width), np.float32)
  onehot = np.zeros((len(selections), width, num_classes), np.float32)
  weights = np.zeros((len(selections), width), np.float32)
  lipschitz = np.zeros(len(selections))
  selected = []
  for i, (_, rows) in enumerate(selections):
    x = (train_features[rows].astype(np.float32) - mean) * inv_std
    selected.append(x)
    gram = x @ x.T + 1.0
    grams[i, :len(rows), :len(rows)] = gram
    onehot[i, np.arange(len(rows)), np.searchsorted(classes, train_labels[rows])] = 1.0
    weights[i, :len(rows)] = 1.0 / len(rows)
    # The loss's Hessian is at most 1/2 X'^T X' / rows + weight_decay (X' = [X, 1]).
    top = np.linalg.eigvalsh(gram.astype(np.float64))[-1]
    lipschitz[i] = 0.5 * top / len(rows) + weight_decay
  return (grams, onehot, weights, lipschitz), selected


def _fewshot_accuracy(coefficients, selected, mean, inv_std, classes, test_features,
                      test_labels):
  """Test top-1 accuracy [S] of each selection's classifier (W = X^T A, b = 1^T A), applied to
  the raw test features as one matrix product per chunk."""
  num_classes = len(classes)
  # Classifier i on raw test features: logits = ((t - mean) * inv_std) @ W_i + b_i.
  dim = selected[0].shape[1]
  kernels = np.empty((dim, len(selected) * num_classes), np.float32)
  offsets = np.empty((len(selected) * num_classes,), np.float32)
  for i, x in enumerate(selected):
    a = coefficients[i, :len(x)]
    w = x.T @ a
    cols = slice(i * num_classes, (i + 1) * num_classes)
    kernels[:, cols] = w * inv_std[:, None]
    offsets[cols] = a.sum(0) - (mean * inv_std) @ w
  test_x = np.asarray(test_features)
  test_x = test_x.reshape(len(test_x), -1)
  correct = np.zeros(len(selected))
  for start in range(0, len(test_x), 8192):
    logits = test_x[start:start + 8192].astype(np.float32) @ kernels + offsets
    predicted = classes[logits.reshape(len(logits), len(selected), num_classes).argmax(-1)]
    correct += (predicted == test_labels[start:start + 8192, None]).sum(0)
  return correct / max(len(test_x), 1)


@jax.jit
def _fit_fewshot(grams, onehot, weights, rates, momenta, weight_decay, steps):
  """Weighted L2-regularised softmax regressions in the span of their rows, one per leading
  index, by Nesterov's accelerated gradient for strongly convex functions.

  grams: [B, R, R] X' X'^T (X' = [X, 1]: the bias is the weight of a constant feature);
  onehot: [B, R, C] targets; weights: [B, R] row weights (rows of weight 0 are padding: their
  Gram rows and columns must be zero); rates, momenta: [B] step sizes and momenta; steps: a
  traced int32 scalar (no recompilation for another count).
  Returns the coefficients A [B, R, C] of the classifiers W' = X'^T A.
  """
  rates, momenta = rates[:, None, None], momenta[:, None, None]
  weights = weights[:, None, :]
  targets = jnp.swapaxes(onehot, 1, 2)  # classes-major [B, C, R]: faster on the CPU

  def step(_, carry):
    a, a_prev = carry
    y = a + momenta * (a - a_prev)
    logits = jnp.einsum("bcj,bij->bci", y, grams, precision=jax.lax.Precision.HIGHEST)
    residual = (jax.nn.softmax(logits, axis=1) - targets) * weights
    return y - rates * (residual + weight_decay * y), a

  a = jnp.zeros(targets.shape)
  return jnp.swapaxes(jax.lax.fori_loop(0, steps, step, (a, a))[0], 1, 2)


def fewshot_table(networks):
  """{network: fewshot_probe result} -> {str(n): {network: {'mean', 'std'}}}: one row per n.

  A network whose result is None (not computed) is left out.
  """
  networks = {name: result for name, result in networks.items() if result is not None}
  shots = []
  for result in networks.values():
    shots += [n for n in result if n not in shots]
  return {n: {name: dict(result[n]) for name, result in networks.items() if n in result}
          for n in shots}


# ----------------------------------------------------------------------------------------------
# The protocol applied to a run's network (docs/method.md, "Evaluation protocol").
# ----------------------------------------------------------------------------------------------

# The few-shot draws' seed: fixed, so every network and every run of a dataset is probed on the
# same labelled images (fewshot_indices).
FEWSHOT_SEED = 0


def probe_options(config, data):
  """The linear probe's settings from the config (keyword arguments of `linear_probe`)."""
  return dict(num_classes=data.num_classes, epochs=config.probe_epochs,
              learning_rate=config.probe_learning_rate, weight_decay=config.probe_weight_decay,
              batch_size=config.probe_batch_size, seed=config.seed)


def fewshot_protocol(train_x, train_y, test_x, test_y):
  """`fewshot_probe` with the protocol's settings (n = 1, 5, 10; 5 draws; FEWSHOT_SEED):
  {str(n): {'mean', 'std'}} test top-1 accuracy."""
  return fewshot_probe(train_x, train_y, test_x, test_y, shots=FEWSHOT_SHOTS,
                       num_draws=FEWSHOT_DRAWS, seed=FEWSHOT_SEED)


def fewshot_settings():
  """The few-shot protocol's settings, recorded next to its numbers."""
  return {"shots": list(FEWSHOT_SHOTS), "num_draws": FEWSHOT_DRAWS,
          "seed": FEWSHOT_SEED, "weight_decay": FEWSHOT_WEIGHT_DECAY,
          "features": "standardised with the whole training split's statistics",
          "networks": ["trained", "random_init", "raw_pixels"]}


def split_features(config, model, variables, data, images, mesh):
  """Features of the labelled train and test splits: ((h, z, labels), (h, z, labels)).

  In-memory data: from the images on the device (`run.device_images`). Streaming data: centre
  crops read from disk (train and validation splits), each process reading its own shard.
  """
  if isinstance(data, input_pipeline.StreamingData):
    local = config.global_batch_size // jax.process_count()
    return tuple(extract_features_stream(model, variables, data.eval_batches(split, local), mesh)
                 for split in ("train", "validation"))
  train = extract_features(model, variables, images["train"], mesh)
  test = extract_features(model, variables, images["test"], mesh)
  return (*train, data.train_labels), (*test, data.test_labels)


def knn_probe(config, num_classes, train, test):
  """kNN and 1-NN top-1 from (h, z, labels) of the train and test splits:
  {'knn_top1', 'nn1_top1'}."""
  if config.knn_features == "backbone":
    train_f, test_f = normalize(train[0]), normalize(test[0])
  else:
    train_f, test_f = train[1], test[1]
  knn, nn1 = knn_accuracy(train_f, train[2], test_f, test[2], k=config.knn_k,
                          temperature=config.knn_temperature, num_classes=num_classes)
  return {"knn_top1": knn, "nn1_top1": nn1}


def probe_knn(config, model, variables, data, images, mesh):
  """The kNN monitor of a network during training: {'knn_top1', 'nn1_top1'}."""
  train, test = split_features(config, model, variables, data, images, mesh)
  return knn_probe(config, data.num_classes, train, test)


def probe_model(config, model, variables, data, images, mesh):
  """kNN / 1-NN, the linear probe and, for in-memory data, the few-shot probes (backbone
  features) of a network.

  Returns:
    {'knn_top1', 'nn1_top1', 'linear_top1', 'linear_top5'} (floats) and, unless the data are
    streamed, 'fewshot': `fewshot_protocol`'s {str(n): {'mean', 'std'}}.
  """
  train, test = split_features(config, model, variables, data, images, mesh)
  results = knn_probe(config, data.num_classes, train, test)
  probe = linear_probe(train[0], train[2], test[0], test[2], **probe_options(config, data))
  results.update(linear_top1=probe["top1"], linear_top5=probe["top5"])
  if not isinstance(data, input_pipeline.StreamingData):
    results["fewshot"] = fewshot_protocol(train[0], train[2], test[0], test[2])
  return results


def raw_pixel_probes(config, data, images, *, linear=True):
  """The linear probe, the weighted kNN and the few-shot probes on raw pixels.

  In-memory data: the flattened images the encoder sees (`run.device_images`: resized to
  config.image_size), with the protocols of the backbone features (kNN on L2-normalised
  pixels with config.knn_k and config.knn_temperature). Streamed pixels are never all in
  memory: every value is None. linear=False skips the linear probe ('linear_top1' None).
  Returns:
    {'linear_top1': float, 'knn_top1': float, 'fewshot': {str(n): {'mean', 'std'}}}.
  """
  if isinstance(data, input_pipeline.StreamingData):
    return {"linear_top1": None, "knn_top1": None, "fewshot": None}
  train_x = np.asarray(images["train"])
  train_x = train_x.reshape(len(train_x), -1)
  test_x = np.asarray(images["test"])
  test_x = test_x.reshape(len(test_x), -1)
  probe = {"top1": None}
  if linear:
    probe = linear_probe(train_x, data.train_labels, test_x, data.test_labels,
                         **probe_options(config, data))
  knn, _ = knn_accuracy(normalize(train_x), data.train_labels, normalize(test_x),
                        data.test_labels, k=config.knn_k, temperature=config.knn_temperature,
                        num_classes=data.num_classes)
  return {"linear_top1": probe["top1"], "knn_top1": knn,
          "fewshot": fewshot_protocol(train_x, data.train_labels, test_x, data.test_labels)}
