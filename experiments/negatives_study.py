"""Ring against uniform negatives, with seeds: IR, MoCo and SimCLR (and IR Ball) on one budget.

  python experiments/negatives_study.py                      # fashion_mnist, 12 arms x 3 seeds
  python experiments/negatives_study.py --quick              # digits, tiny budget (~8 min here)
  python experiments/negatives_study.py --arms=ir_uniform,ir_ring --seeds=1337,1 --epochs=4
  python experiments/negatives_study.py --arms=ir_ring_wide \
      --variant=ir_ring_wide=ir_ring:ring.outer=0.5,ring.inner=0.2   # a controlled variation

Arms (config file -> method, negatives; study_arms.ARMS, where adding an arm is one entry):
  ir_uniform configs/ir.py, ir_ring configs/ring.py, ir_ball configs/ball.py,
  moco_uniform configs/moco.py, moco_ring configs/moco_ring.py,
  simclr_uniform configs/simclr.py, simclr_ring configs/simclr_ring.py; and the debiased
  (DCL) and hardness-tilted (HCL) objectives: ir_dcl, ir_hcl (configs/ir.py), ir_ring_dcl
  (configs/ring.py), simclr_dcl and simclr_hcl (configs/simclr.py), their parameters chosen on
  the validation split.
This script runs and resumes them; study_arms.py builds their configs and study_analysis.py
the JSON's summaries, tables and plot.
CMC is left out: its L/ab split of Lab colour means nothing on grey images, so SimCLR stands in
for the in-batch family.

What is shared. Every arm runs `python -m mi_contrast.main --config=configs/<arm>.py:<dataset>`
with overrides that set every field to one study value, except the fields an arm is made of:
`method`, `negatives`, `bound` (and a debiased bound's `tau_plus`, `hcl_beta`) and `ring.*`
(the band and its annealing, which the uniform arms ignore). So views, encoder, width, batch,
epochs, learning rate and schedule, temperature, K = num_negatives (4,096 on fashion_mnist, a
multiple of the batch as MoCo's queue needs; the IR configs' own 4,095 is overridden), probes
and evaluation split are the same for every arm.
One memory-bank option is not: `bank.candidates` (the band over 8,192 random bank rows on
fashion_mnist, as configs/ring.py's preset) is refused by MoCo and SimCLR, which have no bank,
so their arms take 0 (their bands are over the whole queue or batch; study_arms.BANK_ONLY).
The study value of a field is the dataset preset's (`mi_contrast/config.py`) unless
study_arms.study_overrides or --set says otherwise. The per-arm differences left are printed
before anything runs (the check that nothing else differs): IR Ring, IR Ball and MoCo Ring
anneal rho_o 1.0 -> 0.1, SimCLR Ring 1.0 -> 0.5 (its config's in-batch band: 510 in-batch
candidates at batch 256), rho_i = 0.1, over the first half of training. Each method keeps its
own number of views (IR 1, MoCo and SimCLR 2) of the same recipe.

Budget (fixed, the same for every arm): fashion_mnist, all 60,000 training images (the config
has no field to train on a subset), batch 256, 234 steps per epoch, --epochs (default 10:
2,340 steps, the preset's 1 warm-up epoch then cosine), the preset's encoder (the digits
ResNet at width 16) and its 20x20 training views; probes on the 10,000 test images
(eval_split = test), the preset's (100-epoch linear probe, kNN k = 200, few-shot). The default
was the largest budget whose 21 runs of the first 7 arms fit in about 6 hours of the 2-core
CPU (estimated there: IR about 65 s per epoch, MoCo and SimCLR, two views, about 75-90 s, and
1-2 min of end-of-run probes per run: about 4.8 hours; the first IR runs took 18-21 minutes
each with other jobs on the cores, so 6-7 hours is likelier); the 5 debiased arms add 9 IR
runs and 6 SimCLR runs. It is below the preset's 32 epochs (docs/results/fashion_mnist.md), so
the networks compared are under-trained.
--quick: digits (1,438 train / 359 test), 2 epochs of batch 128 (22 steps), a 30-epoch linear
probe, seed 1337 alone, all 12 arms. It checks the plumbing, not the science.

--data_dir: config.data_dir (the folder of the four IDX files), passed as --config.data_dir.

Outputs:
  --out (default experiments/results/negatives_study_<dataset>.json; --quick:
  negatives_study_quick.json), rewritten atomically after every finished run, so a partial
  study is a valid JSON; it holds this command's arms and seeds (the workdirs hold every
  run): `runs` (one record per method, negatives, seed), `arms` (mean and std over seeds),
  `paired` (ring minus uniform per method on shared seeds, and IR ball minus
  uniform: mean difference and its standard error std / sqrt(n), None for n < 2), `failed`.
  A PNG next to it (same name, .png): accuracy per arm with seed error bars, and the
  false-negative share against training step for the ring and ball arms (when logged).
  Records already in --out for arms or seeds this command does not run are kept (and counted in
  `arms` and `paired`) when they are of the same budget (dataset, epochs, batch); a file that
  holds runs of another budget is refused before anything runs (pass another --out). A record
  of one of this command's runs made with another config is moved to `superseded` when the
  run is trained again.

Controlled variations: --variant=NAME=BASE_ARM:FIELD=VALUE[,FIELD=VALUE] defines an arm that
is BASE_ARM with other ring.* values (only what an arm is made of; every other field stays
shared), e.g. a band that stops short of the nearest neighbours, or a shorter anneal:
  --variant=ir_ring_wide=ir_ring:ring.outer=0.5,ring.inner=0.2
  --variant=ir_ring_fast=ir_ring:ring.anneal_fraction=0.25
Its workdir is <workdir_root>/<NAME>_s<seed>, its record's `variant_of` and `variant_fields`
say what it is, and `paired` gains NAME minus its method's uniform arm on the shared seeds.

Resumable: each run's workdir is <workdir_root>/<arm>_s<seed>. A run whose
results.json matches its config (config_sha256) is read, not started; so is a run whose record
in --out (an earlier write of this JSON, e.g. the committed one) has its config_sha256, when its
workdir is gone; any other is started with the same command, which resumes from its newest
checkpoint. Runs are child processes,
--max_parallel at a time (1 by default; on one GPU several small runs can share the device).
SIGTERM or Ctrl-C stops the children (SIGTERM: a checkpoint at the next step) and writes the
JSON; the same command later continues.

The false-negative share (the share of a step's negatives that have the anchor's class) is
read from metrics.jsonl (`false_negative_share`) when the trainer logs it: the value of the
first record at or after the end of annealing (round(ring.anneal_fraction * steps)), and the
whole series for the plot; None when it is not logged. `false_negative_chance` is what
uniform draws give: the chance that another training image has the anchor's class.
"""

