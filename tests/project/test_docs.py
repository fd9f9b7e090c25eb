"""The README and docs/: docs/cli.md is what the commands' --help says, the README stays a front
page, every relative link leads somewhere, and the text is written for readers."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
CLI_MD = DOCS / "cli.md"
PAGES = [README, *sorted(DOCS.glob("*.md"))]


def _gen_cli_docs():
    spec = importlib.util.spec_from_file_location("gen_cli_docs", ROOT / "scripts" / "gen_cli_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _prose(text: str) -> str:
    """The text without fenced code blocks (their lines become empty, so line numbers stay)."""
    out, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            out.append("")
        else:
            out.append("" if fenced else line)
    return "\n".join(out)


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, -1, -2 for repeats."""
    repeats: dict[str, int] = {}
    anchors = set()
    for line in _prose(page.read_text(encoding="utf-8")).splitlines():
        heading = re.match(r"#{1,6} +(.*?) *#* *$", line)
        if heading:
            slug = re.sub(r"[^\w\- ]", "", heading.group(1).lower()).replace(" ", "-")
            anchors.add(f"{slug}-{repeats[slug]}" if slug in repeats else slug)
            repeats[slug] = repeats.get(slug, 0) + 1
    return anchors


def _links(page: Path) -> list[str]:
    prose = re.sub(r"`[^`\n]*`", "", _prose(page.read_text(encoding="utf-8")))
    return re.findall(r"\[[^\]\n]*\]\(([^)\s]+)\)", prose)


def test_cli_docs_are_up_to_date() -> None:
    assert CLI_MD.is_file(), "docs/cli.md is missing: run `make docs`"
    assert CLI_MD.read_text(encoding="utf-8") == _gen_cli_docs().render(), (
        "docs/cli.md is out of date with the commands' --help: run `make docs`"
    )


def test_cli_docs_cover_every_console_script() -> None:
    tomllib = pytest.importorskip("tomllib")
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(_gen_cli_docs().entry_points()) == set(scripts)
    text = CLI_MD.read_text(encoding="utf-8")
    assert all(f"## `{name}`" in text for name in scripts)


def test_readme_is_a_front_page_of_at_most_200_lines() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move details to docs/"
    headings = [line[3:] for line in lines if line.startswith("## ")]
    order = ["Install", "Score a folder", "Evaluate on a schedule", "Train", "Results", "Documentation"]
    assert [h for h in headings if h in order] == order


def test_readme_keeps_the_two_commands_for_a_fresh_machine_and_ci_runs_its_test_command() -> None:
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    assert "make setup demo\n" in blocks
    assert "make setup && make test\n" in blocks
    ci = (ROOT / ".ci" / "run").read_text()
    assert "\nmake setup && make test\n" in ci, ".ci/run no longer runs the README's test command"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_to_an_existing_file(page: Path) -> None:
    broken = []
    for target in _links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
            broken.append(f"{target}: no such heading in {file.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


@pytest.mark.parametrize("page", [p for p in PAGES if p.parent == DOCS], ids=lambda p: p.name)
def test_a_long_docs_page_opens_with_a_table_of_contents(page: Path) -> None:
    lines = page.read_text(encoding="utf-8").splitlines()
    if len(lines) <= 100:
        return
    opening = lines[: next(i for i, line in enumerate(lines) if line.startswith("## "))]
    assert sum(bool(re.match(r"- \[.*\]\(#[^)]+\)$", line)) for line in opening) >= 2, (
        f"{page.name} has {len(lines)} lines: open it with a short table of contents"
    )


# Words for the people who built cxr, not for its readers. ("seed" alone is fine: a random seed.)
JARGON = [r"\bthe seed\b", r"\bseed's\b", r"\bthe issue\b", r"\bissue \d+", r"\blent\b", r"\bwaves?\b"]
# docs/cli.md is the commands' own --help, which still says "the seed's" (app/cli.py, app/train.py).
PLAIN_PAGES = [p for p in PAGES if p != CLI_MD]


@pytest.mark.parametrize("page", PLAIN_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_pages_are_in_plain_words(page: Path) -> None:
    found = [
        f"line {n}: {m.group(0)!r}"
        for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1)
        for pattern in JARGON
        for m in re.finditer(pattern, line, flags=re.I)
    ]
    assert not found, f"{page.relative_to(ROOT)}: " + "; ".join(found)
