"""Ring-negative losses: JAX (mi_contrast.negatives) against the PyTorch reference algorithm.

Times forward + backward of the full loss -(pos - logsumexp([pos, negatives])).mean() with
respect to the anchors z, on the same machine and in the same process. The cases compared are
interleaved: in each repetition every case runs in turn (the order rotated from one repetition
to the next), and within a case torch and jax in turn (their order alternated), so that all see
the same machine load. Every timed call gets fresh inputs (a new random bank or queue, anchors,
indices and key), drawn and placed on the device (blocked until ready) before its timer
starts, so that no case is flattered by data left in the caches by the call before it. Cases:

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
  python benchmarks/ring_speed.py [--reps 7] [--cases ir_ring,ir_uniform] [--no-torch]
      [--torch-reference ../shared/bench/torch_reference_ring.py] [--out FILE]
Writes benchmarks/results/ring_speed.json (medians and every repetition, with the machine's
CPU model and its load averages before and after). On a CPU the script sets glibc's allocator
as the trainer does (mi_contrast/host_malloc.py; the record's `host_malloc`). Without torch
installed only the JAX side runs. torch is a benchmark-only dependency, never a dependency of
the package; its OpenMP threads wait passively (OMP_WAIT_POLICY=PASSIVE unless set) so that
they do not spin on the cores while the JAX side runs, and the record keeps the OMP_* settings
and torch's threads.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # before torch is imported

import argparse
import importlib.util
import json
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from mi_contrast import host_malloc  # noqa: E402
from mi_contrast import negatives  # noqa: E402

TEMPERATURE = 0.07
CASES = ("ir_ring", "ir_ring_sampled", "moco_ring", "ir_uniform")


def load_torch_reference(path):
  """Imports the reference module by path; None (with a message) if torch is missing."""
  try:
    import torch  # noqa: F401
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


class Case:
  """One case: `draw(rep)` makes fresh inputs (a new bank, anchors, indices and key, already on
  the device, blocked until ready) and returns {framework: call}; the calls are timed alone."""

  def __init__(self, name, draw, **facts):
    self.name, self.draw, self.facts = name, draw, facts
    self.times = {"jax": [], "torch": []}


def run_cases(cases, reps, frameworks, log=print):
  """Warm-up once per case and framework, then `reps` repetitions; in each, every case in turn
  (the order rotated from one repetition to the next) and within a case the frameworks in
  turn (their order alternated), each call on inputs drawn for it alone. Medians in ms."""
  for case in cases:
    for framework, call in case.draw(-1).items():
      if framework in frameworks:
        call()
  for rep in range(reps):
    shift = rep % len(cases)
    for case in cases[shift:] + cases[:shift]:
      order = frameworks if rep % 2 == 0 else frameworks[::-1]
      for framework in order:
        call = case.draw(rep)[framework]    # fresh inputs, outside the timed region
        case.times[framework].append(timed(call))
  rows = []
  for case in cases:
    jax_ms = case.times["jax"]
    row = {"case": case.name, "jax_median_ms": round(float(np.median(jax_ms)), 2),
           "jax_ms": [round(t, 2) for t in jax_ms]}
    if "torch" in frameworks:
      torch_ms = case.times["torch"]
      row["torch_median_ms"] = round(float(np.median(torch_ms)), 2)
      row["torch_ms"] = [round(t, 2) for t in torch_ms]
      jax_median = float(np.median(jax_ms))
      row["speedup_torch_over_jax"] = (round(float(np.median(torch_ms)) / jax_median, 2)
                                       if jax_median > 0 else None)
    row.update(case.facts)
    log(json.dumps({k: v for k, v in row.items() if not k.endswith("_ms") or "median" in k}))
    rows.append(row)
  return rows


def main(argv=None):
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
  parser.add_argument("--reps", type=int, default=7)
  parser.add_argument("--cases", default=",".join(CASES))
  parser.add_argument("--no-torch", action="store_true", help="time the JAX side only")
  parser.add_argument("--torch-reference", default=os.path.join(
      REPO, "..", "shared", "bench", "torch_reference_ring.py"))
  parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results",
                                                    "ring_speed.json"))
  args = parser.parse_args(argv)
  # As the trainer does before JAX starts: on a CPU, glibc's allocator keeps the buffers of
  # each call (mi_contrast/host_malloc.py); every case, JAX and PyTorch, runs under it.
  malloc_settings = host_malloc.tune()
  load_before = os.getloadavg()
  cases = [c for c in args.cases.split(",") if c]
  unknown = sorted(set(cases) - set(CASES))
  if unknown:
    parser.error(f"--cases: unknown {unknown}; allowed {list(CASES)}")

  ref = None if args.no_torch else load_torch_reference(os.path.abspath(args.torch_reference))
  torch = None
  if ref is not None:
    import torch  # pylint: disable=import-outside-toplevel,redefined-outer-name
    torch.manual_seed(0)
  frameworks = ("torch", "jax") if ref is not None else ("jax",)

  rng = np.random.default_rng(0)
  b, d, num = args.batch, args.dim, args.k - 1
  lower, upper = negatives.fractions_to_quantiles(args.outer, args.inner)
  lower, upper = jnp.float32(lower), jnp.float32(upper)
  base_key = jax.random.PRNGKey(0)
  ready = lambda *xs: jax.block_until_ready(tuple(jnp.asarray(x) for x in xs))

  def torch_call(loss_fn, z_t):
    def run():
      loss_fn().backward()
      z_t.grad = None
    return run

  def jax_call(grad_fn, *fn_args):
    return lambda: jax.block_until_ready(grad_fn(*fn_args))

  def bank_case(name, size, candidates):
    if name == "ir_uniform":
      grad_fn = jax.jit(jax.value_and_grad(
          lambda z, bank, idx, r: jax_ir_uniform_loss(z, bank, idx, r, num)))
    else:
      grad_fn = jax.jit(jax.value_and_grad(lambda z, bank, idx, r, lo, up: jax_ir_ring_loss(
          z, bank, idx, r, lo, up, num, candidates)))

    def draw(rep):
      z_np, bank_np = unit_rows(rng, b, d), unit_rows(rng, size, d)
      idx_np = rng.integers(0, size, b)
      key = jax.random.fold_in(base_key, rep + 1)
      z, bank, idx = ready(z_np, bank_np, idx_np)
      if name == "ir_uniform":
        calls = {"jax": jax_call(grad_fn, z, bank, idx, key)}
      else:
        calls = {"jax": jax_call(grad_fn, z, bank, idx, key, lower, upper)}
      if ref is not None:
        z_t = torch.from_numpy(z_np).requires_grad_()
        bank_t, idx_t = torch.from_numpy(bank_np), torch.from_numpy(idx_np)
        if name == "ir_uniform":
          loss = lambda: ref.ir_uniform_loss(z_t, bank_t, idx_t, args.k, TEMPERATURE)
        else:
          loss = lambda: ref.ir_ring_loss(z_t, bank_t, idx_t, args.k, TEMPERATURE, args.outer,
                                          args.inner)
        calls["torch"] = torch_call(loss, z_t)
      return calls

    return Case(name, draw, bank=size, candidates=candidates)

  def moco_case():
    grad_fn = jax.jit(jax.value_and_grad(jax_moco_ring_loss))

    def draw(rep):
      del rep
      z_np, key_np, queue_np = (unit_rows(rng, b, d), unit_rows(rng, b, d),
                                unit_rows(rng, args.queue, d))
      z, key_j, queue = ready(z_np, key_np, queue_np)
      calls = {"jax": jax_call(grad_fn, z, key_j, queue, lower, upper)}
      if ref is not None:
        z_t = torch.from_numpy(z_np).requires_grad_()
        key_t, queue_t = torch.from_numpy(key_np), torch.from_numpy(queue_np)
        calls["torch"] = torch_call(lambda: ref.moco_ring_loss(
            z_t, key_t, queue_t, TEMPERATURE, args.outer, args.inner), z_t)
      return calls

    return Case("moco_ring", draw, queue=args.queue)

  builders = {"ir_ring": lambda: bank_case("ir_ring", args.bank, None),
              "ir_uniform": lambda: bank_case("ir_uniform", args.bank, None),
              "moco_ring": moco_case,
              "ir_ring_sampled": lambda: bank_case("ir_ring_sampled", args.big_bank,
                                                   args.candidates)}
  results = run_cases([builders[name]() for name in cases], args.reps, frameworks,
                      log=lambda line: print(line, flush=True))

  report = {
      "benchmark": "ring_speed",
      "loss": "-(pos - logsumexp([pos, negatives])).mean(), forward + backward w.r.t. z",
      "batch": b, "dim": d, "k": args.k, "outer": args.outer, "inner": args.inner,
      "temperature": TEMPERATURE, "reps": args.reps, "host_malloc": malloc_settings,
      "statistic": "median over reps; in "
      "each repetition every case in turn (order rotated) and within a case torch and jax in "
      "turn (order alternated), one process; every call on fresh inputs (bank, anchors, "
      "indices, key) drawn and placed before its timer starts; warm-up excluded",
      "machine": {"processor": platform.processor() or platform.machine(),
                  "cpu_model": cpu_model(), "cpu_count": os.cpu_count(),
                  "platform": platform.platform(),
                  "load_average_before": [round(x, 2) for x in load_before],
                  "load_average_after": [round(x, 2) for x in os.getloadavg()]},
      "jax": {"version": jax.__version__, "backend": jax.default_backend(),
              "devices": len(jax.devices()),
              "threads": "XLA CPU intra-op pool (one thread per core: %d)" % os.cpu_count(),
              "xla_flags": os.environ.get("XLA_FLAGS", "")},
      "torch": None if ref is None else {
          "version": torch.__version__, "threads": torch.get_num_threads(),
          "interop_threads": torch.get_num_interop_threads(),
          "omp_env": {k: v for k, v in os.environ.items() if k.startswith("OMP_")}},
      "results": results,
  }
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(report, f, indent=2)
  print(f"wrote {args.out}")
  return report


def cpu_model():
  """The CPU's model name (/proc/cpuinfo), else platform.processor()."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


if __name__ == "__main__":
  main()
