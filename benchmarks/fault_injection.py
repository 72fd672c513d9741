"""Fault injection: random SIGKILLs and restarts must end bit-identical to an uninterrupted run.

Runs the main job once uninterrupted, then the same command repeatedly in a second workdir,
killing it (SIGKILL) at a random moment after each new checkpoint (or at a random time before
any), until the run finishes; compares `params_sha256` and writes a JSON record.

  python benchmarks/fault_injection.py --cycles=20 --out=benchmarks/results/fault_injection.json
"""

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def command(workdir, extra):
  return [sys.executable, "-m", "mi_contrast.main", "--config=configs/ring.py",
          f"--workdir={workdir}"] + extra


def checkpoint_steps(workdir):
  path = os.path.join(workdir, "checkpoints")
  return sorted(int(d) for d in os.listdir(path) if d.isdigit()) if os.path.isdir(path) else []


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--cycles", type=int, default=20)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results",
                                                    "fault_injection.json"))
  parser.add_argument("--flags", nargs="*", default=[
      "--config.num_epochs=30", "--config.checkpoint_every_steps=3",
      "--config.log_every_steps=3", "--config.eval_every_steps=1000"])
  args = parser.parse_args()
  rng = random.Random(args.seed)
  env = dict(os.environ, PYTHONPATH=REPO)
  root = tempfile.mkdtemp(prefix="mi_fault_")
  whole, killed = os.path.join(root, "whole"), os.path.join(root, "killed")

  start = time.time()
  subprocess.run(command(whole, args.flags), cwd=REPO, env=env, check=True,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  reference = json.load(open(os.path.join(whole, "results.json")))
  uninterrupted_seconds = time.time() - start

  kills = []
  for cycle in range(args.cycles):
    before = checkpoint_steps(killed)
    proc = subprocess.Popen(command(killed, args.flags), cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Wait for a new checkpoint (or a random startup delay), then a random extra delay.
    deadline = time.time() + 600
    wait_for_checkpoint = rng.random() < 0.8
    kill_at = time.time() + rng.uniform(2.0, 15.0)
    while proc.poll() is None and time.time() < deadline:
      if wait_for_checkpoint and checkpoint_steps(killed) != before:
        break
      if not wait_for_checkpoint and time.time() > kill_at:
        break
      time.sleep(0.05)
    time.sleep(rng.uniform(0.0, 2.0))
    if proc.poll() is None:
      proc.send_signal(signal.SIGKILL)
    code = proc.wait()
    kills.append({"cycle": cycle, "exit_code": code, "checkpoints": checkpoint_steps(killed)})
    if code == 0:
      break
  final = subprocess.run(command(killed, args.flags), cwd=REPO, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  result = json.load(open(os.path.join(killed, "results.json")))
  record = {
      "cycles": len(kills),
      "killed": sum(k["exit_code"] == -signal.SIGKILL for k in kills),
      "kills": kills,
      "final_exit_code": final.returncode,
      "reference_params_sha256": reference["params_sha256"],
      "resumed_params_sha256": result["params_sha256"],
      "identical": reference["params_sha256"] == result["params_sha256"],
      "steps": result["steps"],
      "uninterrupted_seconds": uninterrupted_seconds,
      "flags": args.flags,
  }
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(record, f, indent=2)
  print(json.dumps({k: v for k, v in record.items() if k != "kills"}))
  sys.exit(0 if record["identical"] else 1)


if __name__ == "__main__":
  main()
