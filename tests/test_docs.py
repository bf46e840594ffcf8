"""The documentation stays navigable: every relative link and anchor in README.md and docs/ resolves, every page is
listed in docs/README.md, every docs/ path named by the code, configs, tests and tools exists, each figure is shown
by one page, next to the command that draws it, and the README stays under 12 KB (issue 33)."""

import re

import pytest

from conftest import ROOT

DOCS = ROOT / "docs"
PAGES = sorted([ROOT / "README.md", *DOCS.glob("*.md")])
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)


def prose(path):
    """A page's text without its fenced code blocks (their brackets are code, not links)."""
    return FENCE.sub("", path.read_text())


def anchors(path):
    """GitHub's anchors for a page's headings: lowercased, punctuation dropped, spaces as hyphens, repeats numbered."""
    seen, out = {}, set()
    for heading in re.findall(r"^#{1,6} (.+)$", prose(path), re.M):
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
        slug = re.sub(r"[^a-z0-9 _-]", "", text).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def links():
    for page in PAGES:
        for target in LINK.findall(prose(page)):
            if not re.match(r"[a-z]+:", target):
                yield page, target


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_and_anchor_resolves(page):
    broken = []
    for source, target in links():
        if source != page:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and anchor not in anchors(dest):
            broken.append(f"{target}: no heading with that anchor in {dest.name}")
    assert broken == []


def test_the_link_checker_sees_links_and_anchors():
    found = {(p.name, t) for p, t in links()}
    assert ("README.md", "docs/scaling.md") in found
    assert ("scaling-search.md", "scaling-cartpole.md#cartpole-v1-threshold-475") in found
    assert "cartpole-v1-threshold-475" in anchors(DOCS / "scaling-cartpole.md")
    assert "hvd-dqn-plan-what-a-job-will-do-before-it-runs" in anchors(DOCS / "usage.md")


def test_every_page_is_listed_in_the_docs_index():
    index = {t.partition("#")[0] for t in LINK.findall((DOCS / "README.md").read_text())}
    assert sorted(p.name for p in DOCS.glob("*.md") if p.name != "README.md" and p.name not in index) == []


def test_every_docs_path_the_repository_names_exists():
    named = set()
    for pattern in ("hvd_dqn/**/*.py", "configs/*.yaml", "benchmarks/**/*.py", "benchmarks/**/*.yaml", "tools/*.py"):
        for path in ROOT.glob(pattern):
            named |= set(re.findall(r"\bdocs/([\w.-]+\.(?:md|png))", path.read_text()))
    for path in ROOT.glob("tests/*.py"):
        if path.name != "test_docs.py":
            named |= set(re.findall(r"\bdocs/([\w.-]+\.(?:md|png))", path.read_text()))
    assert "scaling.md" in named  # the config's help names it
    assert sorted(n for n in named if not (DOCS / n).exists()) == []


def test_each_figure_is_shown_by_one_page_with_the_command_that_draws_it():
    for png in sorted(DOCS.glob("*.png")):
        shown = [p for p in PAGES if f"]({png.name})" in p.read_text() or f"](docs/{png.name})" in p.read_text()]
        assert len(shown) == 1, (png.name, [p.name for p in shown])
        assert re.search(rf"hvd-dqn plot [^\n`]* -o docs/{re.escape(png.name)}", shown[0].read_text()), png.name


def test_the_readme_is_under_12_kb():
    assert len((ROOT / "README.md").read_bytes()) < 12_000