import argparse
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import time

import common  # experiments/ is this script's folder; common puts the repository on sys.path
from mi_contrast import config as config_lib
import study_analysis
from study_analysis import arm_summaries, paired, plot, table
from study_arms import (ARMS, DEFAULT_EPOCHS, DEFAULT_SEEDS, QUICK_SEEDS, VARIANTS,
                        arm_differences, arm_file, arm_order, arm_plan, check_differences,
                        config_digest, is_arm_field, parse_assignment, parse_variant,
                        run_name, study_values)

REPO = common.REPO
SIDECAR = "study_run.json"   # per workdir: commit and seconds of the study's child processes


# ----------------------------------------------------------------------------------------------
# One run: its command, its results, its record.
# ----------------------------------------------------------------------------------------------

def command(config_file, preset, flags, seed, workdir):
  return ([sys.executable, "-m", "mi_contrast.main", f"--config={config_file}:{preset}",
           f"--workdir={workdir}", f"--config.seed={seed}"] + flags)


def finished(workdir, digest):
  """results.json of this very config (its config_sha256), else None."""
  results = common.read_json(os.path.join(workdir, "results.json"))
  if isinstance(results, dict) and results.get("config_sha256") == digest:
    return results
  return None


def read_metrics(workdir):
  return common.read_jsonl(os.path.join(workdir, "metrics.jsonl"))


