"""The documentation: the MkDocs site builds strictly, and the README stays a short map.

The strict build fails on any warning: a broken link or anchor between pages, a page left
out of the navigation, or a docstring the API reference (generated from platform/emoray
by docs/gen_ref_pages.py) cannot render.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
MAX_README_LINES = 220

_FENCE = re.compile(r"^```.*?^```", re.S | re.M)
_INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE_LINK = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.M)


def test_the_site_builds_strictly(tmp_path):
    env = {**os.environ, "DISABLE_MKDOCS_2_WARNING": "true", "NO_COLOR": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{output[-6000:]}"
    assert (tmp_path / "index.html").is_file()
    assert (tmp_path / "reference" / "emoray" / "index.html").is_file(), \
        "the API reference was not generated"


def _relative_links(markdown: str) -> list[str]:
    text = _FENCE.sub("", markdown)                      # code blocks hold no links
    text = re.sub(r"`[^`\n]*`", "", text)                # nor do code spans
    targets = _INLINE_LINK.findall(text) + _REFERENCE_LINK.findall(text)
    return [t for t in targets
            if not re.match(r"^[a-z][a-z0-9+.-]*:", t, re.I) and not t.startswith("#")]


def test_the_readme_is_short_and_its_links_resolve():
    text = README.read_text(encoding="utf-8")
    lines = text.count("\n") + (not text.endswith("\n"))
    assert lines <= MAX_README_LINES, (
        f"README.md has {lines} lines (at most {MAX_README_LINES}): move the detail to docs/")
    links = _relative_links(text)
    assert links, "README.md links to no documentation page"
    broken = [t for t in links
              if not (README.parent / t.split("#", 1)[0]).exists()]
    assert not broken, f"README.md links to files that do not exist: {broken}"


def _layout_block() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Layout", 1)[1]
    return section.split("```", 2)[1]


def test_the_readme_layout_matches_the_tree():
    """Every package and module of platform/emoray and every top-level folder is in the
    README's layout, and every name the layout gives there exists."""
    block = _layout_block()
    package = REPO / "platform" / "emoray"
    named = set(re.findall(r"(?m)^  ([\w.]+/?)", block))          # entries under the package
    for line in re.findall(r"(?m)^  ((?:[\w]+\.py ?)+)\s{2,}", block):
        named |= set(line.split())                                 # "errors.py labels.py ..."
    tops = set(re.findall(r"(?m)^([\w.]+/)", block))
    have = {p.name + "/" for p in package.iterdir()
            if p.is_dir() and (p / "__init__.py").is_file()}
    have |= {p.name for p in package.glob("*.py") if not p.name.startswith("_")}
    assert not have - named, f"missing from the README layout: {sorted(have - named)}"
    assert not {n for n in named if not (package / n.rstrip("/")).exists()}, \
        f"the layout names what does not exist: {sorted(n for n in named if not (package / n.rstrip('/')).exists())}"
    for top in tops - {"platform/"}:
        assert (REPO / top).is_dir(), f"the layout names {top}, which does not exist"
