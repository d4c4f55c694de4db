"""``python -m yolo.tune``: tune every row with the same budget, then retrain each row's best with fresh seeds."""
import argparse
import logging
import shlex
import sys
from pathlib import Path

import optuna

from yolo.ablate.cli import parse_devices, run_ablation
from yolo.ablate.execute import LOG_FORMAT, RunInterrupted, check_precision
from yolo.ablate.spec import load_ablation
from yolo.cluster import JobSpec, add_cluster_args, parse_slurm_params
from yolo.errors import ConfigError
from yolo.tune.outcome import write_outcome
from yolo.tune.report import read_best, seeds_ablation, write_tuning_report
from yolo.tune.study import open_tuning, trial_run
from yolo.tune.worker import submit_workers, work, work_in_processes

STAGES = ("tune", "seeds", "all")
LAUNCHERS = ("inprocess", "local", "slurm")


def tune_stage(args, files, output_dir: Path, results_dir: Path, command: str) -> dict:
    """Run the workers (unless --report-only), then write the tuning report; returns it, with ``done``: whether
    every row has finished its budget."""
    tuning = open_tuning(load_ablation(files), output_dir, results_dir)
    if not args.report_only:
        if args.launcher != "slurm":
            _check_precision(tuning, parse_devices(args.devices), args.allow_emulated_bf16)
        for variant in tuning.ablation.variants().values():
            tuning.fingerprints(variant.cfg)        # the data exists (shapes: generated) before workers start
        if args.launcher == "inprocess" and args.jobs == 1:
            work(tuning, progress=not args.no_progress, device=(parse_devices(args.devices) or [None])[0])
        elif args.launcher == "inprocess":
            work_in_processes(files, None, output_dir, results_dir, args.jobs, parse_devices(args.devices))
        else:
            spec = JobSpec(timeout_min=args.timeout_min, gpus_per_node=args.gpus_per_run,
                           cpus_per_task=args.cpus_per_run, partition=args.slurm_partition,
                           slurm_params=parse_slurm_params(args.slurm_param), name=f"tune-{tuning.ablation.name}")
            workers = args.jobs if args.launcher == "local" else args.workers
            job_dir = Path(args.job_dir or output_dir / "jobs" / "%j")
            submit_workers(args.launcher, workers, job_dir, spec, files, None, output_dir, results_dir,
                           wait=args.wait)
    report = write_tuning_report(tuning, command)
    return {**report, "done": set(report["best"]) == set(tuning.studies)}


def _check_precision(tuning, devices, allow: bool):
    """Refuse up front (one line) trials pinned to bf16 on a device that only emulates it, as yolo.ablate does."""
    probes = [trial_run(tuning, row, {}, 0) for row in tuning.studies]
    check_precision(probes, devices, allow)


def seeds_stage(args, files, output_dir: Path, results_dir: Path, command: str) -> dict | None:
    """Retrain each row's best trial with fresh seeds and write the ablation report and ``tuned.md`` (the
    selection on val; with ``tune.defaults``, the defaults against the tuned rows); None while a row's budget is
    unfinished (nothing to retrain yet)."""
    ablation = load_ablation(files)
    tuning = open_tuning(ablation, output_dir, results_dir)
    best = read_best(results_dir)
    missing = [row for row in tuning.studies if row not in best]
    if missing:
        print(f"seeds stage: the tuning of {', '.join(missing)} has not finished ({results_dir / 'best.yaml'}); "
              f"run the tune stage first", file=sys.stderr)
        return None
    launch = {"job_dir": args.job_dir, "wait": args.wait, "allow_emulated_bf16": args.allow_emulated_bf16,
              "spec": JobSpec(timeout_min=args.timeout_min, gpus_per_node=args.gpus_per_run,
                              cpus_per_task=args.cpus_per_run, partition=args.slurm_partition,
                              slurm_params=parse_slurm_params(args.slurm_param), name=f"seeds-{ablation.name}")}
    out = run_ablation(seeds_ablation(ablation, tuning.spec, best, args.seeds), output_dir, results_dir=results_dir,
                       jobs=args.jobs, devices=parse_devices(args.devices), progress=not args.no_progress,
                       report_only=args.report_only, command=command, launcher=args.launcher, launch_options=launch)
    out["paths"]["tuned"] = write_outcome(tuning, out, best, command)
    return out


def build_parser() -> argparse.ArgumentParser:
    from yolo import tune
    parser = argparse.ArgumentParser(prog="python -m yolo.tune", epilog=tune.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     description="Tune every row of an ablation file with the same budget on val, "
                                                 "then retrain each row's best with fresh seeds on test.")
    parser.add_argument("--config", nargs="+", required=True, metavar="FILE", help="ablation file(s) with a "
                                                                                   "`tune` section")
    parser.add_argument("--stage", default="all", choices=STAGES,
                        help="tune: the trials; seeds: retrain the best trials; all: tune, then seeds once every "
                             "row's budget has finished (default)")
    parser.add_argument("--seeds", type=int, help="seeds stage: number of fresh seeds (default: tune.seeds)")
    parser.add_argument("--output-dir", metavar="DIR", help="checkpoints and TensorBoard (default: "
                                                            "runs/tune/<name of the file(s)>)")
    parser.add_argument("--results-dir", metavar="DIR", help="journal, result files and reports (default: the "
                                                             "files' `results`)")
    parser.add_argument("--launcher", default="inprocess", choices=LAUNCHERS)
    parser.add_argument("--jobs", type=int, default=1, help="inprocess / local: workers (runs) at a time")
    parser.add_argument("--workers", type=int, default=4, help="slurm: tuning jobs sharing the journal")
    parser.add_argument("--devices", help="inprocess: device of each worker slot, e.g. cuda:0,cuda:1")
    parser.add_argument("--report-only", action="store_true", help="train nothing: write the reports")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--allow-emulated-bf16", action="store_true",
                        help="train runs pinned to train.amp: bf16 on a device that only emulates it")
    cluster = add_cluster_args(parser)
    cluster.add_argument("--gpus-per-run", type=int, default=1, help="slurm: GPUs of each job (default 1)")
    cluster.add_argument("--cpus-per-run", type=int, help="slurm: CPUs of each job")
    cluster.add_argument("--wait", action="store_true", help="slurm: wait for the jobs")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    command = shlex.join(["python", "-m", "yolo.tune", *(sys.argv[1:] if argv is None else argv)])
    try:
        if args.jobs < 1 or args.workers < 1:
            raise ConfigError(f"--jobs and --workers must be at least 1, got {args.jobs} and {args.workers}")
        ablation = load_ablation(args.config)
        output_dir = Path(args.output_dir or Path("runs") / "tune" / ablation.name)
        results_dir = Path(args.results_dir or ablation.results_dir or output_dir)
        if args.stage in ("tune", "all"):
            out = tune_stage(args, args.config, output_dir, results_dir, command)
            print(out["paths"]["md"].read_text())
        if args.stage in ("seeds", "all"):
            if args.stage == "all" and not out["done"]:
                print("tuning unfinished: the seeds stage starts when every row has its trials", file=sys.stderr)
                return 0
            seeds = seeds_stage(args, args.config, output_dir, results_dir, command)
            if seeds is None:
                return 1
            print(seeds["paths"]["md"].read_text())
            print(seeds["paths"]["tuned"].read_text())
            return 1 if seeds["failures"] else 0
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (RunInterrupted, KeyboardInterrupt) as exc:
        print(f"interrupted: {exc or 'Ctrl-C'}; finished trials are in the journal: run the same command again to "
              f"continue", file=sys.stderr)
        return 130
    return 0