def _finite(x):
  return None if x is None or not isinstance(x, (int, float)) or not math.isfinite(x) else x


def recorded_run(old_study, plan):
  """The run's record in an earlier write of the study's JSON, when it is of this very config.

  The record is kept whole (metrics, series, commit, wall time), so a study continued on a
  machine without the earlier workdirs (a fresh checkout) does not train that run again. A
  record of another config (another budget, another commit's config) is not taken.
  """
  for record in (old_study or {}).get("runs", []):
    if (record.get("arm") == plan["arm"] and record.get("seed") == plan["seed"]
        and record.get("config_sha256") == plan["digest"]):
      return record
  return None


def optional_fields(c, metrics):
  """The objective of the run (`bound`, `tau_plus`, `hcl_beta`: the records of the study's first
  runs lack them, and count as InfoNCE), the share of the negative sum on the anchor's class
  (`false_negative_weight`, last logged value and series, for runs that log it), and the last
  logged clamped fraction of a debiased bound (study_analysis.CLAMPED). The tables show a
  column for each when it varies."""
  out = {"bound": c.bound, "tau_plus": c.tau_plus, "hcl_beta": c.hcl_beta}
  weights = [r["false_negative_weight"] for r in metrics
             if _finite(r.get("false_negative_weight")) is not None]
  if weights:   # the share of the negative sum on the anchor's class, at the end of training
    out["false_negative_weight"] = weights[-1]
    out["false_negative_weight_series"] = [
        [int(r["step"]), r["false_negative_weight"]] for r in metrics
        if _finite(r.get("false_negative_weight")) is not None]
  clamped = [r[study_analysis.CLAMPED] for r in metrics
             if _finite(r.get(study_analysis.CLAMPED)) is not None]
  if clamped:
    out[study_analysis.CLAMPED] = clamped[-1]
  return out


def run_record(plan, results, chance):
  """The study's record of a finished run: its results, its logged series, its cost."""
  arm, c, workdir = plan["arm"], plan["config"], plan["workdir"]
  metrics = read_metrics(workdir)
  last = next((r for r in reversed(metrics) if "bound_nats" in r and "log_k_plus_1" in r), {})
  steps = int(results["steps"])
  anneal_end = max(1, int(round(c.ring.anneal_fraction * steps)))
  series = [(int(r["step"]), r["false_negative_share"]) for r in metrics
            if r.get("false_negative_share") is not None]
  after = [p for p in series if p[0] >= anneal_end]
  at_end = after[0] if after else (series[-1] if series else (None, None))
  fewshot = (results.get("fewshot") or {}).get("10", {}).get("trained", {})
  sidecar = common.read_json(os.path.join(workdir, SIDECAR), {})
  return {
      "arm": arm, "config": arm_file(arm), "method": c.method, "negatives": c.negatives,
      "variant_of": VARIANTS[arm]["base"] if arm in VARIANTS else None,
      "variant_fields": VARIANTS[arm]["fields"] if arm in VARIANTS else None,
      "seed": int(c.seed), "dataset": results.get("dataset", c.dataset),
      "eval_split": results.get("eval_split"), "num_train": results.get("num_train"),
      "num_test": results.get("num_test"), "steps": steps, "epochs": int(c.num_epochs),
      "global_batch_size": int(c.global_batch_size),
      "linear_top1": results.get("linear_top1"), "knn_top1": results.get("knn_top1"),
      "nn1_top1": results.get("nn1_top1"),
      "fewshot_10": fewshot.get("mean"), "fewshot_10_std_over_draws": fewshot.get("std"),
      "raw_pixels_linear_top1": results.get("raw_pixels_linear_top1"),
      "raw_pixels_fewshot_10": (results.get("fewshot") or {}).get("10", {}).get(
          "raw_pixels", {}).get("mean"),
      "bound_nats": _finite(last.get("bound_nats", results.get("bound_nats"))),
      "log_k_plus_1": _finite(last.get("log_k_plus_1", results.get("log_k_plus_1"))),
      "band_start": results.get("band_start"), "band_end": results.get("band_end"),
      "anneal_end_step": anneal_end,
      "false_negative_share": at_end[1], "false_negative_share_step": at_end[0],
      "false_negative_chance": chance,
      "false_negative_series": [list(p) for p in series],
      "wall_seconds": sidecar.get("process_seconds") or results.get("wall_seconds"),
      "run_wall_seconds": results.get("wall_seconds"),
      "commit": sidecar.get("commit") or common.git_commit(),
      "workdir": workdir, "config_sha256": results.get("config_sha256"),
      "command": " ".join(["python"] + plan["command"][1:]),
      "params_sha256": results.get("params_sha256"),
      **optional_fields(c, metrics),
  }


