"""`jitted(module)`: the module's functions with each call compiled as one program by jax.jit.

Called plainly, a JAX function runs op by op and compiles every primitive for every new shape on
its own; the numerics tests call the public functions with many shapes, and one program per call
takes about half the time (tests/test_bounds.py: 23 s -> 13.5 s on a 2-core CPU). The values are
the same (the functions are pure; the tests compare with float64 references at their own
tolerances). Plain calls stay covered by tests/test_public_api.py, tests/test_library_doc.py and
the docstring examples.
"""

import jax
import numpy as np


def _static(value):
  """Python numbers, strings, None and tuples of them: static arguments of the program."""
  if isinstance(value, tuple):
    return all(_static(v) for v in value)
  return isinstance(value, (bool, int, float, str, type(None)))


def _array(value):
  return isinstance(value, (np.ndarray, np.generic, jax.Array))


class jitted:
  """A module whose functions are called under jax.jit. A call without an array argument, or with
  one that is neither an array nor static (a list, a dict, a function), runs plainly."""

  def __init__(self, module):
    self._module = module

  def __getattr__(self, name):
    fn = getattr(self._module, name)
    if not callable(fn):
      return fn

    def call(*args, **kwargs):
      values = (*args, *kwargs.values())
      if not any(_array(v) for v in values) or not all(_static(v) or _array(v) for v in values):
        return fn(*args, **kwargs)
      argnums = tuple(i for i, a in enumerate(args) if _static(a))
      argnames = tuple(k for k, v in kwargs.items() if _static(v))
      return jax.jit(fn, static_argnums=argnums, static_argnames=argnames)(*args, **kwargs)
    return call
