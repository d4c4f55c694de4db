"""Cluster launchers through submitit, on this machine: the local executor runs the same job code as SLURM (one
process per job, submitit's preemption signal and requeue); the SLURM submission is checked against an ``sbatch``
stub on the PATH. A real SLURM cluster is not used here."""
import copy
import os
import time
from pathlib import Path

import pytest
import torch

from yolo.checkpoint import load_checkpoint
from yolo.cluster import PREEMPTION_SIGNAL, JobSpec, TrainJob, make_executor
from yolo.fit import fit


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _task_pid(job, timeout_s: float = 60) -> int:
    """The process that runs the job's callable: the local executor's controller (pid = job id) starts it."""
    children = Path(f"/proc/{job.job_id}/task/{job.job_id}/children")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pids = children.read_text().split() if children.exists() else []
        if pids:
            return int(pids[0])
        time.sleep(0.01)
    raise AssertionError(f"job {job.job_id} started no task")


def _wait_for(path: Path, text: str, timeout_s: float = 120):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.is_file() and text in path.read_text():
            return
        time.sleep(0.01)
    raise AssertionError(f"{text!r} never appeared in {path}")


def test_a_preempted_job_requeues_and_ends_with_the_weights_of_an_uninterrupted_run(tiny_config, tmp_path):
    tiny_config.train.amp = "none"     # fp32: bf16 autocast on the CPU spends its first epoch warming up
    fit(tiny_config, progress=False)
    straight = load_checkpoint(tiny_config.run_dir / "last.pt")["model"]

    cfg = copy.deepcopy(tiny_config)
    cfg.name = "preempted"
    executor = make_executor("local", tmp_path / "jobs" / "%j", JobSpec(timeout_min=10))
    job = executor.submit(TrainJob(cfg))
    # what the local executor does at its time limit and SLURM at preemption: the signal to the job's process
    task = _task_pid(job)
    _wait_for(cfg.run_dir / "train.log", "epoch 1: VOC07")     # epoch 2 has begun (or is about to)
    os.kill(task, PREEMPTION_SIGNAL)
    metrics = job.result()

    log = (cfg.run_dir / "train.log").read_text()
    assert "SIGUSR2 (preemption or time limit)" in job.stderr()
    assert "Requeued job" in job.stdout() + job.stderr()
    assert "stopped at epoch 1 step 1;" in log and "resumed" in log        # stopped after one step of epoch 2
    assert (cfg.run_dir / "results.json").is_file() and metrics["voc07_map50"] is not None
    _assert_same_weights(straight, load_checkpoint(cfg.run_dir / "last.pt")["model"])
