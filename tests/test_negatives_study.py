"""experiments/negatives_study.py: --quick on two arms, one seed, a tiny budget; the JSON's
layout and records, the PNG, and later calls that read the finished runs (from their workdirs,
then, with the workdirs gone, from the JSON's records) instead of training them again.
Plumbing only, not the science. And the arms (study_arms.py) and tables (study_analysis.py)
without training."""

import contextlib
import importlib
import io
import json
import os
import signal
import subprocess
import sys

import pytest

from helpers import REPO, child_xla_flags, no_tensorflow

EXPERIMENTS = os.path.join(REPO, "experiments")
SCRIPT = os.path.join(EXPERIMENTS, "negatives_study.py")
RUN_FIELDS = ("method", "negatives", "seed", "dataset", "num_train", "steps", "epochs",
              "linear_top1", "knn_top1", "fewshot_10", "false_negative_share", "wall_seconds",
              "commit", "bound_nats", "log_k_plus_1", "false_negative_chance")


def _study_args(tmp_path, arms="ir_uniform,ir_ring", extra=()):
  return ["--quick", f"--arms={arms}", "--seeds=3", "--max_parallel=2", "--epochs=1",
          f"--out={tmp_path / 'negatives_quick.json'}", f"--workdir_root={tmp_path / 'runs'}",
          # a tiny network and probe: 11 steps of batch 128 each
          "--set=width=8", "--set=head_hidden=32", "--set=embedding_dim=16",
          "--set=num_negatives=64", "--set=probe_epochs=2"] + list(extra)


def _study(tmp_path, arms="ir_uniform,ir_ring", extra=(), check=True):
  """The script run as a user runs it (its runs are child processes of it)."""
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join([no_tensorflow(tmp_path), REPO,
                                       env.get("PYTHONPATH", "")])
  env["XLA_FLAGS"] = child_xla_flags(1)
  cmd = [sys.executable, SCRIPT] + _study_args(tmp_path, arms, extra)
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  if not check:
    return proc
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return proc.stdout


@pytest.mark.slow
def test_quick_study_json_and_resume(tmp_path):
  out = _study(tmp_path)
  # The per-arm check: the two arms' effective configs differ in `negatives` alone.
  diff = out.split("all others are shared):")[1].split("start:")[0]
  assert [line.split()[0] for line in diff.strip().splitlines()] == ["negatives"]
  study = json.load(open(tmp_path / "negatives_quick.json"))
  assert study["dataset"] == "digits" and study["eval_split"] == "test" and study["quick"]
  assert study["budget"]["epochs"] == 1 and study["budget"]["steps"] == 1438 // 128
  assert study["failed"] == []
  runs = study["runs"]
  assert [(r["method"], r["negatives"], r["seed"]) for r in runs] == [
      ("ir", "uniform", 3), ("ir", "ring", 3)]
  for run in runs:
    for field in RUN_FIELDS:
      assert field in run, field
    assert run["dataset"] == "digits" and run["num_train"] == 1438
    assert run["steps"] == 11 and run["epochs"] == 1
    for field in ("linear_top1", "knn_top1", "fewshot_10"):
      assert 0.0 <= run[field] <= 1.0, (field, run[field])
    assert run["bound_nats"] <= run["log_k_plus_1"] + 1e-5
    assert 0.0 < run["false_negative_chance"] < 0.2   # 10 balanced classes: about 0.1
    share = run["false_negative_share"]
    assert share is None or 0.0 <= share <= 1.0
    assert run["wall_seconds"] > 0
    assert os.path.exists(os.path.join(run["workdir"], "results.json"))
  for arm in ("ir_uniform", "ir_ring"):
    summary = study["arms"][arm]
    assert summary["seeds"] == [3] and summary["n"]["linear_top1"] == 1
    assert summary["std"]["linear_top1"] is None     # one seed: no spread
  (pair,) = study["paired"]
  assert pair["label"] == "ir: ring - uniform" and pair["seeds"] == [3]
  diff = pair["linear_top1"]
  assert abs(diff["mean"] - (runs[1]["linear_top1"] - runs[0]["linear_top1"])) < 1e-12
  assert diff["se"] is None                            # n = 1
  assert os.path.getsize(tmp_path / "negatives_quick.png") > 10_000

  # Started again: both runs are read from their workdirs, nothing trains.
  before = [os.path.getmtime(os.path.join(r["workdir"], "results.json")) for r in runs]
  out = _study(tmp_path)
  assert out.count("finished already:") == 2 and "start:" not in out
  after = [os.path.getmtime(os.path.join(r["workdir"], "results.json")) for r in runs]
  assert before == after
  again = json.load(open(tmp_path / "negatives_quick.json"))
  assert [r["linear_top1"] for r in again["runs"]] == [r["linear_top1"] for r in runs]

  # A fresh machine: the workdirs are gone, the JSON holds the records. They are taken from it
  # (their config_sha256 is this config's), nothing trains, and the records stay whole.
  os.rename(tmp_path / "runs", tmp_path / "runs_gone")
  out = _study(tmp_path)
  assert out.count("its workdir is gone") == 2 and "start:" not in out
  assert not os.path.exists(tmp_path / "runs" / "ir_ring_s3" / "results.json")
  third = json.load(open(tmp_path / "negatives_quick.json"))
  assert third["runs"] == again["runs"] and third["paired"] == again["paired"]

  # A command for one arm keeps the other arm's record (the JSON is its only copy now).
  out = _study(tmp_path, arms="ir_uniform")
  assert out.count("its workdir is gone") == 1 and "start:" not in out
  fourth = json.load(open(tmp_path / "negatives_quick.json"))
  assert fourth["runs"] == again["runs"] and fourth["paired"] == again["paired"]

  # Another budget into the same JSON would drop its runs: refused before anything trains,
  # the file untouched.
  before = open(tmp_path / "negatives_quick.json").read()
  proc = _study(tmp_path, extra=["--epochs=2"], check=False)
  assert proc.returncode != 0 and "holds runs of another budget" in proc.stderr
  assert "another --out" in proc.stderr and "start:" not in proc.stdout
  assert open(tmp_path / "negatives_quick.json").read() == before


