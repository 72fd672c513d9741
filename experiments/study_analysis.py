"""The negatives study's analysis: per-arm summaries, paired differences, tables and the plot.

`arm_summaries` and `paired` build the study JSON's `arms` and `paired` from its `runs`;
`table` is what `negatives_study.py --table` prints (and docs/results/negatives_study.md
shows); `pairs_table`, `false_negative_table` and `pixels_table` are further views of the same
JSON for that page. Optional per-run columns (EXTRA_COLUMNS: the bound of the arm's objective,
the clamped fraction of a debiased bound) appear only when some run of the study has them, so
records written before they existed give the same tables.

Reads JSON only: no jax (scipy for the t quantile, matplotlib for the plot, imported when
used).
"""

import math

import study_arms

METRICS = ("linear_top1", "knn_top1", "fewshot_10", "bound_nats", "log_k_plus_1",
           "false_negative_share")
PAIRED_METRICS = ("linear_top1", "knn_top1", "fewshot_10", "bound_nats", "false_negative_share")
# The bound a run record without a `bound` field has (the study's first arms all use it).
DEFAULT_BOUND = "infonce"
# The debiased bounds' share of anchors whose negative term is clamped at its floor, as the
# run's record holds it (the last logged value).
CLAMPED = "clamped_fraction"
# The share of the negative sum (sum_k w_k e_k) on the anchor's class, last logged value:
# the false-negative share weighted by what each negative contributes.
WEIGHT = "false_negative_weight"


# ----------------------------------------------------------------------------------------------
# Aggregates: per arm, paired differences.
# ----------------------------------------------------------------------------------------------

def mean_std(values):
  """(mean, sample std, n) of the values that are not None; std None for n < 2."""
  values = [v for v in values if v is not None]
  if not values:
    return None, None, 0
  mean = sum(values) / len(values)
  if len(values) < 2:
    return mean, None, len(values)
  var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
  return mean, math.sqrt(var), len(values)


def arm_summaries(runs):
  """{arm: seeds, mean, std, n and per-seed values of every METRICS entry}, in arm order."""
  order = study_arms.arm_order()
  out = {}
  for arm in order + sorted({r["arm"] for r in runs} - set(order)):
    rows = sorted((r for r in runs if r["arm"] == arm), key=lambda r: r["seed"])
    if not rows:
      continue
    summary = {"config": rows[0]["config"], "method": rows[0]["method"],
               "negatives": rows[0]["negatives"], "seeds": [r["seed"] for r in rows],
               "steps": rows[0]["steps"], "epochs": rows[0]["epochs"],
               "mean": {}, "std": {}, "n": {}, "per_seed": {}}
    for metric in METRICS:
      mean, std, n = mean_std([r[metric] for r in rows])
      summary["mean"][metric], summary["std"][metric], summary["n"][metric] = mean, std, n
      summary["per_seed"][metric] = {str(r["seed"]): r[metric] for r in rows}
    out[arm] = summary
  return out


def paired(runs, pairs=None):
  """Arm minus the arm it is compared with, on the seeds both have: by default
  study_arms.comparisons (ring minus uniform per method, IR ball and every variant minus its
  method's uniform arm); `pairs`, a list of (arm_a, arm_b), for any others."""
  by = {(r["arm"], r["seed"]): r for r in runs}
  out = []
  for arm_a, arm_b in study_arms.comparisons(runs) if pairs is None else pairs:
    seeds = sorted(s for (arm, s) in by if arm == arm_a and (arm_b, s) in by)
    if not seeds:
      continue
    first = by[(arm_a, seeds[0])]
    method, negatives = first["method"], first["negatives"]
    other = by[(arm_b, seeds[0])]["negatives"]
    plain = arm_a == f"{method}_{negatives}" and arm_b == f"{method}_{other}"
    entry = {"method": method, "a": negatives, "b": other, "seeds": seeds,
             "arm_a": arm_a, "arm_b": arm_b,
             "label": (f"{method}: {negatives} - {other}" if plain else f"{arm_a} - {arm_b}")}
    for metric in PAIRED_METRICS:
      diffs = []
      for s in seeds:
        a, b = by[(arm_a, s)].get(metric), by[(arm_b, s)].get(metric)
        diffs.append(None if a is None or b is None else a - b)
      mean, std, n = mean_std(diffs)
      entry[metric] = {"diffs": diffs, "mean": mean, "std": std, "n": n,
                       "se": std / math.sqrt(n) if std is not None else None}
    out.append(entry)
  return out


# ----------------------------------------------------------------------------------------------
# Tables (markdown).
# ----------------------------------------------------------------------------------------------

def _pm(mean, spread, digits=3, sign=False):
  if mean is None:
    return "-"
  mean = round(mean, digits) + 0.0   # no "-0.000"
  text = f"{mean:+.{digits}f}" if sign else f"{mean:.{digits}f}"
  return text + (f" ± {spread:.{digits}f}" if spread is not None else "")


