"""Do two reproduction reports hold the same results? Compares every rate, interval, reward and verdict; leaves out
what depends on the machine and the hour (the cost section, times, throughput, the machine line).

    python benchmarks/compare_reports.py reports/cpu/report.md runs/cpu/report.md

Prints a unified diff of the results that differ and exits 1, or says they are identical and exits 0. The check for
a change that must not move any number (a refactor, a speed change): run ``make reproduce`` before and after, and
compare the two reports with this.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from pathlib import Path

MACHINE_SECTIONS = ("Time, throughput and memory",)  # the cost of each stage: depends on the machine
MACHINE_COLUMNS = re.compile(r"time|tokens/s|s/step|GFLOP|memory|wall", re.I)
DURATION = re.compile(r"\b\d+(\.\d+)? ?(min|s|ms|h)\b")


def results_lines(text: str) -> list[str]:
    """The report's lines that carry results: sections about cost dropped, time columns and durations masked."""
    out, skip, drop = [], False, set()
    for line in text.splitlines():
        if line.startswith("## "):
            skip = any(name in line for name in MACHINE_SECTIONS)
        if skip or line.startswith(("Machine", "Hubinger et al.")):
            continue
        if line.startswith("|"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().removeprefix("|").removesuffix("|"))]
            if set("".join(cells)) <= set("-: "):  # the separator row
                line = "|" + "|".join(c for i, c in enumerate(cells) if i not in drop) + "|"
            elif not any(ch.isdigit() for ch in cells[0]) and any(MACHINE_COLUMNS.search(c) for c in cells):
                drop = {i for i, c in enumerate(cells) if MACHINE_COLUMNS.search(c)}  # a header row
                line = "| " + " | ".join(c for i, c in enumerate(cells) if i not in drop) + " |"
            else:
                line = "| " + " | ".join(c for i, c in enumerate(cells) if i not in drop) + " |"
        else:
            drop = set() if not line.strip() else drop
        out.append(DURATION.sub("<time>", line))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    args = parser.parse_args()
    a, b = (results_lines(p.read_text()) for p in (args.before, args.after))
    diff = list(difflib.unified_diff(a, b, str(args.before), str(args.after), lineterm="", n=0))
    if diff:
        print("\n".join(diff))
        sys.exit(1)
    print(f"Identical results: {args.before} and {args.after} ({len(a)} lines compared).")


if __name__ == "__main__":
    main()
