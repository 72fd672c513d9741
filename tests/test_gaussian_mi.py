"""Fast version of benchmarks/gaussian_mi.py: InfoNCE and the ring bound on correlated Gaussians.

Small critic, small batch and few steps, so the tolerances are loose; the full benchmark
records the real numbers.
"""

import importlib.util
import os

import numpy as np
import pytest

_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks",
                     "gaussian_mi.py")
_spec = importlib.util.spec_from_file_location("gaussian_mi_benchmark", _PATH)
gaussian_mi = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gaussian_mi)

BATCH = 32
TRUE_MIS = (0.5, 2.0, 6.0)


@pytest.fixture(scope="module")
def results():
  return gaussian_mi.run(("infonce", "ring"), TRUE_MIS, num_seeds=2, steps_per_level=400,
                         batch=BATCH, hidden=32, embed=16, lr=2e-3, average_last=100,
                         log=lambda _: None)


def test_rho_gives_the_requested_mi():
  for mi in (2.0, 10.0):
    rho = gaussian_mi.rho_for_mi(mi)
    assert -gaussian_mi.DIM / 2 * np.log(1 - rho**2) == pytest.approx(mi, rel=1e-9)


def test_ring_mask_keeps_the_band():
  scores = np.arange(20, dtype=np.float32)[None, ::-1]
  mask = np.asarray(gaussian_mi.ring_mask(scores, 0.5, 0.95))[0]
  quantiles = np.arange(20)[::-1] / 19
  np.testing.assert_array_equal(mask, (quantiles >= 0.5) & (quantiles <= 0.95))


@pytest.mark.slow
def test_infonce_below_cap_and_truth_and_increasing(results):
  cap = np.log(BATCH)  # K = BATCH - 1 in-batch negatives
  estimates = results["infonce"]["estimates"].mean(-1)
  assert np.all(np.isfinite(results["infonce"]["traces"]))
  assert np.all(estimates <= cap + 0.05)
  assert np.all(estimates <= np.asarray(TRUE_MIS) + 0.3)
  assert np.all(np.diff(estimates) > 0.1), estimates
  assert estimates[-1] > 0.5 * cap  # it learned something


@pytest.mark.slow
def test_ring_at_most_infonce(results):
  ring = results["ring"]["estimates"].mean(-1)
  infonce = results["infonce"]["estimates"].mean(-1)
  assert np.all(np.isfinite(ring))
  assert np.all(ring <= infonce + 0.3), (ring, infonce)
