"""The weighted-kNN probe at Fashion-MNIST size, and what its top_k barrier is worth.

Command:  python benchmarks/knn_probe.py
Runtime:  about 1 minute on 2 CPU cores.
Writes:   benchmarks/results/knn_probe.json
Expected: probes.knn_accuracy on 60,000 x 128 train and 10,000 test unit rows (k = 200) in a
          few seconds; one 1,024-row chunk without the optimisation barrier (the probe's code
          before it) tens of times slower than with it, with the same neighbours.

What is timed (one device, jitted, compile and one warm-up call excluded, median of reps):
  knn_accuracy       the whole probe (10 chunks of 1,024 test rows)
  chunk_barrier      one chunk as probes._knn_chunk computes it
  chunk_no_barrier   the same chunk with top_k fed straight to the gathers: XLA's CPU backend
                     lowers that top_k to a full sort of every 60,000-entry row
"""

import functools
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mi_contrast import probes  # noqa: E402
from methods_digits import cpu_name  # noqa: E402  (benchmarks/ is this script's folder)

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "knn_probe.json")


@functools.partial(jax.jit, static_argnames=("k", "num_classes"))
def _chunk_no_barrier(test, train, train_labels, k, temperature, num_classes):
  sims = test @ train.T
  top, idx = jax.lax.top_k(sims, k)
  votes = jax.nn.one_hot(train_labels[idx], num_classes) * jnp.exp(top / temperature)[..., None]
  return jnp.argmax(votes.sum(axis=1), axis=-1), train_labels[idx[:, 0]]


def _median_seconds(fn, reps):
  jax.block_until_ready(fn())  # compile and warm up
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def main():
  rng = np.random.default_rng(0)
  train = probes.normalize(rng.normal(size=(60_000, 128)).astype(np.float32))
  test = probes.normalize(rng.normal(size=(10_000, 128)).astype(np.float32))
  train_y, test_y = rng.integers(0, 10, 60_000), rng.integers(0, 10, 10_000)
  args = (jnp.asarray(test[:1024]), jnp.asarray(train), jnp.asarray(train_y, jnp.int32))
  kwargs = dict(k=200, temperature=0.07, num_classes=10)
  same = all(np.array_equal(a, b) for a, b in zip(probes._knn_chunk(*args, **kwargs),
                                                  _chunk_no_barrier(*args, **kwargs)))
  seconds = {
      "knn_accuracy": _median_seconds(lambda: probes.knn_accuracy(
          train, train_y, test, test_y, **kwargs), 3),
      "chunk_barrier": _median_seconds(lambda: probes._knn_chunk(*args, **kwargs), 5),
      "chunk_no_barrier": _median_seconds(lambda: _chunk_no_barrier(*args, **kwargs), 2),
  }
  record = {"seconds": seconds, "same_predictions": bool(same),
            "speedup_of_the_barrier": seconds["chunk_no_barrier"] / seconds["chunk_barrier"],
            "train_rows": 60_000, "test_rows": 10_000, "dim": 128, "k": 200,
            "jax": jax.__version__, "cpu": cpu_name(),
            "devices": jax.device_count()}
  os.makedirs(os.path.dirname(OUT), exist_ok=True)
  with open(OUT, "w") as f:
    json.dump(record, f, indent=2, sort_keys=True)
  print(json.dumps(record, indent=2, sort_keys=True))


if __name__ == "__main__":
  main()
