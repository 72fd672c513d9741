"""The timing tools of benchmarks/ at tiny sizes: what they compare and what they record.

benchmarks/ring_speed.py interleaves its cases and gives every timed call inputs of its own;
benchmarks/step_overhead.py builds its backbone step on the views the training step embeds
(not on the stored images) and breaks the full step down by removing parts;
benchmarks/torch_step.py runs an IR Ring step in PyTorch beside the JAX step. Each record keeps
the machine's load averages and CPU model. The timings themselves are not checked here.
"""

import importlib.util
import math
import os

import pytest

from helpers import tiny_config  # noqa: F401  (conftest's path setup)
from mi_contrast import negatives as negatives_lib

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "benchmarks")
MACHINE_KEYS = {"cpu_model", "cpu_count", "load_average_before", "load_average_after"}


def _load(name, monkeypatch):
  """benchmarks/<name>.py as a module; the OpenMP settings it makes for torch are undone after
  the test."""
  for var in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS"):
    value = os.environ.get(var)
    monkeypatch.setenv(var, "")           # records the value to restore (or its absence)
    if value is None:
      monkeypatch.delenv(var)
    else:
      monkeypatch.setenv(var, value)
  spec = importlib.util.spec_from_file_location(f"{name}_benchmark",
                                                os.path.join(BENCHMARKS, f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_ring_speed_interleaves_cases_and_draws_inputs_for_every_call(monkeypatch):
  ring_speed = _load("ring_speed", monkeypatch)
  events = []

  def case(name):
    def draw(rep):
      events.append(("draw", name, rep))
      return {framework: (lambda framework=framework: events.append(("call", name, framework)))
              for framework in ("torch", "jax")}
    return ring_speed.Case(name, draw, bank=1)

  cases = [case("ir_ring"), case("ir_uniform")]
  rows = ring_speed.run_cases(cases, 4, ("torch", "jax"), log=lambda line: None)
  assert [r["case"] for r in rows] == ["ir_ring", "ir_uniform"]
  assert all(len(r["jax_ms"]) == len(r["torch_ms"]) == 4 and r["bank"] == 1 for r in rows)
  timed = events[6:]     # after the warm-up: one draw and both calls per case
  assert len(timed) == 4 * 2 * 2 * 2
  # Every timed call follows a draw of its own for its case and repetition.
  pairs = list(zip(timed[::2], timed[1::2]))
  assert all(d[0] == "draw" and c[0] == "call" and d[1] == c[1] for d, c in pairs)
  calls = [(c[1], c[2]) for _, c in pairs]
  per_rep = [calls[4 * r:4 * r + 4] for r in range(4)]
  # The cases in turn, the order rotated; the frameworks in turn, the order alternated.
  assert [rep[0][0] for rep in per_rep] == ["ir_ring", "ir_uniform", "ir_ring", "ir_uniform"]
  assert [rep[0][1] for rep in per_rep] == ["torch", "jax", "torch", "jax"]
  assert all({c for c, _ in rep} == {"ir_ring", "ir_uniform"} for rep in per_rep)
  assert [d[2] for d, _ in pairs] == [r for r in range(4) for _ in range(4)]


@pytest.mark.slow
def test_step_overhead_times_the_backbone_on_the_training_views(monkeypatch):
  step_overhead = _load("step_overhead", monkeypatch)
  config, _ = step_overhead.load_config("configs/ring.py:fashion_mnist")
  config.global_batch_size = 16
  config.num_negatives = 63
  config.bank.candidates = 128
  select = negatives_lib._select
  record = step_overhead.measure(config, 256, 1,
                                 parts=("band_search", "per_call_order"),
                                 log=lambda line: None)
  assert negatives_lib._select is select           # the variant's patch is undone
  # 28x28 images; the step embeds one 20x20 view per image, and so does the backbone step.
  assert record["image_shape"] == [28, 28, 1]
  assert record["full_view_shape"] == record["backbone_view_shape"] == [1, 20, 20, 1]
  assert record["overhead_ratio"] > 0
  assert set(record["breakdown"]) == {"band_search", "per_call_order"}
  assert record["breakdown_skipped"] == {}
  assert record["breakdown"]["per_call_order"]["kind"] == "added"
  assert record["breakdown"]["band_search"]["kind"] == "removed"
  assert all(math.isfinite(row["share"]) for row in record["breakdown"].values())
  assert MACHINE_KEYS <= set(record["machine"])


@pytest.mark.slow
def test_torch_step_runs_both_steps_and_records_threads_and_load(monkeypatch, tmp_path):
  pytest.importorskip("torch")
  torch_step = _load("torch_step", monkeypatch)
  output = tmp_path / "torch_step.json"
  record = torch_step.main(["--batch=16", "--rows=256", "--reps=1", "--set=num_negatives=63",
                            "--set=bank.candidates=128", f"--output={output}"])
  assert output.exists()
  assert record["view_shape"] == [1, 20, 20, 1] and record["num_negatives"] == 63
  assert record["torch_over_jax"] > 0 and all(math.isfinite(x) for x in record["torch_losses"])
  assert record["torch"]["omp_env"]["OMP_WAIT_POLICY"] == os.environ["OMP_WAIT_POLICY"]
  assert record["torch"]["threads"] >= 1
  start, end = record["band"]["torch_ranks"]
  assert 0 <= start < end <= 128
  assert MACHINE_KEYS <= set(record["machine"])
