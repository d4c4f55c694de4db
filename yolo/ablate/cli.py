"""``python -m yolo.ablate``: plan, run what has no result yet, and write the report."""
import argparse
import logging
import shlex
import sys
import time
from pathlib import Path

import torch

from yolo.ablate.execute import LOG_FORMAT, RunInterrupted, cached_results
from yolo.ablate.launch import LAUNCHERS, LaunchOptions, launch
from yolo.ablate.plan import plan_runs
from yolo.ablate.report import describe_setup, write_report
from yolo.ablate.results import stale_results
from yolo.ablate.spec import Ablation, load_ablation
from yolo.ablate.tables import collect_rows, summarize_tables
from yolo.cluster import JobSpec, add_cluster_args, parse_slurm_params
from yolo.errors import ConfigError


def run_ablation(ablation: Ablation, output_dir, *, results_dir=None, jobs: int = 1,
                 devices: list[str] | None = None, progress: bool = True, report_only: bool = False,
                 command: str = "", launcher: str = "inprocess", launch_options: dict | None = None) -> dict:
    """Plan, run what has no result (nothing with ``report_only``) with ``launcher``, and write the report.

    Checkpoints go under ``output_dir``; result files and the report into ``results_dir`` (default: the
    ablation's ``results`` folder, else ``output_dir``). ``launch_options``: the other fields of ``LaunchOptions``
    (job folder, job spec, wait, retry_failed, allow_emulated_bf16). Returns ``{"runs", "results", "failures",
    "running", "rows", "summary", "paths"}`` (see ``plan_runs``, ``launch``, ``collect_rows``,
    ``summarize_tables``, ``write_report``).
    """
    tic = time.perf_counter()
    results_dir = Path(results_dir or ablation.results_dir or output_dir)
    runs = plan_runs(ablation, output_dir, results_dir)
    if report_only:
        results, failures, running = cached_results(runs, ablation.selection), {}, {}
    else:
        options = LaunchOptions(jobs=jobs, devices=devices, progress=progress, **(launch_options or {}))
        results, failures, running = launch(launcher, runs, ablation.selection, output_dir, options)
    rows = collect_rows(ablation, runs, results)
    summary = summarize_tables(ablation, rows)
    setup = describe_setup(ablation, runs, results, failures, command=command, wall_s=time.perf_counter() - tic,
                           stale=stale_results(results_dir, runs), running=running)
    paths = write_report(results_dir, summary, rows, setup, ablation.buckets)
    return {"runs": runs, "results": results, "failures": failures, "running": running, "rows": rows,
            "summary": summary, "paths": paths}


def parse_devices(text: str | None) -> list[str] | None:
    """``"cuda:0,cuda:1"`` -> ["cuda:0", "cuda:1"], each checked to exist on this machine."""
    if not text:
        return None
    devices = [d.strip() for d in text.split(",") if d.strip()]
    for name in devices:
        if name == "auto":
            continue
        try:
            device = torch.device(name)
        except RuntimeError:
            raise ConfigError(f"--devices: {name!r} is not a device name (e.g. cpu, cuda:0)") from None
        if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
            raise ConfigError(f"--devices: {name} does not exist here ({torch.cuda.device_count()} CUDA devices)")
    return devices


def build_parser() -> argparse.ArgumentParser:
    from yolo import ablate
    parser = argparse.ArgumentParser(prog="python -m yolo.ablate",
                                     description="Run a multi-seed ablation and write its report.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=ablate.__doc__)
    parser.add_argument("--config", nargs="+", required=True, metavar="FILE",
                        help="ablation file(s) (configs/ablation/*.yaml); several make one report")
    parser.add_argument("--seeds", type=int, help="number of seeds (default: the files' `seeds`)")
    parser.add_argument("--output-dir", metavar="DIR", help="checkpoints and TensorBoard (default: "
                                                            "runs/ablation/<name of the file(s)>)")
    parser.add_argument("--results-dir", metavar="DIR", help="result files and report (default: the files' "
                                                             "`results`, else the output folder)")
    parser.add_argument("--launcher", default="inprocess", metavar="NAME",
                        help=f"where the runs train: {', '.join(LAUNCHERS)} (default: inprocess; see "
                             f"docs/cluster.md)")
    parser.add_argument("--jobs", type=int, default=1, help="inprocess / local: runs at a time, each in its own "
                                                            "process")
    parser.add_argument("--devices", help="inprocess / local: comma-separated devices for the --jobs slots, e.g. "
                                          "cuda:0,cuda:1 (default: each config's train.device)")
    parser.add_argument("--report-only", action="store_true", help="train nothing: report the finished runs")
    parser.add_argument("--no-progress", action="store_true", help="no per-epoch progress bars")
    parser.add_argument("--allow-emulated-bf16", action="store_true",
                        help="inprocess / local: train runs whose config pins train.amp: bf16 even on a device "
                             "without native bf16 (refused by default: emulated bf16 is slow)")
    cluster = add_cluster_args(parser)
    cluster.add_argument("--gpus-per-run", type=int, default=1, help="slurm: GPUs of each run's job (default 1)")
    cluster.add_argument("--cpus-per-run", type=int, help="slurm: CPUs of each run's job")
    cluster.add_argument("--array-parallelism", type=int, help="slurm: jobs of the array running at a time")
    cluster.add_argument("--wait", action="store_true", help="slurm: follow the jobs and write the report when "
                                                             "they are done (without it: submit and return; the "
                                                             "same command later collects the results)")
    cluster.add_argument("--retry-failed", action="store_true", help="slurm: submit the runs whose job failed "
                                                                     "again")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    command = shlex.join(["python", "-m", "yolo.ablate", *(sys.argv[1:] if argv is None else argv)])
    try:
        if args.jobs < 1:
            raise ConfigError(f"--jobs must be at least 1, got {args.jobs}")
        ablation = load_ablation(args.config, args.seeds)
        output_dir = Path(args.output_dir or Path("runs") / "ablation" / ablation.name)
        out = run_ablation(ablation, output_dir, results_dir=args.results_dir, jobs=args.jobs,
                           devices=parse_devices(args.devices), progress=not args.no_progress,
                           report_only=args.report_only, command=command, launcher=args.launcher,
                           launch_options=launch_options(args, ablation.name))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (RunInterrupted, KeyboardInterrupt) as exc:
        print(f"interrupted: {exc or 'Ctrl-C'}; finished runs keep their result files: run the same command "
              f"again to continue", file=sys.stderr)
        return 130
    print(out["paths"]["md"].read_text())
    print("wrote " + ", ".join(str(p) for p in out["paths"].values()))
    for key, state in out["running"].items():
        print(f"still to finish: {key}: {state}")
    for key, why in out["failures"].items():
        print(f"failed: {key}: {why}", file=sys.stderr)
    return 1 if out["failures"] else 0


def launch_options(args, name: str) -> dict:
    """The ``LaunchOptions`` fields of --launcher local / slurm and --allow-emulated-bf16 from the command line."""
    spec = JobSpec(timeout_min=args.timeout_min, gpus_per_node=args.gpus_per_run, cpus_per_task=args.cpus_per_run,
                   partition=args.slurm_partition, array_parallelism=args.array_parallelism,
                   slurm_params=parse_slurm_params(args.slurm_param), name=f"ablate-{name}")
    return {"job_dir": args.job_dir, "spec": spec, "wait": args.wait, "retry_failed": args.retry_failed,
            "allow_emulated_bf16": args.allow_emulated_bf16}
