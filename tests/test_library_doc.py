"""docs/library.md's promises: every python block runs in a fresh namespace (the shard_map
recipe on the 8 simulated devices of the tests) and prints what the page says of it, a block
followed by a text block prints exactly that text, and the page names every public name of the
four light modules."""

import contextlib
import io
import math
import os
import re

import pytest

from mi_contrast import bounds, negatives, schedules, views

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGE = os.path.join(REPO, "docs", "library.md")
# A fenced block: its language (group 1) and its body (group 2).
_BLOCK = re.compile(r"^```(\w*)\n(.*?)^```[ \t]*$", re.S | re.M)


def _page():
  with open(PAGE, encoding="utf-8") as f:
    return f.read()


def _blocks():
  """[(language, code, line)] of the page's fenced blocks, in order."""
  text = _page()
  return [(m.group(1), m.group(2), text.count("\n", 0, m.start()) + 1)
          for m in _BLOCK.finditer(text)]


def _python_blocks():
  """[(code, line, expected)]: each python block, and the text block right after it (only
  prose between them, no other block) as its expected output, or None."""
  blocks = _blocks()
  out = []
  for i, (language, code, line) in enumerate(blocks):
    if language != "python":
      continue
    follows = blocks[i + 1] if i + 1 < len(blocks) else None
    expected = follows[1] if follows and follows[0] == "text" else None
    out.append((code, line, expected))
  return out


def test_the_page_has_the_recipes():
  codes = [code for code, _, _ in _python_blocks()]
  assert len(codes) >= 5
  joined = "\n".join(codes)
  for needle in ("bounds.infonce(pos, scores, mask)", "negatives.ring_mask(",
                 "exclude_rows=rows", "schedules.linear(1.0, 0.1", "jax.shard_map(",
                 "anchor_ids=rows", "jax.lax.pmean(", "bounds.dcl(", "bounds.hcl("):
    assert needle in joined, needle


def _bounds_and_caps(printed):
  """[(bound, cap)] of every "bound B nats, cap C nats" a block printed."""
  return [(float(b), float(c))
          for b, c in re.findall(r"bound ([-\d.]+) nats, cap ([\d.]+) nats", printed)]


def _check_in_batch(printed):
  (_, cap), (_, ring_cap) = _bounds_and_caps(printed)
  assert cap == round(math.log(2 * 8 - 1), 3), printed      # 2N - 2 negatives, N = 8
  assert ring_cap == round(math.log(1 + 7), 3), printed     # ranks [1, 8) of 16 columns


def _check_bank(printed):
  assert len(_bounds_and_caps(printed)) >= 3, printed


def _check_shard_map(printed):
  found = re.search(r"(\d+) device\(s\): sharded loss ([-\d.]+), one program ([-\d.]+)",
                    printed)
  assert found and int(found.group(1)) == 8, printed          # the tests' simulated devices
  assert abs(float(found.group(2)) - float(found.group(3))) <= 2e-4, printed


# What a recipe prints is what the page says of it (the block is picked by a line of its code).
CHECKS = {"bounds.infonce(pos, scores, mask)": _check_in_batch, "def train_step(": _check_bank,
          "jax.shard_map(": _check_shard_map}


@pytest.mark.slow
@pytest.mark.parametrize("code,line,expected", [
    pytest.param(code, line, expected, id=f"line{line}")
    for code, line, expected in _python_blocks()])
def test_block_runs(code, line, expected):
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    exec(compile(code, f"docs/library.md:{line}", "exec"), {"__name__": "library_doc"})
  printed = out.getvalue()
  assert printed.strip(), f"the block at line {line} printed nothing"
  assert not re.search(r"\bnan\b", printed, re.I), printed
  if expected is not None:
    assert printed.strip() == expected.strip()
  for bound, cap in _bounds_and_caps(printed):
    assert bound <= cap, printed
  for needle, check in CHECKS.items():
    if needle in code:
      check(printed)


@pytest.mark.parametrize("module", [bounds, negatives, schedules, views],
                         ids=lambda m: m.__name__)
def test_every_public_name_is_listed(module):
  glance = _page().split("## API at a glance", 1)[1].split("\n## ", 1)[0]
  missing = [name for name in module.__all__
             if not re.search(r"`(?:[\w.]+\.)?" + re.escape(name) + r"(?:`|\()", glance)]
  assert not missing, f"{module.__name__}: not in 'API at a glance': {missing}"
