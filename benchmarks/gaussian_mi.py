"""MI estimates of every bound in mi_contrast.bounds on correlated Gaussians (known true MI).

Command:  python benchmarks/gaussian_mi.py            (defaults: 3 seeds, 2000 steps per level)
Runtime:  about 5 minutes on 2 CPU cores with the defaults (wall_seconds in the JSON).
Writes:   benchmarks/results/gaussian_mi.json and benchmarks/results/gaussian_mi.png
Expected (3 seeds, defaults): InfoNCE stays below min(true MI, log(K+1) = log 128 = 4.85):
          1.6, 3.1, 4.1, 4.5, 4.7 nats for I = 2..10, seed std <= 0.02. NWJ, TUBA and JS
          (NWJ of the JS critic) pass the cap but lag the truth at I >= 6 with large variance
          and occasional drops; the interpolated bound (alpha = 0.01) is the closest smooth
          estimate (about 7.6 at I = 10); DV, trained on its own minibatch estimate,
          overshoots from I = 4 and diverges. The ring saturates at its own cap
          log(1 + kept) = log 58 = 4.06; at I = 2 and 4 it reads about 0.3 nats ABOVE InfoNCE
          (and above the InfoNCE of its own critic), so "ring <= InfoNCE" does not hold there.

Setup (Poole et al. 2019, "On Variational Bounds of Mutual Information"):
x, y in R^d, d = 20, y = rho x + sqrt(1 - rho^2) eps with x, eps ~ N(0, I), so the true MI is
I = -d/2 log(1 - rho^2). As in that paper, rho steps up so that I = 2, 4, 6, 8, 10 nats, each
level held for --steps_per_level steps, and the critic is warm-started across levels. A
separable critic f(x, y) = g(x) . h(y) (two ReLU MLPs) is trained with Adam (lr 5e-4, batch
128) on each bound; the B x B score matrix gives each example its positive (diagonal) and
K = B - 1 in-batch negatives (its row). The estimate at a level is the mean of the per-step
training estimates over the last --average_last steps of that level. Seeds train at once
under jax.vmap.

Estimators (per example, averaged over the batch):
  infonce       bounds.infonce, cap log(K + 1).
  ring          bounds.infonce with a mask keeping the negatives whose critic-score quantile
                within the row lies in [0.5, 0.95] (the SimCLR ring of docs/method.md, "SimCLR":
                rho_out = 0.5, rho_in = 0.1); trained and evaluated with that bound. The
                InfoNCE value of every critic is recorded too, so the ring can be compared with
                InfoNCE on the same critic.
  nwj, dv       bounds.nwj, bounds.dv.
  tuba          bounds.tuba with a learned baseline log a(x) (a small MLP on x).
  js            critic trained with bounds.js; estimate bounds.nwj(f + 1) of that critic.
  interpolated  bounds.interpolated_infonce, alpha = 0.01, learned baseline log a(x).
"""

import argparse
import functools
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mi_contrast import bounds  # noqa: E402  (path set above so the script runs from anywhere)

DIM = 20
TRUE_MIS = (2.0, 4.0, 6.0, 8.0, 10.0)
BOUNDS = ("infonce", "ring", "nwj", "dv", "tuba", "js", "interpolated")
RING_BAND = (0.5, 0.95)
INTERPOLATION_ALPHA = 0.01
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def rho_for_mi(mi, dim=DIM):
  """Componentwise correlation giving total MI `mi` nats: I = -dim/2 log(1 - rho^2)."""
  return float(np.sqrt(1.0 - np.exp(-2.0 * mi / dim)))


def sample_pair(rng, rho, batch, dim=DIM):
  kx, ke = jax.random.split(rng)
  x = jax.random.normal(kx, (batch, dim))
  eps = jax.random.normal(ke, (batch, dim))
  return x, rho * x + jnp.sqrt(1.0 - rho**2) * eps


class MLP(nn.Module):
  hidden: int
  out: int
  layers: int = 2

  @nn.compact
  def __call__(self, x):
    for _ in range(self.layers):
      x = nn.relu(nn.Dense(self.hidden)(x))
    return nn.Dense(self.out)(x)


