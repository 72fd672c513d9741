"""benchmarks/gpu_suite.sh's Python steps: preflight, the study's epochs, the summary JSON.

  python benchmarks/gpu_suite.py preflight --out FILE --data DIR --install TEXT --commit SHA
  python benchmarks/gpu_suite.py epochs --step_json FILE --seconds_left S --runs N --parallel P
  python benchmarks/gpu_suite.py summary --out_dir DIR --preflight FILE --plan FILE --stage S ...

Only the standard library at the top: `preflight` must run, and say what is missing, on an
image that lacks the project's packages.
"""

import argparse
import importlib
import json
import math
import os
import platform
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQUIRED = ("numpy", "jax", "jaxlib", "flax", "optax", "orbax.checkpoint", "ml_collections",
            "absl", "yaml", "matplotlib", "sklearn")
OPTIONAL = ("tensorflow", "clu", "tensorflow_datasets")
FASHION_STEPS_PER_EPOCH = 60_000 // 256
EPOCH_LADDER = (20, 15, 10, 8, 6, 5, 4, 3, 2, 1)


def write(path, record):
  with open(path, "w") as f:
    json.dump(record, f, indent=1, sort_keys=True)


def load(path):
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError, TypeError):
    return None


def preflight(args):
  """What is importable, the devices, the data; status 'ok' or 'cannot_run' with the reason."""
  found, missing, errors = {}, [], {}
  for name in REQUIRED + OPTIONAL:
    try:
      module = importlib.import_module(name)
      found[name] = getattr(module, "__version__", "?")
    except Exception as e:  # ImportError, or a broken install
      errors[name] = f"{type(e).__name__}: {e}"
      if name in REQUIRED:
        missing.append(name)
  record = {"status": "ok", "python": sys.version.split()[0], "platform": platform.platform(),
            "commit": args.commit, "install": args.install, "versions": found,
            "missing": missing, "import_errors": errors, "data_dir": args.data or None,
            "tensorflow": "tensorflow" in found,
            "notes": ["TensorFlow, clu and tensorflow-datasets are optional: without "
                      "TensorFlow the trainer writes metrics.jsonl only (no TensorBoard), and "
                      "Fashion-MNIST is read from its IDX files"]}
  if missing:
    record["status"] = "cannot_run"
    record["error"] = ("missing required packages: " + ", ".join(missing) + ". Carry their "
                       "py3 wheels in the wheel folder (bash benchmarks/gpu_prepare_carry.sh).")
  else:
    try:
      import jax
      record["devices"] = [str(d) for d in jax.devices()]
      record["platform_kind"] = jax.devices()[0].platform
      record["device_kind"] = jax.devices()[0].device_kind
      if tuple(int(x) for x in jax.__version__.split(".")[:2]) >= (0, 11):
        record["notes"].append(f"jax {jax.__version__} is outside setup.py's tested range "
                               "(>=0.10,<0.11); kept (installed with --no-deps)")
      sys.path.insert(0, REPO)
      from mi_contrast import train  # noqa: F401  (the trainer imports without TensorFlow)
      from mi_contrast import input_pipeline
      start = time.time()
      data = input_pipeline.load_fashion_mnist(args.data or None)
      record["fashion_mnist"] = {"num_train": data.num_train, "num_test": data.num_test,
                                 "read_seconds": round(time.time() - start, 2)}
    except Exception as e:
      record["status"] = "cannot_run"
      record["error"] = f"{type(e).__name__}: {e}"
  write(args.out, record)
  print("preflight:", json.dumps({k: record.get(k) for k in (
      "status", "missing", "error", "platform_kind", "device_kind", "fashion_mnist")}))
  return 0 if record["status"] == "ok" else 1


