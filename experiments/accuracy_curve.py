"""Accuracy against training time: every kept checkpoint of a run, probed as the run's end is.

  python experiments/accuracy_curve.py --workdir=<run> [--out=experiments/results/x.json]

For each checkpoint in <run>/checkpoints (train with --config.keep_checkpoints large enough to
keep them all), the network it holds is probed with the end-of-run protocol of the trained
network (`probes.probe_model`: weighted kNN and 1-NN, the linear probe, the few-shot probes),
on the run's own eval_split. The time of a checkpoint is its commit time (orbax's
_CHECKPOINT_METADATA) minus the time the run wrote config.json (its start, after the data was
read): training time with compilation, the periodic kNN monitor and checkpointing included, not
the end-of-run probes. For an interrupted and resumed run it includes the pause, so measure
the curve on an uninterrupted run.

Writes the JSON (`points`: one record per checkpoint) and a PNG next to it.
"""

import argparse
import json
import os

import common  # noqa: F401  (experiments/ is this folder; common puts the repo on sys.path)
from mi_contrast import checkpoints
from mi_contrast import files
from mi_contrast import probes
from mi_contrast import run as run_lib


def checkpoint_seconds(workdir, step):
  """Seconds from the run's start (config.json written) to the commit of checkpoint `step`."""
  start = os.path.getmtime(os.path.join(workdir, "config.json"))
  path = os.path.join(checkpoints.checkpoint_dir(workdir), str(step), "_CHECKPOINT_METADATA")
  with open(path) as f:
    committed = json.load(f)["commit_timestamp_nsecs"] * 1e-9
  return committed - start


def curve(workdir):
  config = checkpoints.load_run_config(workdir)
  run = run_lib.build_run(config, training=False)
  manager = checkpoints.checkpoint_manager(workdir, config)
  points = []
  for step in sorted(manager.all_steps()):
    state, _ = checkpoints.restore_run(workdir, run, step)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    numbers = probes.probe_model(config, run.model, variables, run.data, run.images, run.mesh)
    fewshot = numbers.pop("fewshot", None) or {}
    point = {"step": int(step), "epoch": step / run.plan.steps_per_epoch,
             "seconds": checkpoint_seconds(workdir, step),
             **{k: float(v) for k, v in numbers.items()},
             "fewshot": {n: {"mean": float(v["mean"]), "std": float(v["std"])}
                         for n, v in fewshot.items()}}
    points.append(point)
    print(json.dumps(point), flush=True)
  return {"workdir": os.path.abspath(workdir), "dataset": config.dataset,
          "method": config.method, "negatives": config.negatives, "model": config.model,
          "width": config.width, "views": config.views, "eval_split": config.eval_split,
          "total_steps": run.plan.total_steps, "points": points}


def plot(record, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  minutes = [p["seconds"] / 60 for p in record["points"]]
  fig, ax = plt.subplots(figsize=(6, 4))
  for key, label in (("linear_top1", "linear"), ("knn_top1", "kNN (k=200)")):
    ax.plot(minutes, [p[key] for p in record["points"]], "o-", label=label)
  ax.plot(minutes, [p["fewshot"].get("10", {}).get("mean") for p in record["points"]], "o-",
          label="10-shot linear")
  for key, label, style in (("raw_pixels_linear_top1", "pixels linear", ":"),
                            ("raw_pixels_knn_top1", "pixels kNN", "--"),
                            ("raw_pixels_fewshot_10", "pixels 10-shot", "-.")):
    if record.get(key) is not None:
      ax.axhline(record[key], color="grey", linestyle=style, label=label)
  ax.set_xlabel("training time (minutes, 2-core CPU)")
  ax.set_ylabel(f"top-1 ({record['eval_split']} split)")
  ax.set_title(f"{record['dataset']}: {record['method']} {record['negatives']}")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--out", required=True, help="JSON path; the PNG goes next to it")
  args = parser.parse_args()
  record = curve(args.workdir)
  results = os.path.join(args.workdir, "results.json")
  if os.path.exists(results):  # the run's own end-of-run numbers, pixels included
    with open(results) as f:
      final = json.load(f)
    record["raw_pixels_linear_top1"] = final.get("raw_pixels_linear_top1")
    record["raw_pixels_knn_top1"] = final.get("raw_pixels_knn_top1")
    pixels = (final.get("fewshot") or {}).get("10", {}).get("raw_pixels")
    record["raw_pixels_fewshot_10"] = None if pixels is None else pixels["mean"]
    record["final_wall_seconds"] = final.get("wall_seconds")
  files.write_json(args.out, record)
  plot(record, os.path.splitext(args.out)[0] + ".png")


if __name__ == "__main__":
  main()
