"""Run reports: plots and report.md from a synthetic metrics.jsonl, results.json, config.json."""

import json
import math
import os
import subprocess
import sys

import pytest

from mi_contrast import config as config_lib
from mi_contrast import report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

RESULTS = {
    "method": "ir", "negatives": "ring", "bound": "infonce", "dataset": "digits",
    "knn_top1": 0.9123, "nn1_top1": 0.8871, "linear_top1": 0.9456, "linear_top5": 0.9987,
    "raw_pixels_linear_top1": 0.9220, "random_init_knn_top1": 0.8161,
    "random_init_nn1_top1": 0.8189, "random_init_linear_top1": 0.6378,
    "bound_nats": 3.1416, "log_k_plus_1": math.log(65.0), "loss": -3.1416,
    "band_start": [0.0, 0.9], "band_end": [0.9, 0.99], "steps": 40, "resumed_from_step": 0,
    "wall_seconds": 12.5, "params_sha256": "ab" * 32, "params_l2": 26.5, "num_devices": 8,
    "num_train": 1438, "num_test": 359,
}


def _write_run(workdir, *, resumed=False):
  records = []
  for step in range(5, 45, 5):
    fraction = step / 40
    records.append({"step": step, "loss": 4.0 - 3 * fraction, "bound_nats": 3 * fraction,
                    "log_k_plus_1": math.log(65.0), "band_lower": 0.9 * fraction,
                    "band_upper": 0.9 + 0.09 * fraction, "ring_outer": 1.0 - 0.9 * fraction,
                    "learning_rate": 0.05})
    if step % 20 == 0:
      records.append({"step": step, "knn_top1": 0.5 + fraction / 3,
                      "nn1_top1": 0.45 + fraction / 3})
  if resumed:  # steps 25..30 logged again after a restart from the step-20 checkpoint
    records.append({"step": 25, "loss": 99.0, "bound_nats": 0.0,
                    "log_k_plus_1": math.log(65.0), "band_lower": 0.5, "band_upper": 0.95,
                    "ring_outer": 0.5, "learning_rate": 0.05})
  records.append({"step": 40, "knn_top1": RESULTS["knn_top1"], "nn1_top1": RESULTS["nn1_top1"],
                  "linear_top1": RESULTS["linear_top1"], "linear_top5": RESULTS["linear_top5"]})
  with open(workdir / "metrics.jsonl", "w") as f:
    for record in records:
      f.write(json.dumps(record) + "\n")
  with open(workdir / "results.json", "w") as f:
    json.dump(RESULTS, f)
  config = config_lib.default_config()
  config.negatives = "ring"
  config.width = 8
  config.num_epochs = 2
  with open(workdir / "config.json", "w") as f:
    f.write(config.to_json())


def test_report_files_and_numbers(tmp_path):
  _write_run(tmp_path)
  path = report.write_report(str(tmp_path))
  assert path == str(tmp_path / "report.md")
  for name in ("loss.png", "bound.png", "knn.png", "band.png"):
    data = (tmp_path / name).read_bytes()
    assert data.startswith(PNG_SIGNATURE), name
    assert data[12:16] == b"IHDR" and len(data) > 2000, name
  text = (tmp_path / "report.md").read_text()
  for value in ("0.9123", "0.8871", "0.9456", "0.9987", "0.9220", "3.1416", "4.1744"):
    assert value in text, value
  assert "[0.9000, 0.9900]" in text
  for name in ("loss.png", "bound.png", "knn.png", "band.png"):
    assert f"]({name})" in text
  # The configuration as overrides of its preset's defaults, and nothing else.
  assert "--config=configs/default.py:digits" in text
  assert "--config.negatives=ring" in text and "--config.width=8" in text
  assert "--config.num_epochs=2" in text
  assert "--config.seed" not in text and "--config.ring." not in text


def test_series_keeps_the_last_value_of_a_relogged_step(tmp_path):
  _write_run(tmp_path, resumed=True)
  records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  steps, losses = report.series(records, "loss")
  assert steps == sorted(set(steps)) == list(range(5, 45, 5))
  assert losses[steps.index(25)] == 99.0
  knn_steps, _ = report.series(records, "knn_top1")
  assert knn_steps == [20, 40]
  report.write_report(str(tmp_path))


def test_unfinished_run_and_not_a_run(tmp_path):
  _write_run(tmp_path)
  os.remove(tmp_path / "results.json")
  report.write_report(str(tmp_path))
  assert "has not finished" in (tmp_path / "report.md").read_text()
  with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
    report.write_report(str(tmp_path / "empty"))


@pytest.mark.slow
def test_report_runs_without_tensorflow(tmp_path):
  _write_run(tmp_path)
  code = ("import sys; sys.modules['tensorflow'] = None\n"  # any `import tensorflow` fails
          "from mi_contrast import report\n"
          f"report.write_report({str(tmp_path)!r})\n"
          "assert 'tensorflow' not in [m.split('.')[0] for m in sys.modules if sys.modules[m]]\n")
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join([REPO, env.get("PYTHONPATH", "")])
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert (tmp_path / "band.png").read_bytes().startswith(PNG_SIGNATURE)
