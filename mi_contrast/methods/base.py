"""What every method sees and returns: the ring band, the step context and the objective;
the typed targets' helpers, and the config rules several methods share."""

from typing import Any, NamedTuple

import jax

from mi_contrast import checks


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


# ----------------------------------------------------------------------------------------------
# Targets: what a method's `prepare` hands its objective and update_state (a NamedTuple of the
# method's module; a pytree, passed through the trainer untouched).
# ----------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------
# Config rules shared by methods: what a method that does not use a field requires of it.
# ----------------------------------------------------------------------------------------------


def require_infonce_without_candidates(config, pool):
  """bound 'infonce' and bank.candidates = 0: for methods whose negatives are `pool` (not a
  bank)."""
  if config.bound != "infonce" or config.bank.candidates:
    checks.fail("bound" if config.bound != "infonce" else "bank.candidates",
                config.bound if config.bound != "infonce" else config.bank.candidates,
                f"bound = 'infonce' and bank.candidates = 0 for method {config.method!r} (its "
                f"negatives are {pool})")


def reject_neighbour_views(config):
  """Neighbour views are IR Ring's (the inner ball of its exact ring)."""
  if config.ir.neighbour_views:
    checks.fail("ir.neighbour_views", True, "False, or True with method 'ir', negatives "
                "'ring', bound 'infonce' and bank.candidates = 0 (the inner ball of the exact "
                "ring are the extra positives)")


def reject_first_batch_partition(config):
  """ir.nce_partition 'first_batch' keeps IR's constant log Z in IR's state."""
  if config.ir.nce_partition == "first_batch":
    checks.fail("ir.nce_partition", config.ir.nce_partition, "'per_batch' for method "
                f"{config.method!r} ('first_batch' keeps IR's constant Z in its state: method "
                "'ir')")


BANK_SHARDED_ALLOWED = ("False, or True with method 'ir', bound 'infonce', bank.candidates = 0, "
                        "one view and no neighbour views (each shard's rows are the band's "
                        "candidates)")


def reject_bank_sharded(config):
  """The sharded bank is IR's (methods/sharded_bank.py)."""
  if config.bank.sharded:
    checks.fail("bank.sharded", config.bank.sharded, BANK_SHARDED_ALLOWED)


def reject_ir_options(config):
  """A method other than IR: no neighbour views, no first-batch partition, no sharded bank."""
  reject_neighbour_views(config)
  reject_first_batch_partition(config)
  reject_bank_sharded(config)
