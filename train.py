"""Train a detector.

    python train.py                                   # the VOC reproduction recipe (needs data/VOCdevkit)
    python train.py --config configs/shapes.yaml      # the embedded synthetic dataset, no download
    python train.py --cls-loss sigmoid_focal --gamma 2 --alpha 0.25 --name focal
    python train.py --resume runs/focal/last.pt
    torchrun --nproc_per_node=4 train.py --config configs/voc.yaml

Every config field has a flag (python train.py --help); results go to runs/NAME/
(TensorBoard: tensorboard --logdir runs).
"""
import argparse
import json
import os
import sys

from yolo.checkpoint import CheckpointWriteError, load_checkpoint
from yolo.config import ConfigError, add_config_args, config_from_args
from yolo.engine import NonFiniteLoss
from yolo.fit import fit


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Train a YOLOv1-style detector.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--resume", metavar="CKPT", help="continue a run exactly from its last.pt (config flags may "
                        "only raise --epochs or change where/how it runs: see README, 'Resuming')")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    add_config_args(parser)
    args = parser.parse_args(argv)
    try:
        stored = load_checkpoint(args.resume)["config"] if args.resume else None
        cfg = config_from_args(args, base=stored)
        metrics = fit(cfg, resume=args.resume, progress=not args.no_progress)
    except (ConfigError, FileNotFoundError, NonFiniteLoss, CheckpointWriteError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1  # bad input 2 (checkpoint, data, config); the run failed 1
    if metrics and os.environ.get("RANK", "0") == "0":
        summary = {k: metrics[k] for k in ("voc07_map50", "voc_map50", "coco_ap", "coco_ap50")}
        print(f"{cfg.run_dir}: {json.dumps(summary)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
