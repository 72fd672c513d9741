"""The README's methods table: every method config on the embedded digits, one after the other.

  python benchmarks/methods_digits.py [--configs ir,ring,...] [--out benchmarks/results/methods_digits.jsonl]

Runs `python -m mi_contrast.main --config=configs/<c>.py --workdir=<tmp>/<c>` for each config,
as a user would (one process each, compilation included), and appends one JSON record per run
(the results.json fields the table quotes, the process wall time and the CPU's name) to --out.
A config whose record is already in --out for the same commit is skipped, so an interrupted
table resumes.
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
          "fewshot", "bound_nats", "log_k_plus_1", "loss", "wall_seconds", "params_sha256")


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


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--configs", default=",".join(CONFIGS))
  parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results",
                                                    "methods_digits.jsonl"))
  parser.add_argument("--workdir", default=None, help="where the runs go (default: a temp dir)")
  args = parser.parse_args()
  head = commit()
  done = set()
  if os.path.exists(args.out):
    with open(args.out) as f:
      done = {(r["config"], r.get("commit")) for r in map(json.loads, f)}
  root = args.workdir or tempfile.mkdtemp(prefix="methods_digits_")
  for name in args.configs.split(","):
    if (name, head) in done:
      print(f"{name}: already measured at {head}, skipped")
      continue
    workdir = os.path.join(root, name)
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "mi_contrast.main",
                           f"--config={os.path.join(REPO, 'configs', name + '.py')}",
                           f"--workdir={workdir}"], cwd=REPO, capture_output=True, text=True)
    wall = time.time() - start
    if proc.returncode:
      sys.exit(f"{name} failed:\n{proc.stderr[-3000:]}")
    with open(os.path.join(workdir, "results.json")) as f:
      results = json.load(f)
    record = {"config": name, "wall_process": round(wall, 2), "commit": head, "cpu": cpu_name(),
              **{k: results.get(k) for k in FIELDS}}
    with open(args.out, "a") as f:
      f.write(json.dumps(record) + "\n")
    print(f"{name}: linear {record['linear_top1']:.3f}  knn {record['knn_top1']:.3f}  "
          f"1-NN {record['nn1_top1']:.3f}  bound {record['bound_nats']:.2f} / "
          f"{record['log_k_plus_1']:.2f}  {wall:.0f} s", flush=True)


if __name__ == "__main__":
  main()
