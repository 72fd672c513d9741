"""The method's state (a memory bank, a queue) is updated in place: the train step never copies
it, and the data that orders its update after the step's reads keeps every bit."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import tiny_config

from mi_contrast import run as run_lib
from mi_contrast import step as step_lib


def _special(dtype, size=64, seed=0):
  x = np.random.default_rng(seed).normal(size=size).astype(np.float32) * 1e3
  x[:6] = [-0.0, 0.0, np.inf, -np.inf, np.nan, 1e-40]          # 1e-40: a float32 subnormal
  return jnp.asarray(x).astype(dtype)


@pytest.mark.parametrize("loss", [0.5, -0.0, np.nan, np.inf])
def test_after_keeps_every_bit(loss):
  tree = {"f32": _special(jnp.float32), "bf16": _special(jnp.bfloat16),
          "f16": _special(jnp.float16), "i32": jnp.arange(-5, 59, dtype=jnp.int32),
          "u8": jnp.arange(64, dtype=jnp.uint8) * 4, "bool": jnp.arange(64) % 3 == 0,
          "none": None}
  grads = {"w": _special(jnp.float32, 7, seed=1), "b": jnp.full((3, 2), np.nan, jnp.float32)}
  out = jax.jit(step_lib._after)((jnp.float32(loss), grads), tree)
  assert out["none"] is None
  for name, x in tree.items():
    if x is None:
      continue
    assert out[name].dtype == x.dtype, name
    width = {1: np.uint8, 2: np.uint16, 4: np.uint32}[x.dtype.itemsize]
    np.testing.assert_array_equal(np.asarray(out[name]).view(width), np.asarray(x).view(width),
                                  err_msg=name)


def _state_copies(config, monkeypatch):
  """The copies of the method state's arrays in the compiled train step of `config` on one
  device: the `copy` instructions of a method_state parameter, or of such a copy, other than
  scalars."""
  run = run_lib.build_run(config, jax.devices()[:1])
  state = run_lib.create_train_state(run)
  captured = []
  real_jit = jax.jit

  def capture(fn, **kwargs):
    jitted = real_jit(fn, **kwargs)
    if kwargs.get("donate_argnums") == (0,):
      captured.append(jitted)
    return jitted

  with monkeypatch.context() as patch:
    patch.setattr(jax, "jit", capture)
    step_lib.make_train_step(run, state_spec=run_lib.state_specs(config, state))
  (program,) = captured
  state = jax.device_put(state, run_lib.state_shardings(config, state, run.mesh))
  order = step_lib.epoch_order_fn(run)(state.rng, state.step)
  extra = () if run.labels is None else (run.labels,)
  text = program.lower(state, run.images["pretrain"], order, *extra).compile().as_text()
  copies = {name: (shape, source) for name, shape, source in
            re.findall(r"(%copy[.\d]*) = (\S+) copy\((%[^)]*)\)", text)}
  of_state = {name for name, (_, source) in copies.items() if "method_state" in source}
  return sorted(f"{name} = {shape} copy({source})" for name, (shape, source) in copies.items()
                if (name in of_state or source in of_state) and "[]" not in shape)


@pytest.mark.slow   # compiles two train steps
@pytest.mark.parametrize("method, negatives, state", [("ir", "ring", "bank"),
                                                      ("moco", "uniform", "queue")])
def test_train_step_updates_the_method_state_in_place(method, negatives, state, monkeypatch):
  config = tiny_config(negatives, method=method)
  copies = _state_copies(config, monkeypatch)   # scalars (MoCo's queue pointer) not counted
  assert copies == [], f"the {state} is copied: {copies}"
