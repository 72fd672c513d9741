"""The package's layout rules: no import circle, short functions, methods known by name only
inside methods/."""

import ast
import os
import re
import subprocess
import sys

import pytest

from helpers import REPO

PACKAGE = os.path.join(REPO, "mi_contrast")
MAX_FUNCTION_LINES = 80


def _modules():
  """{dotted module name: path} of every module of the package."""
  found = {}
  for root, _, names in os.walk(PACKAGE):
    for name in names:
      if name.endswith(".py"):
        path = os.path.join(root, name)
        dotted = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
        found[dotted.removesuffix(".__init__")] = path
  return found


def _imports(path, modules):
  """The package modules a module imports (anywhere in it, functions included): for
  `a.b.c`, also the package `a.b` whose __init__ runs first (not the top package)."""
  tree = ast.parse(open(path).read())
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names.add(node.module)
      names.update(f"{node.module}.{alias.name}" for alias in node.names)
  targets = set()
  for name in names:
    parts = name.split(".")
    for end in range(2, len(parts) + 1):
      if ".".join(parts[:end]) in modules:
        targets.add(".".join(parts[:end]))
  return targets


def test_no_import_circle_in_the_package():
  modules = _modules()
  # A module's own packages are importing it already (methods/ir.py importing
  # mi_contrast.methods.la runs no new __init__): those edges are not circles.
  ancestors = lambda m: {m.rsplit(".", k)[0] for k in range(1, m.count(".") + 1)}
  graph = {m: _imports(p, modules) - {m} - ancestors(m) for m, p in modules.items()}
  state = {}

  def visit(m, path):
    state[m] = "open"
    for n in sorted(graph[m]):
      if state.get(n) == "open":
        cycle = path[path.index(n):] + [n]
        pytest.fail("import circle: " + " -> ".join(cycle))
      if n not in state:
        visit(n, path + [n])
    state[m] = "done"

  for m in sorted(graph):
    if m not in state:
      visit(m, [m])


def test_no_function_in_the_package_is_longer_than_80_lines():
  long = []
  for dotted, path in _modules().items():
    for node in ast.walk(ast.parse(open(path).read())):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        lines = node.end_lineno - node.lineno + 1
        if lines > MAX_FUNCTION_LINES:
          long.append(f"{dotted}.{node.name}: {lines} lines")
  assert not long, long


def test_only_methods_know_a_method_by_name():
  pattern = re.compile(r"config\.method\s*(==|!=|in\b)")
  found = []
  for dotted, path in _modules().items():
    if dotted.startswith("mi_contrast.methods"):
      continue
    for number, line in enumerate(open(path), 1):
      if pattern.search(line):
        found.append(f"{dotted}:{number}: {line.strip()}")
  assert not found, found


@pytest.mark.slow   # child processes
def test_checks_is_a_leaf_and_config_and_methods_do_not_import_each_other():
  """checks.py imports nothing of the package; config imports methods only inside validate
  (methods never import config), so neither import pulls in the other."""
  tree = ast.parse(open(os.path.join(PACKAGE, "checks.py")).read())
  imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
  imported += [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
  assert not [m for m in imported if m.split(".")[0] == "mi_contrast"], imported
  code = ("import sys\n"
          "import mi_contrast.{0}\n"
          "assert 'mi_contrast.{1}' not in sys.modules, sorted(sys.modules)\n")
  for first, other in (("config", "methods"), ("methods", "config")):
    out = subprocess.run([sys.executable, "-c", code.format(first, other)], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
