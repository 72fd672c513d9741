"""What the contrastive machinery costs next to the backbone: full train step vs backbone only.

Command:  python benchmarks/step_overhead.py --config=configs/ring.py:cifar10 [--batch=64]
Reads:    no dataset. Synthetic uint8 images of the preset's shape, and a memory bank of the
          preset's size (50,000 rows for cifar10/cifar100, 5,000 for stl10, 1,281,167 for
          imagenet2012, 1,438 for digits). In-memory presets hold N synthetic images on the
          device, as a real run does; imagenet2012 feeds the streaming step one synthetic
          batch of crops and indices.
Prints:   one JSON line; also writes benchmarks/results/step_overhead_<config>.json
          (e.g. step_overhead_ring_cifar10.json).

Two jitted steps over the same mesh (every local device), timed alternately so that both see
the same machine load; compile and one warm-up call excluded; medians of --reps calls, each
blocked until ready:
  full       mi_contrast.step.make_train_step: indices, on-device views, encoder forward and
             backward, the method's objective (bank scores, band negatives, bound), gradient
             all-reduce, optax update, memory-bank update, metrics.
  backbone   the same encoder (same BatchNorm synchronisation), forward and backward on one
             already-augmented view of the same batch with a trivial loss (mean of z^2), the
             same gradient all-reduce and optax update: no views, no bank, no negatives.
overhead_ratio = full seconds / backbone seconds. Images per second per device count the
batch's source images.

--batch overrides the preset's global batch (a ResNet-18 step at batch 256 takes about 45 s
on a 2-core CPU); the ratio is what matters and the output records the batch used.
"""

import argparse
import importlib.util
import json
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from mi_contrast import input_pipeline  # noqa: E402
from mi_contrast import run as run_lib  # noqa: E402
from mi_contrast import step as step_lib  # noqa: E402
from mi_contrast.mesh import AXIS  # noqa: E402

RESULTS = os.path.join(REPO, "benchmarks", "results")
# Memory-bank rows (pretraining images) and image shape of each preset, without reading it.
PRESET_ROWS = {"digits": 1438, "fashion_mnist": 60_000, "cifar10": 50_000, "cifar100": 50_000,
               "stl10": 5_000, "imagenet2012": 1_281_167}
CHANNELS = {"digits": 1, "fashion_mnist": 1}


def load_config(spec):
  """'configs/ring.py:cifar10' -> (ConfigDict, 'ring_cifar10')."""
  path, _, preset = spec.partition(":")
  if not os.path.isabs(path) and not os.path.exists(path):
    path = os.path.join(REPO, path)
  module_spec = importlib.util.spec_from_file_location("bench_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(preset or None)
  name = os.path.splitext(os.path.basename(path))[0] + "_" + config.dataset
  return config, name


def set_field(config, assignment):
  """'ring.outer=0.2' -> config.ring.outer = 0.2 (value parsed as JSON, else a string)."""
  key, _, raw = assignment.partition("=")
  try:
    value = json.loads(raw)
  except json.JSONDecodeError:
    value = raw
  target = config
  *parents, leaf = key.split(".")
  for part in parents:
    target = target[part]
  target[leaf] = value


def backbone_step(model, tx, mesh):
  """(state, images) -> state: encoder forward/backward on one view, trivial loss."""
  def per_device(state, images):
    def loss_fn(params):
      (_, z), updated = model.apply({"params": params, "batch_stats": state.batch_stats},
                                    input_pipeline.as_float(images), train=True,
                                    mutable=["batch_stats"])
      return jnp.mean(jnp.square(z.astype(jnp.float32))), updated["batch_stats"]

    (_, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grads = jax.lax.pmean(grads, AXIS)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    return state.replace(params=optax.apply_updates(state.params, updates),
                         batch_stats=batch_stats, opt_state=opt_state, step=state.step + 1)

  return jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(AXIS)),
                               out_specs=P(), check_vma=False), donate_argnums=(0,))


