"""Annealing schedules for the ring's fractions and other per-step knobs.

A schedule is a pure function ``schedule(step) -> float32 scalar``. ``step`` may be a python
int or a traced int32 scalar; the schedule's parameters are closed-over constants, so calling
a jitted step function with a new step value never recompiles. Before step 0 a schedule holds
``init``; after ``anneal_steps`` it holds ``final``.

Kinds (``KINDS``): constant, linear, step (``levels`` equal plateaus), exponential (decays once
per epoch), cosine, and adaptive. The adaptive schedule depends on a recorded metric rather
than on the step, so it carries a small state instead of being a function of the step::

    state = schedules.adaptive_init(init=1.0, window=100)       # in the train state
    ...                                                          # inside the jitted step:
    value = state.value                                          # use the current value
    state = schedules.adaptive_update(state, loss, delta=0.01, lower=0.1, upper=1.0)

The state is a pytree of arrays (checkpointable, updated on the device without host sync).

The ring's reference parameterisation (outer fraction rho_out, inner fraction rho_in of the
ranked pool, most similar first) converts to similarity quantiles with
:func:`mi_contrast.negatives.fractions_to_quantiles`.

Source: Wu et al. (2020), "On Mutual Information in Contrastive Learning for Visual
Representations", and the authors' code (annealing of rho_out 1.0 -> 0.1; its adaptive
threshold policy). Two defects of that code are fixed here: its step schedule could index
past its last level, and its exponential schedule decayed per step instead of per epoch.
"""

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

__all__ = [
    "KINDS",
    "Schedule",
    "constant",
    "linear",
    "step",
    "exponential",
    "cosine",
    "build",
    "AdaptiveState",
    "adaptive_init",
    "adaptive_update",
]

KINDS = ("constant", "linear", "step", "exponential", "cosine", "adaptive")

Schedule = Callable[[jax.Array], jax.Array]


def _fraction(step_, anneal_steps):
  """Progress in [0, 1]: 0 at step <= 0, 1 at step >= anneal_steps."""
  t = jnp.asarray(step_, jnp.float32) / jnp.float32(anneal_steps)
  return jnp.clip(t, 0.0, 1.0)


def constant(value: float) -> Schedule:
  """``schedule(step) = value`` for every step."""
  value = float(value)

  def schedule(step_):
    del step_
    return jnp.float32(value)

  return schedule


def linear(init: float, final: float, anneal_steps: int) -> Schedule:
  """Linear ramp: ``init + (final - init) * min(step / anneal_steps, 1)``."""
  init, final = float(init), float(final)
  _check_anneal_steps(anneal_steps, "linear", "schedule")

  def schedule(step_):
    return jnp.float32(init) + jnp.float32(final - init) * _fraction(step_, anneal_steps)

  return schedule