# ----------------------------------------------------------------------------------------------
# Driver.
# ----------------------------------------------------------------------------------------------

def false_negative_chance(c):
  """P(another training image has the anchor's class), anchor and other drawn uniformly."""
  try:
    import numpy as np
    from mi_contrast import input_pipeline
    labels = np.asarray(input_pipeline.load_dataset(c).train_labels)
    counts = np.bincount(labels).astype(np.float64)
    n = counts.sum()
    return float(np.sum(counts * (counts - 1)) / (n * (n - 1)))
  except Exception as e:  # the study does not stop for a statistic
    print(f"false_negative_chance: not computed ({type(e).__name__}: {e})", flush=True)
    return None


class Study:
  """The runs read so far, and the JSON (and PNG) written from them."""

  def __init__(self, args, plans, shared, differences):
    self.args, self.plans = args, plans
    self.shared, self.differences = shared, differences
    self.old = common.read_json(args.out, {}) or {}
    self.runs = {}
    self.failed = {}
    self.chance = self.old.get("false_negative_chance")
    old_runs = self.old.get("runs", []) if self.old.get("dataset") == args.dataset else []
    # Records of arms and seeds this command does not run are kept (the JSON is the only copy
    # of a run once its workdir is gone). Every record must be of this budget (a JSON of
    # another budget is refused, never overwritten); a record of one of this command's runs
    # made with another config of the same budget is moved to `superseded`.
    self.kept = [r for r in old_runs if (r.get("arm"), r.get("seed")) not in plans]
    self.superseded = list(self.old.get("superseded", [])) + [
        r for r in old_runs if (r.get("arm"), r.get("seed")) in plans
        and r.get("config_sha256") != plans[(r["arm"], r["seed"])]["digest"]]
    c = next(iter(plans.values()))["config"]
    budget = (args.dataset, int(c.num_epochs), int(c.global_batch_size))
    foreign = [r for r in old_runs
               if (r.get("dataset"), r.get("epochs"), r.get("global_batch_size")) != budget]
    if foreign or (self.old.get("runs") and self.old.get("dataset") != args.dataset):
      theirs = sorted({(r.get("dataset"), r.get("epochs"), r.get("global_batch_size"))
                       for r in (foreign or self.old["runs"])}, key=str)
      raise SystemExit(
          f"--out {args.out} holds runs of another budget (dataset, epochs, batch: {theirs}) "
          f"than this command's {budget}; writing it would drop them. Pass another --out, "
          "or move that file away.")

  def record(self, key, record):
    self.runs[key] = record
    self.failed.pop(key, None)
    self.write()

  def write(self):
    order = {key: i for i, key in enumerate(self.plans)}
    arms = arm_order()
    runs = list(self.runs.values()) + self.kept
    seeds = list(DEFAULT_SEEDS) + [s for s in self.args.seeds if s not in DEFAULT_SEEDS]
    runs.sort(key=lambda r: (arms.index(r["arm"]) if r["arm"] in arms else len(arms),
                             str(r["arm"]), seeds.index(r["seed"]) if r["seed"] in seeds
                             else len(seeds), r["seed"]))
    any_plan = next(iter(self.plans.values()))
    study = {
        "study": "negatives", "dataset": self.args.dataset, "quick": self.args.quick,
        "eval_split": str(any_plan["config"].eval_split),
        "budget": {"epochs": int(any_plan["config"].num_epochs),
                   "global_batch_size": int(any_plan["config"].global_batch_size),
                   "steps": runs[0]["steps"] if runs else None,
                   "num_train": runs[0]["num_train"] if runs else None,
                   "note": "every arm: the same epochs, batch and training images (all of "
                           "the training split: the config has no subset field)"},
        "seeds": self.args.seeds, "arms_requested": self.args.arms,
        "variants": {**self.old.get("variants", {}), **VARIANTS},
        "shared": self.shared, "arm_differences": self.differences,
        "false_negative_chance": self.chance,
        "runs": runs, "arms": arm_summaries(runs), "paired": paired(runs),
        "failed": [self.failed[k] for k in sorted(self.failed, key=order.get)],
        "superseded": self.superseded,
        "commit": common.git_commit(), "updated": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {"host": socket.gethostname(), "platform": platform.platform(),
                    "cpu_count": os.cpu_count(), "max_parallel": self.args.max_parallel},
    }
    common.write_json(self.args.out, study)
    if runs and self.args.plot != "-":
      try:
        plot(study, self.args.plot)
      except Exception as e:  # a plot never loses the JSON
        print(f"plot: not written ({type(e).__name__}: {e})", flush=True)


