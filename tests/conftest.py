"""Test setup: JAX on the CPU with 8 simulated devices (set before jax is imported), and the
session fixtures shared by several test modules."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
  os.environ["XLA_FLAGS"] = (flags + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
  """A tiny digits run stopped at step 2 of 22, with checkpoints at steps 1 and 2: (workdir,
  config). Trained once per test process and shared by the export, torch-export and
  evaluation-CLI tests, which only read it (training is most of their time)."""
  from mi_contrast import train
  from helpers import tiny_config
  workdir = tmp_path_factory.mktemp("tiny_run")
  config = tiny_config("uniform", num_epochs=1, probe_epochs=2, checkpoint_every_steps=1)
  outcome = train.train_and_evaluate(config, str(workdir), stop_after_steps=2)
  assert outcome.results["steps"] == 2
  return workdir, config
