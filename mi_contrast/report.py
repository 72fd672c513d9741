"""Plots and a summary of a run: python -m mi_contrast.report --workdir=<run>

Reads <run>/metrics.jsonl (one {"step", scalar...} record per write), results.json and
config.json, and writes next to them:
  loss.png   the training loss (-mean bound value) per step
  bound.png  the bound in nats against its cap log(K + 1)
  knn.png    weighted kNN and 1-NN top-1 accuracy over training
  band.png   the negatives' similarity band [lower, upper] (quantiles) over training
  false_negatives.png  the share of drawn negatives of the anchor's class over training
             (`false_negative_share`; only for runs that logged it: labelled data)
  report.md  the final numbers (with the few-shot probes' table), the plots, the configuration
             as command-line overrides
Needs matplotlib (the Agg backend: no display), not TensorFlow.
"""

import json
import math
import os
import shlex

from absl import app
from absl import flags
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mi_contrast import writers

FLAGS = flags.FLAGS

PLOTS = ("loss.png", "bound.png", "knn.png", "band.png")
# Written too when metrics.jsonl holds the false-negative diagnostic (runs with labels).
FALSE_NEGATIVES_PLOT = "false_negatives.png"

# results.json fields shown in the table, in order: (key, label, kind).
_RESULT_ROWS = (
    ("knn_top1", "kNN top-1 (weighted)", "accuracy"),
    ("raw_pixels_knn_top1", "kNN top-1 (weighted) on raw pixels", "accuracy"),
    ("nn1_top1", "1-NN top-1", "accuracy"),
    ("linear_top1", "linear probe top-1", "accuracy"),
    ("linear_top5", "linear probe top-5", "accuracy"),
    ("raw_pixels_linear_top1", "linear probe on raw pixels, top-1", "accuracy"),
    ("random_init_knn_top1", "untrained network: kNN top-1", "accuracy"),
    ("random_init_nn1_top1", "untrained network: 1-NN top-1", "accuracy"),
    ("random_init_linear_top1", "untrained network: linear top-1", "accuracy"),
    ("bound_nats", "bound (nats), last logged step", "number"),
    ("log_k_plus_1", "cap log(K+1) (nats)", "number"),
    ("loss", "loss, last logged step", "number"),
    ("band_start", "band [lower, upper] at the start", "pair"),
    ("band_end", "band [lower, upper] at the end", "pair"),
    ("steps", "steps", "integer"),
    ("resumed_from_step", "resumed from step", "integer"),
    ("num_devices", "devices", "integer"),
    ("num_train", "training images", "integer"),
    ("num_test", "test images", "integer"),
    ("wall_seconds", "wall time (s)", "seconds"),
    ("params_sha256", "parameters sha256", "text"),
)
_RUN_FIELDS = ("dataset", "method", "negatives", "bound")
# Columns of the few-shot table: (key of results.json's fewshot[n], header).
_FEWSHOT_COLUMNS = (("trained", "trained"), ("random_init", "untrained"),
                    ("raw_pixels", "raw pixels"))


def series(records, key):
  """(steps, values) of `key`, sorted by step; a step logged twice keeps its last value.

  A resumed run logs again the steps between its last checkpoint and the interruption.
  """
  by_step = {}
  for record in records:
    if key in record and record[key] is not None:
      by_step[int(record["step"])] = float(record[key])
  steps = sorted(by_step)
  return steps, [by_step[s] for s in steps]


def _figure(title, ylabel):
  fig = Figure(figsize=(6.4, 4.0), dpi=100)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 1, 1)
  ax.set_title(title)
  ax.set_xlabel("step")
  ax.set_ylabel(ylabel)
  ax.grid(True, alpha=0.3)
  return fig, ax


def _finish(fig, ax, path, plotted):
  if plotted:
    ax.legend(loc="best")
  else:
    ax.text(0.5, 0.5, "no records in metrics.jsonl", ha="center", va="center",
            transform=ax.transAxes)
  fig.tight_layout()
  fig.savefig(path, format="png")


def _plot_lines(path, title, ylabel, records, lines, *, ylim=None, references=()):
  """One figure of `lines` = [(key, label, style kwargs)] and horizontal `references`
  = [(value, label)]; returns whether any line had data."""
  fig, ax = _figure(title, ylabel)
  plotted = False
  for key, label, style in lines:
    steps, values = series(records, key)
    if steps:
      ax.plot(steps, values, label=label, **style)
      plotted = True
  for value, label in references:
    ax.axhline(value, linestyle=":", color="gray", label=label)
  if ylim is not None:
    ax.set_ylim(*ylim)
  _finish(fig, ax, path, plotted)
  return plotted