def step(init: float, final: float, anneal_steps: int, levels: int = 10) -> Schedule:
  """Staircase of ``levels`` equally spaced values from ``init`` to ``final``.

  Level l (l = 0 .. levels - 1) has value ``init + (final - init) * l / (levels - 1)`` and is
  held for ``hold = anneal_steps // levels`` steps; from step ``(levels - 1) * hold`` on the
  value is ``final``. The level index is clipped to the last level, so the schedule never
  reads past its end (the reference code's off-by-one).
  """
  init, final = float(init), float(final)
  _check_anneal_steps(anneal_steps, "step", "schedule")
  _check_levels(levels, anneal_steps, "schedule")
  hold = anneal_steps // levels
  values = jnp.linspace(init, final, levels, dtype=jnp.float32)

  def schedule(step_):
    index = jnp.clip(jnp.asarray(step_, jnp.int32) // hold, 0, levels - 1)
    return values[index]

  return schedule


def exponential(init: float, final: float, rate: float, steps_per_epoch: int) -> Schedule:
  """Exponential approach, once per epoch: ``final + (init - final) * exp(-rate * epoch)``.

  ``epoch = step // steps_per_epoch``: the value is constant within an epoch (the reference
  code decayed per step, so its schedule ended after a fraction of an epoch). It approaches
  ``final`` asymptotically and never passes it.
  """
  init, final = float(init), float(final)
  _check_exponential(rate, steps_per_epoch, "schedule")

  def schedule(step_):
    epoch = jnp.maximum(jnp.asarray(step_, jnp.int32), 0) // steps_per_epoch
    decay = jnp.exp(-jnp.float32(rate) * epoch.astype(jnp.float32))
    return jnp.float32(final) + jnp.float32(init - final) * decay

  return schedule


def cosine(init: float, final: float, anneal_steps: int) -> Schedule:
  """Half-cosine: ``final + (init - final) * (1 + cos(pi * min(step / anneal_steps, 1))) / 2``."""
  init, final = float(init), float(final)
  _check_anneal_steps(anneal_steps, "cosine", "schedule")

  def schedule(step_):
    t = _fraction(step_, anneal_steps)
    return jnp.float32(final) + jnp.float32(init - final) * 0.5 * (1.0 + jnp.cos(jnp.pi * t))

  return schedule


def build(kind: str, *, init: float, final: float | None = None,
          anneal_steps: int | None = None, steps_per_epoch: int | None = None, levels: int = 10,
          rate: float | None = None, name: str = "schedule") -> Schedule:
  """Builds ``schedule(step)`` from config values, validating them before anything compiles.

  Args:
    kind: one of ``'constant' | 'linear' | 'step' | 'exponential' | 'cosine'``. ``'adaptive'``
      is stateful: use :func:`adaptive_init` / :func:`adaptive_update`.
    init: value at step 0 (the only value used by ``'constant'``).
    final: value after annealing (required except for ``'constant'``).
    anneal_steps: int >= 1, length of the ramp (``linear``, ``step``, ``cosine``).
    steps_per_epoch: int >= 1 (``exponential``).
    levels: int >= 2 with ``levels <= anneal_steps`` (``step``).
    rate: float > 0, decay per epoch (``exponential``).
    name: config field the schedule belongs to, used in error messages.

  Raises:
    ValueError naming the offending field and its allowed values.
  """
  if kind not in KINDS:
    raise ValueError(f"{name}.kind must be one of {KINDS}, got {kind!r}")
  if kind == "adaptive":
    raise ValueError(
        f"{name}.kind='adaptive' depends on a recorded metric, not on the step: build it with "
        "schedules.adaptive_init(...) and update it with schedules.adaptive_update(...)")
  _check_finite(init, f"{name}.init")
  if kind == "constant":
    return constant(init)
  if final is None:
    raise ValueError(f"{name}.final is required for {name}.kind={kind!r}")
  _check_finite(final, f"{name}.final")
  if kind == "exponential":
    _check_exponential(rate, steps_per_epoch, name)
    return exponential(init, final, rate, steps_per_epoch)
  _check_anneal_steps(anneal_steps, kind, name)
  if kind == "linear":
    return linear(init, final, anneal_steps)
  if kind == "cosine":
    return cosine(init, final, anneal_steps)
  _check_levels(levels, anneal_steps, name)
  return step(init, final, anneal_steps, levels)


# ---------------------------------------------------------------------------------------------
# Adaptive schedule: driven by a recorded metric.
# ---------------------------------------------------------------------------------------------


class AdaptiveState(NamedTuple):
  """State of the adaptive schedule (a pytree of arrays).

  Attributes:
    value: float32 [] current value of the knob.
    history: float32 [window] ring buffer of the most recent metric values.
    count: int32 [] number of metric values recorded so far.
  """
  value: jax.Array
  history: jax.Array
  count: jax.Array


def adaptive_init(init: float, window: int) -> AdaptiveState:
  """Initial adaptive state: value ``init``, empty history of length ``window`` (int >= 1)."""
  if not isinstance(window, int) or isinstance(window, bool) or window < 1:
    raise ValueError(f"adaptive window must be an int >= 1, got {window!r}")
  _check_finite(init, "adaptive init")
  return AdaptiveState(
      value=jnp.asarray(init, jnp.float32),
      history=jnp.zeros((window,), jnp.float32),
      count=jnp.zeros((), jnp.int32))


def adaptive_update(state: AdaptiveState, metric: ArrayLike, *, delta: ArrayLike,
                    lower: ArrayLike, upper: ArrayLike) -> AdaptiveState:
  """One update of the adaptive schedule from a newly recorded metric (jittable).

  The metric, the training loss, is compared with the mean of the values already in the
  history (at most the last ``window``; the history's length), then recorded. A loss above its
  recent mean means the task became too hard, so the value rises by ``delta`` (easier); below
  the mean it falls by ``delta`` (harder).

  "Larger value = easier" matches the ring's outer fraction rho_out (a wider ring). Equal to
  the mean: no change. The first record (empty history) never changes the value. The result
  is clipped to ``[lower, upper]``. This is the rule of the authors' AdaptiveThresholdPolicy
  on the loss (``adaptive_anneal_on_loss``). Its accuracy mode, fed once per validation epoch
  with the kNN accuracy, is not offered: here that split would be the test split, so the
  schedule would be steered by test accuracy.

  Args:
    state: :class:`AdaptiveState`.
    metric: scalar, the newly recorded metric (python or traced).
    delta: step size (python or traced), >= 0.
    lower, upper: clipping range of the value.

  Returns:
    The new :class:`AdaptiveState`.
  """
  metric = jnp.asarray(metric, jnp.float32)
  window = state.history.shape[0]
  recorded = jnp.minimum(state.count, window)
  valid = jnp.arange(window) < recorded
  mean = jnp.sum(jnp.where(valid, state.history, 0.0)) / jnp.maximum(recorded, 1)
  direction = jnp.sign(metric - mean)
  direction = jnp.where(recorded > 0, direction, 0.0)
  value = jnp.clip(state.value + direction * jnp.asarray(delta, jnp.float32),
                   jnp.asarray(lower, jnp.float32), jnp.asarray(upper, jnp.float32))
  history = state.history.at[state.count % window].set(metric)
  return AdaptiveState(value=value.astype(jnp.float32), history=history,
                       count=state.count + 1)


# ---------------------------------------------------------------------------------------------
# Validation (python values only; raised before anything compiles).
# ---------------------------------------------------------------------------------------------


def _is_int(x):
  return isinstance(x, int) and not isinstance(x, bool)


def _check_finite(x, field):
  try:
    ok = math.isfinite(float(x))
  except (TypeError, ValueError):
    ok = False
  if not ok:
    raise ValueError(f"{field} must be a finite number, got {x!r}")


def _check_anneal_steps(anneal_steps, kind, name):
  if not _is_int(anneal_steps) or anneal_steps < 1:
    raise ValueError(
        f"{name}.anneal_steps must be an int >= 1 for kind={kind!r}, got {anneal_steps!r}")


def _check_levels(levels, anneal_steps, name):
  if not _is_int(levels) or levels < 2:
    raise ValueError(f"{name}.levels must be an int >= 2 for kind='step', got {levels!r}")
  if levels > anneal_steps:
    raise ValueError(
        f"{name}.levels must be <= {name}.anneal_steps for kind='step' (each level is held "
        f"anneal_steps // levels >= 1 steps), got levels={levels}, anneal_steps={anneal_steps}")


def _check_exponential(rate, steps_per_epoch, name):
  if not _is_int(steps_per_epoch) or steps_per_epoch < 1:
    raise ValueError(
        f"{name}.steps_per_epoch must be an int >= 1 for kind='exponential', "
        f"got {steps_per_epoch!r}")
  try:
    ok = math.isfinite(float(rate)) and float(rate) > 0
  except (TypeError, ValueError):
    ok = False
  if not ok:
    raise ValueError(f"{name}.rate must be a finite number > 0 for kind='exponential', "
                     f"got {rate!r}")
