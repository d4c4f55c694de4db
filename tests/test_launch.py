"""Cluster launchers through submitit, on this machine: the local executor runs the same job code as SLURM (one
process per job, submitit's preemption signal and requeue); the SLURM submission is checked against an ``sbatch``
stub on the PATH. A real SLURM cluster is not used here."""
import copy
import json
import os
import re
import time
from pathlib import Path

import pytest
import submitit
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


def _wait_for_file(path: Path, timeout_s: float = 120):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.is_file():
            return
        time.sleep(0.005)
    raise AssertionError(f"{path} never appeared")


@pytest.fixture
def one_thread(monkeypatch):
    """One thread here and in the jobs: the same arithmetic in both (and no OpenMP spinning against the other
    jobs of a busy 2-core machine, which slows a niced process down a hundredfold)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")   # the local executor's jobs inherit this environment
    yield
    torch.set_num_threads(threads)


def test_a_preempted_job_requeues_and_ends_with_the_weights_of_an_uninterrupted_run(tiny_config, tmp_path,
                                                                                   one_thread):
    tiny_config.data.img_size, tiny_config.model.channels = 32, 16     # a few seconds per epoch on a busy CPU
    tiny_config.train.amp = "none"     # fp32: bf16 autocast on the CPU spends its first epoch warming up
    fit(tiny_config, progress=False)
    straight = load_checkpoint(tiny_config.run_dir / "last.pt")["model"]

    cfg = copy.deepcopy(tiny_config)
    cfg.name = "preempted"
    executor = make_executor("local", tmp_path / "jobs" / "%j", JobSpec(timeout_min=10))
    job = executor.submit(TrainJob(cfg))
    # what the local executor does at its time limit and SLURM at preemption: the signal to the job's process
    task = _task_pid(job)
    _wait_for_file(cfg.run_dir / "last.pt")     # saved at the end of epoch 1: the signal comes during epoch 2
    os.kill(task, PREEMPTION_SIGNAL)
    metrics = job.result()

    log = (cfg.run_dir / "train.log").read_text()
    assert "SIGUSR2 (preemption or time limit)" in job.stderr()
    assert "Requeued job" in job.stdout() + job.stderr()
    stopped = re.search(r"stopped at epoch 1 step ([123]);", log)     # in the middle of epoch 2 (4 steps)
    assert stopped and f"resumed {cfg.run_dir / 'last.pt'} at epoch 1 step {stopped[1]}" in log
    assert (cfg.run_dir / "results.json").is_file() and metrics["voc07_map50"] is not None
    _assert_same_weights(straight, load_checkpoint(cfg.run_dir / "last.pt")["model"])


# ---------------------------------------------------------------------------------------------------------------
# the ablation grid


NOT_COMPARED = ("train_s", "eval_s")   # wall times


def _without_times(rows):
    return [{k: v for k, v in row.items() if k not in NOT_COMPARED} for row in rows]


def test_local_launcher_gives_the_in_process_table_and_reports_a_failed_job_with_its_log(tmp_path, one_thread):
    from test_ablate import _read_csv, _tiny, _write
    from yolo.ablate.cli import main, run_ablation
    from yolo.ablate.spec import load_ablation
    content = _tiny(tmp_path)
    content["tables"][0]["rows"] = content["tables"][0]["rows"][:2]           # ce and sigmoid focal, 2 seeds
    inprocess = run_ablation(load_ablation([_write(tmp_path / "a.yaml", content)]), tmp_path / "out",
                             progress=False)
    assert not inprocess["failures"] and len(inprocess["runs"]) == 4

    content["results"] = str(tmp_path / "local-results")                    # the same runs, and a broken one
    content["tables"][0]["rows"].append({"name": "broken", "overrides": {"model": {"pretrained": "/no/weights.pth"}}})
    path = _write(tmp_path / "b.yaml", content)
    code = main(["--config", str(path), "--output-dir", str(tmp_path / "local"), "--launcher", "local",
                 "--jobs", "2", "--no-progress"])
    assert code == 1                                                           # a run failed
    local_rows = _read_csv(tmp_path / "local-results" / "ablation.csv")
    assert _without_times(local_rows) == _without_times(_read_csv(tmp_path / "results" / "ablation.csv"))
    markdown = (tmp_path / "local-results" / "ablation.md").read_text()
    for seed in (0, 1):
        reason = re.search(rf"broken seed {seed} \(failed: job (\d+) failed: FileNotFoundError: --pretrained "
                           rf"/no/weights.pth: no such file.*?; log: (\S+_log\.err)\)", markdown)
        assert reason, markdown
        log = Path(reason[2])
        assert log.parent.parent == tmp_path / "local" / "jobs" and "FileNotFoundError" in log.read_text()
    assert len(list((tmp_path / "local-results" / "runs").glob("*.json"))) == 4   # the rest of the grid is kept


def _stub(path: Path, script: str) -> Path:
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)
    return path


def test_slurm_submits_one_array_job_per_missing_run_and_a_later_call_reports_running_and_failed_jobs(
        tmp_path, monkeypatch, capsys):
    """No SLURM here: ``sbatch`` is a stub that keeps the script it is given, ``sacct`` one that answers states."""
    from test_ablate import _tiny, _write
    from yolo.ablate.cli import main
    content = _tiny(tmp_path)
    content["tables"][0]["rows"] = content["tables"][0]["rows"][:2]
    path, out, scripts = _write(tmp_path / "a.yaml", content), tmp_path / "out", tmp_path / "sbatch"
    stubs = tmp_path / "bin"
    stubs.mkdir()
    scripts.mkdir()
    _stub(stubs / "sbatch", f'cp "$1" {scripts}/$(ls {scripts} | wc -l).sh\necho "Submitted batch job 4242"\n')
    _stub(stubs / "srun", "exit 0\n")
    _stub(stubs / "sacct", f"cat {tmp_path / 'sacct.txt'}\n")
    monkeypatch.setenv("PATH", f"{stubs}:{os.environ['PATH']}")
    args = ["--config", str(path), "--output-dir", str(out), "--launcher", "slurm", "--slurm-partition", "gpu",
            "--timeout-min", "90", "--gpus-per-run", "1", "--cpus-per-run", "6", "--array-parallelism", "2",
            "--slurm-param", "qos=high", "--no-progress"]
    assert main(args) == 0

    script = (scripts / "0.sh").read_text().splitlines()
    for line in ("#SBATCH --partition=gpu", "#SBATCH --time=90", "#SBATCH --gpus-per-node=1",
                 "#SBATCH --cpus-per-task=6", "#SBATCH --array=0-3%2", "#SBATCH --signal=USR2@90",
                 "#SBATCH --qos=high", "#SBATCH --job-name=ablate-a", "#SBATCH --nodes=1",
                 f"#SBATCH --output={out}/jobs/%A_%a/%A_%a_0_log.out",
                 f"#SBATCH --error={out}/jobs/%A_%a/%A_%a_0_log.err"):
        assert line in script, line
    assert any(line.startswith("srun ") and "-m submitit.core._submit" in line for line in script)
    jobs = json.loads((out / "jobs" / "jobs.json").read_text())["jobs"]
    assert sorted(jobs.values()) == [f"4242_{i}" for i in range(4)]
    for key, job_id in jobs.items():    # each array task holds the run it trains
        assert submitit.SlurmJob(out / "jobs" / "%j", job_id).submission().function.run.key == key
    assert "(SLURM job 4242_0 submitted)" in (tmp_path / "results" / "ablation.md").read_text()

    # later, without --wait: nothing is submitted again; what runs and what failed (with its log) is reported
    (tmp_path / "sacct.txt").write_text("JobID|State|NodeList\n4242_0|RUNNING|node1\n4242_1|FAILED|node2\n"
                                        "4242_[2-3%2]|PENDING|None assigned\n")
    submitit.SlurmJob.watcher.clear()
    capsys.readouterr()
    assert main(args) == 1
    assert len(list(scripts.iterdir())) == 1
    markdown = (tmp_path / "results" / "ablation.md").read_text()
    assert "(SLURM job 4242_0 running)" in markdown and "(SLURM job 4242_3 pending)" in markdown
    failed_log = out / "jobs" / "4242_1" / "4242_1_0_log.err"
    assert f"(failed: job 4242_1 ended (FAILED) without a result; log: {failed_log})" in markdown
    assert f"log: {failed_log}" in capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["--launcher", "pool"], "unknown launcher 'pool'; choices: inprocess, local, slurm"),
    (["--launcher", "local", "--wait"], "--wait is for --launcher slurm"),
    (["--launcher", "slurm"], "`sbatch` is not on the PATH"),
    (["--launcher", "slurm", "--slurm-param", "qos"], "--slurm-param expects KEY=VALUE"),
])
def test_bad_launcher_options_are_one_line_errors(tmp_path, monkeypatch, capsys, args, message):
    from test_ablate import _tiny, _write
    from yolo.ablate.cli import main
    monkeypatch.setenv("PATH", str(tmp_path))      # no sbatch here
    path = _write(tmp_path / "a.yaml", _tiny(tmp_path))
    assert main(["--config", str(path), "--output-dir", str(tmp_path / "out"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_train_py_submits_a_two_rank_ddp_job_whose_ranks_come_from_the_job(tiny_config, one_thread):
    """``--tasks-per-node 2`` on the local executor: the job's two tasks become DDP ranks 0 and 1 (gloo on the
    CPU), as the tasks of a multi-node SLURM job do."""
    import subprocess
    import sys
    from conftest import REPO, tiny_args
    args = tiny_args(tiny_config) + ["--epochs", "1", "--name", "ddp", "--launcher", "local", "--tasks-per-node", "2",
                                     "--gpus-per-node", "0"]
    result = subprocess.run([sys.executable, str(REPO / "train.py"), *args], capture_output=True, text=True,
                            cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "submitted local job" in result.stdout and '"voc07_map50"' in result.stdout
    run = tiny_config.run_dir.parent / "ddp"
    task_logs = sorted((run / "jobs").glob("*/*_log.out"))
    assert [("global_rank=0(2)" in log.read_text(), "global_rank=1(2)" in log.read_text()) for log in task_logs] \
        == [(True, False), (False, True)]
    assert (run / "train.log").read_text().count("epoch 1/1:") == 1     # rank 0 alone logs: one DDP run, not two
    assert load_checkpoint(run / "last.pt")["epoch"] == 1 and (run / "results.json").is_file()