def _plot_band(path, records):
  fig, ax = _figure("Negatives' similarity band (quantiles of the pool)", "quantile")
  lower_steps, lower = series(records, "band_lower")
  upper_steps, upper = series(records, "band_upper")
  plotted = False
  if lower_steps and lower_steps == upper_steps:
    ax.fill_between(lower_steps, lower, upper, alpha=0.25, label="band")
  for steps, values, label in ((lower_steps, lower, "lower"), (upper_steps, upper, "upper")):
    if steps:
      ax.plot(steps, values, label=label)
      plotted = True
  outer_steps, outer = series(records, "ring_outer")
  if outer_steps:
    ax.plot(outer_steps, outer, linestyle=":", label="ring outer fraction")
    plotted = True
  ax.set_ylim(-0.02, 1.02)
  _finish(fig, ax, path, plotted)


def write_plots(workdir, records, results=None):
  """The four PNGs of PLOTS, from metrics.jsonl records (and results.json's reference)."""
  results = results or {}
  untrained = results.get("random_init_knn_top1")
  path = lambda name: os.path.join(workdir, name)
  _plot_lines(path("loss.png"), "Training loss", "loss (nats)", records,
              [("loss", "loss", {})])
  _plot_lines(path("bound.png"), "Mutual-information bound", "nats", records,
              [("bound_nats", "bound", {}),
               ("log_k_plus_1", "cap log(K+1)", {"linestyle": "--", "color": "black"})])
  _plot_lines(path("knn.png"), "Nearest-neighbour accuracy (test split)", "top-1 accuracy",
              records, [("knn_top1", "weighted kNN", {"marker": "o"}),
                        ("nn1_top1", "1-NN", {"marker": "s"})], ylim=(0.0, 1.0),
              references=[] if untrained is None else [(untrained, "untrained network, kNN")])
  _plot_band(path("band.png"), records)
  if false_negative_lines(records):
    _plot_lines(path(FALSE_NEGATIVES_PLOT), "False negatives: drawn negatives of the anchor's "
                "class", "share of the drawn negatives", records,
                [("false_negative_share", "false_negative_share", {})], ylim=(0.0, None))


def false_negative_lines(records):
  """report.md's sentence on the false-negative diagnostic (markdown lines), [] when
  metrics.jsonl does not hold it (data without labels)."""
  steps, values = series(records, "false_negative_share")
  logged = [(s, v) for s, v in zip(steps, values) if math.isfinite(v)]
  if not logged:
    return []
  (first_step, first), (last_step, last) = logged[0], logged[-1]
  return [f"False negatives (`false_negative_share`): {last:.4f} of the drawn negatives were "
          f"images of the anchor's class at step {last_step} ({first:.4f} at step "
          f"{first_step}; uniform draws give the chance level, about 1 / classes). Labels are "
          "used for this diagnostic only, never by the objective.", ""]


def _format(value, kind):
  if value is None:
    return "-"
  if kind == "accuracy":
    return f"{value:.4f} ({100 * value:.2f}%)"
  if kind == "number":
    return f"{value:.4f}"
  if kind == "pair":
    return "[" + ", ".join(f"{v:.4f}" for v in value) + "]"
  if kind == "integer":
    return str(int(value))
  if kind == "seconds":
    return f"{value:.1f}"
  return f"`{value}`"


def _shots_order(n):
  """Rows in increasing n ('1', '5', '10'), any non-integer key last."""
  try:
    return (0, int(n), "")
  except ValueError:
    return (1, 0, str(n))


def fewshot_lines(fewshot):
  """The few-shot probes' table (markdown lines): one row per n, mean ± std per network."""
  if not fewshot:
    return []
  lines = ["| images per class | " + " | ".join(h for _, h in _FEWSHOT_COLUMNS) + " |",
           "| --- |" + " --- |" * len(_FEWSHOT_COLUMNS)]
  for n in sorted(fewshot, key=_shots_order):
    cells = []
    for key, _ in _FEWSHOT_COLUMNS:
      stats = fewshot[n].get(key)
      cells.append("-" if stats is None else f"{stats['mean']:.4f} ± {stats['std']:.4f}")
    lines.append(f"| {n} | " + " | ".join(cells) + " |")
  return lines + [""]


_FEWSHOT_CAPTION = ("Few-shot linear probes: test top-1 of a probe trained on n labelled "
                    "training images per class, mean ± std over fixed draws (the same images "
                    "for every network).")


def _flag_value(value):
  if isinstance(value, str):
    return shlex.quote(value)
  if isinstance(value, float):
    return repr(value)
  return str(value)


def config_overrides(config):
  """(preset, ['--config.field=value' for every field that differs from the preset's default]).

  Together with `--config=configs/default.py:<preset>` they give the run's configuration. A
  config.json of an older version's layout gives this version's flags (config.upgrade_saved).
  """
  from mi_contrast import config as config_lib  # ml_collections only
  config = config_lib.upgrade_saved(config)
  preset = config.get("dataset") or "digits"
  try:
    default = json.loads(config_lib.default_config(preset).to_json())
  except ValueError:  # a preset this version does not know: every field differs
    default = {}

  def walk(saved, reference, prefix):
    for key in sorted(saved):
      value = saved[key]
      if isinstance(value, dict):
        yield from walk(value, reference.get(key) or {}, f"{prefix}{key}.")
      elif key not in reference or reference[key] != value:
        yield f"--config.{prefix}{key}={_flag_value(value)}"

  return preset, list(walk(config, default, ""))


