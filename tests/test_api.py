"""The light public API imports alone: no TensorFlow, no trainer."""

import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow   # child processes


def test_public_modules_import_without_tensorflow_or_trainer():
  code = ("import sys, mi_contrast\n"
          "from mi_contrast import bounds, negatives, schedules, views\n"
          "heavy = [m for m in sys.modules"
          " if m.split('.')[0] in ('tensorflow', 'tensorflow_datasets')"
          " or m.split('.')[0] in ('flax', 'optax', 'orbax', 'ml_collections', 'clu',"
          " 'sklearn', 'matplotlib') or m == 'mi_contrast.train']\n"
          "assert not heavy, heavy\n"
          "print(sorted(m for m in sys.modules if m.startswith('mi_contrast')))\n")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "mi_contrast.bounds" in out.stdout


def test_plain_install_needs_only_jax_and_numpy():
  """setup.py: `pip install .` requires jax, jaxlib and numpy; the trainer's stack is the
  `train` extra (a fresh venv with the plain install runs bounds and negatives)."""
  import ast
  import os
  import re
  setup = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "setup.py")
  tree = ast.parse(open(setup).read())
  lists = {t.id: ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
           for t in n.targets if isinstance(t, ast.Name) and isinstance(n.value, ast.List)}
  name = lambda req: re.split(r"[<>=!~\[ ]", req)[0].lower()
  assert {name(r) for r in lists["INSTALL_REQUIRES"]} == {"jax", "jaxlib", "numpy"}
  assert {"flax", "optax", "orbax-checkpoint", "ml-collections"} <= {
      name(r) for r in lists["TRAIN_REQUIRES"]}

