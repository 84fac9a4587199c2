"""The documentation: README.md as the front door, docs/ as an mkdocs site.

Checks that the site builds with ``mkdocs build --strict``, that every relative link and image in
README.md and docs/*.md resolves to a file of the repository (and every ``#anchor`` into a markdown
page to one of its headings, with the slugs of both mkdocs and GitHub), and that the README stays
short and names the test command.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_MAX_BYTES = 12_000

FENCE = re.compile(r"^(```|~~~)")
INLINE_CODE = re.compile(r"`+[^`\n]*`+")
# [text](target) and ![alt](target); the text may hold one level of brackets ([`a[0]`](x.md))
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def _pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def _prose_lines(path: Path) -> list[str]:
    """The file's lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def _heading_text(raw: str) -> str:
    """A heading's text as rendered: no code ticks, emphasis markers or link targets."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", raw)
    text = text.replace("`", "")
    return re.sub(r"\*\*|(?<!\w)[*_]|[*_](?!\w)", "", text)


def slug_mkdocs(text: str) -> str:
    """Python-Markdown's toc slugify (mkdocs' default)."""
    value = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    value = re.sub(r"[^\w\s-]", "", value).strip().lower()
    return re.sub(r"[-\s]+", "-", value)


def slug_github(text: str) -> str:
    """GitHub's heading anchors: lowercase, punctuation dropped, each space a hyphen."""
    value = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return value.replace(" ", "-")


def _anchors(path: Path) -> tuple[set[str], set[str]]:
    mkdocs, github = set(), set()
    for line in _prose_lines(path):
        m = HEADING.match(line)
        if m:
            text = _heading_text(m.group(2))
            mkdocs.add(slug_mkdocs(text))
            github.add(slug_github(text))
    return mkdocs, github


def _links(path: Path) -> list[str]:
    found = []
    for line in _prose_lines(path):
        found.extend(LINK.findall(INLINE_CODE.sub("", line)))
    return found


def test_slugs_follow_mkdocs_and_github() -> None:
    assert slug_mkdocs("Pruning at ratio 0.9") == "pruning-at-ratio-09"
    assert slug_github("Pruning at ratio 0.9") == "pruning-at-ratio-09"
    assert slug_mkdocs("Flower's own CLI") == slug_github("Flower's own CLI") == "flowers-own-cli"
    assert slug_mkdocs(_heading_text("A device's own data (`data-path`)")) == "a-devices-own-data-data-path"
    assert slug_mkdocs("Self-training, federated") == "self-training-federated"


def test_pages_exist() -> None:
    assert README.is_file()
    assert (DOCS / "index.md").is_file()
    assert (ROOT / "mkdocs.yml").is_file()


def test_readme_is_short_and_names_the_test_command() -> None:
    size = README.stat().st_size
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes; at most {README_MAX_BYTES} (move detail to docs/)"
    text = README.read_text(encoding="utf-8")
    assert "make test" in text
    assert "make run" in text


@pytest.mark.parametrize("page", _pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    problems = []
    for target in _links(page):
        if SCHEME.match(target) or target.startswith("//"):
            continue  # external: not checked offline
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if not dest.exists():
            problems.append(f"{target}: no such file ({dest})")
            continue
        try:
            dest.relative_to(ROOT)
        except ValueError:
            problems.append(f"{target}: outside the repository")
            continue
        if anchor and dest.suffix == ".md":
            mkdocs, github = _anchors(dest)
            if anchor not in mkdocs or anchor not in github:
                problems.append(f"{target}: no heading with slug {anchor!r} in {dest.name} (mkdocs and GitHub)")
    assert not problems, f"{page.relative_to(ROOT)}:\n" + "\n".join(problems)


def test_every_docs_page_is_linked_from_the_index() -> None:
    linked = {t.partition("#")[0] for t in _links(DOCS / "index.md")}
    missing = [p.name for p in DOCS.glob("*.md") if p.name != "index.md" and p.name not in linked]
    assert not missing, f"docs/index.md does not link {missing}"


def test_mkdocs_strict_build(tmp_path: Path) -> None:
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed (pip install -e '.[dev]' installs it)")
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml")]
    proc = subprocess.run(
        [*cmd, "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    assert (site / "index.html").is_file()
    for page in DOCS.glob("*.md"):
        assert (site / page.with_suffix(".html").name).is_file(), f"{page.name} was not built"
