"""The trainer's allocator settings (mi_contrast/host_malloc.py): applied only where they help, and
what they do (a jitted step's buffers are kept instead of faulted in again every call)."""

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import pytest

from helpers import REPO
from mi_contrast import host_malloc


def test_tune_leaves_the_allocator_alone_where_it_should(monkeypatch):
  jnp.ones(3).block_until_ready()                   # this process's backend has started
  assert host_malloc.tune() is None
  monkeypatch.setattr(host_malloc, "_backend_started", lambda: False)
  monkeypatch.setenv("MI_CONTRAST_MALLOC", "default")
  assert host_malloc.tune() is None
  monkeypatch.delenv("MI_CONTRAST_MALLOC")
  for platforms in ("cuda", "cpu,cuda", "tpu"):
    monkeypatch.setenv("JAX_PLATFORMS", platforms)
    assert not host_malloc._cpu_only(), platforms
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  assert host_malloc._cpu_only()


_CHILD = """
import json, resource
from mi_contrast import host_malloc
settings = host_malloc.tune()
import jax, jax.numpy as jnp
step = jax.jit(lambda x: (x @ x.T).sum(0))     # a 4 MB temporary per call
x = jnp.ones((1024, 4096)) / 64
out = step(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
  out = step(x).block_until_ready()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"settings": settings, "faults": faults, "sum": float(out.sum())}))
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_a_tuned_cpu_process_keeps_its_buffers_with_the_same_results():
  def child(**env):
    proc = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True,
                          cwd=REPO, timeout=300,
                          env={**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"},
                               "JAX_PLATFORMS": "cpu", **env})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])

  tuned, default = child(), child(MI_CONTRAST_MALLOC="default")
  assert tuned["settings"] == host_malloc.SETTINGS and default["settings"] is None
  assert tuned["sum"] == default["sum"]
  # Twenty calls: about 200 fresh pages a call with glibc's defaults (2-core CPU), next to none
  # once the allocator keeps its memory.
  assert default["faults"] > 1000 and tuned["faults"] < default["faults"] / 10, (tuned, default)
