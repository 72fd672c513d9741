"""The README's promises: its snippet runs, CI runs its test command."""

import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme():
  with open(os.path.join(REPO, "README.md")) as f:
    return f.read()


def test_bounds_snippet_runs(capsys):
  section = _readme().split("## Using the bounds in another JAX project", 1)[1]
  code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
  exec(compile(code, "README.md", "exec"), {})
  out = capsys.readouterr().out
  loss, bound, cap = map(float, re.findall(r"[-\d.]+(?= |$)", out.replace("nats", ""))[:3])
  assert bound <= cap + 1e-6 and abs(loss + bound) < 1e-5


def test_readme_opens_with_the_two_commands_and_ci_runs_the_test_command():
  blocks = re.findall(r"```bash\n(.*?)```", _readme(), re.S)
  assert "pip install -e ." in blocks[0] and "mi_contrast.main --config=configs/ring.py" in blocks[0]
  assert blocks[1].strip() == 'pip install -e ".[test,torch]" && pytest'
  with open(os.path.join(REPO, ".ci", "run")) as f:
    ci = f.read()
  assert 'pip install -q -e ".[test,torch]"\npytest\n' in ci
