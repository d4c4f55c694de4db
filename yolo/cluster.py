"""Sending training to a cluster through submitit: executors, the checkpointable training job, DDP from the job.

    python train.py --config configs/voc.yaml --launcher slurm --nodes 2 --gpus-per-node 4 --slurm-partition gpu
    python -m yolo.ablate --config configs/ablation/voc_cls_loss.yaml --launcher slurm --slurm-partition gpu

A job is a pickled callable that submitit runs on the allocated node(s) (``python -m submitit.core._submit``).
Preemption and time limits: the scheduler sends submitit's preemption signal (SIGUSR2, ``--signal=USR2@90`` in the
sbatch script; the local executor sends it ``signal_delay_s`` before its ``timeout_min``). Submitit's own handler
would checkpoint and requeue at once, in the middle of a step; instead the job takes the signal as a stop request
(the SIGTERM path of ``fit``: finish the step, save ``last.pt``, return), and only then hands it to submitit's
handler, which calls the job's ``checkpoint()`` (the same job, resuming ``last.pt``), stores it and requeues.
Resuming ``last.pt`` is exact, so a preempted run ends with the weights of an uninterrupted one.
"""
import dataclasses
import logging
import os
import re
import shutil
import signal
from pathlib import Path

import submitit

from yolo.errors import ConfigError
from yolo.fit import fit
from yolo.stop import StopRequest

logger = logging.getLogger(__name__)

PREEMPTION_SIGNAL = getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG)   # SUBMITIT_PREEMPT_SIGNAL, USR2
DEFAULT_TIMEOUT_MIN = 24 * 60   # the local executor's own default is 2 minutes, which would stop every run


class RunInterrupted(RuntimeError):
    """Training stopped before its last epoch (SIGINT / SIGTERM); running it again resumes it."""


@dataclasses.dataclass
class JobSpec:
    """What each job asks the scheduler for (submitit's generic names; ``slurm_params`` are passed through)."""
    timeout_min: int = DEFAULT_TIMEOUT_MIN
    nodes: int = 1
    tasks_per_node: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int | None = None
    partition: str | None = None
    array_parallelism: int | None = None
    signal_delay_s: int = 90          # the preemption signal comes this long before the time limit
    visible_gpus: tuple = ()          # local executor: the GPUs the job may see (CUDA_VISIBLE_DEVICES)
    slurm_params: dict = dataclasses.field(default_factory=dict)
    name: str = "yolo"


# ---------------------------------------------------------------------------------------------------------------
# executors


def _slurm_executor(folder, spec: JobSpec):
    for tool in ("sbatch", "srun"):
        if shutil.which(tool) is None:
            raise ConfigError(f"--launcher slurm: `{tool}` is not on the PATH; submit from a SLURM login node "
                              f"(or use --launcher local on this machine)")
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    params = dict(name=spec.name, timeout_min=spec.timeout_min, nodes=spec.nodes, tasks_per_node=spec.tasks_per_node,
                  gpus_per_node=spec.gpus_per_node or None, cpus_per_task=spec.cpus_per_task,
                  slurm_partition=spec.partition, slurm_array_parallelism=spec.array_parallelism,
                  slurm_signal_delay_s=spec.signal_delay_s)
    params.update({f"slurm_{k}": v for k, v in spec.slurm_params.items()})   # the pass-through wins
    try:
        executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
    except (NameError, ValueError, AssertionError) as exc:   # submitit's messages list the valid parameters
        raise ConfigError(f"bad SLURM parameter: {str(exc).splitlines()[0]}") from None
    return executor


def _local_executor(folder, spec: JobSpec):
    if spec.nodes != 1:
        raise ConfigError(f"--launcher local runs on this machine only: --nodes must be 1, got {spec.nodes}")
    executor = submitit.LocalExecutor(folder=folder)
    executor.update_parameters(timeout_min=spec.timeout_min, tasks_per_node=spec.tasks_per_node,
                               gpus_per_node=spec.gpus_per_node, visible_gpus=tuple(spec.visible_gpus),
                               signal_delay_s=spec.signal_delay_s)
    return executor


EXECUTORS = {"local": _local_executor, "slurm": _slurm_executor}


def make_executor(cluster: str, folder, spec: JobSpec):
    """A submitit executor for ``cluster`` (local | slurm) writing its scripts, pickles and logs in ``folder``."""
    if cluster not in EXECUTORS:
        raise ValueError(f"unknown cluster {cluster!r}; choices: {', '.join(EXECUTORS)}")
    return EXECUTORS[cluster](folder, spec)


def parse_slurm_params(items: list[str] | None) -> dict:
    """``["qos=high", "mem_gb=64"]`` -> {"qos": "high", "mem_gb": 64} (values parsed as YAML)."""
    import yaml
    params = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--slurm-param expects KEY=VALUE (an sbatch parameter of submitit), got {item!r}")
        params[key.replace("-", "_")] = yaml.safe_load(value)
    return params