def _read_json(path):
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def render_markdown(workdir, records, results, config, evaluation):
  """report.md's text."""
  lines = [f"# Run report: {os.path.basename(os.path.abspath(workdir))}", ""]
  source = results or config or {}
  summary = ", ".join(f"{k} `{source[k]}`" for k in _RUN_FIELDS if k in source)
  if summary:
    lines += [summary + ".", ""]
  steps, _ = series(records, "loss")
  lines += [f"{len(records)} metric records, training steps logged: "
            f"{steps[0] if steps else '-'} to {steps[-1] if steps else '-'}.", ""]

  lines += ["## Final numbers", ""]
  if results is None:
    lines += ["No results.json: the run has not finished (or was stopped early).", ""]
  else:
    lines += ["| metric | value |", "| --- | --- |"]
    shown = set(_RUN_FIELDS)
    for key, label, kind in _RESULT_ROWS:
      if key in results:
        lines.append(f"| {label} | {_format(results[key], kind)} |")
        shown.add(key)
    for key in sorted(set(results) - shown):
      value = results[key]
      if isinstance(value, (int, float)) and not isinstance(value, bool):
        kind = "integer" if isinstance(value, int) else "number"
        lines.append(f"| {key} | {_format(value, kind)} |")
    lines.append("")
    if results.get("fewshot"):
      lines += [_FEWSHOT_CAPTION, ""] + fewshot_lines(results["fewshot"])
    if "bound_nats" in results and "log_k_plus_1" in results:
      gap = results["log_k_plus_1"] - results["bound_nats"]
      lines += [f"The bound ends {gap:.4f} nats below its cap log(K+1) = "
                f"{results['log_k_plus_1']:.4f} (K = {round(math.exp(results['log_k_plus_1']) - 1)}"
                " negatives).", ""]

  if evaluation is not None:
    lines += ["## Evaluation of the newest checkpoint (evaluation.json)", "",
              "| metric | value |", "| --- | --- |"]
    for key in ("knn_top1", "raw_pixels_knn_top1", "nn1_top1", "linear_top1", "linear_top5"):
      if key in evaluation:
        lines.append(f"| {key} | {_format(evaluation[key], 'accuracy')} |")
    lines += [f"| checkpoint step | {evaluation.get('checkpoint_step', '-')} |", ""]
    if evaluation.get("fewshot"):
      lines += [_FEWSHOT_CAPTION, ""] + fewshot_lines(evaluation["fewshot"])

  lines += ["## Plots", ""]
  plots = [("loss.png", "Training loss"), ("bound.png", "Bound and its cap log(K+1)"),
           ("knn.png", "kNN and 1-NN accuracy"), ("band.png", "Negatives' band")]
  false_negatives = false_negative_lines(records)
  if false_negatives:
    plots.append((FALSE_NEGATIVES_PLOT, "Share of drawn negatives of the anchor's class"))
  for name, caption in plots:
    lines += [f"![{caption}]({name})", ""]
  lines += false_negatives

  lines += ["## Configuration", ""]
  if config is None:
    lines += ["No config.json in the run directory.", ""]
  else:
    preset, overrides = config_overrides(config)
    command = [f"python -m mi_contrast.main --config=configs/default.py:{preset}",
               f"--workdir={workdir}"] + overrides
    lines += [f"Fields that differ from the `{preset}` preset's defaults (all fields: "
              "config.json):", "", "```", " \\\n    ".join(command), "```", ""]
  return "\n".join(lines)


def write_report(workdir):
  """Writes the plots and report.md into `workdir`; returns report.md's path."""
  records = writers.read_scalars(workdir)
  if not records and not os.path.exists(os.path.join(workdir, "results.json")):
    raise FileNotFoundError(f"{workdir} holds neither metrics.jsonl nor results.json: is it a "
                            "run directory?")
  results = _read_json(os.path.join(workdir, "results.json"))
  write_plots(workdir, records, results)
  config = _read_json(os.path.join(workdir, "config.json"))
  evaluation = _read_json(os.path.join(workdir, "evaluation.json"))
  path = os.path.join(workdir, "report.md")
  with open(path, "w", encoding="utf-8") as f:
    f.write(render_markdown(workdir, records, results, config, evaluation))
  return path


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  print(write_report(FLAGS.workdir))


if __name__ == "__main__":
  flags.DEFINE_string("workdir", None, "Run directory (holds metrics.jsonl, results.json).")
  flags.mark_flag_as_required("workdir")
  app.run(main)
