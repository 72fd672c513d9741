"""How far the sampled band (candidates = M) drifts from the exact band over the whole pool.

The sampled form of ``negatives.band_negatives`` ranks a random subset of M pool rows instead
of the whole pool, so its band edges are quantile estimates. For a clustered bank of unit
vectors (realistic similarities: anchors are noisy views of bank rows, the bank has many
clusters) and a batch of anchors, this reports as a function of M:

  * quantile error: the true pool quantile of the sampled band's edge similarities against the
    requested ``lower`` / ``upper`` (mean over anchors of |error|), next to the binomial
    standard error sqrt(q (1 - q) / M) expected of an M-sample quantile;
  * inside: the fraction of negatives drawn by ``band_negatives(candidates=M)`` that lie in
    the exact band over the whole pool.

Usage (from the repository root):
  python benchmarks/band_drift.py [--bank 1281167 | --small] [--candidates 4096,16384,...]
Writes benchmarks/results/band_drift.json.
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

from mi_contrast import negatives  # noqa: E402  (the repository is on sys.path now)

TEMPERATURE = 0.07


def normalise(v):
  return v / jnp.linalg.norm(v, axis=-1, keepdims=True)


def clustered_bank(rng, size, dim, clusters, spread, chunk=1 << 17):
  """Unit rows around `clusters` random unit centres; built in chunks to bound memory."""
  k_centres, k_rows = jax.random.split(rng)
  centres = normalise(jax.random.normal(k_centres, (clusters, dim)))

  @jax.jit
  def make(key):
    k_label, k_noise = jax.random.split(key)
    label = jax.random.randint(k_label, (chunk,), 0, clusters)
    noise = normalise(jax.random.normal(k_noise, (chunk, dim)))
    return normalise(centres[label] + spread * noise)

  parts = [make(jax.random.fold_in(k_rows, i)) for i in range(-(-size // chunk))]
  return jnp.concatenate(parts)[:size]


@jax.jit
def count_ge(sims, values):
  return jnp.sum(sims >= values[:, None], axis=1)


@jax.jit
def count_gt(sims, values):
  return jnp.sum(sims > values[:, None], axis=1)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--bank", type=int, default=1281167)
  parser.add_argument("--small", action="store_true", help="a 200,000-row bank")
  parser.add_argument("--batch", type=int, default=256)
  parser.add_argument("--dim", type=int, default=128)
  parser.add_argument("--clusters", type=int, default=1000)
  parser.add_argument("--spread", type=float, default=1.0,
                      help="noise norm around a centre (1.0: cosine to the centre ~0.7)")
  parser.add_argument("--view-noise", type=float, default=0.3,
                      help="noise norm of an anchor around its bank row")
  parser.add_argument("--outer", type=float, default=0.1)
  parser.add_argument("--inner", type=float, default=0.1)
  parser.add_argument("--num", type=int, default=4095, help="negatives drawn per anchor")
  parser.add_argument("--candidates", default="4096,16384,65536,262144")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results",
                                                    "band_drift.json"))
  args = parser.parse_args()
  size = 200000 if args.small else args.bank
  candidates = [int(m) for m in args.candidates.split(",") if m]
  if any(m <= 0 for m in candidates):
    parser.error("--candidates: positive integers")

  rng = jax.random.PRNGKey(args.seed)
  k_bank, k_anchor, k_noise, k_draw = jax.random.split(rng, 4)
  t0 = time.perf_counter()
  bank = clustered_bank(k_bank, size, args.dim, args.clusters, args.spread)
  rows = jax.random.randint(k_anchor, (args.batch,), 0, size)
  anchors = normalise(bank[rows] + args.view_noise
                      * normalise(jax.random.normal(k_noise, (args.batch, args.dim))))
  lower, upper = negatives.fractions_to_quantiles(args.outer, args.inner)
  start, end = (int(v) for v in negatives.band_bounds(size, lower, upper))

  # Exact band over the whole pool: its edge values per anchor.
  sims = anchors @ bank.T / TEMPERATURE
  exact_low, exact_high = jax.block_until_ready(negatives.band_thresholds(sims, lower, upper))
  print(f"bank {size} x {args.dim}, exact band ranks [{start}, {end}) "
        f"({time.perf_counter() - t0:.1f} s to build and select)", flush=True)

  def pool_quantiles(low, high):
    # Quantile of the band's bottom edge: 1 - #{s >= low} / P (the exact band gives `lower`);
    # of its top edge: 1 - #{s > high} / P (the exact band gives `upper`).
    q_low = 1.0 - np.asarray(count_ge(sims, low)) / size
    q_high = 1.0 - np.asarray(count_gt(sims, high)) / size
    return q_low, q_high

  q_low, q_high = pool_quantiles(exact_low, exact_high)
  rows_out = [{"candidates": "exact", "mean_abs_quantile_error_lower":
               float(np.mean(np.abs(q_low - lower))), "mean_abs_quantile_error_upper":
               float(np.mean(np.abs(q_high - upper))), "inside_exact_band": 1.0}]

  sample = jax.jit(lambda key, m: jax.random.randint(key, (m,), 0, size), static_argnums=1)
  for m in candidates:
    t1 = time.perf_counter()
    # Edges of a sampled band: the same estimator band_negatives uses (M rows drawn uniformly
    # with replacement, band over their scores).
    cand = sample(jax.random.fold_in(k_draw, m), m)
    low, high = negatives.band_thresholds(anchors @ bank[cand].T / TEMPERATURE, lower, upper)
    q_low, q_high = pool_quantiles(low, high)
    # Negatives actually drawn by band_negatives with M candidates.
    scores, _ = negatives.band_negatives(jax.random.fold_in(k_draw, m + 1), anchors, bank,
                                         lower, upper, args.num, temperature=TEMPERATURE,
                                         candidates=m)
    inside = (scores >= exact_low[:, None]) & (scores <= exact_high[:, None])
    row = {
        "candidates": m,
        "mean_abs_quantile_error_lower": float(np.mean(np.abs(q_low - lower))),
        "mean_abs_quantile_error_upper": float(np.mean(np.abs(q_high - upper))),
        "binomial_se_lower": float(np.sqrt(lower * (1 - lower) / m)),
        "binomial_se_upper": float(np.sqrt(upper * (1 - upper) / m)),
        "mean_quantile_bias_lower": float(np.mean(q_low - lower)),
        "mean_quantile_bias_upper": float(np.mean(q_high - upper)),
        "inside_exact_band": float(jnp.mean(inside)),
        "seconds": round(time.perf_counter() - t1, 2),
    }
    rows_out.append(row)
    print(json.dumps(row), flush=True)

  report = {
      "benchmark": "band_drift",
      "bank": size, "dim": args.dim, "clusters": args.clusters, "spread": args.spread,
      "view_noise": args.view_noise, "batch": args.batch, "temperature": TEMPERATURE,
      "outer": args.outer, "inner": args.inner, "lower": lower, "upper": upper,
      "exact_band_ranks": [start, end], "negatives_per_anchor": args.num, "seed": args.seed,
      "candidate_sampling": "uniform with replacement, shared by the batch",
      "machine": {"processor": platform.processor() or platform.machine(),
                  "cpu_count": os.cpu_count()},
      "results": rows_out,
  }
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(report, f, indent=2)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