def add_cluster_args(parser):
    """The options shared by ``train.py`` and ``python -m yolo.ablate`` for --launcher local / slurm."""
    group = parser.add_argument_group("cluster (--launcher local / slurm, through submitit)")
    group.add_argument("--job-dir", metavar="DIR", help="submitit's scripts, pickles and logs (%%j: the job id); "
                                                        "on shared storage for SLURM")
    group.add_argument("--timeout-min", type=int, default=DEFAULT_TIMEOUT_MIN,
                       help="time limit of each job in minutes; a run that reaches it is requeued and resumes")
    group.add_argument("--slurm-partition", metavar="NAME", help="SLURM partition")
    group.add_argument("--slurm-param", action="append", metavar="KEY=VALUE",
                       help="any other sbatch parameter submitit knows (qos=high, account=vision, mem_gb=64, "
                            "constraint=volta32gb, exclude=node7, ...); repeatable")
    return group


# ---------------------------------------------------------------------------------------------------------------
# inside a job


class PreemptionStop(StopRequest):
    """``fit``'s stop request, for a job: SIGTERM / SIGINT as in ``fit``, and submitit's preemption signal, which
    also marks the job for requeueing. Every rank of a DDP job listens; the ranks agree after each step
    (``yolo.stop.StopVote``), so a signal to any of them stops all of them after the same step, and all of them
    know whether it was a preemption."""

    def __init__(self):
        super().__init__()
        self.preempted = False

    def on_preemption(self, signum, frame):
        logger.warning("received %s (preemption or time limit): saving last.pt at the end of this step, then "
                       "requeueing", signal.Signals(signum).name)
        self.requested, self.signum, self.preempted = True, signum, True

    def agree(self, signum: int):
        super().agree(signum)
        self.preempted = self.preempted or signum == PREEMPTION_SIGNAL


def run_preemptible(work):
    """``work(stop)`` inside a submitit job, where ``work`` trains with ``fit(..., stop=stop)`` and raises
    ``RunInterrupted`` when training stopped early. On submitit's preemption signal the step ends, ``last.pt`` is
    saved, and submitit's own handler then calls the job's ``checkpoint()`` (the job that resumes ``last.pt``),
    stores it and requeues the job (it does not return; on the other ranks of a DDP job it returns, and the
    requeue ends them). Elsewhere ``work``'s result or error comes back as is."""
    stop = PreemptionStop()
    submitit_handler = signal.getsignal(PREEMPTION_SIGNAL)
    signal.signal(PREEMPTION_SIGNAL, stop.on_preemption)
    try:
        return work(stop)
    except RunInterrupted:
        if not (stop.preempted and callable(submitit_handler)):
            raise
    finally:
        signal.signal(PREEMPTION_SIGNAL, submitit_handler)
    submitit_handler(PREEMPTION_SIGNAL, None)


class TrainJob(submitit.helpers.Checkpointable):
    """``train.py`` as a job: ``fit(cfg)`` on every task (one DDP rank per task), resuming ``resume``; on
    preemption or at the time limit it requeues itself resuming its ``last.pt``."""

    def __init__(self, cfg, resume: str | None = None):
        self.cfg, self.resume = cfg, resume

    def __call__(self):
        return run_preemptible(self._train)

    def _train(self, stop):
        environment = submitit.JobEnvironment()
        os.environ.update(distributed_env(environment))
        metrics = fit(self.cfg, resume=self.resume, progress=False, stop=stop)
        if stop.requested:     # on every rank: they stopped together
            raise RunInterrupted(f"{self.cfg.run_dir} stopped before its last epoch")
        return metrics

    def checkpoint(self, *args, **kwargs):
        last = self.cfg.run_dir / "last.pt"
        resume = str(last) if last.is_file() else self.resume
        return submitit.helpers.DelayedSubmission(TrainJob(self.cfg, resume))


def distributed_env(environment) -> dict:
    """torchrun's variables for ``yolo.distributed`` from the job's tasks (nothing for a one-task job)."""
    if environment.num_tasks == 1:
        return {}
    return {"RANK": str(environment.global_rank), "WORLD_SIZE": str(environment.num_tasks),
            "LOCAL_RANK": str(environment.local_rank),
            "LOCAL_WORLD_SIZE": str(environment.num_tasks // environment.num_nodes),
            "MASTER_ADDR": environment.hostnames[0], "MASTER_PORT": str(master_port(environment.job_id))}


def master_port(job_id: str) -> int:
    """A port in 20000-39999 from the job id: the same for every task of a job, different between jobs."""
    digits = re.sub(r"\D", "", job_id) or "0"
    return 20000 + int(digits) % 20000


class JobFailed(RuntimeError):
    """A submitit job ended with an error (the message ends with its log file)."""


def job_log(job) -> str:
    """Where a job's errors went (its stderr file)."""
    return str(Path(job.paths.stderr))


def job_failure(job) -> str | None:
    """Why a job that has ended failed (the last line of its traceback, or the state it ended in, and its log),
    or None when it succeeded."""
    if not job.paths.result_pickle.exists():
        return f"job {job.job_id} ended ({job.state}) without a result; log: {job_log(job)}"
    error = job.exception()
    if error is None:
        return None
    parts = str(error).split("----------------------")   # submitit puts the traceback between two such lines
    lines = [line for line in (parts[1] if len(parts) > 2 else str(error)).splitlines() if line.strip()]
    return f"job {job.job_id} failed: {lines[-1].strip() if lines else type(error).__name__}; log: {job_log(job)}"
