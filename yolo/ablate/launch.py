"""Where the runs of an ablation train: the launchers behind ``--launcher``.

    inprocess   this machine, one run after another or ``--jobs N`` spawned processes (``execute.execute``)
    local       this machine through submitit's local executor: the job code SLURM runs (one process per run, the
                preemption signal, requeue), ``--jobs N`` at a time, one visible GPU each
    slurm       a SLURM job array through submitit: one job per run without a result; ``--wait`` follows them,
                otherwise a later invocation collects what finished and lists what still runs or failed

Every launcher returns ``(results, failures, running)``: ``{run key: result}`` of the runs with a complete result,
``{run key: why it failed}`` (a submitit job's reason ends with its log path) and ``{run key: job state}``.
"""
import dataclasses
import json
import logging
import os
import time
from pathlib import Path

import submitit
import torch

from yolo.ablate.execute import (LOG_FORMAT, Progress, cached_results, check_precision, execute, on_device,
                                 prepare_runs, run_one)
from yolo.ablate.plan import Run
from yolo.ablate.results import missing_scores, read_result
from yolo.cluster import JobSpec, job_failure, job_log, make_executor, run_preemptible
from yolo.errors import ConfigError
from yolo.hardware import cores_per_run

logger = logging.getLogger(__name__)

POLL_S = {"local": 1.0, "slurm": 60.0}     # how often a waiting launcher looks at its jobs
SLURM_ACTIVE = ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED",
                "REQUEUE_HOLD", "REQUEUE_FED", "PREEMPTED",   # PREEMPTED: until its requeued job shows up
                "UNKNOWN")                                    # UNKNOWN: sacct did not answer (yet)


@dataclasses.dataclass
class LaunchOptions:
    """How to run the runs (``python -m yolo.ablate --help`` describes each option)."""
    jobs: int = 1                         # inprocess / local: runs at a time
    devices: list[str] | None = None      # inprocess / local: device of each slot
    progress: bool = True
    job_dir: Path | None = None           # local / slurm: submitit's folder (default OUTPUT/jobs/%j)
    spec: JobSpec = dataclasses.field(default_factory=JobSpec)
    wait: bool = False                    # slurm: follow the jobs until they end
    retry_failed: bool = False            # slurm: submit the runs whose job failed again
    allow_emulated_bf16: bool = False     # inprocess / local: train runs pinned to bf16 on a device without it


class AblationRun(submitit.helpers.Checkpointable):
    """One run of the grid as a submitit job: ``run_one`` (train or resume, score, write the result file), requeued
    on preemption or at the time limit, when it resumes its ``last.pt``."""

    def __init__(self, run: Run, selection: str, threads: int | None = None, runs_at_once: int = 1):
        self.run, self.selection, self.threads, self.runs_at_once = run, selection, threads, runs_at_once

    def __call__(self) -> dict:
        logging.basicConfig(level=logging.INFO, format=f"[{self.run.name}] {LOG_FORMAT}")
        if self.threads:
            torch.set_num_threads(self.threads)   # the local executor's jobs share this machine's cores
        return run_preemptible(lambda stop: run_one(self.run, self.selection, progress=False, stop=stop,
                                                    runs_at_once=self.runs_at_once))

    def checkpoint(self, *args, **kwargs):
        return submitit.helpers.DelayedSubmission(AblationRun(self.run, self.selection, self.threads,
                                                              self.runs_at_once))


def launch(name: str, runs: list[Run], selection: str, output_dir, options: LaunchOptions):
    """Run the runs of ``runs`` without a complete result with the launcher ``name``; see the module docstring."""
    if name not in LAUNCHERS:
        raise ConfigError(f"unknown launcher {name!r}; choices: {', '.join(LAUNCHERS)}")
    if options.wait and name != "slurm":
        raise ConfigError(f"--wait is for --launcher slurm (--launcher {name} always waits for its runs)")
    if name != "slurm":     # a SLURM job's node is not this machine: its own run logs the precision it got
        done = cached_results(runs, selection)
        check_precision([run for run in runs if run.key not in done], options.devices, options.allow_emulated_bf16)
    job_dir = Path(options.job_dir or Path(output_dir) / "jobs" / "%j")
    return LAUNCHERS[name](runs, selection, job_dir, options)


def _inprocess(runs, selection, job_dir, options):
    results, failures = execute(runs, selection, jobs=options.jobs, devices=options.devices,
                                progress=options.progress)
    return results, failures, {}


# ---------------------------------------------------------------------------------------------------------------
# local


