"""Where a chapter's time goes: the wall time of each code cell of executed notebooks (nbclient's timestamps).

python benchmarks/cell_times.py runs/cpu/notebooks/05_hhh_rl.ipynb [--top 8]
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from pathlib import Path


def cell_seconds(path: Path) -> list[tuple[float, int, str]]:
    """``(seconds, code-cell index, first line)`` of every executed code cell of the notebook at ``path``."""
    cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    out = []
    for i, cell in enumerate(cells):
        times = cell.get("metadata", {}).get("execution", {})
        if "iopub.execute_input" in times and "shell.execute_reply" in times:
            start, end = (datetime.fromisoformat(times[k].replace("Z", "+00:00"))
                          for k in ("iopub.execute_input", "shell.execute_reply"))  # fmt: skip
            first = next((line for line in "".join(cell["source"]).splitlines() if not line.startswith("#")), "")
            out.append(((end - start).total_seconds(), i, first[:90]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=8, help="cells to list per notebook, slowest first")
    args = parser.parse_args()
    for path in args.notebooks:
        times = cell_seconds(path)
        print(f"{path.name}: {sum(t for t, _, _ in times) / 60:.1f} min in {len(times)} code cells")
        for seconds, i, first in sorted(times, reverse=True)[: args.top]:
            print(f"  {seconds:7.1f} s  cell {i:>2}  {first}")


if __name__ == "__main__":
    main()