def t_interval(difference):
  """'[low, high]': mean ± t(0.975, n - 1) x standard error of one paired metric; '-' when
  there is no spread (n < 2)."""
  import scipy.stats   # scikit-learn's dependency
  m, se, n = difference["mean"], difference["se"], difference["n"]
  if m is None or se is None:
    return "-"
  half = scipy.stats.t.ppf(0.975, n - 1) * se
  return f"[{m - half:+.3f}, {m + half:+.3f}]"


def extra_columns(study):
  """[(header, {arm: cell})] of the optional per-arm columns this study has: `bound` when its
  arms' bounds differ (a record without one is DEFAULT_BOUND's), the clamped fraction and the
  false-negative weight when a run has one."""
  runs = study.get("runs", [])
  columns = []
  bounds = {r["arm"]: r.get("bound") or DEFAULT_BOUND for r in runs}
  if len(set(bounds.values())) > 1:
    columns.append(("bound", bounds))
  for key, title in ((CLAMPED, "clamped fraction"), (WEIGHT, "false-negative weight")):
    if any(r.get(key) is not None for r in runs):
      cells = {arm: _pm(mean_std([r.get(key) for r in runs if r["arm"] == arm])[0], None)
               for arm in {r["arm"] for r in runs}}
      columns.append((title, cells))
  return columns


def arms_table(study):
  """Per arm: mean ± std over seeds of the probes, the bound against its cap, the
  false-negative share and minutes per run (and EXTRA columns when the study has them)."""
  runs = study.get("runs", [])
  extra = extra_columns(study)
  lines = ["| arm | seeds | " + "".join(f"{h} | " for h, _ in extra) + "linear | kNN | 10-shot"
           " | bound / cap (nats) | false-negative share | minutes per run |",
           "|---|---|---|---|---|---|---|---|" + "---|" * len(extra)]
  arms = study.get("arms", {})
  order = study_arms.arm_order()
  for arm in [a for a in order if a in arms] + sorted(set(arms) - set(order)):
    s = arms[arm]
    mean, std = s["mean"], s["std"]
    minutes = mean_std([r.get("wall_seconds") for r in runs if r["arm"] == arm])[0]
    bound = ("-" if None in (mean.get("bound_nats"), mean.get("log_k_plus_1")) else
             f"{mean['bound_nats']:.2f} / {mean['log_k_plus_1']:.2f}")
    lines.append(
        f"| {arm} | {','.join(map(str, s['seeds']))} | "
        + "".join(f"{cells.get(arm, '-')} | " for _, cells in extra)
        + " | ".join(_pm(mean[m], std[m]) for m in ("linear_top1", "knn_top1", "fewshot_10"))
        + f" | {bound} | {_pm(mean['false_negative_share'], None)} | "
        + (f"{minutes / 60:.0f}" if minutes is not None else "-") + " |")
  return lines


def pairs_table(entries):
  """Per paired comparison: the mean difference ± its standard error, the seeds on which it is
  positive, and the 95% t-intervals of linear and 10-shot."""
  lines = ["| difference (same seeds) | seeds | linear | kNN | 10-shot | "
           "false-negative share | seeds where it is > 0 (linear / kNN / 10-shot) | "
           "95% t-interval, linear / 10-shot |", "|---|---|---|---|---|---|---|---|"]
  for p in entries:
    def positive(metric):
      return sum(1 for d in p[metric]["diffs"] if d is not None and d > 0)

    lines.append(
        f"| {p['label']} | {','.join(map(str, p['seeds']))} | "
        + " | ".join(_pm(p[m]["mean"], p[m]["se"], sign=True)
                     for m in ("linear_top1", "knn_top1", "fewshot_10", "false_negative_share"))
        + f" | {positive('linear_top1')} / {positive('knn_top1')} / {positive('fewshot_10')}"
        f" of {len(p['seeds'])} | {t_interval(p['linear_top1'])} / "
        f"{t_interval(p['fewshot_10'])} |")
  return lines


def per_seed_table(entries):
  """Per paired comparison, each seed's difference (in the order of its seeds) of linear, kNN
  and 10-shot."""
  lines = ["| difference | seeds | linear, per seed | kNN, per seed | 10-shot, per seed |",
           "|---|---|---|---|---|"]
  for p in entries:
    lines.append(f"| {p['label']} | {' / '.join(map(str, p['seeds']))} | " + " | ".join(
        " / ".join(_pm(d, None, sign=True) for d in p[m]["diffs"])
        for m in ("linear_top1", "knn_top1", "fewshot_10")) + " |")
  return "\n".join(lines)


def table(study):
  """The study's JSON as two markdown tables: per arm, mean ± std over seeds; per comparison,
  the mean paired difference ± its standard error, and on how many seeds the difference is
  positive."""
  chance = study.get("false_negative_chance")
  lines = arms_table(study) + [""] + pairs_table(study.get("paired", []))
  lines += ["", "Arms: mean ± std over seeds. Differences: mean ± standard error of the paired "
            "differences (std / sqrt(seeds)); the interval is mean ± t(0.975, seeds - 1) x "
            "standard error."
            + (f" False-negative share at chance: {chance:.3f}." if chance else "")]
  return "\n".join(lines)