def epochs(args):
  """The largest EPOCH_LADDER budget whose predicted time fits in --seconds_left.

  Prediction (deliberately pessimistic): the measured full step of the slowest arm (SimCLR
  Ring on Fashion-MNIST shapes, --step_json) for every arm; the runs that share the GPU at
  once add up as if they ran one after the other (no overlap); plus --overhead seconds per
  wave of parallel runs (start, data, compilation, end-of-run probes).
  """
  result = load(args.step_json)
  plan = {"rule": " ".join(epochs.__doc__.split("\n\n")[1].split()),
          "seconds_left": args.seconds_left, "runs": args.runs, "parallel": args.parallel,
          "overhead_per_wave_s": args.overhead, "ladder": list(EPOCH_LADDER)}
  if not result or not result.get("full_step_s"):
    plan.update(epochs=args.fallback, step_s=None,
                reason=f"no step measurement in {args.step_json}: the fallback budget")
  else:
    step_s = float(result["full_step_s"])
    waves = math.ceil(args.runs / args.parallel)
    at_once = min(args.runs, args.parallel)
    predicted = {}
    for n in EPOCH_LADDER:
      predicted[n] = waves * (args.overhead + n * FASHION_STEPS_PER_EPOCH * at_once * step_s)
    fitting = [n for n in EPOCH_LADDER if predicted[n] <= args.seconds_left]
    chosen = max(fitting) if fitting else 1
    plan.update(epochs=chosen, step_s=step_s, waves=waves,
                predicted_s={str(k): round(v, 1) for k, v in predicted.items()},
                reason="the largest budget predicted to fit" if fitting else
                       "none is predicted to fit: the smallest")
  if args.plan:
    write(args.plan, plan)
  print(plan["epochs"])
  return 0


def summary(args):
  out = args.out_dir
  record = {"suite": "gpu_suite", "stage": args.stage, "preflight": load(args.preflight),
            "timings_s": {"install": args.install_s, "throughput": args.throughput_s,
                          "study": args.study_s, "total": args.total_s},
            "plan": load(args.plan)}
  record["status"] = (record["preflight"] or {}).get("status", "cannot_run")
  keys = ("full_images_per_s_per_device", "backbone_images_per_s_per_device",
          "overhead_ratio", "full_step_s", "backbone_step_s", "global_batch", "model",
          "method", "negatives", "num_negatives", "bank_rows", "image_shape",
          "compile_and_first_call_s", "config")
  throughput = {}
  for name in ("ir_ring", "moco_ring", "fashion_simclr_ring"):
    result = load(os.path.join(out, f"step_overhead_{name}.json"))
    throughput[name] = {k: result.get(k) for k in keys} if result else None
    if result:
      throughput[name]["device_kind"] = result.get("machine", {}).get("device_kind")
  record["throughput"] = throughput
  study = load(os.path.join(out, "negatives_study_gpu.json"))
  if study:
    budget = study["budget"]
    record["study"] = {
        "file": "negatives_study_gpu.json",
        "budget": f"{len(study['seeds'])} seed(s) per arm ({','.join(map(str, study['seeds']))}), "
                  f"{budget['epochs']} epochs of batch {budget['global_batch_size']} "
                  f"({budget['steps']} steps) on {budget['num_train']} training images",
        "runs_finished": len(study["runs"]),
        "failed": [{k: f.get(k) for k in ("arm", "seed", "status", "returncode",
                                          "last_logged_step")} for f in study["failed"]],
        "arms": {arm: s["mean"] for arm, s in study["arms"].items()},
        "wall_seconds": {f"{r['arm']}_s{r['seed']}": r["wall_seconds"] for r in study["runs"]}}
  write(os.path.join(out, "gpu_suite.json"), record)
  print("gpu_suite.json:", json.dumps({
      "status": record["status"], "stage": args.stage,
      "overhead_ratio": {k: v and v["overhead_ratio"] for k, v in throughput.items()},
      "study_runs": record.get("study", {}).get("runs_finished")}))
  return 0


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  sub = parser.add_subparsers(dest="command", required=True)
  p = sub.add_parser("preflight")
  p.add_argument("--out", required=True)
  p.add_argument("--data", default="")
  p.add_argument("--install", default="")
  p.add_argument("--commit", default="")
  p.set_defaults(fn=preflight)
  p = sub.add_parser("epochs")
  p.add_argument("--step_json", required=True)
  p.add_argument("--seconds_left", type=float, required=True)
  p.add_argument("--runs", type=int, required=True)
  p.add_argument("--parallel", type=int, required=True)
  p.add_argument("--overhead", type=float, default=120.0)
  p.add_argument("--fallback", type=int, default=4)
  p.add_argument("--plan", default=None)
  p.set_defaults(fn=epochs)
  p = sub.add_parser("summary")
  p.add_argument("--out_dir", required=True)
  p.add_argument("--preflight", required=True)
  p.add_argument("--plan", default=None)
  p.add_argument("--stage", required=True)
  for name in ("install_s", "throughput_s", "study_s", "total_s"):
    p.add_argument(f"--{name}", type=float, default=0.0)
  p.set_defaults(fn=summary)
  args = parser.parse_args(argv)
  return args.fn(args)


if __name__ == "__main__":
  sys.exit(main())