def measure(config, num_rows, reps, seed=0):
  size = config.image_size
  shape = (size, size, CHANNELS.get(config.dataset, 3))
  run = run_lib.build_run(config, bank_rows=num_rows,
                          channel_stats=((0.5,) * shape[-1], (0.25,) * shape[-1]))
  mesh, model, tx = run.mesh, run.model, run.tx
  replicated = NamedSharding(mesh, P())
  rng = np.random.default_rng(seed)
  batch = config.global_batch_size
  split = NamedSharding(mesh, P(AXIS))
  if run.streaming:  # the host hands each step a batch of fixed-size crops and their indices
    images = rng.integers(0, 256, (batch,) + shape, dtype=np.uint8)
    indices = rng.choice(num_rows, batch, replace=False).astype(np.int32)
    step_inputs = (jax.device_put(images, split), jax.device_put(indices, split))
  else:              # in-memory data: every image on the device, the step gathers by index
    images = rng.integers(0, 256, (num_rows,) + shape, dtype=np.uint8)
    step_inputs = (jax.device_put(images, replicated),)
  one_view = jax.device_put(images[:batch], split)

  def make_state():
    state = run_lib.create_train_state(run)
    return jax.device_put(state, run_lib.state_shardings(config, state, mesh))

  template = make_state()
  full = step_lib.make_train_step(run, state_spec=run_lib.state_specs(config, template))
  backbone = backbone_step(model, tx, mesh)

  states = {"full": template, "backbone": make_state()}
  calls = {"full": lambda s: full(s, *step_inputs)[0],
           "backbone": lambda s: backbone(s, one_view)}
  compile_s = {}
  for name in ("full", "backbone"):
    start = time.perf_counter()
    states[name] = jax.block_until_ready(calls[name](states[name]))   # compile + first call
    compile_s[name] = time.perf_counter() - start
    states[name] = jax.block_until_ready(calls[name](states[name]))   # warm-up
  times = {"full": [], "backbone": []}
  for _ in range(reps):
    for name in ("full", "backbone"):
      start = time.perf_counter()
      states[name] = jax.block_until_ready(calls[name](states[name]))
      times[name].append(time.perf_counter() - start)
  median = {k: float(np.median(v)) for k, v in times.items()}
  num_devices = run.plan.num_devices
  per_device = lambda seconds: batch / seconds / num_devices
  bank = states["full"].method_state.get("bank") if isinstance(
      states["full"].method_state, dict) else None
  return {
      "full_images_per_s_per_device": per_device(median["full"]),
      "backbone_images_per_s_per_device": per_device(median["backbone"]),
      "overhead_ratio": median["full"] / median["backbone"],
      "full_step_s": median["full"],
      "backbone_step_s": median["backbone"],
      "full_times_s": times["full"],
      "backbone_times_s": times["backbone"],
      "compile_and_first_call_s": compile_s,
      "global_batch": batch,
      "num_devices": num_devices,
      "bank_rows": num_rows,
      "bank_dtype": str(bank.dtype) if bank is not None else None,
      "bank_sharded": config.bank.sharded,
      "compute_dtype": config.compute_dtype,
      "image_shape": list(shape),
      "streaming": run.streaming,
      "model": config.model,
      "method": config.method,
      "negatives": config.negatives,
      "num_negatives": config.num_negatives,
      "candidates": config.bank.candidates,
  }


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default="configs/ring.py:cifar10",
                      help="config file and preset, as for mi_contrast.main")
  parser.add_argument("--batch", type=int, default=None,
                      help="global batch to measure (default: the preset's)")
  parser.add_argument("--reps", type=int, default=3)
  parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                      help="override a config field, e.g. --set=bank.candidates=65536")
  parser.add_argument("--output", default=None,
                      help="JSON file (default: benchmarks/results/step_overhead_<config>.json; "
                           "'-' writes none)")
  args = parser.parse_args(argv)
  config, name = load_config(args.config)
  if args.batch:
    config.global_batch_size = args.batch
  for assignment in args.set:
    set_field(config, assignment)
  result = {"benchmark": "step_overhead", "config": args.config,
            **measure(config, PRESET_ROWS[config.dataset], args.reps),
            "preset_global_batch": load_config(args.config)[0].global_batch_size,
            "overrides": args.set,
            "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                        "device_kind": jax.devices()[0].device_kind, "jax": jax.__version__,
                        "load_average": list(os.getloadavg())}}
  print(json.dumps(result, sort_keys=True))
  output = args.output or os.path.join(RESULTS, f"step_overhead_{name}.json")
  if output != "-":
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w") as f:
      json.dump(result, f, indent=2, sort_keys=True)
  return result


if __name__ == "__main__":
  main()
