"""The in-memory step's data order, computed once an epoch (step.EpochOrder), gives every step
the rows it had when the step permuted the bank rows itself: the step's slice of
permutation(fold_in(DATA_ORDER stream, step // steps_per_epoch), bank_rows), this device's
share of it, on 1 and 8 devices, for steps on both sides of epoch boundaries and for an order
first asked for mid-epoch (a resumed run)."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mi_contrast import run as run_lib
from mi_contrast import step as step_lib
from mi_contrast.mesh import AXIS, make_mesh

BANK_ROWS, BATCH = 1000, 64            # 15 steps an epoch, 40 rows left out of each
STEPS = (0, 1, 13, 14, 15, 16, 29, 30, 31, 44, 45)


def _reference_indices(state, plan):
  """The rows as the step drew them before: the epoch's permutation computed in the step."""
  step, spe, batch = state.step, plan.steps_per_epoch, plan.global_batch
  data_key = run_lib.stream(state.rng, run_lib.RootStream.DATA_ORDER)
  order = jax.random.permutation(jax.random.fold_in(data_key, step // spe), plan.bank_rows)
  global_idx = jax.lax.dynamic_slice(order, ((step % spe) * batch,), (batch,))
  return global_idx.reshape(plan.num_devices, plan.per_device_batch)[jax.lax.axis_index(AXIS)]


def _per_device(fn, mesh, num_inputs):
  """fn(*inputs) per device (every input replicated) -> the devices' outputs concatenated."""
  return jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=(P(),) * num_inputs,
                               out_specs=P(AXIS), check_vma=False))


@pytest.mark.parametrize("num_devices", [1, 8])
def test_epoch_order_gives_every_step_the_rows_of_the_permutation_in_the_step(num_devices):
  mesh = make_mesh(jax.devices()[:num_devices])
  plan = run_lib.Plan(bank_rows=BANK_ROWS, global_batch=BATCH, num_devices=num_devices,
                      num_epochs=4)
  assert plan.steps_per_epoch == 15
  run = types.SimpleNamespace(plan=plan, mesh=mesh)
  replicated = NamedSharding(mesh, P())
  rng = jax.device_put(jax.random.PRNGKey(1337), replicated)
  reference = _per_device(lambda rng, step: _reference_indices(
      types.SimpleNamespace(rng=rng, step=step), plan), mesh, 2)
  new = _per_device(lambda step, order: step_lib._device_indices(
      types.SimpleNamespace(step=step), order, plan), mesh, 2)

  orders = step_lib.EpochOrder(run)
  calls = []
  order_of = orders._order_of
  orders._order_of = lambda *args: calls.append(args) or order_of(*args)
  seen = {}
  for step in STEPS:
    state = types.SimpleNamespace(rng=rng,
                                  step=jax.device_put(jnp.int32(step), replicated))
    order = orders(state, step)
    assert order.sharding.is_fully_replicated and order.dtype == jnp.int32
    seen.setdefault(step // 15, order)
    assert order is seen[step // 15]              # one array for the whole epoch
    want = np.asarray(reference(rng, state.step))
    got = np.asarray(new(state.step, order))
    assert want.shape == (BATCH,)
    np.testing.assert_array_equal(got, want, err_msg=f"step {step}")
  assert len(calls) == len(seen) == 4             # once an epoch

  # Asked for first mid-epoch (a run resumed at step 20): the same rows.
  resumed = step_lib.EpochOrder(run)
  state = types.SimpleNamespace(rng=rng, step=jax.device_put(jnp.int32(20), replicated))
  np.testing.assert_array_equal(np.asarray(resumed(state, 20)), np.asarray(seen[1]))
  # Every epoch is a permutation, and consecutive epochs differ.
  assert sorted(np.asarray(seen[0]).tolist()) == list(range(BANK_ROWS))
  assert not np.array_equal(np.asarray(seen[0]), np.asarray(seen[1]))


def test_epoch_order_fn_is_the_permutation_of_the_step_epoch():
  mesh = make_mesh(jax.devices()[:1])
  plan = run_lib.Plan(bank_rows=BANK_ROWS, global_batch=BATCH, num_devices=1, num_epochs=2)
  order_of = step_lib.epoch_order_fn(types.SimpleNamespace(plan=plan, mesh=mesh))
  rng = jax.random.PRNGKey(7)
  data_key = run_lib.stream(rng, run_lib.RootStream.DATA_ORDER)
  for step, epoch in ((0, 0), (14, 0), (15, 1), (29, 1)):
    np.testing.assert_array_equal(
        np.asarray(order_of(rng, jnp.int32(step))),
        np.asarray(jax.random.permutation(jax.random.fold_in(data_key, epoch), BANK_ROWS)))