def launch(plan):
  os.makedirs(plan["workdir"], exist_ok=True)
  log = open(os.path.join(plan["workdir"], "study_log.txt"), "a")
  log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(plan['command'])}\n")
  log.flush()
  env = dict(os.environ)
  env["PYTHONUNBUFFERED"] = "1"   # the log shows progress as it happens
  if plan["parallel"] > 1:   # several processes on one accelerator: no preallocation
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  proc = subprocess.Popen(plan["command"], cwd=REPO, env=env, stdout=log,
                          stderr=subprocess.STDOUT)
  return proc, log, time.time()


def add_seconds(workdir, seconds):
  path = os.path.join(workdir, SIDECAR)
  sidecar = common.read_json(path, {}) or {}
  sidecar["process_seconds"] = sidecar.get("process_seconds", 0.0) + seconds
  sidecar["commit"] = common.git_commit()
  common.write_json(path, sidecar)


def log_tail(workdir, chars=2000):
  try:
    with open(os.path.join(workdir, "study_log.txt")) as f:
      return f.read()[-chars:]
  except OSError:
    return ""


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--dataset", default=None, choices=("fashion_mnist", "digits"),
                      help="default fashion_mnist (--quick: digits)")
  parser.add_argument("--quick", action="store_true",
                      help="digits, 2 epochs, 30-epoch probe, seed 1337: checks the plumbing")
  parser.add_argument("--arms", default=None,
                      help="comma list of " + ", ".join(ARMS) + " and --variant names "
                      "(default: all of them)")
  parser.add_argument("--variant", action="append", default=[],
                      metavar="NAME=BASE_ARM:FIELD=VALUE[,...]",
                      help="a controlled variation of an arm in its ring.* fields, e.g. "
                      "--variant=ir_ring_wide=ir_ring:ring.outer=0.5,ring.inner=0.2; "
                      "compared with its method's uniform arm on the same seeds")
  parser.add_argument("--seeds", default=None,
                      help="comma list (default 1337,1,2; --quick: 1337)")
  parser.add_argument("--epochs", type=int, default=None,
                      help=f"epochs of every arm (default {DEFAULT_EPOCHS}; --quick 2)")
  parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                      help="a shared field for every arm, e.g. --set=probe_epochs=20")
  parser.add_argument("--data_dir", default=None,
                      help="config.data_dir (fashion_mnist: the folder of the four IDX files)")
  parser.add_argument("--out", default=None, help="the study's JSON")
  parser.add_argument("--plot", default=None, help="its PNG (default: --out's name, .png; "
                      "'-': none)")
  parser.add_argument("--workdir_root", default=None,
                      help="runs' workdirs (default <repo>/runs/negatives_study/<name>)")
  parser.add_argument("--max_parallel", type=int, default=1)
  parser.add_argument("--start_window_minutes", type=float, default=None,
                      help="start no run later than this many minutes from now (the running "
                      "ones finish): a machine that is only lent for a while ends with "
                      "finished runs, not a half-trained one")
  parser.add_argument("--table", action="store_true",
                      help="print --out's arms and paired differences as markdown tables; "
                      "run nothing")
  parser.add_argument("--dry_run", action="store_true",
                      help="print the per-arm differences and the commands; run nothing")
  args = parser.parse_args(argv)
  args.dataset = args.dataset or ("digits" if args.quick else "fashion_mnist")
  VARIANTS.clear()
  for text in args.variant:
    name, base, fields = parse_variant(text)
    VARIANTS[name] = {"base": base, "fields": fields}
  args.arms = [a for a in (args.arms or ",".join(arm_order())).split(",") if a]
  unknown = [a for a in args.arms if a not in ARMS and a not in VARIANTS]
  if unknown:
    parser.error(f"--arms: unknown {unknown}; allowed: {', '.join(arm_order())} "
                 "(a variant is defined with --variant)")
  seeds = args.seeds or ",".join(map(str, QUICK_SEEDS if args.quick else DEFAULT_SEEDS))
  args.seeds = [int(s) for s in seeds.split(",") if s]
  if args.epochs is None and not args.quick:
    args.epochs = DEFAULT_EPOCHS[args.dataset]
  name = "quick" if args.quick else args.dataset
  args.out = args.out or os.path.join(common.RESULTS, f"negatives_study_{name}.json")
  if args.plot is None:
    args.plot = os.path.splitext(args.out)[0] + ".png"
  args.workdir_root = os.path.abspath(
      args.workdir_root or os.path.join(REPO, "runs", "negatives_study", name))
  if args.max_parallel < 1:
    parser.error("--max_parallel: at least 1")
  if args.start_window_minutes is not None and args.start_window_minutes < 0:
    parser.error("--start_window_minutes: 0 or more")
  return args


