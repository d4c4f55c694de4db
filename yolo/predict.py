"""Draw a trained detector's detections on images, or on the images of a dataset's split (any layout).

    python -m yolo.predict --checkpoint runs/shapes/best.pt data/shapes/VOCdevkit/VOCshapes/JPEGImages/0000*.jpg \\
        --out predictions/ [--score 0.3]
    python -m yolo.predict --checkpoint runs/mine/best.pt --data-root my/data.yaml --split val --out predictions/
"""
import argparse
import logging
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
from torchvision.utils import draw_bounding_boxes

from yolo.autotune import inference_settings
from yolo.checkpoint import load_checkpoint
from yolo.config import from_dict
from yolo.data.images import ImageDecodeError, decode_image
from yolo.data.layout import FORMATS, open_split
from yolo.data.record import DatasetError
from yolo.data.transforms import eval_transform, to_original
from yolo.distributed import local_device
from yolo.engine import predict, sigmoid_scoring
from yolo.fit import model_from_checkpoint

logger = logging.getLogger(__name__)


def detect(model, image_rgb, cfg, device, transform, amp_dtype=None) -> dict:
    """Detections of one HxWx3 uint8 RGB image, boxes in its own float pixel-edge coordinates (the network under
    autocast to ``amp_dtype``; None: full precision)."""
    sample = transform(image_rgb, np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
    image = torch.from_numpy(sample["image"]).permute(2, 0, 1).unsqueeze(0).to(device)
    det = predict(model, image, cfg, sigmoid_cls=sigmoid_scoring(cfg, cfg.train.epochs - 1),
                  amp_dtype=amp_dtype)[0]
    boxes = to_original(det["boxes_xyxy"].float().cpu(), sample["scale"], sample["pad"], image_rgb.shape[:2])
    return {"boxes_xyxy": boxes, "scores": det["scores"].float().cpu(), "labels": det["labels"].cpu()}


def _image_paths(args, classes) -> list[Path]:
    """The image files given, or those of ``--split`` of ``--data-root`` (whose classes must be the checkpoint's)."""
    if bool(args.images) == bool(args.data_root):
        raise DatasetError("give image files, or --data-root with --split (not both)")
    if not args.data_root:
        return [Path(p) for p in args.images]
    if not args.split:
        raise DatasetError("--data-root needs --split (e.g. 2007:test, val)")
    split = open_split(args.data_root, args.split, args.format)
    if tuple(split.classes) != tuple(classes):
        raise DatasetError(f"{args.data_root} has classes {list(split.classes)[:4]}..., the checkpoint was trained "
                           f"on {list(classes)[:4]}...")
    return [record.image_path for record in split.records]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m yolo.predict", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("images", nargs="*", help="image files")
    parser.add_argument("--data-root", help="or the images of a dataset: a VOC devkit, a COCO JSON, a YOLO data.yaml")
    parser.add_argument("--split", help="with --data-root: the split, e.g. 2007:test, val")
    parser.add_argument("--format", default="auto", choices=FORMATS, help="with --data-root: the layout")
    parser.add_argument("--out", required=True, help="output folder for the drawn images")
    parser.add_argument("--score", type=float, default=0.3, help="draw detections at or above this score")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    device = local_device(args.device)
    try:
        ckpt = load_checkpoint(args.checkpoint)
        cfg = from_dict(ckpt["config"])
        model = model_from_checkpoint(ckpt, cfg, device)
        amp_dtype, _ = inference_settings(ckpt, cfg, device)   # the precision the run trained in, where native
        paths = _image_paths(args, ckpt["classes"])
    except (FileNotFoundError, ValueError) as exc:  # CheckpointError and ConfigError are ValueErrors
        print(f"error: {exc}", file=sys.stderr)
        return 2
    transform = eval_transform(cfg.data.img_size, cfg.data.eval_resize)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = 0
    for path in paths:
        try:
            image = decode_image(path)
        except ImageDecodeError as exc:
            logger.warning("skipped %s: %s", path, exc)
            continue
        det = detect(model, image, cfg, device, transform, amp_dtype)
        keep = det["scores"] >= args.score
        names = [f"{ckpt['classes'][c]} {s:.2f}" for c, s in zip(det["labels"][keep].tolist(),
                                                                 det["scores"][keep].tolist())]
        drawn = torch.from_numpy(image).permute(2, 0, 1)
        if keep.any():
            drawn = draw_bounding_boxes(drawn, det["boxes_xyxy"][keep], names, colors="red", width=2)
        cv2.imwrite(str(out / f"{path.stem}.jpg"), cv2.cvtColor(drawn.permute(1, 2, 0).numpy(), cv2.COLOR_RGB2BGR))
        print(f"{path}: {int(keep.sum())} detections >= {args.score}")
        written += 1
    print(f"wrote {written} images to {out}")
    return 0 if written else 1


if __name__ == "__main__":
    sys.exit(main())
