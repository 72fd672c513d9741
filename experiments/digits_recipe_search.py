"""Recipe search for the default digits run (IR Ring, configs/ring.py), chosen on validation.

Every run trains configs/ring.py with a few overrides (and, optionally, a view recipe defined
here and registered in mi_contrast.views.RECIPES at runtime; views.py is not edited) and records
one JSON line in experiments/results/digits_recipe_search.jsonl. Runs already in the file (same
variant definition, seed, eval_split and phase) are skipped, so the script is resumable.

The recipe is chosen on `eval_split=validation` (0.2 of the 1,438 training images held out as
the probes' test split); the real test split is only used once, at the end (--phase=test).

  # one-factor-at-a-time search, seed 1337, on validation
  python experiments/digits_recipe_search.py --variants=default,crop,crop_noise ...
  # seeds on validation
  python experiments/digits_recipe_search.py --variants=BEST --seeds=1337,1,2
  # the final check on the real test split
  python experiments/digits_recipe_search.py --variants=BEST,default --seeds=1337,1,2 \
      --eval_split=test --phase=test

Each run is a child process of this script (`--_child`), which registers the custom recipes and
calls mi_contrast.train.train_and_evaluate in-process (the function main calls); the parent
times the whole child (imports, compilation, training and the end-of-run probes:
`process_seconds`) and records results.json's `wall_seconds` too. Workdirs live under
/tmp/recipe_runs/ and are deleted once results.json is read.
"""

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time

import common  # experiments/ is this script's folder; common puts the repository on sys.path

ROOT = common.REPO
RESULTS = os.path.join(common.RESULTS, "digits_recipe_search.jsonl")
RUNS = "/tmp/recipe_runs"
# What makes two records the same run (runs already in RESULTS are skipped).
KEY_FIELDS = ("variant", "overrides", "recipe", "seed", "eval_split", "phase")

_RATIO = (3.0 / 4.0, 4.0 / 3.0)
_HFLIP = ("random_horizontal_flip", {"p": 0.5}, 1.0)
_INTENSITY = ("random_intensity", {"brightness": 0.4, "contrast": 0.4}, 0.8)
_NOISE = ("random_gaussian_noise", {"std": 0.05}, 1.0)


def _crop(lo, hi=1.0, ratio=_RATIO):
  return ("random_resized_crop", {"scale": (lo, hi), "ratio": ratio}, 1.0)


# Custom recipes (existing ops only), registered in views.RECIPES under these names.
CUSTOM_RECIPES = {
    "digits_crop_s03": [_crop(0.3)],
    "digits_crop_s04": [_crop(0.4)],
    "digits_crop_s06": [_crop(0.6)],
    "digits_crop_s07": [_crop(0.7)],
    # Small translations / zooms: a near-full box with a near-square aspect ratio.
    "digits_shift": [_crop(0.8, 1.0, (0.9, 1.1))],
    "digits_crop_noise": [_crop(0.5), _NOISE],
    "digits_crop_intensity": [_crop(0.5), _INTENSITY],
    "digits_crop_s03_noise": [_crop(0.3), _NOISE],
    "digits_crop_s04_noise": [_crop(0.4), _NOISE],
    "digits_crop_s06_noise": [_crop(0.6), _NOISE],
    # digits_noflip (crop, intensity, noise; no flip) with other crop scales.
    "digits_noflip_s03": [_crop(0.3), _INTENSITY, _NOISE],
    "digits_noflip_s07": [_crop(0.7), _INTENSITY, _NOISE],
}

# variant name -> config overrides (dotted keys for nested fields). `views` may name a
# CUSTOM_RECIPES entry.
VARIANTS = {
    "default": {},
    # Views.
    "crop": {"views": "digits_crop"},
    "noflip": {"views": "digits_noflip"},
    "crop_noise": {"views": "digits_crop_noise"},
    "crop_intensity": {"views": "digits_crop_intensity"},
    "crop_s03": {"views": "digits_crop_s03"},
    "crop_s04": {"views": "digits_crop_s04"},
    "crop_s06": {"views": "digits_crop_s06"},
    "crop_s07": {"views": "digits_crop_s07"},
    "shift": {"views": "digits_shift"},
    # Loss / optimisation (default views).
    "t0.1": {"temperature": 0.1},
    "t0.2": {"temperature": 0.2},
    "ep60": {"num_epochs": 60},
    "lr0.12": {"learning_rate": 0.12},
    "lr0.03": {"learning_rate": 0.03},
    "img24": {"image_size": 24},
    "width24": {"width": 24},
    "outer0.3": {"ring.outer": 0.3},
    "neg512": {"num_negatives": 512},
    "bs64": {"global_batch_size": 64},
}


def _add_combo(name, **overrides):
  VARIANTS[name] = overrides


