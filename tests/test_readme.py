"""The README's promises: its snippet runs, its two commands are the documented ones, CI runs its
test command."""

import math
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SNIPPET_HEADING = "## Using the bounds in another JAX project"
TRAIN_COMMAND = ('pip install -e ".[train]" && python -m mi_contrast.main '
                 '--config=configs/ring.py --workdir=/tmp/mi_ring')
TEST_COMMAND = 'pip install -e ".[train,test,torch]" && pytest'


def _readme():
  with open(os.path.join(REPO, "README.md")) as f:
    return f.read()


def _snippet():
  section = _readme().split(SNIPPET_HEADING, 1)[1].split("\n## ", 1)[0]
  return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow   # over 2 s on a 2-core CPU
def test_bounds_snippet_runs(capsys):
  code = _snippet()
  assert "from mi_contrast import bounds, negatives" in code
  assert "negatives.band_negatives(" in code and "bounds.infonce(" in code
  exec(compile(code, "README.md", "exec"), {})
  out = capsys.readouterr().out
  band = re.search(r"band ([\d.]+) ([\d.]+) own row drawn (\w+)", out)
  assert band, out
  assert (float(band.group(1)), float(band.group(2))) == (0.9, 0.99)
  assert band.group(3) == "False"       # the anchor's own bank row is never its negative
  values = re.search(r"bound ([-\d.]+) nats, cap ([\d.]+) nats", out)
  assert values, out
  bound, cap = float(values.group(1)), float(values.group(2))
  assert abs(cap - round(math.log(65), 3)) < 1e-9       # 64 negatives: log(K + 1)
  assert bound <= cap


def test_snippet_is_in_the_first_120_lines():
  lines = _readme().splitlines()
  start = lines.index(SNIPPET_HEADING)
  end = lines.index("```python", start)
  assert lines.index("```", end + 1) < 120


def test_readme_is_a_front_door():
  text = _readme()
  assert len(text.splitlines()) <= 200
  begin, end = "<!-- BEGIN GENERATED: headline -->", "<!-- END GENERATED: headline -->"
  assert text.count(begin) == 1 and text.count(end) == 1 and text.index(begin) < text.index(end)


def test_readme_opens_with_the_two_commands_and_ci_runs_the_test_command():
  blocks = re.findall(r"```bash\n(.*?)```", _readme(), re.S)
  assert blocks[0].strip() == TRAIN_COMMAND
  assert blocks[1].strip() == TEST_COMMAND
  with open(os.path.join(REPO, ".ci", "run")) as f:
    ci = f.read()
  # CI installs what the README's test command installs, then runs its pytest.
  install = ci.index('python -m pip install -q -e ".[train,test,torch]"\n')
  assert ci.index("\npytest\n", install) > install     # the README's test command, after it