def _local(runs, selection, job_dir, options):
    results, todo = prepare_runs(runs, selection)
    executor = make_executor("local", job_dir, options.spec)
    threads = cores_per_run(options.jobs)
    clock, failures, queue, free, alive = Progress(len(todo), selection), {}, list(todo), list(range(options.jobs)), {}
    logger.info("local jobs: scripts and logs in %s", job_dir)
    try:
        while queue or alive:
            while queue and free:
                slot, run = free.pop(0), queue.pop(0)
                run, gpu = _slot_gpu(run, slot, options.devices)
                executor.update_parameters(gpus_per_node=0 if gpu is None else 1,
                                           visible_gpus=() if gpu is None else (gpu,))
                logger.info(clock.start(run))
                alive[slot] = (executor.submit(AblationRun(run, selection, threads, options.jobs)), run)
            time.sleep(POLL_S["local"])
            for slot, (job, run) in list(alive.items()):
                if job.done():
                    del alive[slot]
                    free.append(slot)
                    _collect(job, run, selection, results, failures)
                    logger.info(clock.finish(run, results.get(run.key)))
    except KeyboardInterrupt:   # Ctrl-C reached the jobs too: they save a checkpoint and stop; wait for that
        for job, _ in alive.values():
            job.wait()
        raise
    return results, failures, {}


def _slot_gpu(run: Run, slot: int, devices: list[str] | None) -> tuple[Run, int | None]:
    """The GPU a local job of ``slot`` sees (None: no GPU), and the run set to train on it.

    Submitit's local executor hides every GPU from a job that asks for none (CUDA_VISIBLE_DEVICES="") and shows
    the one a job asks for as ``cuda:0``."""
    device = devices[slot % len(devices)] if devices else run.cfg.train.device
    count = torch.cuda.device_count()
    if device.startswith("cuda"):
        index = torch.device(device).index
        gpu = index if index is not None else slot % max(count, 1)
    else:
        gpu = slot % count if device == "auto" and count else None
    return on_device(run, "cuda:0" if gpu is not None else device), gpu


def _collect(job, run: Run, selection: str, results: dict, failures: dict):
    """The ended job's result file into ``results``, or why it has none (with the job's log) into ``failures``."""
    result = read_result(run)
    if result is not None and not missing_scores(result, run, selection):
        results[run.key] = result
        return
    failures[run.key] = job_failure(job) or f"job {job.job_id} ended without a complete result; log: {job_log(job)}"
    logger.error("run %s failed: %s", run.name, failures[run.key])


# ---------------------------------------------------------------------------------------------------------------
# slurm


def _slurm(runs, selection, job_dir, options):
    executor = make_executor("slurm", job_dir, options.spec)    # checks sbatch and the parameters first
    results, todo = prepare_runs(runs, selection)
    record = jobs_record(job_dir)
    failures, running, submit = {}, {}, []
    for run in todo:
        job = _recorded_job(record, run, job_dir)
        state = None if job is None else _slurm_state(job)
        if state in SLURM_ACTIVE:
            running[run.key] = f"SLURM job {job.job_id} {state.lower()}"
        elif job is not None and not options.retry_failed:
            _collect(job, run, selection, results, failures)
        else:
            submit.append(run)
    if submit:
        jobs = _submit_array(executor, submit, selection, job_dir)
        record["jobs"].update({run.key: job.job_id for run, job in zip(submit, jobs)})
        _write_record(job_dir, record)
        running.update({run.key: f"SLURM job {job.job_id} submitted" for run, job in zip(submit, jobs)})
    if options.wait:
        _follow(todo, selection, job_dir, record, results, failures, running)
    return results, failures, running


def _submit_array(executor, runs: list[Run], selection: str, job_dir) -> list:
    """One job per run, as one SLURM job array (``--array-parallelism`` of them at a time)."""
    with executor.batch():
        jobs = [executor.submit(AblationRun(run, selection)) for run in runs]
    logger.info("submitted %d runs as SLURM job array %s; logs in %s", len(jobs), jobs[0].job_id.split("_")[0],
                job_dir)
    return jobs


def _follow(todo, selection, job_dir, record, results, failures, running):
    """Wait for the jobs of ``running``, logging each as it ends, and collect them."""
    jobs = {_recorded_job(record, run, job_dir): run for run in todo if run.key in running}
    clock = Progress(len(jobs), selection)
    logger.info("waiting for %d SLURM jobs (Ctrl-C stops waiting, not the jobs)", len(jobs))
    for job in submitit.helpers.as_completed(list(jobs), poll_frequency=POLL_S["slurm"]):
        run = jobs[job]
        running.pop(run.key)
        _collect(job, run, selection, results, failures)
        logger.info(clock.finish(run, results.get(run.key)))


def _slurm_state(job) -> str:
    """The scheduler's state of a job (``sacct``), or COMPLETED once submitit has written its outcome."""
    return "COMPLETED" if job.paths.result_pickle.exists() else job.state.split(" ")[0]


def jobs_record(job_dir) -> dict:
    """``jobs.json`` of the job folder: ``{"jobs": {run key: SLURM job id}}`` (empty before the first submission)."""
    path = _record_path(job_dir)
    return json.loads(path.read_text()) if path.is_file() else {"jobs": {}}


def _write_record(job_dir, record: dict):
    path = _record_path(job_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, path)


def _record_path(job_dir) -> Path:
    return submitit.core.utils.JobPaths.get_first_id_independent_folder(Path(job_dir)) / "jobs.json"


def _recorded_job(record: dict, run: Run, job_dir):
    job_id = record["jobs"].get(run.key)
    return None if job_id is None else submitit.SlurmJob(folder=job_dir, job_id=job_id)


LAUNCHERS = {"inprocess": _inprocess, "local": _local, "slurm": _slurm}