def false_negative_table(study):
  """Per ring or ball run: the false-negative share at the end of annealing (the first logged
  step at or after it) and at the last logged step."""
  lines = ["| arm | seed | end of annealing: step | share | last logged step | share |",
           "|---|---|---|---|---|---|"]
  for run in study.get("runs", []):
    series = run.get("false_negative_series") or []
    if run.get("negatives") == "uniform" or not series:
      continue
    last_step, last_share = series[-1]
    lines.append(f"| {run['arm']} | {run['seed']} | {run['false_negative_share_step']:,} | "
                 f"{_pm(run['false_negative_share'], None)} | {last_step:,} | "
                 f"{_pm(last_share, None)} |")
  chance = study.get("false_negative_chance")
  if chance is not None:
    lines += ["", f"Chance (uniform draws from the training images): {chance:.3f}."]
  return "\n".join(lines)


def pixels_table(study):
  """The raw pixels under the same probes, on the same test split (mean over the runs, which
  all probe the same images)."""
  runs = study.get("runs", [])
  cells = []
  for key in ("raw_pixels_linear_top1", "raw_pixels_fewshot_10"):
    mean, _, n = mean_std([r.get(key) for r in runs])
    cells.append(_pm(mean, None) if n else "-")
  return "\n".join(["| raw pixels | linear | 10-shot |", "|---|---|---|",
                    f"| {study.get('dataset')}, {study.get('eval_split')} split | "
                    + " | ".join(cells) + " |"])


# ----------------------------------------------------------------------------------------------
# The plot.
# ----------------------------------------------------------------------------------------------

def _accuracy_panel(axis, study):
  arms = study["arms"]
  names = list(arms)
  metrics = (("linear_top1", "linear"), ("knn_top1", "kNN"), ("fewshot_10", "10-shot"))
  width = 0.8 / len(metrics)
  for j, (metric, label) in enumerate(metrics):
    xs = [i + (j - 1) * width for i in range(len(names))]
    means = [arms[a]["mean"][metric] or 0.0 for a in names]
    errs = [arms[a]["std"][metric] or 0.0 for a in names]
    axis.bar(xs, means, width, yerr=errs, capsize=3, label=label)
    for x, a in zip(xs, names):
      seeds = [v for v in arms[a]["per_seed"][metric].values() if v is not None]
      axis.plot([x] * len(seeds), seeds, "k.", markersize=3)
  pixels = [r["raw_pixels_linear_top1"] for r in study["runs"]
            if r.get("raw_pixels_linear_top1") is not None]
  if pixels:
    axis.axhline(sum(pixels) / len(pixels), color="grey", linestyle="--", linewidth=1,
                 label="raw pixels, linear")
  axis.set_xticks(range(len(names)))
  axis.set_xticklabels(names, rotation=30, ha="right")
  values = [v for a in names for m, _ in metrics
            for v in arms[a]["per_seed"][m].values() if v is not None]
  if values:
    axis.set_ylim(max(0.0, min(values) - 0.05), min(1.0, max(values) + 0.03))
  axis.set_ylabel("test top-1")
  axis.set_title(f"{study['dataset']}, {study['budget']['epochs']} epochs: mean +- std over "
                 "seeds (dots: seeds)", fontsize=9)
  axis.legend(fontsize=8)


def _false_negative_panel(axis, study, colours):
  arms = study["arms"]
  plotted = False
  for k, arm in enumerate(a for a in arms if arms[a]["negatives"] != "uniform"):
    for n, run in enumerate(r for r in study["runs"] if r["arm"] == arm):
      if run["false_negative_series"]:
        steps, share = zip(*run["false_negative_series"])
        axis.plot(steps, share, color=colours[k % len(colours)], alpha=0.8,
                  label=arm if n == 0 else None)
        plotted = True
  chance = study.get("false_negative_chance")
  if chance is not None:
    axis.axhline(chance, color="grey", linestyle="--", label="chance (uniform draws)")
  if study["runs"]:
    axis.axvline(study["runs"][0]["anneal_end_step"], color="grey", linestyle=":",
                 label="end of annealing")
  axis.set_xlabel("training step")
  axis.set_ylabel("false-negative share")
  axis.set_title("ring and ball arms: share of negatives with the anchor's class", fontsize=9)
  if not plotted:
    axis.text(0.5, 0.5, "false_negative_share not logged by these runs",
              transform=axis.transAxes, ha="center", va="center")
  axis.legend(fontsize=8)


def plot(study, path):
  """The PNG: accuracy per arm with seed error bars (left), the false-negative share against
  training step for the ring and ball arms (right)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
  _accuracy_panel(left, study)
  _false_negative_panel(right, study, plt.rcParams["axes.prop_cycle"].by_key()["color"])
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
