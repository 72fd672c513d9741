"""Memory bank: one unit vector per training image, updated without gradients.

Pure functions on arrays, so the bank lives in the train state, is checkpointed with it and is
updated inside the jitted step. Every replica applies the same all-gathered (indices, z)
update, so the replicas stay identical.
"""

import jax
import jax.numpy as jnp


def l2_normalize(x, axis=-1, eps=1e-12):
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(x), axis=axis, keepdims=True), eps))


def bank_init(rng, num_rows: int, dim: int, dtype=jnp.float32):
  """Random unit rows: U(-s, s) with s = 1/sqrt(dim/3), then L2-normalised (reference init).

  Returns [num_rows, dim].
  """
  scale = 1.0 / jnp.sqrt(dim / 3.0)
  rows = jax.random.uniform(rng, (num_rows, dim), jnp.float32, -scale, scale)
  return l2_normalize(rows).astype(dtype)


def bank_update(bank, indices, z, momentum):
  """M[i] <- normalise(m M[i] + (1 - m) z_i) for each (i, z_i); z is detached.

  Args:
    bank: [N, D] unit rows.
    indices: [B] distinct row indices.
    z: [B, D] new embeddings (unit rows).
    momentum: m in [0, 1); m = 0 stores the latest view (the paper's simplified IR).
  Returns:
    The updated bank, [N, D], same dtype.
  """
  z = jax.lax.stop_gradient(z).astype(jnp.float32)
  old = bank[indices].astype(jnp.float32)
  new = l2_normalize(momentum * old + (1.0 - momentum) * z)
  return bank.at[indices].set(new.astype(bank.dtype))
