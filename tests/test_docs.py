"""Every relative link of README.md and docs/**/*.md resolves: to an existing file or folder,
and a `#anchor` into a markdown file to one of its headings (GitHub's slugs)."""

import glob
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = sorted(["README.md"] + [os.path.relpath(p, REPO) for p in
                                glob.glob(os.path.join(REPO, "docs", "**", "*.md"),
                                          recursive=True)])

_FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.S | re.M)
_COMMENT = re.compile(r"<!--.*?-->", re.S)
_CODE_SPAN = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)", re.S)
_INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]"          # [text] or ![alt]
                          r"\(\s*(?:<([^>]*)>|([^)\s]*))(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.M)
_HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)[ \t]*#*[ \t]*$", re.M)
_EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")     # https:, mailto:, ...


def _prose(text):
  """The text without fenced code, HTML comments and code spans (their brackets are no links)."""
  return _CODE_SPAN.sub("", _COMMENT.sub("", _FENCE.sub("", text)))


def links(text):
  """The link targets of a markdown text, in order: inline links, images and reference
  definitions, outside code."""
  prose = _prose(text)
  inline = [bracketed or bare for bracketed, bare in _INLINE_LINK.findall(prose)]
  return inline + _REFERENCE_DEFINITION.findall(prose)


def slug(heading):
  """GitHub's anchor of a heading's text: markup dropped, lower case, punctuation other than
  '-' and '_' removed, each space a '-'."""
  text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)        # a link: its text
  text = re.sub(r"<[^>]+>", "", text).replace("`", "")
  text = re.sub(r"(\*\*|__|\*|(?<!\w)_|_(?!\w))", "", text)
  return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(text):
  """Every heading anchor of a markdown text; repeated headings get -1, -2, ... as on GitHub."""
  seen, found = {}, set()
  for _, heading in _HEADING.findall(_COMMENT.sub("", _FENCE.sub("", text))):
    base = slug(heading)
    count = seen.get(base, 0)
    seen[base] = count + 1
    found.add(base if count == 0 else f"{base}-{count}")
  return found


def _read(path):
  with open(path, encoding="utf-8") as f:
    return f.read()


def broken_links(page):
  """The links of `page` (a path relative to the repository) that do not resolve, with why."""
  source = os.path.join(REPO, page)
  text = _read(source)
  broken = []
  for target in links(text):
    if not target or _EXTERNAL.match(target):
      continue
    path, _, anchor = target.partition("#")
    resolved = os.path.normpath(os.path.join(os.path.dirname(source), path)) if path else source
    if not os.path.exists(resolved):
      broken.append(f"{target}: no such file {os.path.relpath(resolved, REPO)}")
    elif anchor and resolved.endswith(".md") and anchor.lower() not in anchors(_read(resolved)):
      broken.append(f"{target}: {os.path.relpath(resolved, REPO)} has no heading #{anchor}")
  return broken


def test_slugs_follow_github():
  text = ("# The ring: which negatives\n## `band_negatives` and **ring_mask**\n"
          "## Evaluation protocol\n## Evaluation protocol\n```\n# not a heading\n```\n"
          "### IR's NCE (binary), K + 1\n")
  assert anchors(text) == {"the-ring-which-negatives", "band_negatives-and-ring_mask",
                           "evaluation-protocol", "evaluation-protocol-1",
                           "irs-nce-binary-k--1"}


def test_links_outside_code_are_found():
  text = ("See [a](a.md#x), ![img](b.png) and [c](<c d.md>).\n`[no](code.md)`\n"
          "```\n[no](fenced.md)\n```\n<!-- [no](comment.md) -->\n[ref]: e.md\n"
          "[web](https://example.com)\n")
  assert links(text) == ["a.md#x", "b.png", "c d.md", "https://example.com", "e.md"]


def test_code_cites_existing_sections():
  """`docs/<page>.md, "<heading>"` (or ``docs/<page>.md`` ("<heading>")) in the code names a
  heading of that page."""
  cited = re.compile(r"(docs/[\w/.-]+\.md)`*(?:, | \()\"([^\"]+)\"")
  wrong = []
  for folder in ("mi_contrast", "benchmarks", "experiments", "configs", "launch"):
    for path in glob.glob(os.path.join(REPO, folder, "**", "*.py"), recursive=True):
      text = re.sub(r"\s+", " ", _read(path))
      for page, heading in cited.findall(text):
        target = os.path.join(REPO, page)
        headings = ({h for _, h in _HEADING.findall(_FENCE.sub("", _read(target)))}
                    if os.path.exists(target) else set())
        if heading not in headings:
          wrong.append(f"{os.path.relpath(path, REPO)}: {page}, \"{heading}\"")
  if wrong:
    pytest.fail("citations of missing sections:\n  " + "\n  ".join(wrong))


@pytest.mark.parametrize("page", PAGES)
def test_relative_links_resolve(page):
  broken = broken_links(page)
  if broken:  # pytest.fail: the whole list, untruncated
    pytest.fail(f"{page}: broken links:\n  " + "\n  ".join(broken))
