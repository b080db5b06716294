"""Open every chapter in JupyterLab in a real browser (headless Chromium) and check that it renders.

    make browser-check            # or: python tests/browser_check.py [notebooks/02_implant_backdoor.ipynb ...]

Starts JupyterLab on 127.0.0.1 (a free port, a random token) at the repository root, opens each notebook of
notebooks/ and exercises/, and fails when a notebook shows fewer rendered cells than it has, or when a rendered
markdown table has rows of different lengths or a cell with a stray backtick (a bare ``|`` inside a code span in a
table cell cuts the span and shifts the row). A screenshot of each
chapter's first screen goes to runs/browser-check/. Needs Debian's ``chromium`` (``apt-get install chromium``).
Kernels are shut down after each notebook; nothing is executed but JupyterLab's own start of a kernel.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "runs" / "browser-check"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


class RenderedNotebook(HTMLParser):
    """Counts JupyterLab's rendered cells and the row lengths of every table in the page."""

    def __init__(self) -> None:
        super().__init__()
        self.cells = {"markdown": 0, "code": 0}
        self.tables: list[list[int]] = []
        self.broken_cells: list[str] = []  # table cells showing a literal backtick: a code span cut by a bare |
        self._table: list[int] | None = None
        self._row: int | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        classes = (dict(attrs).get("class") or "").split()
        if "jp-Cell" in classes and "jp-MarkdownCell" in classes:
            self.cells["markdown"] += 1
        elif "jp-Cell" in classes and "jp-CodeCell" in classes:
            self.cells["code"] += 1
        if tag == "table":
            self._table = []
        elif tag == "tr" and self._table is not None:
            self._row = 0
        elif tag in ("td", "th") and self._row is not None:
            self._row += 1
            self._cell = []

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            if "`" in "".join(self._cell):
                self.broken_cells.append("".join(self._cell).strip())
            self._cell = None
        if tag == "tr" and self._table is not None and self._row is not None:
            self._table.append(self._row)
            self._row = None
        elif tag == "table" and self._table is not None:
            self.tables.append(self._table)
            self._table = None


def problems(notebook: Path, dom: str) -> list[str]:
    """What is wrong with how ``notebook`` rendered, from the page's DOM (empty: it rendered)."""
    cells = json.loads(notebook.read_text())["cells"]
    page = RenderedNotebook()
    page.feed(dom)
    found = []
    for kind in ("markdown", "code"):
        expected = sum(c["cell_type"] == kind for c in cells)
        if page.cells[kind] < expected:
            found.append(f"{page.cells[kind]} of {expected} {kind} cells rendered")
    for table in page.tables:
        if len(set(table)) > 1:
            found.append(f"a table whose rows have {table} cells")
    found += [f"a table cell shows a stray backtick ({c!r}): escape | inside it as \\|" for c in page.broken_cells]
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _call(url: str, method: str = "GET"):
    with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=10) as response:
        body = response.read()
    return json.loads(body) if body else None


def main(paths: list[str]) -> int:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("browser-check needs Chromium: apt-get install chromium (Debian's package), then run it again.")
        return 2
    notebooks = [REPO / p for p in paths] or sorted([*REPO.glob("notebooks/*.ipynb"), *REPO.glob("exercises/*.ipynb")])
    port, token = _free_port(), secrets.token_hex(16)
    base = f"http://127.0.0.1:{port}"
    OUT.mkdir(parents=True, exist_ok=True)
    lab = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           f"--ServerApp.token={token}", f"--ServerApp.root_dir={REPO}", "--LabApp.news_url=None"]  # fmt: skip
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        lab.append("--allow-root")
    server = subprocess.Popen(lab, stdout=subprocess.DEVNULL, stderr=(OUT / "jupyterlab.log").open("w"))
    failed = 0
    try:
        for _ in range(60):  # JupyterLab up?
            try:
                _call(f"{base}/api/status?token={token}")
                break
            except OSError:
                time.sleep(1)
        else:
            print(f"JupyterLab did not start; see {OUT / 'jupyterlab.log'}")
            return 2
        for i, notebook in enumerate(notebooks):
            rel = notebook.relative_to(REPO).as_posix()
            url = f"{base}/lab/workspaces/check-{i}/tree/{rel}?reset&token={token}"  # this notebook alone
            common = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={OUT / 'profile'}", "--virtual-time-budget=30000"]
            dom = subprocess.run([*common, "--window-size=1400,2400", "--dump-dom", url], capture_output=True,
                                 text=True, timeout=180).stdout  # fmt: skip
            shot = OUT / f"{rel.replace('/', '-').removesuffix('.ipynb')}.png"
            subprocess.run([*common, "--window-size=1400,1600", f"--screenshot={shot}", url], capture_output=True,
                           timeout=180)  # fmt: skip
            found = problems(notebook, dom)
            failed += bool(found)
            print(f"{'FAIL' if found else 'ok  '} {rel}: " + ("; ".join(found) if found else f"screenshot {shot.name}"))
            for session in _call(f"{base}/api/sessions?token={token}") or []:  # shut the kernel it started
                _call(f"{base}/api/sessions/{session['id']}?token={token}", method="DELETE")
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"{len(notebooks) - failed} of {len(notebooks)} notebooks rendered; screenshots in {OUT}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
