"""XLA compiler options for single programs of the tests (no JAX import: a light module)."""

# XLA's default fusion emitters (conftest compiles with the older ones), as compiler options of
# one program: `jax.jit(f, compiler_options=DEFAULT_EMITTERS)` or `lowered.compile(...)`. For the
# invariants that hold to the last bit with the default emitters, and that the older ones
# change by a rounding.
DEFAULT_EMITTERS = {"xla_cpu_use_fusion_emitters": True}