class SeparableCritic(nn.Module):
  """f(x, y) = g(x) . h(y) for all pairs, plus a learned log-baseline log a(x)."""
  hidden: int
  embed: int

  @nn.compact
  def __call__(self, x, y):
    scores = MLP(self.hidden, self.embed)(x) @ MLP(self.hidden, self.embed)(y).T
    log_baseline = MLP(self.hidden // 2, 1, layers=1)(x)[:, 0]
    return scores, log_baseline


def ring_mask(neg, lower, upper):
  """Keeps negatives whose score quantile within the row lies in [lower, upper].

  Quantile of the j-th smallest of K scores = j / (K - 1) (0 = least similar, 1 = most).
  Rows are tiny here (K = B - 1), so ranks come from a K x K comparison per row, which is
  much cheaper than a sort on the CPU. Ties are broken by position, as a stable argsort
  would, so equal scores (a collapsed critic) still give a band of the requested size.
  """
  k = neg.shape[-1]
  a, b = neg[..., None, :], neg[..., :, None]  # [..., j, i] compares neg_i with neg_j
  before = jnp.arange(k)[None, :] < jnp.arange(k)[:, None]  # [j, i]: i < j
  ranks = jnp.sum((a < b) | ((a == b) & before), axis=-1)
  quantile = ranks.astype(jnp.float32) / max(k - 1, 1)
  return (quantile >= lower) & (quantile <= upper)


def split_scores(scores):
  """[B, B] score matrix -> positives [B] (diagonal), negatives [B, B - 1] (off-diagonal)."""
  b = scores.shape[0]
  off_diagonal = ~np.eye(b, dtype=bool)
  neg = scores[off_diagonal].reshape(b, b - 1)
  return jnp.diagonal(scores), neg


def objective_and_estimate(name, scores, log_baseline):
  """(training objective, MI estimate, InfoNCE of the same critic), batch means in nats."""
  pos, neg = split_scores(scores)
  infonce = bounds.infonce(pos, neg).mean()
  if name == "infonce":
    value = bounds.infonce(pos, neg)
  elif name == "ring":
    mask = jax.lax.stop_gradient(ring_mask(neg, *RING_BAND))
    value = bounds.infonce(pos, neg, mask)
  elif name == "nwj":
    value = bounds.nwj(pos, neg)
  elif name == "dv":
    value = bounds.dv(pos, neg)
  elif name == "tuba":
    value = bounds.tuba(pos, neg, log_baseline)
  elif name == "js":
    estimate = bounds.nwj(pos + 1.0, neg + 1.0).mean()
    return bounds.js(pos, neg).mean(), estimate, infonce
  elif name == "interpolated":
    value = bounds.interpolated_infonce(pos, neg, INTERPOLATION_ALPHA, log_baseline)
  else:
    raise ValueError(f"bound must be one of {BOUNDS}, got {name!r}")
  return value.mean(), value.mean(), infonce


@functools.partial(jax.jit, static_argnames=("name", "steps_per_level", "batch", "hidden",
                                             "embed", "lr"))
def train_runs(name, rho_levels, seeds, *, steps_per_level, batch, hidden, embed, lr):
  """Trains one critic per seed through the staircase of correlations `rho_levels`.

  The correlation steps up every `steps_per_level` steps (the critic is warm-started from the
  previous level, as in Poole et al. 2019). Returns per-step (estimate, InfoNCE of the same
  critic), each [seeds, levels * steps_per_level].
  """
  critic = SeparableCritic(hidden, embed)
  tx = optax.adam(lr)
  total = rho_levels.shape[0] * steps_per_level

  def one_run(seed):
    root = jax.random.PRNGKey(seed)
    x0, y0 = sample_pair(root, rho_levels[0], batch)
    params = critic.init(jax.random.fold_in(root, 1), x0, y0)
    opt_state = tx.init(params)

    def step(carry, t):
      params, opt_state = carry
      rho = rho_levels[t // steps_per_level]
      x, y = sample_pair(jax.random.fold_in(jax.random.fold_in(root, 2), t), rho, batch)

      def loss_fn(p):
        scores, log_baseline = critic.apply(p, x, y)
        objective, estimate, infonce = objective_and_estimate(name, scores, log_baseline)
        return -objective, (estimate, infonce)

      (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), aux

    _, traces = jax.lax.scan(step, (params, opt_state), jnp.arange(total))
    return traces

  return jax.vmap(one_run)(seeds)


def run(bound_names=BOUNDS, true_mis=TRUE_MIS, num_seeds=3, steps_per_level=2000, batch=128,
        hidden=64, embed=32, lr=5e-4, average_last=500, log=print):
  """Trains every bound; per bound returns

  "estimates": [levels, seeds] mean estimate over the last `average_last` steps of each level,
  "critic_infonce": the same for the InfoNCE value of that bound's critic,
  "traces": [seeds, levels * steps_per_level] per-step estimates.
  """
  rho_levels = jnp.asarray([rho_for_mi(m) for m in true_mis], jnp.float32)
  seeds = jnp.arange(num_seeds, dtype=jnp.int32)
  average_last = min(average_last, steps_per_level)
  levels = len(true_mis)

  def per_level(traces):
    by_level = traces.reshape(num_seeds, levels, steps_per_level)
    return by_level[..., -average_last:].mean(-1).T

  out = {}
  for name in bound_names:
    start = time.time()
    estimates, infonce = jax.device_get(train_runs(
        name, rho_levels, seeds, steps_per_level=steps_per_level, batch=batch, hidden=hidden,
        embed=embed, lr=lr))
    out[name] = {"estimates": per_level(np.asarray(estimates)),
                 "critic_infonce": per_level(np.asarray(infonce)),
                 "traces": np.asarray(estimates),
                 "seconds": time.time() - start}
    log(f"{name:>12}: {time.time() - start:6.1f} s  estimates (seed mean) "
        + " ".join(f"{v:8.2f}" for v in out[name]["estimates"].mean(-1)))
  return out


def summarise(results, true_mis, batch, steps_per_level, num_seeds, average_last):
  cap = float(np.log(batch))  # K = batch - 1 negatives: log(K + 1)
  table = {}
  for name, r in results.items():
    table[name] = {
        f"{mi:g}": {"mean": float(r["estimates"][i].mean()),
                    "std": float(r["estimates"][i].std(ddof=1)) if num_seeds > 1 else 0.0,
                    "per_seed": [float(v) for v in r["estimates"][i]]}
        for i, mi in enumerate(true_mis)}
  summary = {
      "setup": {"dim": DIM, "batch": batch, "negatives_per_example": batch - 1,
                "steps_per_level": steps_per_level, "seeds": num_seeds,
                "average_last": average_last, "critic": "separable MLP g(x).h(y)",
                "protocol": "staircase of true MI, critic warm-started across levels",
                "ring_band_quantiles": list(RING_BAND),
                "interpolation_alpha": INTERPOLATION_ALPHA,
                "js_estimate": "nwj(f + 1) of the js-trained critic",
                "seconds_per_bound": {n: round(r["seconds"], 1) for n, r in results.items()}},
      "true_mi": [float(m) for m in true_mis],
      "log_k_plus_1": cap,
      "bounds": table,
      "infonce_of_each_critic": {
          name: {f"{mi:g}": float(r["critic_infonce"][i].mean())
                 for i, mi in enumerate(true_mis)} for name, r in results.items()},
  }
  checks = {}
  if "infonce" in results:
    est = results["infonce"]["estimates"].mean(-1)
    checks["infonce_below_min_truth_cap_plus_0.1"] = {
        f"{mi:g}": bool(e <= min(mi, cap) + 0.1) for mi, e in zip(true_mis, est)}
  if "infonce" in results and "ring" in results:
    ring, nce = results["ring"]["estimates"], results["infonce"]["estimates"]
    checks["ring_at_most_infonce_plus_0.05"] = {
        f"{mi:g}": bool(r <= n + 0.05) for mi, r, n in zip(true_mis, ring.mean(-1),
                                                             nce.mean(-1))}
    checks["ring_at_most_infonce_same_critic"] = {
        f"{mi:g}": bool(r <= n) for mi, r, n in zip(
            true_mis, ring.mean(-1), results["ring"]["critic_infonce"].mean(-1))}
    if num_seeds > 1:
      ratio = ring.var(-1, ddof=1) / np.maximum(nce.var(-1, ddof=1), 1e-12)
      summary["ring_over_infonce_seed_variance"] = {
          f"{mi:g}": float(v) for mi, v in zip(true_mis, ratio)}
  summary["checks"] = checks
  return summary


def plot(results, true_mis, cap, steps_per_level, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  names = list(results)
  cols = 4
  rows = -(-(len(names) + 1) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
  truth = np.repeat(true_mis, steps_per_level)
  ylim = (-1, max(true_mis) + 2)
  for ax, name in zip(axes.flat, names):
    traces = results[name]["traces"]  # [seeds, steps]
    window = max(1, steps_per_level // 40)
    for seed_trace in traces:
      smooth = np.convolve(seed_trace, np.ones(window) / window, mode="valid")
      ax.plot(np.arange(len(smooth)) + window - 1, np.clip(smooth, *ylim), lw=0.8, alpha=0.8)
    ax.plot(truth, "k-", lw=1, label="true MI")
    ax.axhline(cap, color="k", ls="--", lw=1, label="log(K+1)")
    ax.set_title(name)
    ax.set_ylim(*ylim)
    ax.set_xlabel("step")
    ax.set_ylabel("estimate (nats)")
  axes.flat[0].legend(fontsize=7, loc="upper left")
  ax = axes.flat[len(names)]
  for name in names:
    est = np.clip(results[name]["estimates"], *ylim)
    ax.errorbar(true_mis, est.mean(-1), yerr=est.std(-1), marker="o", ms=3, capsize=2,
                label=name)
  ax.plot(true_mis, true_mis, "k-", lw=1, label="true MI")
  ax.axhline(cap, color="k", ls="--", lw=1, label="log(K+1)")
  ax.set_ylim(*ylim)
  ax.set_xlabel("true MI (nats)")
  ax.set_ylabel("estimate (nats, clipped to the axes)")
  ax.set_title("end of each level, mean +- std (seeds)", fontsize=9)
  ax.legend(fontsize=6)
  for ax in list(axes.flat)[len(names) + 1:]:
    ax.axis("off")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps_per_level", type=int, default=2000)
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--hidden", type=int, default=64)
  parser.add_argument("--average_last", type=int, default=500)
  parser.add_argument("--bounds", default=",".join(BOUNDS))
  parser.add_argument("--out", default=RESULTS)
  args = parser.parse_args(argv)
  names = tuple(n for n in args.bounds.split(",") if n)
  unknown = set(names) - set(BOUNDS)
  if unknown:
    parser.error(f"--bounds must be a comma-separated subset of {BOUNDS}, got {sorted(unknown)}")
  if args.steps_per_level < 1 or args.seeds < 1 or args.batch < 3 or args.average_last < 1:
    parser.error("--steps_per_level, --seeds and --average_last must be >= 1, --batch >= 3")
  start = time.time()
  results = run(names, TRUE_MIS, args.seeds, args.steps_per_level, args.batch, args.hidden,
                average_last=args.average_last)
  summary = summarise(results, TRUE_MIS, args.batch, args.steps_per_level, args.seeds,
                      min(args.average_last, args.steps_per_level))
  summary["setup"]["hidden"] = args.hidden
  summary["setup"]["wall_seconds"] = round(time.time() - start, 1)
  summary["setup"]["devices"] = [str(d) for d in jax.devices()[:1]]
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "gaussian_mi.json"), "w") as f:
    json.dump(summary, f, indent=2)
  plot(results, TRUE_MIS, summary["log_k_plus_1"], args.steps_per_level,
       os.path.join(args.out, "gaussian_mi.png"))
  print(json.dumps({k: summary[k] for k in ("log_k_plus_1", "checks")}, indent=1))
  if "ring_over_infonce_seed_variance" in summary:
    print("ring / infonce variance across seeds:", summary["ring_over_infonce_seed_variance"])


if __name__ == "__main__":
  main()
