"""The light public API imports alone: no TensorFlow, no trainer."""

import subprocess
import sys


def test_public_modules_import_without_tensorflow_or_trainer():
  code = ("import sys, mi_contrast\n"
          "from mi_contrast import bounds, negatives, schedules, views\n"
          "heavy = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tensorflow_datasets')"
          " or m in ('mi_contrast.train', 'orbax', 'clu')]\n"
          "assert not heavy, heavy\n"
          "print(sorted(m for m in sys.modules if m.startswith('mi_contrast')))\n")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "mi_contrast.bounds" in out.stdout