def main(argv=None):
  args = parse_args(argv)
  if args.table:
    study = common.read_json(args.out)
    if not study:
      raise SystemExit(f"--table: no study JSON at {args.out}")
    print(table(study))
    return 0
  values = study_values(args.dataset, args.quick, args.epochs, args.data_dir,
                        [parse_assignment(s) for s in args.set])
  configs, plans = {}, {}
  for arm in args.arms:
    base, flags = arm_plan(arm, args.dataset, values)
    if arm in VARIANTS:   # its values are new: checked here, not in a child process
      try:
        config_lib.validate(base, num_devices=1)
      except ValueError as e:
        raise SystemExit(f"--variant {arm}: {e}") from None
    configs[arm] = base
    config_file = arm_file(arm)
    for seed in args.seeds:
      c, _ = arm_plan(arm, args.dataset, values)
      c.seed = seed
      workdir = os.path.join(args.workdir_root, run_name(arm, seed))
      plans[(arm, seed)] = {"arm": arm, "seed": seed, "config": c, "workdir": workdir,
                            "digest": config_digest(c), "parallel": args.max_parallel,
                            "command": command(config_file, args.dataset, flags, seed, workdir)}
  differences = arm_differences(configs)
  check_differences(differences)
  shared = {k: v for k, v in sorted(values.items()) if not is_arm_field(k)}
  print(f"negatives study: {args.dataset}, arms {', '.join(args.arms)}, seeds {args.seeds}, "
        f"{values['num_epochs']} epochs of batch {values['global_batch_size']}, eval_split "
        f"{values['eval_split']}")
  print("fields that differ between the arms' effective configs (all others are shared):")
  for key, column in differences.items():
    print(f"  {key:24s} " + "  ".join(f"{a}={v}" for a, v in column.items()))
  if args.dry_run:
    for plan in plans.values():
      print(" ".join(plan["command"]))
    return 0

  study = Study(args, plans, shared, differences)
  if study.chance is None or study.old.get("dataset") != args.dataset:
    study.chance = false_negative_chance(next(iter(plans.values()))["config"])
  todo = []
  # Seed-major order: every arm of the first seed before the next seed, so that a partial
  # study already holds paired comparisons.
  order = sorted(plans, key=lambda key: (args.seeds.index(key[1]), args.arms.index(key[0])))
  for key in order:
    plan = plans[key]
    results = finished(plan["workdir"], plan["digest"])
    recorded = recorded_run(study.old, plan)
    if results is not None:
      study.runs[key] = run_record(plan, results, study.chance)
      print(f"finished already: {plan['arm']} seed {plan['seed']}", flush=True)
    elif recorded is not None:
      study.runs[key] = recorded
      print(f"finished already (record in {args.out}; its workdir is gone): "
            f"{plan['arm']} seed {plan['seed']}", flush=True)
    else:
      todo.append(key)
  study.write()

  running = {}
  stopping = []

  def stop(signum, frame):
    del frame
    stopping.append(signum)
    for proc, _, _ in running.values():
      proc.send_signal(signal.SIGTERM)

  # Installed for the loop only: main() called in a process of its own (a test) gets its own
  # handlers back.
  previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
  try:
    _run_loop(args, plans, study, todo, running, stopping)
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)
  study.write()
  print(f"wrote {args.out} ({len(study.runs)} of this command's {len(plans)} runs"
        + (f", {len(study.kept)} more kept from the file" if study.kept else "") + ")"
        + (f" and {args.plot}" if study.runs and args.plot != "-" else ""), flush=True)
  if stopping:
    print("stopped: run the same command to continue.", flush=True)
  return 0 if len(study.runs) == len(plans) else 1


