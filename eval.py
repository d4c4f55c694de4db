"""Evaluate a trained detector, or an external detections file, on one split.

    python eval.py                                            # the newest runs/*/best.pt on its test split
    python eval.py --checkpoint runs/voc/best.pt --split 2007:test --json metrics.json
    python eval.py --checkpoint runs/voc/best.pt --save-detections dets.json
    python eval.py --detections dets.json --data-root data/VOCdevkit --split 2007:test
    python eval.py --detections results.json --data-root coco/annotations/instances_val2017.json  # a COCO results list

Reports how many images were scored of how many the split lists, VOC07 11-point mAP@0.5, VOC all-point mAP@0.5
and COCO-style AP/AR (pycocotools, or faster-coco-eval with --coco-backend faster; LVIS's federated AP on an LVIS
JSON), with a per-class AP table. --data-root takes any layout (a VOC devkit, a COCO JSON, a YOLO data.yaml).
Detections files hold the dataset's own ids and pixel-edge [x, y, w, h] boxes (a COCO results list). An image of
the split that cannot be read is an error; --skip-unreadable true scores the others. Config flags (e.g. --img-size,
--conf-thresh) override the configuration stored in the checkpoint.
"""
import argparse
import json
import sys
from pathlib import Path

from yolo.checkpoint import load_checkpoint
from yolo.config import add_config_args, config_from_args
from yolo.errors import ConfigError
from yolo.metrics import DetectionsFormatError, evaluate_detections, format_results, load_detections, save_detections


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Evaluate detections with VOC and COCO metrics.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", metavar="CKPT", help="a checkpoint (default: the newest runs/*/best.pt)")
    source.add_argument("--detections", metavar="JSON", help="score this detections file instead of a model")
    parser.add_argument("--split", help="split to evaluate, e.g. 2007:test, val, annotations/x.json (default: the "
                                        "config's data.test)")
    parser.add_argument("--weights", choices=("auto", "ema", "model"), default="auto",
                        help="EMA or trained weights of the checkpoint (auto: EMA when present)")
    parser.add_argument("--json", metavar="FILE", help="write every number to this JSON file")
    parser.add_argument("--save-detections", metavar="FILE", help="write the model's detections (JSON)")
    add_config_args(parser)
    args = parser.parse_args(argv)
    try:
        if args.detections:
            results, classes = _score_file(args)
        else:
            results, classes = _score_checkpoint(args)
    except (ConfigError, FileNotFoundError, DetectionsFormatError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_results(results, classes))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
        print(f"wrote {args.json}")
    return 0


def _score_file(args):
    from yolo.data.layout import load_role, require_complete
    cfg = config_from_args(args)
    split = load_role(cfg, "test", args.split)
    require_complete(split, cfg.eval.skip_unreadable)
    detections = load_detections(args.detections, split)
    results, _ = evaluate_detections(split, detections, coco_backend=cfg.eval.coco_backend)
    return {"split": split.spec, "detections_file": args.detections, **results}, split.classes


def _score_checkpoint(args):
    from yolo.fit import evaluate_checkpoint
    path = args.checkpoint or _newest_checkpoint()
    ckpt = load_checkpoint(path)
    cfg = config_from_args(args, base=ckpt["config"])
    from yolo.data.layout import spec_for
    split = args.split or spec_for(cfg, "test")
    print(f"evaluating {path} on {split}")
    if ":" in cfg.loss.cls_loss and cfg.eval.cls_scoring == "auto":   # a user's loss: never imported to evaluate
        print(f"note: loss.cls_loss {cfg.loss.cls_loss} is a user's loss, which eval never imports; its class scores "
              f"are a softmax (--cls-scoring sigmoid for a per-class sigmoid loss)")
    results, _, detections = evaluate_checkpoint(ckpt, cfg, split, weights=args.weights)
    if args.save_detections:
        save_detections(detections, args.save_detections)
        print(f"wrote {len(detections)} detections to {args.save_detections}")
    return {"split": split, "checkpoint": str(path), **results}, ckpt["classes"]


def _newest_checkpoint() -> Path:
    candidates = sorted(Path("runs").glob("*/best.pt"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise FileNotFoundError("no --checkpoint given and no runs/*/best.pt found: train first (python train.py "
                                "--config configs/shapes.yaml) or pass --checkpoint / --detections")
    return candidates[-1]


if __name__ == "__main__":
    sys.exit(main())
