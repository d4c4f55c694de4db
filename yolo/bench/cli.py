"""The ``python -m yolo.bench`` command line."""
import argparse
import json
import logging
import sys

import torch

from yolo.bench.autotune import run_autotune
from yolo.timing import machine
from yolo.bench.gpu import run_gpu
from yolo.bench.pipeline import run_data, run_eval, run_train
from yolo.bench.step import run_gemm, run_profile, run_step
from yolo.bench.targets import run_targets

PARTS = {"step": run_step, "gemm": run_gemm, "profile": run_profile, "targets": run_targets, "data": run_data,
         "train": run_train, "eval": run_eval, "gpu": run_gpu, "autotune": run_autotune}


def _step_options(p, default_device: str, amp=("none", "bf16"), channels_last=("off", "on")):
    p.add_argument("--device", default=default_device)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=416)
    p.add_argument("--amp", nargs="+", default=list(amp), choices=["auto", "none", "bf16", "fp16"])
    p.add_argument("--channels-last", nargs="+", default=list(channels_last), choices=["auto", "off", "on"])
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)


def build_parser() -> argparse.ArgumentParser:
    from yolo import bench

    parser = argparse.ArgumentParser(prog="python -m yolo.bench", description=bench.__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=bench.__doc__)
    parser.add_argument("--json", metavar="FILE", help="also write the measurements to this JSON file")
    sub = parser.add_subparsers(dest="part", required=True)
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    _kernel_parsers(sub, default_device)
    _pipeline_parsers(sub, default_device)
    return parser


def _kernel_parsers(sub, default_device: str) -> None:
    """The parts that time one piece on synthetic input: step, gemm, profile, targets."""
    step = sub.add_parser("step", help="the training step on a synthetic batch already on the device")
    _step_options(step, default_device)
    step.add_argument("--compile", nargs="+", default=["off"], choices=["off", "on"])
    step.add_argument("--cls-loss", default="ce")

    gemm = sub.add_parser("gemm", help="the machine's own matmul rate (GFLOP/s) per precision")
    gemm.add_argument("--device", default=default_device)
    gemm.add_argument("--amp", nargs="+", default=["none", "bf16"], choices=["auto", "none", "bf16", "fp16"])
    gemm.add_argument("--n", type=int, help="matrix side (default: 2048 on the CPU, 8192 on a GPU)")

    profile = sub.add_parser("profile", help="torch.profiler table of the step's operators")
    _step_options(profile, default_device, amp=("auto",), channels_last=("on",))
    profile.add_argument("--top", type=int, default=15)

    targets = sub.add_parser("targets", help="target assignment: vectorised vs the reference per-box loop")
    targets.add_argument("--device", default=default_device)
    targets.add_argument("--batch", type=int, default=64)
    targets.add_argument("--boxes", type=int, default=16, help="boxes per image (half are padding)")
    targets.add_argument("--size", type=int, default=416)
    targets.add_argument("--iters", type=int, default=20)
    targets.add_argument("--warmup", type=int, default=3)


def _pipeline_parsers(sub, default_device: str) -> None:
    """The parts that time real data or a config's whole run: data, train, eval, autotune, gpu."""
    from yolo.config import add_config_args

    data = sub.add_parser("data", help="decode + augment + collate on real JPEGs (0 workers: a prefetch thread)")
    data.add_argument("--data-root", required=True, help="a VOC devkit, a COCO JSON or a YOLO data.yaml")
    data.add_argument("--data", required=True, help="split, e.g. 2012:trainval (VOC), train (COCO, YOLO)")
    data.add_argument("--format", default="auto", choices=["auto", "voc", "coco", "yolo"])
    data.add_argument("--size", type=int, default=416)
    data.add_argument("--batch", type=int, default=32)
    data.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    data.add_argument("--batches", type=int, default=20)
    data.add_argument("--warmup", type=int, default=3)

    for name, help_text in (("train", "training end to end (loader + step) against the step alone"),
                            ("eval", "inference, decoding + NMS and metrics on a split")):
        p = sub.add_parser(name, help=help_text)  # the device is the config's --device (train.device)
        p.add_argument("--steps", type=int, default=20)
        p.add_argument("--warmup", type=int, default=3)
        p.add_argument("--split", help="(eval) data spec to score; default: the config's data.test")
        p.add_argument("--checkpoint", help="(eval) weights to evaluate")
        add_config_args(p)

    tune = sub.add_parser("autotune", help="the cached amp / channels_last decisions of train.amp / "
                                           "train.channels_last auto; --config: that run's (timed if missing)")
    tune.add_argument("--refresh", action="store_true", help="with --config: time the candidates again")
    add_config_args(tune)

    gpu = sub.add_parser("gpu", help="every GPU figure of docs/performance.md in one run (<= ~10 minutes)")
    gpu.add_argument("--device", default=default_device)
    gpu.add_argument("--smoke", action="store_true", help="tiny settings: check the script without a GPU")


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    print(f"machine: {machine()}", flush=True)
    rows = PARTS[args.part](args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine(), "command": " ".join(sys.argv), "rows": rows}, f, indent=1)
    return 0