def load_ring_config():
  spec = importlib.util.spec_from_file_location("ring_config", os.path.join(ROOT, "configs",
                                                                            "ring.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def register_recipes():
  from mi_contrast import views
  for name, recipe in CUSTOM_RECIPES.items():
    views.RECIPES[name] = recipe


def child(spec):
  """Runs one training in this process; the parent reads results.json."""
  register_recipes()
  from mi_contrast import train
  config = load_ring_config()
  for key, value in spec["overrides"].items():
    common.set_field(config, key, value)
  config.seed = spec["seed"]
  config.eval_split = spec["eval_split"]
  train.train_and_evaluate(config, spec["workdir"])


def summarise(results):
  fs = results.get("fewshot") or {}

  def shot(n, net):
    row = fs.get(str(n), {}).get(net)
    return None if row is None else row["mean"]

  return {
      "linear_top1": results["linear_top1"],
      "knn_top1": results["knn_top1"],
      "nn1_top1": results["nn1_top1"],
      "fewshot_trained": {str(n): shot(n, "trained") for n in (1, 5, 10)},
      "fewshot_raw_pixels": {str(n): shot(n, "raw_pixels") for n in (1, 5, 10)},
      "fewshot10_margin": (None if shot(10, "trained") is None
                           else shot(10, "trained") - shot(10, "raw_pixels")),
      "raw_pixels_linear_top1": results["raw_pixels_linear_top1"],
      "bound_nats": results["bound_nats"],
      "log_k_plus_1": results["log_k_plus_1"],
      "wall_seconds": results["wall_seconds"],
      "steps": results["steps"],
  }


def child_results(workdir, returncode, eval_split, what, log):
  """A finished child's results.json (None, said, when it failed); an error when its probes
  ran on another split than asked."""
  path = os.path.join(workdir, "results.json")
  if returncode != 0 or not os.path.exists(path):
    print(f"FAILED {what} (rc {returncode}); see {log}", flush=True)
    return None
  with open(path) as f:
    results = json.load(f)
  if results.get("eval_split") != eval_split:
    raise RuntimeError(f"results.json eval_split {results.get('eval_split')} != {eval_split}")
  return results


def run_one(variant, seed, eval_split, phase, keys):
  overrides = VARIANTS[variant]
  views = overrides.get("views")
  recipe = CUSTOM_RECIPES.get(views) if views else None
  record = {"variant": variant, "overrides": overrides,
            "recipe": json.loads(json.dumps(recipe)) if recipe else None,
            "seed": seed, "eval_split": eval_split, "phase": phase}
  if common.record_key(record, KEY_FIELDS) in keys:
    print(f"skip {variant} seed={seed} {eval_split} {phase}", flush=True)
    return
  workdir = os.path.join(RUNS, f"{phase}_{variant}_{eval_split}_s{seed}")
  shutil.rmtree(workdir, ignore_errors=True)
  os.makedirs(os.path.join(RUNS, "logs"), exist_ok=True)
  log = os.path.join(RUNS, "logs", os.path.basename(workdir) + ".log")
  spec = {"overrides": overrides, "seed": seed, "eval_split": eval_split, "workdir": workdir}
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  start = time.time()
  with open(log, "w") as f:
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--_child",
                           json.dumps(spec)], cwd=ROOT, env=env, stdout=f,
                          stderr=subprocess.STDOUT)
  process_seconds = time.time() - start
  results = child_results(workdir, proc.returncode, eval_split, f"{variant} seed={seed}", log)
  if results is None:
    return
  shutil.rmtree(workdir, ignore_errors=True)
  record.update(summarise(results))
  record["process_seconds"] = process_seconds
  record["time"] = time.strftime("%Y-%m-%d %H:%M:%S")
  common.append_jsonl(RESULTS, record)
  keys.add(common.record_key(record, KEY_FIELDS))
  print(f"{variant:>16} s={seed:<5} {eval_split:>10} lin={record['linear_top1']:.4f} "
        f"knn={record['knn_top1']:.4f} nn1={record['nn1_top1']:.4f} "
        f"fs10={record['fewshot_trained']['10']:.4f} "
        f"(px {record['fewshot_raw_pixels']['10']:.4f}, +{record['fewshot10_margin']:.4f}) "
        f"pxlin={record['raw_pixels_linear_top1']:.4f} wall={record['wall_seconds']:.1f}s "
        f"proc={process_seconds:.1f}s", flush=True)


def main():
  if len(sys.argv) == 3 and sys.argv[1] == "--_child":
    child(json.loads(sys.argv[2]))
    return
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--variants", default="default",
                      help="comma-separated VARIANTS names; 'all' for every one")
  parser.add_argument("--seeds", default="1337")
  parser.add_argument("--eval_split", default="validation", choices=["validation", "test"])
  parser.add_argument("--phase", default=None,
                      help="label stored with each run (default: 'search' on validation, "
                           "'test' on test)")
  parser.add_argument("--list", action="store_true", help="print the variants and exit")
  args = parser.parse_args()
  if args.list:
    common.print_variants(VARIANTS)
    return
  phase = args.phase or ("test" if args.eval_split == "test" else "search")
  if phase == "test" and args.eval_split != "test" or phase != "test" and args.eval_split == "test":
    raise SystemExit("--phase=test goes with --eval_split=test only")
  names = common.variant_names(args.variants, VARIANTS)
  keys = common.done_keys(RESULTS, KEY_FIELDS)
  for seed in (int(s) for s in args.seeds.split(",")):
    for name in names:
      run_one(name, seed, args.eval_split, phase, keys)


# Combinations of the one-factor winners (added after the one-factor-at-a-time search).
# Round 2: on top of the one-factor winner (no flip: views=digits_noflip).
_add_combo("noflip_t0.1", views="digits_noflip", temperature=0.1)
_add_combo("noflip_t0.2", views="digits_noflip", temperature=0.2)
_add_combo("noflip_ep60", views="digits_noflip", num_epochs=60)
_add_combo("noflip_s03", views="digits_noflip_s03")
# Round 3: the two best round-2 factors together.
_add_combo("noflip_t0.1_ep60", views="digits_noflip", temperature=0.1, num_epochs=60)

if __name__ == "__main__":
  main()
