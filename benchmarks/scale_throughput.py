"""Step throughput at accelerator-scale shapes, and the ring's cost against the bank size.

Command:  python benchmarks/scale_throughput.py [--cases steps,moco_steps,bank_sweep] [--quick]
Reads:    no dataset (synthetic images and banks, as benchmarks/step_overhead.py).
Writes:   benchmarks/results/scale_throughput.json

  steps       benchmarks/step_overhead.py's full and backbone-only steps for IR Ring:
                r18_32px   ResNet-18, CIFAR stem, 32 px, 50,000-row bank (ring.py:cifar10)
                r50_224px  ResNet-50, ImageNet stem, 224 px, 1,281,167-row bank
                           (ring.py:imagenet2012 with model = resnet50), exact band and the
                           sampled band over 65,536 candidates
              On a CPU the batches are small (--batch_32px, --batch_224px); the JSON records
              them. Images/s per device, and full / backbone time.
  bank_sweep  IR Ring's part of the step alone, against the bank size (50,000 to 1,281,167
              rows, dim 128, K = 4,095, band [0.9, 0.99], batch --sweep_batch): forward and
              backward of the InfoNCE loss with respect to the anchors, plus the bank update,
              jitted, one device; exact band and sampled band (65,536 candidates).
  moco_steps  the same for MoCo Ring (configs/moco_ring.py): ResNet-18 at 32 px with a 4,096-key
              queue, ResNet-50 at 224 px with a 65,536-key queue; the full step includes the
              key encoder's EMA, its shuffle-BN forward and the queue.
"""

import argparse
import json
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

import step_overhead  # noqa: E402
from mi_contrast import bounds  # noqa: E402
from mi_contrast import memory  # noqa: E402
from mi_contrast import negatives  # noqa: E402

RESULTS = os.path.join(REPO, "benchmarks", "results")
BANK_SIZES = (50_000, 160_000, 320_000, 640_000, 1_281_167)


def step_cases(batch_32, batch_224, reps, method="ir"):
  if method == "moco":
    cases = {
        "moco_r18_32px": ("configs/moco_ring.py:cifar10", batch_32, []),
        "moco_r50_224px": ("configs/moco_ring.py:imagenet2012", batch_224,
                           ["model=resnet50", f"moco.bn_groups={batch_224}"]),
    }
  else:
    cases = {
        "r18_32px": ("configs/ring.py:cifar10", batch_32, []),
        "r50_224px": ("configs/ring.py:imagenet2012", batch_224, ["model=resnet50"]),
        "r50_224px_sampled": ("configs/ring.py:imagenet2012", batch_224,
                              ["model=resnet50", "bank.candidates=65536"]),
    }
  out = {}
  for name, (spec, batch, sets) in cases.items():
    config, _ = step_overhead.load_config(spec)
    config.global_batch_size = batch
    for assignment in sets:
      step_overhead.set_field(config, assignment)
    result = step_overhead.measure(config, step_overhead.PRESET_ROWS[config.dataset], reps)
    result.update(config=spec, overrides=sets)
    out[name] = result
    print(name, json.dumps({k: result[k] for k in (
        "full_images_per_s_per_device", "backbone_images_per_s_per_device",
        "overhead_ratio", "global_batch")}), flush=True)
  return out


def ring_part(candidates, k=4095, temperature=0.07):
  """Jitted (z, bank, indices) -> (loss, grad wrt z, new bank): IR Ring's objective (positive,
  K band negatives, InfoNCE) and the bank update, through the package's public functions."""
  def loss(z, bank, indices):
    pos = jnp.sum(z * bank[indices], axis=-1) / temperature
    neg, _ = negatives.band_negatives(jax.random.key(0), z, bank, 0.9, 0.99, k,
                                      temperature=temperature, candidates=candidates or None,
                                      anchor_ids=indices)
    return -jnp.mean(bounds.infonce(pos, neg))

  def fn(z, bank, indices):
    value, grad = jax.value_and_grad(loss)(z, jax.lax.stop_gradient(bank), indices)
    return value, grad, memory.bank_update(bank, indices, z, 0.0)

  return jax.jit(fn, donate_argnums=(1,))


def bank_sweep(batch, reps, sizes):
  out = {}
  rng = np.random.default_rng(0)
  for rows in sizes:
    for candidates in (0, 65_536):
      if candidates and candidates >= rows:
        continue
      bank = rng.normal(size=(rows, 128)).astype(np.float32)
      bank /= np.linalg.norm(bank, axis=1, keepdims=True)
      bank = jnp.asarray(bank)
      z = rng.normal(size=(batch, 128)).astype(np.float32)
      z = jnp.asarray(z / np.linalg.norm(z, axis=1, keepdims=True))
      indices = jnp.asarray(rng.choice(rows, batch, replace=False).astype(np.int32))
      fn = ring_part(candidates)
      _, _, bank = jax.block_until_ready(fn(z, bank, indices))      # compile
      _, _, bank = jax.block_until_ready(fn(z, bank, indices))      # warm-up
      times = []
      for _ in range(reps):
        start = time.perf_counter()
        _, _, bank = jax.block_until_ready(fn(z, bank, indices))
        times.append(time.perf_counter() - start)
      name = f"{rows}_{'exact' if not candidates else f'sampled_{candidates}'}"
      out[name] = {"bank_rows": rows, "candidates": candidates or None, "batch": batch,
                   "median_s": float(np.median(times)), "times_s": times}
      print(name, f"{np.median(times) * 1000:.0f} ms", flush=True)
      del bank
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--cases", default="steps,bank_sweep")
  parser.add_argument("--batch_32px", type=int, default=64)
  parser.add_argument("--batch_224px", type=int, default=8)
  parser.add_argument("--sweep_batch", type=int, default=256)
  parser.add_argument("--reps", type=int, default=3)
  parser.add_argument("--quick", action="store_true",
                      help="smoke run: tiny batches, two bank sizes, one repetition")
  parser.add_argument("--output", default=os.path.join(RESULTS, "scale_throughput.json"))
  args = parser.parse_args(argv)
  sizes = BANK_SIZES
  if args.quick:
    args.batch_32px, args.batch_224px, args.sweep_batch, args.reps = 8, 2, 32, 1
    sizes = BANK_SIZES[:2]
  cases = args.cases.split(",")
  result = {"benchmark": "scale_throughput", "quick": args.quick,
            "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                        "device_kind": jax.devices()[0].device_kind,
                        "num_devices": jax.device_count(), "jax": jax.__version__,
                        "load_average_before": list(os.getloadavg())}}
  if "steps" in cases:
    result["steps"] = step_cases(args.batch_32px, args.batch_224px, args.reps)
  if "moco_steps" in cases:
    result["moco_steps"] = step_cases(args.batch_32px, args.batch_224px, args.reps, "moco")
  if "bank_sweep" in cases:
    result["bank_sweep"] = bank_sweep(args.sweep_batch, args.reps, sizes)
  result["machine"]["load_average_after"] = list(os.getloadavg())
  if args.output != "-":
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
      json.dump(result, f, indent=2, sort_keys=True)
  print(json.dumps(result, sort_keys=True))
  return result


if __name__ == "__main__":
  main()
