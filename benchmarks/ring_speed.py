"""Ring-negative losses: JAX (mi_contrast.negatives) against the PyTorch reference algorithm.

Times forward + backward of the full loss -(pos - logsumexp([pos, negatives])).mean() with
respect to the anchors z, on the same machine and in the same process, alternating one
repetition of each framework so that both see the same machine load. Cases:

  ir_ring          IR Ring, exact band over a 50,000-row bank, K - 1 = 4095 ring draws.
                   torch: top-k of the outer fraction; jax: band_negatives(candidates=None).
  ir_ring_sampled  IR Ring over an ImageNet-size bank (1,281,167 rows). torch: the exact
                   reference over the whole bank; jax: band over 65,536 sampled candidates.
  moco_ring        MoCo Ring over a 65,536-key queue, every ring member used. torch: full
                   sort; jax: ring_mask + masked InfoNCE.
  ir_uniform       IR with 4095 uniform bank negatives (reference point). torch gathers
                   [B, K, D] bank rows; jax gathers from the B x P score matrix, as the
                   package's IR does.

Usage (from the repository root):
  python benchmarks/ring_speed.py [--reps 5] [--cases ir_ring,moco_ring]
      [--torch-reference ../shared/bench/torch_reference_ring.py]
Writes benchmarks/results/ring_speed.json. Without torch installed only the JAX side runs.
torch is a benchmark-only dependency, never a dependency of the package.
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

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from mi_contrast import negatives  # pylint: disable=wrong-import-position

TEMPERATURE = 0.07
CASES = ("ir_ring", "ir_ring_sampled", "moco_ring", "ir_uniform")


def load_torch_reference(path):
  """Imports the reference module by path; None (with a message) if torch is missing."""
  try:
    import torch  # pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    print("torch is not installed: skipping the torch side (pip install torch==2.13.0).")
    return None
  if not os.path.exists(path):
    print(f"torch reference not found at {path}: skipping the torch side.")
    return None
  spec = importlib.util.spec_from_file_location("torch_reference_ring", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def unit_rows(rng, n, d):
  v = rng.standard_normal((n, d), dtype=np.float32)
  return v / np.linalg.norm(v, axis=1, keepdims=True)


# ------------------------------------------------------------------------------- JAX losses


def jax_ir_ring_loss(z, bank, idx, rng, lower, upper, num, candidates):
  pos = jnp.sum(z * bank[idx], axis=1) / TEMPERATURE
  neg, _ = negatives.band_negatives(rng, z, bank, lower, upper, num, temperature=TEMPERATURE,
                                    candidates=candidates)
  logits = jnp.concatenate([pos[:, None], neg], axis=1)
  return -jnp.mean(pos - jax.nn.logsumexp(logits, axis=1))


def jax_moco_ring_loss(q, key, queue, lower, upper):
  pos = jnp.sum(q * key, axis=1) / TEMPERATURE
  scores = q @ queue.T / TEMPERATURE
  mask = negatives.ring_mask(scores, lower, upper)
  try:
    from mi_contrast import bounds  # pylint: disable=import-outside-toplevel
    # infonce adds the constant log(1 + kept); it changes the value, not the work.
    return -jnp.mean(bounds.infonce(pos, scores, mask))
  except (ImportError, AttributeError):
    masked = jnp.where(mask, scores, -jnp.inf)
    logits = jnp.concatenate([pos[:, None], masked], axis=1)
    return -jnp.mean(pos - jax.nn.logsumexp(logits, axis=1))


def jax_ir_uniform_loss(z, bank, idx, rng, num):
  # As the package's IR does it: scores against the whole bank, then gathered, so the backward
  # is one dense matmul (the reference gathers [B, K, D] bank rows instead).
  pos = jnp.sum(z * bank[idx], axis=1) / TEMPERATURE
  noise = jax.random.randint(rng, (z.shape[0], num), 0, bank.shape[0])
  neg = jnp.take_along_axis(z @ bank.T / TEMPERATURE, noise, axis=1)
  logits = jnp.concatenate([pos[:, None], neg], axis=1)
  return -jnp.mean(pos - jax.nn.logsumexp(logits, axis=1))


# ------------------------------------------------------------------------------- timing


def timed(fn):
  start = time.perf_counter()
  fn()
  return 1000.0 * (time.perf_counter() - start)


def run_case(name, jax_fn, torch_fn, reps):
  """Warm-up once each, then alternate torch / jax repetitions; medians in ms."""
  jax_fn()
  if torch_fn is not None:
    torch_fn()
  jax_ms, torch_ms = [], []
  for _ in range(reps):
    if torch_fn is not None:
      torch_ms.append(timed(torch_fn))
    jax_ms.append(timed(jax_fn))
  row = {"case": name, "jax_median_ms": round(float(np.median(jax_ms)), 2),
         "jax_ms": [round(t, 2) for t in jax_ms]}
  if torch_fn is not None:
    row["torch_median_ms"] = round(float(np.median(torch_ms)), 2)
    row["torch_ms"] = [round(t, 2) for t in torch_ms]
    row["speedup_torch_over_jax"] = round(row["torch_median_ms"] / row["jax_median_ms"], 2)
  print(json.dumps({k: v for k, v in row.items() if not k.endswith("_ms") or "median" in k}),
        flush=True)
  return row


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--bank", type=int, default=50000)
  parser.add_argument("--big-bank", type=int, default=1281167)
  parser.add_argument("--queue", type=int, default=65536)
  parser.add_argument("--candidates", type=int, default=65536)
  parser.add_argument("--batch", type=int, default=256)
  parser.add_argument("--dim", type=int, default=128)
  parser.add_argument("--k", type=int, default=4096, help="negatives + 1, as in the reference")
  parser.add_argument("--outer", type=float, default=0.1)
  parser.add_argument("--inner", type=float, default=0.1)
  parser.add_argument("--reps", type=int, default=5)
  parser.add_argument("--cases", default=",".join(CASES))
  parser.add_argument("--torch-reference",
                      default=os.path.join(REPO, "..", "shared", "bench", "torch_reference_ring.py"))
  parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results",
                                                    "ring_speed.json"))
  args = parser.parse_args()
  cases = [c for c in args.cases.split(",") if c]
  unknown = sorted(set(cases) - set(CASES))
  if unknown:
    parser.error(f"--cases: unknown {unknown}; allowed {list(CASES)}")

  ref = load_torch_reference(os.path.abspath(args.torch_reference))
  torch = None
  if ref is not None:
    import torch  # pylint: disable=import-outside-toplevel,redefined-outer-name
    torch.manual_seed(0)

  rng = np.random.default_rng(0)
  b, d, num = args.batch, args.dim, args.k - 1
  lower, upper = negatives.fractions_to_quantiles(args.outer, args.inner)
  lower, upper = jnp.float32(lower), jnp.float32(upper)
  z_np = unit_rows(rng, b, d)
  key_np = unit_rows(rng, b, d)
  z = jnp.asarray(z_np)
  key = jax.random.PRNGKey(0)
  results = []

  def torch_step(loss_fn, z_t):
    def run():
      loss_fn().backward()
      z_t.grad = None
    return run

  def jax_step(fn, *fn_args):
    grad_fn = jax.jit(jax.value_and_grad(fn))
    return lambda: jax.block_until_ready(grad_fn(*fn_args))

  def bank_case(name, size, candidates):
    bank_np = unit_rows(rng, size, d)
    idx_np = rng.integers(0, size, b)
    bank, idx = jnp.asarray(bank_np), jnp.asarray(idx_np)
    torch_fn = None
    if ref is not None:
      z_t = torch.from_numpy(z_np.copy()).requires_grad_()
      bank_t, idx_t = torch.from_numpy(bank_np), torch.from_numpy(idx_np)
      if name == "ir_uniform":
        torch_fn = torch_step(lambda: ref.ir_uniform_loss(z_t, bank_t, idx_t, args.k,
                                                          TEMPERATURE), z_t)
      else:
        torch_fn = torch_step(lambda: ref.ir_ring_loss(z_t, bank_t, idx_t, args.k, TEMPERATURE,
                                                       args.outer, args.inner), z_t)
    if name == "ir_uniform":
      jax_fn = jax_step(lambda z, bank, idx, r: jax_ir_uniform_loss(z, bank, idx, r, num),
                        z, bank, idx, key)
    else:
      jax_fn = jax_step(lambda z, bank, idx, r, lo, up: jax_ir_ring_loss(
          z, bank, idx, r, lo, up, num, candidates), z, bank, idx, key, lower, upper)
    row = run_case(name, jax_fn, torch_fn, args.reps)
    row.update(bank=size, candidates=candidates)
    results.append(row)

  if "ir_ring" in cases:
    bank_case("ir_ring", args.bank, None)
  if "ir_uniform" in cases:
    bank_case("ir_uniform", args.bank, None)
  if "moco_ring" in cases:
    queue_np = unit_rows(rng, args.queue, d)
    queue, key_j = jnp.asarray(queue_np), jnp.asarray(key_np)
    torch_fn = None
    if ref is not None:
      z_t = torch.from_numpy(z_np.copy()).requires_grad_()
      key_t, queue_t = torch.from_numpy(key_np), torch.from_numpy(queue_np)
      torch_fn = torch_step(lambda: ref.moco_ring_loss(z_t, key_t, queue_t, TEMPERATURE,
                                                       args.outer, args.inner), z_t)
    jax_fn = jax_step(jax_moco_ring_loss, z, key_j, queue, lower, upper)
    row = run_case("moco_ring", jax_fn, torch_fn, args.reps)
    row.update(queue=args.queue)
    results.append(row)
  if "ir_ring_sampled" in cases:
    bank_case("ir_ring_sampled", args.big_bank, args.candidates)

  report = {
      "benchmark": "ring_speed",
      "loss": "-(pos - logsumexp([pos, negatives])).mean(), forward + backward w.r.t. z",
      "batch": b, "dim": d, "k": args.k, "outer": args.outer, "inner": args.inner,
      "temperature": TEMPERATURE, "reps": args.reps, "statistic": "median over reps, "
      "torch and jax repetitions alternated in one process, warm-up excluded",
      "machine": {"processor": platform.processor() or platform.machine(),
                  "cpu_count": os.cpu_count(), "platform": platform.platform()},
      "jax": {"version": jax.__version__, "backend": jax.default_backend(),
              "devices": len(jax.devices()),
              "threads": "XLA CPU intra-op pool (one thread per core: %d)" % os.cpu_count(),
              "xla_flags": os.environ.get("XLA_FLAGS", "")},
      "torch": None if ref is None else {"version": torch.__version__,
                                         "threads": torch.get_num_threads(),
                                         "interop_threads": torch.get_num_interop_threads()},
      "results": results,
  }
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(report, f, indent=2)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