@pytest.mark.slow
def test_fashion_arms_share_every_field_but_their_own(tmp_path):
  """The fashion_mnist study's 12 arms (--dry_run: nothing trains): only the arm fields differ
  (the debiased arms' bound and its parameters among them), and bank.candidates, which MoCo and
  SimCLR refuse (no bank), is 0 for them alone."""
  proc = _in_process("--dry_run", f"--workdir_root={tmp_path / 'runs'}")
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  lines = proc.stdout.split("all others are shared):")[1].strip().splitlines()
  table = [line for line in lines if "mi_contrast.main" not in line]
  rows = {line.split()[0]: dict(kv.split("=") for kv in line.split()[1:]) for line in table}
  assert sorted(rows) == ["bank.candidates", "bound", "hcl_beta", "method", "negatives",
                          "ring.outer", "tau_plus"]
  assert rows["bank.candidates"] == {
      "ir_uniform": "8192", "ir_ring": "8192", "ir_ball": "8192", "moco_uniform": "0",
      "moco_ring": "0", "simclr_uniform": "0", "simclr_ring": "0", "ir_dcl": "8192",
      "ir_hcl": "8192", "ir_ring_dcl": "8192", "simclr_dcl": "0", "simclr_hcl": "0"}
  assert {a: b for a, b in rows["bound"].items() if b != "infonce"} == {
      "ir_dcl": "dcl", "ir_hcl": "hcl", "ir_ring_dcl": "dcl", "simclr_dcl": "dcl",
      "simclr_hcl": "hcl"}
  commands = [line for line in proc.stdout.splitlines() if "mi_contrast.main" in line]
  assert len(commands) == 36 and all("--config.num_epochs=10" in c for c in commands)


def _in_process(*argv):
  """The script's main(argv) called in this process, for the calls that train nothing (dry
  runs, tables, refusals): its exit status, stdout and stderr as a CompletedProcess."""
  study = _experiment("negatives_study")
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    try:
      code = study.main(list(argv)) or 0
    except SystemExit as e:   # argparse's errors, and the script's own refusals
      code = e.code if isinstance(e.code, int) else 1
      if isinstance(e.code, str):
        print(e.code, file=sys.stderr)
  return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def _dry(tmp_path, *args):
  return _in_process("--dry_run", "--quick", f"--workdir_root={tmp_path / 'runs'}", *args)


@pytest.mark.slow
def test_variant_arm_flags_and_differences(tmp_path):
  """--variant: an arm that differs from its base arm in ring.* fields only; its workdir is
  its own and its command is the base config file with the variant's flags."""
  proc = _dry(tmp_path, "--arms=ir_uniform,ir_ring,ir_ring_wide",
              "--variant=ir_ring_wide=ir_ring:ring.outer=0.5,ring.inner=0.2")
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  lines = proc.stdout.split("all others are shared):")[1].strip().splitlines()
  rows = {line.split()[0]: dict(kv.split("=") for kv in line.split()[1:])
          for line in lines if "mi_contrast.main" not in line}
  assert sorted(rows) == ["negatives", "ring.inner", "ring.outer"]
  assert rows["ring.outer"] == {"ir_uniform": "0.1", "ir_ring": "0.1", "ir_ring_wide": "0.5"}
  assert rows["ring.inner"]["ir_ring_wide"] == "0.2"
  (wide,) = [line for line in lines if "ir_ring_wide_s1337" in line]
  assert "--config=configs/ring.py:digits" in wide
  assert "--config.ring.outer=0.5" in wide and "--config.ring.inner=0.2" in wide
  # A variant may not change a shared field, nor reuse an arm's name.
  # Nor hold a value the config refuses (checked before anything runs).
  for bad in ("ir_ring_lr=ir_ring:learning_rate=0.1", "ir_ring=ir_uniform:ring.outer=0.5",
              "x=nope:ring.outer=0.5", "ir_ring_bad=ir_ring:ring.outer=2.0"):
    proc = _dry(tmp_path, f"--variant={bad}")
    assert proc.returncode != 0 and "--variant" in proc.stderr, (bad, proc.stderr[-500:])


