"""Multi-process runs: one process per host (or per GPU), JAX's own distributed runtime.

`initialize(...)` starts `jax.distributed` before any device is touched, from explicit values
(flags of mi_contrast.main) or from the environment:
  explicit        --coordinator_address=host:port --num_processes=N --process_id=i
                  (or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID)
  SLURM           srun with more than one task (SLURM_NTASKS > 1): JAX reads the job's env
  Open MPI        mpirun with more than one rank (OMPI_COMM_WORLD_SIZE > 1)
  TPU pod slice   mode 'on' (launch/tpu_pod.sh passes --distributed=on): JAX asks the TPU VM
                  metadata server for the workers
A single process needs nothing: mode 'auto' with none of the above does not initialise.
After it, jax.devices() lists every device of every process and the trainer builds one
global mesh over them.
"""

import os

import jax
from absl import logging

MODES = ("auto", "on", "off")


def _env_int(name):
  value = os.environ.get(name)
  return int(value) if value not in (None, "") else None


def wanted(mode, coordinator_address=None, num_processes=None, process_id=None, environ=None):
  """Whether `initialize` would start the distributed runtime (pure: reads `environ` only)."""
  environ = os.environ if environ is None else environ
  if mode not in MODES:
    raise ValueError(f"--distributed={mode!r} is not allowed; allowed values: "
                     f"{' | '.join(MODES)}.")
  if mode == "off":
    return False
  if mode == "on":
    return True
  if coordinator_address or environ.get("JAX_COORDINATOR_ADDRESS"):
    return True
  if num_processes not in (None, 1) or process_id not in (None, 0):
    return True
  for count in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
    try:
      if int(environ.get(count, "1")) > 1:
        return True
    except ValueError:
      pass
  return False


def initialize(mode="auto", coordinator_address=None, num_processes=None, process_id=None):
  """Starts jax.distributed when the flags or the environment ask for several processes.

  Returns True when it initialised the runtime. Must run before the first use of a device.
  """
  if not wanted(mode, coordinator_address, num_processes, process_id):
    return False
  if jax.distributed.is_initialized():
    return True
  num_processes = num_processes if num_processes is not None else _env_int("JAX_NUM_PROCESSES")
  process_id = process_id if process_id is not None else _env_int("JAX_PROCESS_ID")
  explicit = [v is not None for v in (coordinator_address or
                                      os.environ.get("JAX_COORDINATOR_ADDRESS"),
                                      num_processes, process_id)]
  if any(explicit) and not all(explicit) and not _cluster_env():
    raise ValueError("multi-process run: give all of --coordinator_address, --num_processes "
                     "and --process_id (or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, "
                     "JAX_PROCESS_ID), or none of them on a SLURM / TPU pod / Open MPI job.")
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())
  return True


def _cluster_env():
  return any(k in os.environ for k in ("SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE"))


def is_lead():
  """Process 0 writes the run's files and logs."""
  return jax.process_index() == 0


def sync(name):
  """A barrier across processes (a no-op with one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)
