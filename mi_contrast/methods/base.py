"""What every method sees and returns: the ring band, the step context and the objective;
the typed targets' helpers, and the config rules several methods share."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from mi_contrast import bounds
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


class DrawnNegatives(NamedTuple):
  """Which images an objective took as negatives, by dataset row: the input of the
  false-negative diagnostic (step.py's `false_negative_share`). The objective never reads it,
  and nothing of it carries a gradient.

  anchors: int [n], the dataset row of each anchor (the rows of the Objective's values).
  rows: int [n, K], the dataset row of each anchor's K negatives, or [K] when every anchor
    scores the same pool entries (MoCo's queue, SimCLR's batch); -1 where an entry is no
    dataset image (MoCo's initial random keys, padding): it is left out of the share.
  keep: bool [n, K], or None (every entry is a negative): the entries of a shared pool that
    are the anchor's negatives (its band, or the batch minus the anchor's own image).
  log_weights: float [n, K], or None: the log of each negative's term in the objective's
    negative sum (its score for InfoNCE and DCL, (1 + beta) * score for HCL; negative_terms),
    for the share of that sum that falls on the anchor's class (`false_negative_weight`).
  """
  anchors: jax.Array
  rows: jax.Array
  keep: Any = None
  log_weights: Any = None


def negative_terms(config, neg):
  """log of each negative's term in the objective's negative sum, without gradient: the score
  (InfoNCE, DCL: e_k = exp(score)), or (1 + hcl_beta) * score (HCL: w_k e_k, up to a factor
  common to the row)."""
  neg = jax.lax.stop_gradient(neg).astype(jnp.float32)
  return neg * (1.0 + config.hcl_beta) if config.bound == "hcl" else neg


class Objective(NamedTuple):
  """Per-example outputs of a method's objective, [n] each (n anchors on this device).

  value: what training maximises (loss = -mean(value)), nats.
  bound: the InfoNCE bound of the same scores (equals value for InfoNCE-shaped objectives).
  cap: log(1 + number of negatives in the partition), the bound's maximum.
  aux: method-specific pytree (unused by the trainer).
  drawn: DrawnNegatives of those anchors, or None (a method that does not report them: no
    false-negative diagnostic).
  clamped: [n] for the dcl and hcl bounds: 1 (or True) where the anchor's corrected negative
    term is clamped (its negatives get no gradient), the share of its terms for an anchor with
    several positives; None otherwise.
  """
  value: jax.Array
  bound: jax.Array
  cap: jax.Array
  aux: Any = None
  drawn: Any = None
  clamped: Any = None


def contrastive_value(config, pos, neg, keep=None):
  """(value, bound, clamped) of an InfoNCE-shaped objective: pos [n], neg [n, K], keep: an
  optional bool mask of neg. value is what config.bound trains ('infonce', 'dcl', 'hcl');
  bound is always InfoNCE of the same scores, so the MI column stays comparable across
  objectives; clamped: bool [n] for dcl and hcl, else None."""
  bound = bounds.infonce(pos, neg, keep)
  if config.bound not in ("dcl", "hcl"):
    return bound, bound, None
  beta = config.hcl_beta if config.bound == "hcl" else 0.0
  args = dict(beta=beta, tau_plus=config.tau_plus, temperature=config.temperature,
              neg_mask=keep)
  return bounds.hcl(pos, neg, **args), bound, bounds.hcl_clamped(pos, neg, **args)


def pad_drawn(drawn, width):
  """`drawn` with rows and keep [n, width]: a shared [K] row broadcast to every anchor, then
  columns of -1 (no image) appended. The two branches of a lax.cond that draw different
  numbers of negatives (a warm-up and the method proper) return the same shapes this way."""
  n = drawn.anchors.shape[0]
  rows = jnp.broadcast_to(drawn.rows, (n, drawn.rows.shape[-1])).astype(jnp.int32)
  keep = (jnp.ones(rows.shape, bool) if drawn.keep is None
          else jnp.broadcast_to(drawn.keep, rows.shape))
  pad = ((0, 0), (0, width - rows.shape[1]))
  return DrawnNegatives(anchors=drawn.anchors.astype(jnp.int32),
                        rows=jnp.pad(rows, pad, constant_values=-1),
                        keep=jnp.pad(keep, pad, constant_values=False))


# ----------------------------------------------------------------------------------------------
# Targets: what a method's `prepare` hands its objective and update_state (a NamedTuple of the
# method's module; a pytree, passed through the trainer untouched).
# ----------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------
# Config rules shared by methods: what a method that does not use a field requires of it.
# ----------------------------------------------------------------------------------------------


# The bounds of an InfoNCE-shaped objective (contrastive_value): InfoNCE, and its debiased and
# hardness-tilted forms.
INFONCE_SHAPED = ("infonce", "dcl", "hcl")


def require_infonce_without_candidates(config, pool, allowed=("infonce",)):
  """bound in `allowed` (InfoNCE; INFONCE_SHAPED for a method that trains contrastive_value)
  and bank.candidates = 0: for methods whose negatives are `pool` (not a bank)."""
  if config.bound not in allowed or config.bank.candidates:
    wrong_bound = config.bound not in allowed
    checks.fail("bound" if wrong_bound else "bank.candidates",
                config.bound if wrong_bound else config.bank.candidates,
                f"bound in {allowed} and bank.candidates = 0 for method {config.method!r} (its "
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
