"""Render a grid of augmented samples with their boxes and class names, to look at the pipeline.

    python -m yolo.data.preview --data-root ../shared/voc-sample --data 2012:trainval --out preview.png
    python -m yolo.data.preview --data-root data/shapes --data shapes:train --size 160 --out shapes.png
    python -m yolo.data.preview --data-root my/data.yaml --data val --out mine.png         # a YOLO (or COCO) set

``--eval`` shows the evaluation preset instead of the training one; ``--keep-difficult`` also draws the
difficult objects (they are not training targets by default).
"""
import argparse
import math

import cv2
import numpy as np

from yolo.data.loader import aug_seeds
from yolo.data.transforms import eval_transform, train_transform
from yolo.data.dataset import DetectionDataset
from yolo.data.layout import FORMATS, open_split
from yolo.data.record import DatasetError


def _colour(label: int) -> tuple:
    """A stable, distinct BGR colour per class (golden-ratio hue steps)."""
    hue = int((label * 0.618034 % 1.0) * 180)
    return tuple(int(c) for c in cv2.cvtColor(np.uint8([[[hue, 220, 255]]]), cv2.COLOR_HSV2BGR)[0, 0])


def draw_sample(image_chw, boxes_xyxy, labels, class_names) -> np.ndarray:
    """uint8 BGR (H, W, 3) picture of one sample with its boxes and class names."""
    canvas = cv2.cvtColor(np.ascontiguousarray(image_chw.numpy().transpose(1, 2, 0)), cv2.COLOR_RGB2BGR)
    for box, label in zip(boxes_xyxy.tolist(), labels.tolist()):
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        colour = _colour(label)
        # Pixel-edge box [x1, x2) covers pixel columns x1 .. x2 - 1.
        cv2.rectangle(canvas, (x1, y1), (x2 - 1, y2 - 1), colour, 1)
        cv2.putText(canvas, class_names[label], (x1 + 1, max(y1 - 2, 8)), cv2.FONT_HERSHEY_SIMPLEX, 0.35,
                    colour, 1, cv2.LINE_AA)
    return canvas


def render_grid(dataset, class_names, n: int, seed: int) -> np.ndarray:
    """Tiles ``n`` samples (keys ``(index, aug_seed)`` drawn from ``seed``) into one BGR image."""
    rng = np.random.default_rng(seed)
    indices = rng.choice(len(dataset), size=min(n, len(dataset)), replace=False)
    tiles = []
    for index, aug_seed in zip(indices.tolist(), aug_seeds(seed, 0, indices).tolist()):
        image, target = dataset[(index, aug_seed)]
        tiles.append(draw_sample(image, target["boxes_xyxy"], target["labels"], class_names))
    columns = math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / columns)
    height, width = tiles[0].shape[:2]
    grid = np.full((rows * (height + 4), columns * (width + 4), 3), 255, dtype=np.uint8)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, columns)
        grid[r * (height + 4):r * (height + 4) + height, c * (width + 4):c * (width + 4) + width] = tile
    return grid


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Render augmented samples with their boxes to a PNG.")
    parser.add_argument("--data-root", required=True, help="a VOC devkit, a COCO JSON (or its folder) or a YOLO "
                                                           "data.yaml")
    parser.add_argument("--data", required=True, help="split, e.g. 2007:trainval or shapes:train (VOC), train or "
                                                      "val (COCO, YOLO)")
    parser.add_argument("--format", default="auto", choices=FORMATS, help="the layout (default: from the path)")
    parser.add_argument("--out", required=True, help="output PNG path")
    parser.add_argument("--n", type=int, default=16, help="number of samples")
    parser.add_argument("--size", type=int, default=416, help="network input size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval", action="store_true", help="show the evaluation preset")
    parser.add_argument("--letterbox", action="store_true", help="with --eval: letterbox instead of stretch")
    parser.add_argument("--keep-difficult", action="store_true", help="also draw difficult objects")
    args = parser.parse_args(argv)
    transform = (eval_transform(args.size, "letterbox" if args.letterbox else "stretch") if args.eval
                 else train_transform(args.size))
    try:
        split = open_split(args.data_root, args.data, args.format)
    except DatasetError as error:
        print(f"error: {error}")
        return 2
    dataset = DetectionDataset.of_split(split, transform, keep_difficult=args.keep_difficult)
    grid = render_grid(dataset, split.classes, args.n, args.seed)
    if not cv2.imwrite(args.out, grid):
        print(f"could not write {args.out}")
        return 1
    print(f"wrote {args.out} ({grid.shape[1]}x{grid.shape[0]}, {min(args.n, len(dataset))} samples)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
