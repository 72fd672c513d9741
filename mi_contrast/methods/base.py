"""What every method returns, and the ring band it is given."""

from typing import Any, NamedTuple

import jax


class Band(NamedTuple):
  """Similarity quantiles of the negatives' region (1.0 = most similar); traced scalars."""
  lower: jax.Array
  upper: jax.Array


class Objective(NamedTuple):
  """Per-example outputs of a method's objective, [B] each.

  value: what training maximises (loss = -mean(value)), nats.
  bound: the InfoNCE bound of the same scores (equals value for InfoNCE-shaped objectives).
  cap: log(1 + number of negatives in the partition), the bound's maximum.
  aux: method-specific pytree (unused by the trainer).
  """
  value: jax.Array
  bound: jax.Array
  cap: jax.Array
  aux: Any = None
