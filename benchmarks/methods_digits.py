"""The methods table: every method config on the embedded digits, one after the other.

  python benchmarks/methods_digits.py [--configs ir,ring,...]
      [--out benchmarks/results/methods_digits.jsonl]
  # choosing a config's settings: the probes on a validation split carved from the training
  # images, with overrides; the records go to methods_digits_validation.jsonl
  python benchmarks/methods_digits.py --configs ir --eval_split validation --set temperature=0.1

Runs `python -m mi_contrast.main --config=configs/<c>.py --workdir=<tmp>/<c>` for each config,
as a user would (one process each, compilation included), and appends one JSON record per run
(the results.json fields the table quotes, the views, temperature and epochs the run used, the
process wall time, the 1-minute load average before and after it, and the CPU's name) to --out.
A config whose record is already in --out for the same commit, split and overrides is skipped,
so an interrupted table resumes; with uncommitted changes to configs/ or mi_contrast/ nothing
is skipped, and the records say `dirty`.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = ("ir", "ir_nce", "ball", "ring", "ring_neighbours", "la", "cmc", "cmc_ring", "moco",
           "moco_ring", "simclr", "simclr_ring")
FIELDS = ("method", "negatives", "bound", "knn_top1", "nn1_top1", "linear_top1",
          "raw_pixels_linear_top1", "raw_pixels_knn_top1", "random_init_linear_top1",
          "fewshot", "bound_nats", "log_k_plus_1", "loss", "wall_seconds", "params_sha256",
          "config_sha256", "eval_split")
# Fields of the run's config.json: the settings a record's numbers depend on most.
CONFIG_FIELDS = ("views", "temperature", "num_epochs")


def cpu_name():
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def commit():
  out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                       text=True)
  return out.stdout.strip() or None


def dirty():
  """Whether configs/ or mi_contrast/ differ from the commit (then the commit alone does not
  name the code that ran)."""
  out = subprocess.run(["git", "status", "--porcelain", "--", "configs", "mi_contrast"],
                       cwd=REPO, capture_output=True, text=True)
  return bool(out.stdout.strip())


def overrides(pairs):
  """--set KEY=VALUE pairs -> {KEY: VALUE} (strings, as the config flags take them)."""
  result = {}
  for pair in pairs:
    key, sep, value = pair.partition("=")
    if not sep or not key:
      sys.exit(f"--set takes KEY=VALUE (a config field and its value); got {pair!r}")
    result[key.removeprefix("config.")] = value
  return result


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--configs", default=",".join(CONFIGS))
  parser.add_argument("--out", default=None,
                      help="default: benchmarks/results/methods_digits.jsonl, or "
                           "methods_digits_validation.jsonl with --eval_split validation")
  parser.add_argument("--eval_split", default="test", choices=("test", "validation"),
                      help="the probes' split (validation: carved from the training images)")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="a config override, --config.KEY=VALUE (repeatable)")
  parser.add_argument("--workdir", default=None, help="where the runs go (default: a temp dir)")
  args = parser.parse_args()
  extra = overrides(args.set)
  if "eval_split" in extra:
    sys.exit("the probes' split is --eval_split, not --set eval_split=...")
  flags = {"eval_split": args.eval_split, **extra}
  out = args.out or os.path.join(
      REPO, "benchmarks", "results",
      "methods_digits.jsonl" if args.eval_split == "test" else "methods_digits_validation.jsonl")
  head, changed = commit(), dirty()
  done = set()
  if os.path.exists(out) and not changed:
    with open(out) as f:
      done = {(r["config"], r.get("commit"), r.get("eval_split") or "test",
               json.dumps(r.get("overrides") or {}, sort_keys=True))
              for r in map(json.loads, f) if not r.get("dirty")}
  root = args.workdir or tempfile.mkdtemp(prefix="methods_digits_")
  for name in args.configs.split(","):
    if (name, head, args.eval_split, json.dumps(extra, sort_keys=True)) in done:
      print(f"{name}: already measured at {head}, skipped")
      continue
    workdir = os.path.join(root, name)
    load_before = round(os.getloadavg()[0], 2)
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "mi_contrast.main",
                           f"--config={os.path.join(REPO, 'configs', name + '.py')}",
                           f"--workdir={workdir}",
                           *(f"--config.{k}={v}" for k, v in flags.items())],
                          cwd=REPO, capture_output=True, text=True)
    wall = time.time() - start
    load_after = round(os.getloadavg()[0], 2)
    if proc.returncode:
      sys.exit(f"{name} failed:\n{proc.stderr[-3000:]}")
    with open(os.path.join(workdir, "results.json")) as f:
      results = json.load(f)
    with open(os.path.join(workdir, "config.json")) as f:
      config = json.load(f)
    record = {"config": name, "wall_process": round(wall, 2), "commit": head, "cpu": cpu_name(),
              **({"dirty": True} if changed else {}), **({"overrides": extra} if extra else {}),
              "load_1m_before": load_before, "load_1m_after": load_after,
              **{k: config.get(k) for k in CONFIG_FIELDS},
              **{k: results.get(k) for k in FIELDS}}
    with open(out, "a") as f:
      f.write(json.dumps(record) + "\n")
    shot = (record["fewshot"] or {}).get("10", {})
    print(f"{name}: linear {record['linear_top1']:.3f} (pixels "
          f"{record['raw_pixels_linear_top1']:.3f})  knn {record['knn_top1']:.3f} (pixels "
          f"{record['raw_pixels_knn_top1']:.3f})  10-shot "
          f"{shot.get('trained', {}).get('mean', float('nan')):.3f} (pixels "
          f"{shot.get('raw_pixels', {}).get('mean', float('nan')):.3f})  bound "
          f"{record['bound_nats']:.2f} / {record['log_k_plus_1']:.2f}  {wall:.0f} s", flush=True)


if __name__ == "__main__":
  main()