def _run_loop(args, plans, study, todo, running, stopping):
  """Starts the runs of `todo` (at most args.max_parallel at once) and records each as it
  ends, until every run has ended, a signal stops them, or the start window is over."""
  window_end = (time.time() + 60.0 * args.start_window_minutes
                if args.start_window_minutes is not None else None)
  while (todo and not stopping) or running:
    if todo and window_end is not None and time.time() > window_end:
      print(f"start window over: {len(todo)} runs not started; the same command continues "
            "them.", flush=True)
      todo = []
    while todo and not stopping and len(running) < args.max_parallel:
      key = todo.pop(0)
      print(f"start: {plans[key]['arm']} seed {key[1]} -> {plans[key]['workdir']}", flush=True)
      running[key] = launch(plans[key])
    time.sleep(0.5)
    for key in [k for k, (proc, _, _) in running.items() if proc.poll() is not None]:
      proc, log, started = running.pop(key)
      log.close()
      plan = plans[key]
      seconds = time.time() - started
      add_seconds(plan["workdir"], seconds)
      results = finished(plan["workdir"], plan["digest"])
      if proc.returncode == 0 and results is not None:
        study.record(key, run_record(plan, results, study.chance))
        print(f"done: {plan['arm']} seed {key[1]} in {seconds:.0f} s: linear "
              f"{results['linear_top1']:.3f} kNN {results['knn_top1']:.3f}", flush=True)
      else:
        what = "stopped" if stopping else "failed"
        logged = [r["step"] for r in read_metrics(plan["workdir"]) if "step" in r]
        study.failed[key] = {"arm": plan["arm"], "seed": key[1], "returncode": proc.returncode,
                             "status": what, "workdir": plan["workdir"],
                             "last_logged_step": max(logged) if logged else None,
                             "log_tail": log_tail(plan["workdir"])}
        study.write()
        print(f"{what}: {plan['arm']} seed {key[1]} (exit {proc.returncode}); log: "
              f"{plan['workdir']}/study_log.txt", flush=True)


if __name__ == "__main__":
  sys.exit(main())
