"""Throughput of on-device views (mi_contrast.views) against a ResNet-18 training step.

Command:  python benchmarks/views_throughput.py            (add --quick for a smoke run)
Runtime:  about 3-6 minutes on 2 CPU cores (the ResNet-18 step dominates).
Writes:   benchmarks/results/views_throughput.json
Expected: the 'mocov2' views of a 256 x 32 px batch (2 views) cost well under 20% of one
          ResNet-18 (CIFAR stem) forward + backward step on the same batch.

What is timed (one device, jitted, compile and one warm-up call excluded, median of reps,
each call blocked until ready):
  views_32px   make_views(rng, images [256, 32, 32, 3], ['mocov2', 'mocov2'])
  views_224px  make_views(rng, images [32, 224, 224, 3], ['mocov2', 'mocov2'])
  resnet18     value_and_grad of a linear-classifier cross-entropy on ResNet-18 (CIFAR stem,
               training-mode BatchNorm) features, one 256 x 32 px batch.
Images per second count source images (each yields 2 views).
"""

import argparse
import json
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mi_contrast import views  # noqa: E402  (path set above so the script runs from anywhere)

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results')
RECIPE = 'mocov2'
NUM_VIEWS = 2


def _resnet18():
  """ResNet-18 with the CIFAR stem: mi_contrast.models' backbone when it is importable."""
  try:
    from mi_contrast import models
    return models.ResNet(stages=(2, 2, 2, 2), bottleneck=False, width=64, stem='cifar'), \
        'mi_contrast.models.ResNet'
  except (ImportError, AttributeError, TypeError):
    return _LocalResNet18(), 'local'


class _LocalResNet18(nn.Module):
  """Fallback ResNet-18, CIFAR stem (3x3 conv, stride 1, no max-pool)."""

  @nn.compact
  def __call__(self, x, train: bool):
    norm = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9)
    conv = lambda f, s: nn.Conv(f, (3, 3), (s, s), padding=1, use_bias=False)
    x = nn.relu(norm()(conv(64, 1)(x)))
    for stage, features in enumerate((64, 128, 256, 512)):
      for block in range(2):
        strides = 2 if stage > 0 and block == 0 else 1
        y = nn.relu(norm()(conv(features, strides)(x)))
        y = norm()(conv(features, 1)(y))
        if strides != 1 or x.shape[-1] != features:
          x = norm()(nn.Conv(features, (1, 1), (strides, strides), use_bias=False)(x))
        x = nn.relu(x + y)
    return jnp.mean(x, axis=(1, 2))


def _median_seconds(fn, args, reps):
  jax.block_until_ready(fn(*args))  # compile
  jax.block_until_ready(fn(*args))  # warm-up
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times)), times


def time_views(batch, size, reps):
  images = jax.random.uniform(jax.random.key(0), (batch, size, size, 3), jnp.float32)
  fn = jax.jit(lambda rng, x: views.make_views(rng, x, [RECIPE] * NUM_VIEWS))
  seconds, times = _median_seconds(fn, (jax.random.key(1), images), reps)
  return {'batch': batch, 'size': size, 'views': NUM_VIEWS, 'recipe': RECIPE,
          'median_s': seconds, 'times_s': times, 'images_per_s': batch / seconds}


def time_resnet18(batch, reps):
  backbone, source = _resnet18()
  images = jax.random.uniform(jax.random.key(0), (batch, 32, 32, 3), jnp.float32)
  labels = jax.random.randint(jax.random.key(1), (batch,), 0, 10)
  variables = backbone.init(jax.random.key(2), images, train=False)
  head = jax.random.normal(jax.random.key(3), (512, 10)) * 0.01

  def loss_fn(params, batch_stats, head, x, y):
    h, updates = backbone.apply({'params': params, 'batch_stats': batch_stats}, x, train=True,
                                mutable=['batch_stats'])
    loss = optax.softmax_cross_entropy_with_integer_labels(h @ head, y).mean()
    return loss, updates

  step = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 2), has_aux=True))
  args = (variables['params'], variables['batch_stats'], head, images, labels)
  seconds, times = _median_seconds(step, args, reps)
  return {'batch': batch, 'size': 32, 'model': source, 'median_s': seconds, 'times_s': times,
          'images_per_s': batch / seconds}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--quick', action='store_true', help='small batches, 2 reps')
  parser.add_argument('--reps', type=int, default=5)
  parser.add_argument('--out', default=os.path.join(RESULTS, 'views_throughput.json'))
  args = parser.parse_args()
  reps = 2 if args.quick else args.reps
  batch_32, batch_224 = (32, 4) if args.quick else (256, 32)

  load_before = os.getloadavg()
  v32 = time_views(batch_32, 32, reps)
  print(f"views 32 px:  {v32['images_per_s']:.0f} images/s ({v32['median_s'] * 1e3:.1f} ms)")
  v224 = time_views(batch_224, 224, reps)
  print(f"views 224 px: {v224['images_per_s']:.0f} images/s ({v224['median_s'] * 1e3:.1f} ms)")
  resnet = time_resnet18(batch_32, max(2, reps // 2 + 1))
  print(f"resnet18 fwd+bwd 32 px: {resnet['median_s'] * 1e3:.1f} ms")
  ratio = v32['median_s'] / resnet['median_s']
  print(f'views / resnet18 step at 32 px: {ratio:.3%} (target < 20%)')

  result = {
      'views_32px': v32,
      'views_224px': v224,
      'resnet18_step_32px': resnet,
      'views_over_resnet18_step_32px': ratio,
      'target_ratio': 0.2,
      'meets_target': bool(ratio < 0.2),
      'machine': {
          'platform': platform.platform(),
          'processor': platform.processor() or platform.machine(),
          'cpu_count': os.cpu_count(),
          'device': str(jax.devices()[0]),
          'device_kind': jax.devices()[0].device_kind,
          'jax': jax.__version__,
          'load_average_before': load_before,
          'load_average_after': os.getloadavg(),
      },
      'quick': args.quick,
  }
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump(result, f, indent=2)
  print('wrote', args.out)


if __name__ == '__main__':
  main()
