"""The device mesh: one axis, named once here, over which the global batch is split.

Every collective of the package (pmean, all_gather, psum in the step, the methods, the sharded
bank, feature extraction) runs over `AXIS`.
"""

import jax
import numpy as np
from jax.sharding import Mesh

AXIS = "batch"


def make_mesh(devices=None):
  """A 1-D mesh over `devices` (default: every device of every process), axis `AXIS`."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (AXIS,))
