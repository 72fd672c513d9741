"""What every method sees and returns: the ring band, the step context and the objective."""

from typing import Any, NamedTuple

import jax


class Band(NamedTuple):
  """Similarity quantiles of the negatives' region (1.0 = most similar); traced scalars."""
  lower: jax.Array
  upper: jax.Array


class StepContext(NamedTuple):
  """One step on one device, as a method's `prepare` sees it (inside the sharded step).

  model: the online encoder module, BatchNorm synchronised over the axis 'batch'.
  variables: {'params', 'batch_stats'} of the online encoder before this step's update.
  views: [V, b, H, W, C] this device's augmented views (V = the run's number of views).
  indices: [b] dataset rows of this device's images.
  step: int32 scalar, the step being trained (0-based).
  steps_per_epoch: python int.
  rng: this step's key for the method (the same on every device).
  """
  model: Any
  variables: Any
  views: jax.Array
  indices: jax.Array
  step: jax.Array
  steps_per_epoch: int
  rng: jax.Array


class Objective(NamedTuple):
  """Per-example outputs of a method's objective, [n] each (n anchors on this device).

  value: what training maximises (loss = -mean(value)), nats.
  bound: the InfoNCE bound of the same scores (equals value for InfoNCE-shaped objectives).
  cap: log(1 + number of negatives in the partition), the bound's maximum.
  aux: method-specific pytree (unused by the trainer).
  """
  value: jax.Array
  bound: jax.Array
  cap: jax.Array
  aux: Any = None
