"""What the false-negative diagnostic costs: the train step with and without it.

Command:  python benchmarks/false_negative_cost.py
          [--config=configs/ring.py:fashion_mnist --config=configs/moco_ring.py:fashion_mnist]
          [--reps=6] [--batch=B] [--output=FILE | --output=-]
Reads:    no dataset. Synthetic uint8 images of the preset's shape and synthetic labels (10
          classes), with a memory bank of the preset's size (60,000 rows for fashion_mnist),
          held on the device as a real run holds them; the diagnostic's cost (a gather of the
          drawn negatives' labels, a compare and two sums) does not depend on the labels'
          values.
Prints:   one JSON line; also writes benchmarks/results/false_negative_cost.json.

For each config, two jitted steps of the same run (mi_contrast.step.make_train_step): `on`,
the run with its labels (the metrics hold `false_negative_share`), and `off`, the same run with
labels=None (the step the trainer builds for data without labels). Their training is
bit-identical (tests/test_false_negatives.py). Compile and one warm-up call excluded; the two
steps are then called alternately (on, off; then off, on), each call blocked until ready, so
that both see the same machine load. Each call is timed twice: wall time, and the process's CPU
time (every XLA thread), which another process's load on the machine disturbs far less.
ratio = median(on) / median(off) of each, and the per-pair ratios' median and range. The
issue's budget: at most 5% of a step (ratio <= 1.05).
"""

import argparse
import dataclasses
import json
import os
import platform
import sys
import time

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

from mi_contrast import run as run_lib  # noqa: E402
from mi_contrast import step as step_lib  # noqa: E402
from step_overhead import CHANNELS, PRESET_ROWS, load_config  # noqa: E402

RESULTS = os.path.join(REPO, "benchmarks", "results")
DEFAULT_CONFIGS = ("configs/ring.py:fashion_mnist", "configs/moco_ring.py:fashion_mnist")
NUM_CLASSES = 10
BUDGET_RATIO = 1.05


def synthetic_run(config, seed=0):
  """The run of `config` on synthetic images and labels of the preset's shape and size:
  (run with labels, images on the device)."""
  rows = PRESET_ROWS[config.dataset]
  shape = (config.image_size, config.image_size, CHANNELS.get(config.dataset, 3))
  run = run_lib.build_run(config, bank_rows=rows,
                          channel_stats=((0.5,) * shape[-1], (0.25,) * shape[-1]))
  if run.streaming:
    raise ValueError(f"{config.dataset}: streamed data has no labels, so no diagnostic.")
  rng = np.random.default_rng(seed)
  replicated = NamedSharding(run.mesh, P())
  images = jax.device_put(rng.integers(0, 256, (rows,) + shape, dtype=np.uint8), replicated)
  labels = rng.permutation(np.arange(rows) % NUM_CLASSES).astype(np.int32)
  return dataclasses.replace(run, labels=jax.device_put(labels, replicated)), images


def measure(config, reps):
  """Alternate timings of the step with and without the diagnostic (see the docstring)."""
  run, images = synthetic_run(config)
  runs = {"on": run, "off": dataclasses.replace(run, labels=None)}
  steps, states, compile_s = {}, {}, {}
  for name, variant in runs.items():
    state = run_lib.create_train_state(variant)
    state = jax.device_put(state, run_lib.state_shardings(config, state, variant.mesh))
    steps[name] = step_lib.make_train_step(
        variant, state_spec=run_lib.state_specs(config, state))
    start = time.perf_counter()
    state, metrics = jax.block_until_ready(steps[name](state, images))   # compile + first call
    compile_s[name] = time.perf_counter() - start
    states[name], metrics = jax.block_until_ready(steps[name](state, images))   # warm-up
    if name == "on":
      share = float(metrics["false_negative_share"])
    assert name == "on" or "false_negative_share" not in metrics
  times = {(clock, name): [] for clock in ("wall", "cpu") for name in ("on", "off")}
  for rep in range(reps):
    for name in (("on", "off") if rep % 2 == 0 else ("off", "on")):
      wall, cpu = time.perf_counter(), time.process_time()
      states[name], _ = jax.block_until_ready(steps[name](states[name], images))
      times["cpu", name].append(time.process_time() - cpu)
      times["wall", name].append(time.perf_counter() - wall)
  record = {
      "method": config.method, "negatives": config.negatives, "dataset": config.dataset,
      "num_negatives": config.num_negatives, "global_batch": config.global_batch_size,
      "bank_rows": run.plan.bank_rows, "num_devices": run.plan.num_devices,
      "compile_and_first_call_s": compile_s,
      "false_negative_share_at_step_2": share,   # synthetic labels: about 1 / 10
  }
  for clock in ("wall", "cpu"):
    on, off = times[clock, "on"], times[clock, "off"]
    pairs = [a / b for a, b in zip(on, off)]
    record.update({
        f"{clock}_step_on_s": float(np.median(on)), f"{clock}_step_off_s": float(np.median(off)),
        f"{clock}_ratio": float(np.median(on) / np.median(off)),
        f"{clock}_pair_ratio_median": float(np.median(pairs)),
        f"{clock}_pair_ratio_range": [float(min(pairs)), float(max(pairs))],
        f"{clock}_times_on_s": on, f"{clock}_times_off_s": off})
  record["within_budget"] = record["cpu_ratio"] <= BUDGET_RATIO
  return record


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", action="append", default=None,
                      help="config file and preset, as for mi_contrast.main (repeatable; "
                           f"default: {', '.join(DEFAULT_CONFIGS)})")
  parser.add_argument("--reps", type=int, default=6, help="timed calls of each step")
  parser.add_argument("--batch", type=int, default=None,
                      help="global batch (default: the preset's)")
  parser.add_argument("--output", default=os.path.join(RESULTS, "false_negative_cost.json"),
                      help="JSON file ('-' writes none)")
  args = parser.parse_args(argv)
  cases = []
  for spec in args.config or DEFAULT_CONFIGS:
    config, _ = load_config(spec)
    if args.batch:
      config.global_batch_size = args.batch
    cases.append({"config": spec, **measure(config, args.reps)})
    print(json.dumps({k: cases[-1][k] for k in ("config", "cpu_ratio", "wall_ratio",
                                                 "cpu_step_off_s", "wall_step_off_s")}),
          flush=True)
  result = {"benchmark": "false_negative_cost", "budget_ratio": BUDGET_RATIO, "reps": args.reps,
            "cases": cases,
            "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                        "device_kind": jax.devices()[0].device_kind, "jax": jax.__version__,
                        "load_average": list(os.getloadavg())}}
  print(json.dumps(result, sort_keys=True))
  if args.output != "-":
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
      json.dump(result, f, indent=2, sort_keys=True)
  return result


if __name__ == "__main__":
  main()
