"""Target assignment: the vectorised ``yolo.targets.assign_targets`` against the per-box Python loop of the YOLOv1
reference implementations (also the oracle of the vectorised version in the tests)."""
import statistics

import torch

from yolo.timing import synthetic_batch, time_iterations


def assign_targets_loop(boxes_xyxy, labels, grid, image_hw, thresholds) -> dict:
    """The per-image, per-box Python loop that YOLOv1 reference code uses to build targets (with the
    nearest-centre rule instead of last-box-wins): the baseline of ``bench targets`` and the oracle of the
    vectorised ``yolo.targets.assign_targets`` in the tests. Same inputs and outputs."""
    n, num_cells = labels.shape[0], grid.num_cells
    out = {"obj": torch.zeros(n, num_cells), "labels": torch.full((n, num_cells), -1, dtype=torch.long),
           "boxes_xyxy": (torch.cat([grid.cells_xy, grid.cells_xy + 1], -1) * grid.strides[:, None]).repeat(n, 1, 1),
           "weights": torch.zeros(n, num_cells)}
    best = {}
    for i in range(n):
        for j in range(labels.shape[1]):
            if labels[i, j] < 0:
                continue
            x1, y1, x2, y2 = boxes_xyxy[i, j].tolist()
            level = sum((max(x2 - x1, y2 - y1) >= t) for t in thresholds)
            stride, (h, w) = grid.level_strides[level], grid.level_sizes[level]
            fx, fy = (x1 + x2) / 2 / stride, (y1 + y2) / 2 / stride
            gx, gy = min(max(int(fx // 1), 0), w - 1), min(max(int(fy // 1), 0), h - 1)
            dist = (fx - gx - 0.5) ** 2 + (fy - gy - 0.5) ** 2
            cell = int(grid.level_offsets[level]) + gy * w + gx
            if (i, cell) in best and best[(i, cell)] <= dist:
                continue
            best[(i, cell)] = dist
            out["obj"][i, cell], out["labels"][i, cell] = 1.0, labels[i, j]
            out["boxes_xyxy"][i, cell] = boxes_xyxy[i, j]
            out["weights"][i, cell] = 2.0 - (x2 - x1) * (y2 - y1) / (image_hw[0] * image_hw[1])
    return out


def run_targets(args) -> list[dict]:
    from yolo.targets import assign_targets, make_grid

    device = torch.device(args.device)
    grid = make_grid((args.size, args.size), (8, 16, 32), device)
    _, boxes, labels = synthetic_batch(args.batch, args.size, 20, device, boxes_per_image=args.boxes)
    rows = []
    for name, fn in (("vectorised", assign_targets), ("python loop", assign_targets_loop)):
        if name == "python loop" and device.type != "cpu":
            boxes, labels, grid = boxes.cpu(), labels.cpu(), make_grid((args.size, args.size), (8, 16, 32))
        times = time_iterations(lambda: fn(boxes, labels, grid, (args.size, args.size), (64.0, 128.0)),
                                boxes.device, args.iters, args.warmup)
        median = statistics.median(times)
        rows.append({"part": "targets", "method": name, "device": str(boxes.device), "batch": args.batch,
                     "boxes_per_image": args.boxes, "median_ms": 1e3 * median})
        print(f"targets {name} on {boxes.device}, batch {args.batch} x {args.boxes} boxes (half padding), "
              f"size {args.size}: {1e3 * median:.2f} ms per batch", flush=True)
    return rows