def _experiment(name):
  """A module of experiments/, imported as the scripts import one another (experiments/ on the
  path)."""
  if EXPERIMENTS not in sys.path:
    sys.path.insert(0, EXPERIMENTS)
  return importlib.import_module(name)


def _analysis():
  """experiments/study_analysis.py."""
  return _experiment("study_analysis")


def test_paired_differences_of_a_variant():
  """paired(): ring minus uniform per method, and a variant minus its method's uniform arm,
  on the seeds both have; the standard error is std / sqrt(n)."""
  study = _analysis()

  def run(arm, negatives, seed, linear):
    return {"arm": arm, "method": "ir", "negatives": negatives, "seed": seed,
            **{m: None for m in study.PAIRED_METRICS}, "linear_top1": linear}

  runs = [run("ir_uniform", "uniform", 1, 0.80), run("ir_uniform", "uniform", 2, 0.82),
          run("ir_uniform", "uniform", 3, 0.81),
          run("ir_ring", "ring", 1, 0.81), run("ir_ring", "ring", 2, 0.85),
          run("ir_ring_wide", "ring", 2, 0.84), run("ir_ring_wide", "ring", 3, 0.80)]
  ring, wide = study.paired(runs)
  assert ring["label"] == "ir: ring - uniform" and ring["seeds"] == [1, 2]
  assert abs(ring["linear_top1"]["mean"] - 0.02) < 1e-12
  d = [0.01, 0.03]
  std = (sum((x - 0.02) ** 2 for x in d) / 1) ** 0.5
  assert abs(ring["linear_top1"]["se"] - std / 2 ** 0.5) < 1e-12
  assert wide["label"] == "ir_ring_wide - ir_uniform" and wide["seeds"] == [2, 3]
  assert [round(x, 12) for x in wide["linear_top1"]["diffs"]] == [0.02, -0.01]
  assert ring["knn_top1"]["mean"] is None


@pytest.mark.slow
def test_start_window_starts_nothing_late(tmp_path):
  """--start_window_minutes: no run starts after the window; the command says so and exits
  non-zero (the study is unfinished), and the same command later continues."""
  handlers = [signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)]
  proc = _in_process(*_study_args(tmp_path, extra=["--start_window_minutes=0"]))
  assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
  # The study's SIGTERM and SIGINT handlers are its loop's only: the caller's are back.
  assert [signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)] == handlers
  assert "start window over: 2 runs not started" in proc.stdout
  assert "start:" not in proc.stdout and not os.path.exists(tmp_path / "runs")
  proc = _in_process(*_study_args(tmp_path, extra=["--start_window_minutes=-1"]))
  assert proc.returncode != 0 and "--start_window_minutes: 0 or more" in proc.stderr


