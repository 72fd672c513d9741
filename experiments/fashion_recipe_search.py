"""Recipe search for the Fashion-MNIST preset (IR Ring, ring.py:fashion_mnist), on validation.

Every run trains `configs/ring.py:fashion_mnist` with a few overrides and records one JSON line
in experiments/results/fashion_recipe_search.jsonl (the same fields as digits_recipe_search.py).
Runs already in the file (same variant definition, seed, eval_split and phase) are skipped, so
the script is resumable; a run interrupted half-way starts again from its last checkpoint (its
workdir under /tmp/fashion_recipe_runs/ is kept until results.json has been read).

The recipe is chosen on `eval_split=validation`: 0.2 of the 60,000 training images (12,000,
split by config.split_seed) are held out as the probes' test split and the network trains on the
other 48,000. The real test split is used once, for the preset's documented command.

  python experiments/fashion_recipe_search.py --variants=w32_e2,w16_e5 ...
  python experiments/fashion_recipe_search.py --list

Each run is `python -m mi_contrast.main` in a child process; `process_seconds` is the child's
whole life (imports, compilation, training, end-of-run probes), `wall_seconds` results.json's.
"""

import argparse
import os
import shutil
import subprocess
import sys
import time

import common  # experiments/ is this script's folder; common puts the repository on sys.path
from digits_recipe_search import child_results, summarise  # the same record fields

ROOT = common.REPO
RESULTS = os.path.join(common.RESULTS, "fashion_recipe_search.jsonl")
RUNS = "/tmp/fashion_recipe_runs"
CONFIG = "configs/ring.py:fashion_mnist"
# What makes two records the same run (runs already in RESULTS are skipped).
KEY_FIELDS = ("variant", "overrides", "seed", "eval_split", "phase")

# The preset's values when these variants were searched (before the preset took the search's
# result, 20x20 views and temperature 0.1): every variant's flags start from them, so that a
# variant names the same run as the record of it in RESULTS.
SEARCHED_AGAINST = {"views": "fashion_mnist", "temperature": 0.07, "bank.candidates": 0}
# variant name -> --config overrides (dotted keys as main's flags), over SEARCHED_AGAINST.
VARIANTS = {
    # Width 32 (256 train img/s here, the preset's width then) against width 16 (570 img/s), at the
    # same training time.
    "w32_e2": {"width": 32, "num_epochs": 2},
    "w16_e5": {"width": 16, "num_epochs": 5},
    "w16_e5_m05": {"width": 16, "num_epochs": 5, "bank.momentum": 0.5},
    "w16_e5_t01": {"width": 16, "num_epochs": 5, "temperature": 0.1},
    "w16_e5_lr01": {"width": 16, "num_epochs": 5, "learning_rate": 0.1},
    "w16_e5_uniform": {"width": 16, "num_epochs": 5, "negatives": "uniform"},
    "w16_e5_outer03": {"width": 16, "num_epochs": 5, "ring.outer": 0.3},
    # A ring that leaves out the nearest 10% of the bank (a class's share of it): [0.1, 0.5).
    "w16_e5_ring_10_50": {"width": 16, "num_epochs": 5, "ring.outer": 0.5, "ring.inner": 0.2},
    # Cheaper steps: 20x20 training views (the probes still see 28x28) and the band cut over
    # 8,192 random bank rows instead of all of them (1.8-2.3x the images/s of w16 in
    # benchmarks/step_overhead.py here).
    "r20_c8k_e5": {"width": 16, "num_epochs": 5, "views": "fashion_mnist_20",
                   "bank.candidates": 8192},
    "r20_c8k_e5_m05": {"width": 16, "num_epochs": 5, "views": "fashion_mnist_20",
                       "bank.candidates": 8192, "bank.momentum": 0.5},
    "r20_c8k_e5_lr01": {"width": 16, "num_epochs": 5, "views": "fashion_mnist_20",
                        "bank.candidates": 8192, "learning_rate": 0.1},
    "r20_c8k_e5_t01": {"width": 16, "num_epochs": 5, "views": "fashion_mnist_20",
                       "bank.candidates": 8192, "temperature": 0.1},
    "r20_c8k_e5_m05_t01": {"width": 16, "num_epochs": 5, "views": "fashion_mnist_20",
                           "bank.candidates": 8192, "bank.momentum": 0.5, "temperature": 0.1},
    "r20_c8k_e5_m05_t02": {"width": 16, "num_epochs": 5, "views": "fashion_mnist_20",
                           "bank.candidates": 8192, "bank.momentum": 0.5, "temperature": 0.2},
}


def run_one(variant, seed, eval_split, phase, keys):
  overrides = VARIANTS[variant]
  record = {"variant": variant, "overrides": overrides, "seed": seed, "eval_split": eval_split,
            "phase": phase, "config": CONFIG}
  if common.record_key(record, KEY_FIELDS) in keys:
    print(f"skip {variant} seed={seed} {eval_split} {phase}", flush=True)
    return
  workdir = os.path.join(RUNS, f"{phase}_{variant}_{eval_split}_s{seed}")
  os.makedirs(os.path.join(RUNS, "logs"), exist_ok=True)
  log = os.path.join(RUNS, "logs", os.path.basename(workdir) + ".log")
  flags = [f"--config.{k}={v}" for k, v in {**SEARCHED_AGAINST, **overrides}.items()]
  command = [sys.executable, "-m", "mi_contrast.main", f"--config={CONFIG}",
             f"--workdir={workdir}", f"--config.seed={seed}",
             f"--config.eval_split={eval_split}", *flags]
  start = time.time()
  with open(log, "a") as f:
    proc = subprocess.run(command, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
  process_seconds = time.time() - start
  results = child_results(workdir, proc.returncode, eval_split, f"{variant} seed={seed}", log)
  if results is None:
    return
  record.update(summarise(results))
  record["raw_pixels_knn_top1"] = results.get("raw_pixels_knn_top1")
  record["random_init_linear_top1"] = results.get("random_init_linear_top1")
  record["process_seconds"] = process_seconds
  record["time"] = time.strftime("%Y-%m-%d %H:%M:%S")
  common.append_jsonl(RESULTS, record)
  keys.add(common.record_key(record, KEY_FIELDS))
  shutil.rmtree(workdir, ignore_errors=True)
  print(f"{variant:>16} s={seed:<5} {eval_split:>10} lin={record['linear_top1']:.4f} "
        f"knn={record['knn_top1']:.4f} fs10={record['fewshot_trained']['10']:.4f} "
        f"(px {record['fewshot_raw_pixels']['10']:.4f}) "
        f"pxlin={record['raw_pixels_linear_top1']:.4f} wall={record['wall_seconds']:.1f}s "
        f"proc={process_seconds:.1f}s", flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--variants", default="w32_e2")
  parser.add_argument("--seeds", default="1337")
  parser.add_argument("--eval_split", default="validation", choices=["validation", "test"])
  parser.add_argument("--list", action="store_true")
  args = parser.parse_args()
  if args.list:
    common.print_variants(VARIANTS)
    return
  phase = "test" if args.eval_split == "test" else "search"
  names = common.variant_names(args.variants, VARIANTS)
  keys = common.done_keys(RESULTS, KEY_FIELDS)
  for seed in (int(s) for s in args.seeds.split(",")):
    for name in names:
      run_one(name, seed, args.eval_split, phase, keys)


if __name__ == "__main__":
  main()
