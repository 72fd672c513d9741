"""experiments/results_pages.py: the committed results pages are what the generator writes from
the committed records; a changed record makes its page stale, and rewriting replaces only the
generated blocks. Reads JSON only: no training, no jax."""

import glob
import json
import os
import shutil
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # not helpers: no jax here
EXPERIMENTS = os.path.join(REPO, "experiments")
if EXPERIMENTS not in sys.path:
  sys.path.insert(0, EXPERIMENTS)

import results_pages  # noqa: E402  (experiments/ is not a package)


def test_committed_pages_are_the_generators_output():
  pages, skipped = results_pages.render(REPO)
  assert set(pages) | set(skipped) == set(results_pages.PAGES)
  assert set(skipped) <= set(results_pages.OPTIONAL)
  stale = [page for page, (old, new) in pages.items() if old != new]
  assert not stale, f"run `{results_pages.REGENERATE}`: {stale} differ from their records"


def _copy(tmp_path):
  """The pages and every JSON record under a fresh root."""
  for pattern in ("experiments/results/*.json", "experiments/results/*.jsonl",
                  "benchmarks/results/*.json", "benchmarks/results/*.jsonl", "docs/**/*.md",
                  "README.md"):
    for path in glob.glob(os.path.join(REPO, pattern), recursive=True):
      target = tmp_path / os.path.relpath(path, REPO)
      target.parent.mkdir(parents=True, exist_ok=True)
      shutil.copy(path, target)
  return tmp_path


def _blocks(text):
  return {m["name"]: m["body"] for m in results_pages.MARKERS.finditer(text)}


def test_a_new_record_makes_its_page_stale_and_rewriting_keeps_the_prose(tmp_path):
  root = _copy(tmp_path)
  methods = root / results_pages.METHODS
  newest = results_pages.newest_methods(results_pages.Records(str(root)))["moco"]
  methods.write_text(methods.read_text() + json.dumps(
      {**newest, "linear_top1": 0.123456, "commit": "abcdef0123"}) + "\n")
  page = root / "docs" / "results" / "methods.md"
  before = page.read_text()

  stale, _ = results_pages.update(str(root), check=True)
  assert stale == ["docs/results/methods.md"] and page.read_text() == before
  stale, _ = results_pages.update(str(root))
  assert stale == ["docs/results/methods.md"]
  after = page.read_text()
  (moco,) = [line for line in after.splitlines() if line.startswith("| `moco.py`")]
  assert "| 0.123 |" in moco and "commit abcdef0" in moco
  # Only the generated block changed: the prose around it is the committed page's.
  assert results_pages.MARKERS.sub("", after) == results_pages.MARKERS.sub("", before)
  assert results_pages.update(str(root), check=True)[0] == []


def test_markers_must_match_the_blocks(tmp_path):
  root = _copy(tmp_path)
  page = root / "docs" / "results" / "fashion_mnist.md"
  text = page.read_text()
  page.write_text(text.replace("<!-- BEGIN GENERATED: curve -->", "<!-- BEGIN: curve -->"))
  with pytest.raises(results_pages.PageError, match="fashion_mnist.md: no markers for .*curve"):
    results_pages.render(str(root))
  page.write_text(text + "\n<!-- BEGIN GENERATED: nope -->\n<!-- END GENERATED: nope -->\n")
  with pytest.raises(results_pages.PageError, match="fashion_mnist.md: unknown .*'nope'"):
    results_pages.render(str(root))
  page.write_text(text)
  # Blocks are filled from the records, whatever a page held between its markers.
  emptied = results_pages.MARKERS.sub(
      lambda m: f"<!-- BEGIN GENERATED: {m['name']} -->\n<!-- END GENERATED: {m['name']} -->",
      text)
  page.write_text(emptied)
  assert results_pages.update(str(root))[0] == ["docs/results/fashion_mnist.md"]
  assert page.read_text() == text
  linear = [json.load(open(root / path))["linear_top1"]
            for path in results_pages.FASHION_SEEDS.values()]
  mean = sum(linear) / len(linear)
  std = (sum((x - mean) ** 2 for x in linear) / (len(linear) - 1)) ** 0.5
  assert f"| **mean ± std, 3 seeds** | {mean:.3f} ± {std:.3f} |" in _blocks(text)["seeds"]


def test_a_readme_without_markers_is_left_untouched(tmp_path):
  root = _copy(tmp_path)
  readme = root / "README.md"
  readme.write_text("# mi_contrast\n\nNo generated blocks here.\n")
  stale, skipped = results_pages.update(str(root))
  assert skipped == ["README.md"] and "README.md" not in stale
  assert readme.read_text() == "# mi_contrast\n\nNo generated blocks here.\n"
