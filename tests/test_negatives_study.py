"""experiments/negatives_study.py: --quick on two arms, one seed, a tiny budget; the JSON's
layout and records, the PNG, and later calls that read the finished runs (from their workdirs,
then, with the workdirs gone, from the JSON's records) instead of training them again. Plumbing only, not the science."""

import json
import os
import subprocess
import sys

from helpers import REPO, child_xla_flags, no_tensorflow

SCRIPT = os.path.join(REPO, "experiments", "negatives_study.py")
RUN_FIELDS = ("method", "negatives", "seed", "dataset", "num_train", "steps", "epochs",
              "linear_top1", "knn_top1", "fewshot_10", "false_negative_share", "wall_seconds",
              "commit", "bound_nats", "log_k_plus_1", "false_negative_chance")


def _study(tmp_path):
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join([no_tensorflow(tmp_path), REPO,
                                       env.get("PYTHONPATH", "")])
  env["XLA_FLAGS"] = child_xla_flags(1)
  cmd = [sys.executable, SCRIPT, "--quick", "--arms=ir_uniform,ir_ring", "--seeds=3",
         "--max_parallel=2",
         "--epochs=1", f"--out={tmp_path / 'negatives_quick.json'}",
         f"--workdir_root={tmp_path / 'runs'}",
         # a tiny network and probe: 11 steps of batch 128 each
         "--set=width=8", "--set=head_hidden=32", "--set=embedding_dim=16",
         "--set=num_negatives=64", "--set=probe_epochs=2"]
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return proc.stdout


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


def test_fashion_arms_share_every_field_but_their_own(tmp_path):
  """The fashion_mnist study's 7 arms (--dry_run: nothing trains): only the arm fields differ,
  and bank.candidates, which MoCo and SimCLR refuse (no bank), is 0 for them alone."""
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join([no_tensorflow(tmp_path), REPO,
                                       env.get("PYTHONPATH", "")])
  proc = subprocess.run([sys.executable, SCRIPT, "--dry_run",
                         f"--workdir_root={tmp_path / 'runs'}"],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  lines = proc.stdout.split("all others are shared):")[1].strip().splitlines()
  table = [line for line in lines if "mi_contrast.main" not in line]
  rows = {line.split()[0]: dict(kv.split("=") for kv in line.split()[1:]) for line in table}
  assert sorted(rows) == ["bank.candidates", "method", "negatives", "ring.outer"]
  assert rows["bank.candidates"] == {
      "ir_uniform": "8192", "ir_ring": "8192", "ir_ball": "8192", "moco_uniform": "0",
      "moco_ring": "0", "simclr_uniform": "0", "simclr_ring": "0"}
  commands = [line for line in proc.stdout.splitlines() if "mi_contrast.main" in line]
  assert len(commands) == 21 and all("--config.num_epochs=10" in c for c in commands)
