"""Train a detector.

    python train.py                                   # the VOC reproduction recipe (needs data/VOCdevkit)
    python train.py --config configs/shapes.yaml      # the embedded synthetic dataset, no download
    python train.py --cls-loss sigmoid_focal --gamma 2 --alpha 0.25 --name focal
    python train.py --resume runs/focal/last.pt
    python train.py --config configs/shapes.yaml --time-budget 10m   # epochs and schedule sized to 10 minutes
    torchrun --nproc_per_node=4 train.py --config configs/voc.yaml
    python train.py --config configs/voc.yaml --launcher slurm --nodes 2 --gpus-per-node 4 --slurm-partition gpu

Every config field has a flag (python train.py --help); results go to runs/NAME/
(TensorBoard: tensorboard --logdir runs). Exit status: 0 trained, 1 the run failed (a non-finite loss, a failed
checkpoint write, a failed job), 2 bad input (config, data, checkpoint), 128 + N stopped by signal N (SIGTERM:
143, SIGINT: 130) after saving last.pt, to resume with --resume.
"""
import argparse
import json
import os
import signal
import sys

from yolo.checkpoint import CheckpointWriteError, load_checkpoint
from yolo.cluster import (JobFailed, JobSpec, TrainJob, add_cluster_args, job_failure, job_log, make_executor,
                          parse_slurm_params)
from yolo.config import add_config_args, config_from_args
from yolo.errors import ConfigError
from yolo.engine import NonFiniteLoss
from yolo.fit import fit
from yolo.losses.user import refuse_code_named_by_checkpoint
from yolo.stop import StopRequest


def train_here(cfg, args, stop) -> dict:
    """This process (one rank of torchrun)."""
    return fit(cfg, resume=args.resume, progress=not args.no_progress, stop=stop)


def submit(cfg, args, stop) -> dict | None:
    """A submitit job (local or SLURM): one DDP rank per task, requeued on preemption, resuming its last.pt.
    Waits for it (local, or slurm with --wait) and returns its metrics, else None."""
    tasks_per_node = args.tasks_per_node or max(args.gpus_per_node, 1)
    spec = JobSpec(timeout_min=args.timeout_min, nodes=args.nodes, tasks_per_node=tasks_per_node,
                   gpus_per_node=args.gpus_per_node, cpus_per_task=args.cpus_per_task, partition=args.slurm_partition,
                   slurm_params=parse_slurm_params(args.slurm_param), name=f"train-{cfg.name}")
    executor = make_executor(args.launcher, args.job_dir or cfg.run_dir / "jobs" / "%j", spec)
    job = executor.submit(TrainJob(cfg, args.resume))
    print(f"submitted {args.launcher} job {job.job_id} ({args.nodes} x {tasks_per_node} tasks) for {cfg.run_dir}; "
          f"log: {job_log(job)}")
    if args.launcher == "slurm" and not args.wait:
        return None
    job.wait()
    failure = job_failure(job)
    if failure:
        raise JobFailed(failure)
    return job.results()[0]   # rank 0's metrics


LAUNCHERS = {"inprocess": train_here, "local": submit, "slurm": submit}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Train a YOLOv1-style detector.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--resume", metavar="CKPT", help="continue a run exactly from its last.pt (config flags may "
                        "only raise --epochs or change where/how it runs: see README, 'Resuming')")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    parser.add_argument("--launcher", default="inprocess", metavar="NAME",
                        help=f"where to train: {', '.join(LAUNCHERS)} (default: inprocess, this process or "
                             f"torchrun; local / slurm: a submitit job, docs/cluster.md)")
    cluster = add_cluster_args(parser)
    cluster.add_argument("--nodes", type=int, default=1, help="slurm: nodes of the job")
    cluster.add_argument("--gpus-per-node", type=int, default=1, help="GPUs per node (default 1)")
    cluster.add_argument("--tasks-per-node", type=int, help="DDP ranks per node (default: --gpus-per-node)")
    cluster.add_argument("--cpus-per-task", type=int, help="CPUs of each rank")
    cluster.add_argument("--wait", action="store_true", help="slurm: wait for the job and print its metrics")
    add_config_args(parser)
    args = parser.parse_args(argv)
    try:
        if args.launcher not in LAUNCHERS:
            raise ConfigError(f"unknown launcher {args.launcher!r}; choices: {', '.join(LAUNCHERS)}")
        if args.wait and args.launcher != "slurm":
            raise ConfigError(f"--wait is for --launcher slurm (--launcher {args.launcher} always waits)")
        stored = load_checkpoint(args.resume)["config"] if args.resume else None
        if stored:   # a checkpoint never makes yolo import code: a user loss it names must be named here too
            refuse_code_named_by_checkpoint(stored, config_from_args(args).loss, f"--resume {args.resume}")
        cfg = config_from_args(args, base=stored)
        stop = StopRequest()
        metrics = LAUNCHERS[args.launcher](cfg, args, stop)
    except (ConfigError, FileNotFoundError, NonFiniteLoss, CheckpointWriteError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1  # bad input 2 (checkpoint, data, config); the run failed 1
    except JobFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if stop.requested:   # every rank stopped after the same step; last.pt holds it
        print(f"stopped by {signal.Signals(stop.code()).name}: resume with --resume {cfg.run_dir / 'last.pt'}",
              file=sys.stderr)
        return 128 + stop.code()
    if metrics and os.environ.get("RANK", "0") == "0":
        summary = {k: metrics[k] for k in ("voc07_map50", "voc_map50", "coco_ap", "coco_ap50")}
        print(f"{cfg.run_dir}: {json.dumps(summary)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
