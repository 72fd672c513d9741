"""Inputs and helpers shared by the public-API tests (tests/test_public_api.py: contracts,
examples, -inf, padding) and the transformation tests (tests/test_transformations.py and
tests/test_views_transformations.py): a batch of B rows split two per simulated device, critic
scores, a unit-norm pool, keys and labels, one call of every public bound; `transforms` runs a
function under jit, vmap, pmap and shard_map, and `assert_same` compares the results."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mi_contrast import bounds

DEVICES = 8
B = 2 * DEVICES               # rows of a batch: 2 per device
T = 0.1
MESH = jax.make_mesh((DEVICES,), ("b",))


def unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def scores(seed, shape):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape) / T, jnp.float32)


POS = scores(0, (B,))
NEG = scores(1, (B, 6)).at[:, 5].set(-jnp.inf)       # one entry per row is "not a negative"
MASK = jnp.asarray(np.random.default_rng(2).random((B, 6)) < 0.8)

BOUND_CASES = {
    "infonce": lambda p, n, m: bounds.infonce(p, n, m),
    "infonce_cap": lambda p, n, m: bounds.infonce_cap(n, m),
    "nce": lambda p, n, m: bounds.nce(p, n, 1.5, 1000, m),
    "nwj": lambda p, n, m: bounds.nwj(p / 10, n / 10, m),
    "dv": lambda p, n, m: bounds.dv(p, n, m),
    "tuba": lambda p, n, m: bounds.tuba(p / 10, n / 10, p / 20, m),
    "js": lambda p, n, m: bounds.js(p, n, m),
    "interpolated_infonce": lambda p, n, m: bounds.interpolated_infonce(p / 10, n / 10, 0.3,
                                                                        neg_mask=m),
    "neighbour_view_objective": lambda p, n, m: bounds.neighbour_view_objective(p, n, m, ~m),
    "dcl": lambda p, n, m: bounds.dcl(p, n, tau_plus=0.05, temperature=T, neg_mask=m),
    "hcl": lambda p, n, m: bounds.hcl(p, n, beta=0.2, tau_plus=0.05, temperature=T,
                                      neg_mask=m),
    "hcl_clamped": lambda p, n, m: bounds.hcl_clamped(p, n, beta=0.2, tau_plus=0.05,
                                                      temperature=T, neg_mask=m),
}

SIMS = scores(3, (B, 40))
BANK = jnp.asarray(unit(np.random.default_rng(4).normal(size=(300, 8))), jnp.float32)
ANCHORS = jnp.asarray(unit(np.random.default_rng(5).normal(size=(B, 8))), jnp.float32)
IDS = jnp.arange(B, dtype=jnp.int32) * 7
KEY = jax.random.key(11)
LABELS = jnp.asarray(np.random.default_rng(6).integers(0, 3, 300), jnp.int32)


def transforms(fn, batched, shared, compiler_options=None):
  """fn(*batched, *shared) under jit on the whole batch (the reference), and under vmap, pmap
  and shard_map, each compiled with XLA's `compiler_options` (default: the session's).

  batched: arrays (or pytrees) with a leading batch axis of B rows, split over the devices;
  shared: arguments every device gets whole (pools, keys, scalars). fn must act on each row of
  the batched arguments independently (as every function of the API does per example).
  """
  call = lambda *b: fn(*b, *shared)
  run = lambda transformed, *args: transformed.lower(*args).compile(compiler_options)(*args)
  plain = run(jax.jit(call), *batched)
  results = {}
  # vmap over a new leading axis of two copies of the batch.
  twice = jax.tree.map(lambda a: jnp.stack([a, a]), batched)
  results["vmap"] = jax.tree.map(lambda a: a[1], run(jax.jit(jax.vmap(call)), *twice))
  split = jax.tree.map(lambda a: a.reshape((DEVICES, -1) + a.shape[1:]), batched)
  merged = run(jax.pmap(call), *split)
  results["pmap"] = jax.tree.map(lambda a: a.reshape((-1,) + a.shape[2:]), merged)
  sharded = jax.device_put(batched, NamedSharding(MESH, P("b")))
  results["shard_map"] = run(jax.jit(jax.shard_map(call, mesh=MESH, in_specs=P("b"),
                                                   out_specs=P("b"))), *sharded)
  return plain, results


def assert_same(plain, results):
  for name, out in results.items():
    flat_p, tree_p = jax.tree.flatten(plain)
    flat_o, tree_o = jax.tree.flatten(out)
    assert tree_p == tree_o, name
    for a, b in zip(flat_p, flat_o):
      a, b = np.asarray(a), np.asarray(b)
      assert a.shape == b.shape and a.dtype == b.dtype, name
      if np.issubdtype(a.dtype, np.floating):
        np.testing.assert_allclose(b, a, rtol=2e-6, atol=2e-6, err_msg=name)
      else:
        np.testing.assert_array_equal(b, a, err_msg=name)
