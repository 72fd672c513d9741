"""Argument checks of the light public API, run when a function is called or traced.

Every check raises a ValueError or TypeError whose message names the function, the argument
and what was expected, before JAX sees the argument. Shapes and dtypes are static under every
transformation (jit, vmap, pmap, shard_map), so they are always checked; values are checked
only when they are Python numbers (a traced value cannot be inspected). A leaf module: jax
and numpy only.
"""

import numbers

import jax
import jax.numpy as jnp
import numpy as np


def shape_of(fn, name, x):
  """The shape of an array-like argument (or a TypeError naming it)."""
  try:
    return tuple(jnp.shape(x))
  except TypeError as e:
    raise TypeError(f"{fn}: {name} must be an array, got {type(x).__name__}") from e


def dtype_of(x):
  return jnp.result_type(x)


def rank_at_least(fn, name, x, ndim, layout):
  shape = shape_of(fn, name, x)
  if len(shape) < ndim:
    raise ValueError(f"{fn}: {name} must have shape {layout} (at least {ndim} dimension"
                     f"{'s' if ndim > 1 else ''}), got shape {shape}")
  return shape


def rank_exactly(fn, name, x, ndim, layout):
  shape = shape_of(fn, name, x)
  if len(shape) != ndim:
    raise ValueError(f"{fn}: {name} must have shape {layout} ({ndim} dimension"
                     f"{'s' if ndim != 1 else ''}), got shape {shape}")
  return shape


def floating(fn, name, x):
  if not (jnp.issubdtype(dtype_of(x), jnp.floating) or jnp.issubdtype(dtype_of(x), jnp.integer)):
    raise TypeError(f"{fn}: {name} must hold real numbers, got dtype {dtype_of(x)}")


def integer(fn, name, x):
  if not jnp.issubdtype(dtype_of(x), jnp.integer):
    raise TypeError(f"{fn}: {name} must be an integer array, got dtype {dtype_of(x)}")


def boolean(fn, name, x):
  if dtype_of(x) != jnp.bool_:
    raise TypeError(f"{fn}: {name} must be a bool array (True = keep), got dtype "
                    f"{dtype_of(x)}")


def broadcastable(fn, name, x, target, target_name):
  shape = shape_of(fn, name, x)
  try:
    out = jnp.broadcast_shapes(shape, tuple(target))
  except ValueError:
    out = None
  if out != tuple(target):
    raise ValueError(f"{fn}: {name} of shape {shape} does not broadcast to the shape "
                     f"{tuple(target)} of {target_name}")


def is_number(x):
  """A Python (or NumPy scalar) number, whose value can be checked now."""
  return isinstance(x, numbers.Number) and not isinstance(x, bool)


def concrete(x):
  """The value of x if it is known now (a Python number or a concrete 0-d array), else None."""
  if is_number(x):
    return x
  if isinstance(x, np.ndarray) and x.ndim == 0:
    return x.item()
  if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer) and x.ndim == 0:
    return x.item()
  return None


def number_in(fn, name, x, low, high, *, low_open=False, high_open=False):
  """A scalar argument in [low, high] (open ends as asked), checked when its value is known."""
  if not is_number(x) and jnp.ndim(x) != 0:
    raise ValueError(f"{fn}: {name} must be a scalar, got shape {jnp.shape(x)}")
  v = concrete(x)
  if v is None:
    return
  ok_low = low is None or (v > low if low_open else v >= low)
  ok_high = high is None or (v < high if high_open else v <= high)
  if not (ok_low and ok_high) or v != v:
    lo = "(" if low_open else "["
    hi = ")" if high_open else "]"
    span = f"{lo}{'-inf' if low is None else low}, {'inf' if high is None else high}{hi}"
    raise ValueError(f"{fn}: {name} must be in {span}, got {v!r}")


def static_int(fn, name, x, low):
  """A Python int >= low (a shape-defining argument, static under jit)."""
  if isinstance(x, bool) or not isinstance(x, (numbers.Integral, np.integer)):
    raise TypeError(f"{fn}: {name} must be a Python int, got {type(x).__name__}")
  if int(x) < low:
    raise ValueError(f"{fn}: {name} must be >= {low}, got {int(x)}")
  return int(x)


def prng_key(fn, name, key):
  """A typed key (jax.random.key) or a raw uint32[2] key (jax.random.PRNGKey)."""
  dtype = dtype_of(key)
  if jnp.issubdtype(dtype, jax.dtypes.prng_key):
    if jnp.ndim(key) != 0:
      raise ValueError(f"{fn}: {name} must be a single PRNG key, got shape {jnp.shape(key)}")
    return
  if dtype != jnp.uint32 or tuple(jnp.shape(key)) != (2,):
    raise TypeError(f"{fn}: {name} must be a PRNG key (jax.random.key(...) or "
                    f"jax.random.PRNGKey(...)), got {dtype}{list(jnp.shape(key))}")


def match_varying(tree, *like):
  """``tree`` with the varying manual axes of every array in ``like`` (inside shard_map).

  A loop carry that starts from constants is not varying over the mesh axes, while the body's
  output computed from sharded data is; with shard_map's default check_vma=True the two types
  must agree. Adding a zero taken from each array in ``like`` (an empty sum) gives the carry
  their axes without changing a bit of it, and does nothing outside shard_map.
  """
  zeros = [jnp.sum(jnp.ravel(a)[:0]) for a in like]

  def cast(x):
    z = sum(zero.astype(x.dtype) for zero in zeros)
    return x | z.astype(bool) if x.dtype == jnp.bool_ else x + z

  return jax.tree.map(cast, tree)