@pytest.mark.slow
def test_table_of_a_study(tmp_path):
  """--table prints the JSON's arms (mean ± std, in the study's arm order) and paired
  differences (mean ± standard error, seeds with a positive difference), running nothing."""
  study = _analysis()
  import study_arms

  def run(arm, negatives, seed, linear, share):
    return {"arm": arm, "method": "ir", "negatives": negatives, "seed": seed,
            "config": study_arms.arm_file(arm), "steps": 10, "epochs": 1, "wall_seconds": 120.0,
            "linear_top1": linear, "knn_top1": 0.5, "fewshot_10": None, "bound_nats": 1.0,
            "log_k_plus_1": 2.0, "false_negative_share": share}

  runs = [run("ir_ring", "ring", 1, 0.81, 0.4), run("ir_ring", "ring", 2, 0.85, 0.4),
          run("ir_uniform", "uniform", 1, 0.80, 0.1), run("ir_uniform", "uniform", 2, 0.82, 0.1)]
  data = {"runs": runs, "arms": study.arm_summaries(runs), "paired": study.paired(runs),
          "false_negative_chance": 0.1}
  out = tmp_path / "negatives.json"
  out.write_text(json.dumps(data, sort_keys=True))
  proc = _in_process("--table", f"--out={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.splitlines()
  rows = [line for line in lines if line.startswith("| ir")]
  std_u = (2 * 0.01 ** 2) ** 0.5   # seeds 0.80, 0.82 around 0.81
  assert rows[0].startswith(f"| ir_uniform | 1,2 | 0.810 ± {std_u:.3f} | 0.500 ± 0.000 | - |")
  assert "| 1.00 / 2.00 | 0.100 | 2 |" in rows[0]
  assert rows[1].startswith("| ir_ring | 1,2 | 0.830 ± 0.028 |")
  # differences 0.01, 0.03: mean 0.02, std 0.01414, se 0.01
  assert rows[2].startswith("| ir: ring - uniform | 1,2 | +0.020 ± 0.010 | +0.000 ± 0.000 | - |"
                            " +0.300 ± 0.000 | 2 / 0 / 0 of 2 | [-0.107, +0.147] / - |"), rows[2]
  assert not os.path.exists(tmp_path / "negatives.png")
  missing = subprocess.run([sys.executable, SCRIPT, "--table", f"--out={tmp_path / 'no.json'}"],
                           cwd=REPO, capture_output=True, text=True, timeout=120)
  assert missing.returncode != 0 and "no study JSON" in missing.stderr


def test_an_arm_of_its_own_fields(monkeypatch):
  """An arm that is a config file plus arm fields of its own (one ARMS entry): its flags, its
  workdir name, its paired label; a field of its own that is shared is refused."""
  _analysis()
  import study_arms
  monkeypatch.setitem(study_arms.ARMS, "ir_nce_arm",
                      study_arms.Arm("configs/ir.py", fields={"bound": "nce"},
                                     compare_to="ir_uniform"))
  values = study_arms.study_values("digits", True, 1, None, [])
  c, flags = study_arms.arm_plan("ir_nce_arm", "digits", values)
  uniform, uniform_flags = study_arms.arm_plan("ir_uniform", "digits", values)
  assert c.bound == "nce" and uniform.bound == "infonce"
  assert flags == uniform_flags + ["--config.bound=nce"]
  assert list(study_arms.arm_differences({"ir_uniform": uniform, "ir_nce_arm": c})) == ["bound"]
  assert study_arms.config_digest(c) != study_arms.config_digest(uniform)
  assert study_arms.run_name("ir_nce_arm", 1) == "ir_nce_arm_s1"
  runs = [{"arm": arm, "method": "ir", "negatives": "uniform", "seed": 1,
           "linear_top1": 0.8 + 0.01 * i} for i, arm in enumerate(("ir_uniform", "ir_nce_arm"))]
  (pair,) = _analysis().paired(runs)
  assert pair["label"] == "ir_nce_arm - ir_uniform" and pair["b"] == "uniform"
  assert abs(pair["linear_top1"]["mean"] - 0.01) < 1e-12
  monkeypatch.setitem(study_arms.ARMS, "ir_hot", study_arms.Arm("configs/ir.py",
                                                                 fields={"temperature": 0.2}))
  with pytest.raises(SystemExit, match="ir_hot: \\['temperature'\\] are shared fields"):
    study_arms.arm_plan("ir_hot", "digits", values)


def test_table_columns_of_other_bounds():
  """The arm table gains `bound` when the arms' bounds differ (a record without one is
  InfoNCE's) and `clamped fraction` when a run has one; without them it is the old table."""
  study = _analysis()

  def run(arm, seed, linear, **extra):
    return {"arm": arm, "method": "ir", "negatives": "uniform", "seed": seed, "config": "x",
            "steps": 10, "epochs": 1, "wall_seconds": 60.0, "linear_top1": linear,
            "knn_top1": 0.5, "fewshot_10": 0.4, "bound_nats": 1.0, "log_k_plus_1": 2.0,
            "false_negative_share": 0.1, **extra}

  old = [run("ir_uniform", 1, 0.80), run("ir_uniform", 2, 0.82)]
  new = old + [run("ir_dcl", 1, 0.81, bound="dcl", clamped_fraction=0.25),
               run("ir_dcl", 2, 0.85, bound="dcl", clamped_fraction=0.35)]
  plain = study.table({"runs": old, "arms": study.arm_summaries(old), "paired": []})
  assert plain.splitlines()[0].startswith("| arm | seeds | linear |")
  text = study.table({"runs": new, "arms": study.arm_summaries(new), "paired": []})
  lines = text.splitlines()
  assert lines[0].startswith("| arm | seeds | bound | clamped fraction | linear |")
  assert lines[1].count("|") == lines[0].count("|")
  assert lines[2].startswith("| ir_uniform | 1,2 | infonce | - | 0.810 ± ")
  assert lines[3].startswith("| ir_dcl | 1,2 | dcl | 0.300 | 0.830 ± ")
