"""Tuning workers: claim a trial, train it as an ablation run, tell Optuna its best val mAP, repeat.

One worker runs in this process (``--jobs 1``), ``--jobs N`` in N spawned processes with the cores shared, or N
submitit jobs (``--launcher local``, ``--launcher slurm --workers N``). All of them share the journal; a stopped
worker (Ctrl-C, SIGTERM, preemption) saves its run's ``last.pt`` and releases its trial, which the next worker to
claim (the requeued job, or the same command run again) resumes.
"""
import logging
import multiprocessing
import multiprocessing.connection
import signal
import sys
import time
from pathlib import Path

import optuna
import submitit
import torch

from yolo.ablate.execute import (EXIT_INTERRUPTED, LOG_FORMAT, WorkerStop, raise_interrupted, stop_workers,
                                 on_device, run_one)
from yolo.ablate.spec import load_ablation
from yolo.cluster import RunInterrupted, job_failure, make_executor, run_preemptible
from yolo.hardware import cores_per_run
from yolo.tune.study import Tuning, best_val, claim_trial, heartbeat, open_tuning, release, trial_run

logger = logging.getLogger(__name__)


def work(tuning: Tuning, *, progress: bool = True, stop=None, runs_at_once: int = 1, device: str | None = None
         ) -> dict:
    """Claim and train trials until every row has its budget; returns ``{"trained": n, "failed": n}``.

    A trial whose training raises is told FAIL (it still counts against its row's budget: the compute was spent)
    with the error in its ``error`` attribute. ``RunInterrupted`` / Ctrl-C release the trial and propagate.
    """
    counts = {"trained": 0, "failed": 0}
    while (claim := claim_trial(tuning)) is not None:
        row, trial = claim
        run = on_device(trial_run(tuning, row, trial.params, trial.number), device)
        tuning.storage.set_trial_user_attr(trial._trial_id, "run", run.key)
        logger.info("%s trial %d: %s -> %s", row, trial.number, trial.params, run.name)
        try:
            with heartbeat(tuning, row, trial):
                result = run_one(run, tuning.ablation.selection, progress, stop, runs_at_once)
        except (RunInterrupted, KeyboardInterrupt):
            release(tuning, row, trial)
            raise
        except Exception as exc:      # one failed trial must not stop the study: logged, told, counted
            logger.exception("%s trial %d failed", row, trial.number)
            tuning.storage.set_trial_user_attr(trial._trial_id, "error", f"{type(exc).__name__}: {exc}")
            tuning.studies[row].tell(trial.number, state=optuna.trial.TrialState.FAIL)
            counts["failed"] += 1
            continue
        tuning.studies[row].tell(trial.number, best_val(result))
        logger.info("%s trial %d: best val %s %.4f", row, trial.number, "mAP", best_val(result))
        counts["trained"] += 1
    return counts


def _open(files, seeds, output_dir, results_dir) -> Tuning:
    return open_tuning(load_ablation(files, seeds), output_dir, results_dir)


def work_in_processes(files, seeds, output_dir, results_dir, jobs: int, devices: list[str] | None):
    """``jobs`` workers, each a spawned process with its share of the cores; SIGTERM / Ctrl-C stop all of them
    (each saves its run's ``last.pt``) and raise ``RunInterrupted``."""
    context = multiprocessing.get_context("spawn")
    threads = cores_per_run(jobs)
    processes = []
    previous = signal.signal(signal.SIGTERM, raise_interrupted)
    try:
        for slot in range(jobs):
            device = devices[slot % len(devices)] if devices else None
            args = (files, seeds, output_dir, results_dir, threads, jobs, device)
            processes.append(context.Process(target=_child, args=args, name=f"tune-worker-{slot}"))
            processes[-1].start()
        pending = {p.sentinel: p for p in processes}
        while pending:
            for sentinel in multiprocessing.connection.wait(list(pending)):
                process = pending.pop(sentinel)
                process.join()
                if process.exitcode == EXIT_INTERRUPTED:
                    raise RunInterrupted(f"{process.name} was interrupted; run the same command to resume")
                if process.exitcode != 0:
                    logger.error("%s ended with exit code %s (its log is above)", process.name, process.exitcode)
    finally:
        signal.signal(signal.SIGTERM, previous)
        stop_workers(processes)


def _child(files, seeds, output_dir, results_dir, threads: int, jobs: int, device):
    stop = WorkerStop()
    stop.install()
    logging.basicConfig(level=logging.INFO, format=f"[{multiprocessing.current_process().name}] {LOG_FORMAT}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(threads)
    try:
        work(_open(files, seeds, output_dir, results_dir), progress=False, stop=stop, runs_at_once=jobs,
             device=device)
    except RunInterrupted as exc:
        logger.warning("%s", exc)
        sys.exit(EXIT_INTERRUPTED)


class TuneWorker(submitit.helpers.Checkpointable):
    """A worker as a submitit job; on preemption or at its time limit it saves ``last.pt``, releases its trial
    and requeues itself, and the requeued job claims that trial first."""

    def __init__(self, files, seeds, output_dir, results_dir, threads: int | None = None, runs_at_once: int = 1):
        self.args = (files, seeds, output_dir, results_dir)
        self.threads, self.runs_at_once = threads, runs_at_once

    def __call__(self) -> dict:
        logging.basicConfig(level=logging.INFO, format=f"[tune worker] {LOG_FORMAT}")
        if self.threads:
            torch.set_num_threads(self.threads)
        return run_preemptible(lambda stop: work(_open(*self.args), progress=False, stop=stop,
                                                 runs_at_once=self.runs_at_once))

    def checkpoint(self, *args, **kwargs):
        return submitit.helpers.DelayedSubmission(TuneWorker(*self.args, self.threads, self.runs_at_once))


def submit_workers(launcher: str, workers: int, job_dir: Path, spec, files, seeds, output_dir, results_dir,
                   wait: bool) -> list:
    """``workers`` TuneWorker jobs through submitit (local: this machine's cores shared; slurm: one node each);
    waits for them when ``wait`` (always for local) and fails with the first failed job's reason."""
    executor = make_executor(launcher, job_dir, spec)
    threads = cores_per_run(workers) if launcher == "local" else None
    with executor.batch():                       # one SLURM array of ``workers`` tasks
        jobs = [executor.submit(TuneWorker(files, seeds, output_dir, results_dir, threads, workers))
                for _ in range(workers)]
    logger.info("%d %s tuning workers: %s (scripts and logs in %s)", workers, launcher,
                ", ".join(job.job_id for job in jobs), job_dir)
    if not wait and launcher == "slurm":
        return jobs
    while not all(job.done() for job in jobs):
        time.sleep(1.0 if launcher == "local" else 60.0)
    failures = [why for job in jobs if (why := job_failure(job))]
    if failures:
        raise RuntimeError(failures[0])
    return jobs
