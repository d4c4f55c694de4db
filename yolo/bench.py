"""Benchmarks: ``python -m yolo.bench {step,data,train,eval} ...``.

Each part prints the median images/s over timed iterations after a warm-up, with the device, dtype and
settings, one line per variant, e.g.::

    python -m yolo.bench step --device cpu --batch 8 --size 416
    python -m yolo.bench targets --device cpu --batch 64
    python -m yolo.bench data --data-root ../shared/voc-sample --data 2012:trainval --workers 0 1 2
    python -m yolo.bench train --config configs/shapes.yaml --steps 30
    python -m yolo.bench eval --config configs/shapes.yaml --split shapes:val

``--json FILE`` also writes every measurement. These are measurements, not tests: nothing here asserts a speed.
"""
import argparse
import itertools
import json
import logging
import platform
import resource
import statistics
import sys
import time

import torch

from yolo.config import Config, LossConfig

logger = logging.getLogger(__name__)


def machine() -> str:
    """A one-line description of where a benchmark ran."""
    if torch.cuda.is_available():
        device = torch.cuda.get_device_name()
    else:
        device = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"
    return f"{device}; torch {torch.__version__}; python {platform.python_version()}"


def peak_memory_mb(device: torch.device) -> float:
    """Peak CUDA memory allocated, or the process's peak resident set on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_iterations(fn, device, iters: int, warmup: int) -> list[float]:
    """Seconds of each of ``iters`` calls of ``fn`` after ``warmup`` untimed calls (synchronised on CUDA)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(iters):
        tic = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - tic)
    return times


# ---------------------------------------------------------------------------------------------------------------
# step: the training step alone on synthetic tensors already on the device


def synthetic_batch(batch: int, size: int, num_classes: int, device, boxes_per_image: int = 8, seed: int = 0):
    """uint8 images and padded boxes/labels shaped like a collated batch, already on ``device``."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=g)
    centres = torch.rand(batch, boxes_per_image, 2, generator=g) * size
    sides = (0.05 + 0.6 * torch.rand(batch, boxes_per_image, 2, generator=g)) * size
    boxes = torch.cat([centres - sides / 2, centres + sides / 2], -1).clamp(0, size)
    labels = torch.randint(0, num_classes, (batch, boxes_per_image), generator=g)
    labels[:, boxes_per_image // 2:] = -1  # half padding, like a real batch
    return images.to(device), boxes.to(device), labels.to(device)


def bench_step(device, batch: int, size: int, amp: str, channels_last: bool, compile_model: bool,
               iters: int, warmup: int, cls_loss: str = "ce") -> dict:
    """Images/s of ``yolo.engine.train_step`` (forward, assignment, every loss term, backward, SGD)."""
    from yolo.engine import train_step
    from yolo.hardware import autocast_dtype
    from yolo.model import YOLO

    cfg = Config()
    cfg.loss = LossConfig(cls_loss=cls_loss)
    model = YOLO(20).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    run_model = torch.compile(model) if compile_model else model
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    images, boxes, labels = synthetic_batch(batch, size, 20, device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    amp_dtype = autocast_dtype(amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    def step():
        train_step(run_model, images, boxes, labels, optimizer, cfg, cls_loss=cls_loss, scaler=scaler,
                   amp_dtype=amp_dtype)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = time_iterations(step, device, iters, warmup)
    median = statistics.median(times)
    return {"part": "step", "device": str(device), "batch": batch, "size": size, "amp": amp,
            "channels_last": channels_last, "compile": compile_model, "cls_loss": cls_loss,
            "median_s": median, "images_per_s": batch / median, "peak_memory_mb": peak_memory_mb(device)}


def run_step(args) -> list[dict]:
    device = torch.device(args.device)
    rows = []
    for amp, channels_last, compile_model in itertools.product(args.amp, args.channels_last, args.compile):
        row = bench_step(device, args.batch, args.size, amp, channels_last == "on", compile_model == "on",
                         args.iters, args.warmup, args.cls_loss)
        print(f"step  {row['device']} batch {args.batch} size {args.size} amp={amp} channels_last={channels_last} "
              f"compile={compile_model}: {row['images_per_s']:.1f} images/s (median {row['median_s'] * 1e3:.0f} ms, "
              f"peak {row['peak_memory_mb']:.0f} MB)", flush=True)
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------------------------
# targets: the vectorised assignment against the per-box Python loop of the reference implementations


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


# ---------------------------------------------------------------------------------------------------------------
# data: the training data pipeline alone


def run_data(args) -> list[dict]:
    from yolo.data.loader import measure_loader_throughput, measure_sample_costs
    from yolo.data.transforms import train_transform
    from yolo.data.voc import VOCDataset, find_devkit, load_records, read_classes

    root = find_devkit(args.data_root)
    dataset = VOCDataset(load_records(root, args.data, read_classes(root)), train_transform(args.size))
    costs = measure_sample_costs(dataset)
    print(f"data  {args.data} ({len(dataset)} images) size {args.size}, CPU per image in-process: decode "
          f"{costs['decode_ms']:.2f} ms, augmentation {costs['augment_ms']:.2f} ms, whole sample "
          f"{costs['sample_ms']:.2f} ms = {1e3 / costs['sample_ms']:.0f} images/s per core", flush=True)
    rows = [{"part": "data", "data": args.data, "size": args.size, **costs}]
    for workers in args.workers:
        row = measure_loader_throughput(dataset, args.batch, workers, args.batches, warmup=args.warmup)
        row.update(part="data", data=args.data, size=args.size, images_in_split=len(dataset))
        cpu = row["images_per_cpu_s"]
        print(f"data  DataLoader batch {args.batch} workers {workers}: {row['images_per_s']:.1f} images/s total, "
              f"{row['images_per_s_per_worker']:.1f} images/s per worker"
              + (f", {cpu:.0f} images per CPU-second of the loading processes" if cpu else ""), flush=True)
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------------------------
# train: data loader + step, end to end


def run_train(args) -> list[dict]:
    from yolo.data.loader import cycle_epochs
    from yolo.engine import train_step
    from yolo.hardware import autocast_dtype
    from yolo.fit import build_loaders, build_optimizer, prepare_data
    from yolo.model import build_model

    cfg = _config(args)
    device = local_device(cfg.train.device)
    root, classes = prepare_data(cfg)
    loader, _ = build_loaders(cfg, root, classes, 0, 1)
    model = build_model(cfg.model, len(classes)).to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    run_model = torch.compile(model) if cfg.train.compile else model
    optimizer = build_optimizer(model, cfg.train)
    amp_dtype = autocast_dtype(cfg.train.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    waits, totals, images = [], [], 0
    batches = cycle_epochs(loader)
    for i in range(args.warmup + args.steps):
        tic = time.perf_counter()
        batch_images, targets = next(batches)
        loaded = time.perf_counter()
        x = batch_images.to(device, non_blocking=True)
        if cfg.train.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        train_step(run_model, x, targets["boxes_xyxy"].to(device), targets["labels"].to(device), optimizer, cfg,
                   cls_loss=cfg.loss.cls_loss, scaler=scaler, amp_dtype=amp_dtype)
        _sync(device)
        if i >= args.warmup:
            waits.append(loaded - tic)
            totals.append(time.perf_counter() - tic)
            images += x.shape[0]
    row = {"part": "train", "config": args.config, "device": str(device), "batch": cfg.train.batch_size,
           "size": cfg.data.img_size, "workers": cfg.data.workers, "amp": cfg.train.amp,
           "images_per_s": images / sum(totals), "data_wait_fraction": sum(waits) / sum(totals),
           "peak_memory_mb": peak_memory_mb(device)}
    print(f"train {args.config} {device} batch {row['batch']} size {row['size']} workers {row['workers']}: "
          f"{row['images_per_s']:.1f} images/s, waiting for data {100 * row['data_wait_fraction']:.0f}% of the time",
          flush=True)
    return [row]


# ---------------------------------------------------------------------------------------------------------------
# eval: inference, decoding + NMS, and the metrics of a split


def run_eval(args) -> list[dict]:
    from yolo.checkpoint import load_checkpoint
    from yolo.data.loader import build_loader
    from yolo.data.transforms import eval_transform
    from yolo.data.voc import VOCDataset, load_records
    from yolo.decode import decode
    from yolo.engine import grid_for, sigmoid_scoring, to_detection_records
    from yolo.hardware import autocast_dtype
    from yolo.fit import model_from_checkpoint, prepare_data
    from yolo.metrics import evaluate_detections
    from yolo.model import build_model

    cfg = _config(args)
    device = local_device(cfg.train.device)
    root, classes = prepare_data(cfg)
    split = args.split or cfg.data.test
    dataset = VOCDataset(load_records(root, split, classes), eval_transform(cfg.data.img_size), keep_difficult=True)
    loader = build_loader(dataset, cfg.train.batch_size, train=False, num_workers=cfg.data.workers, seed=0)
    if args.checkpoint:
        model = model_from_checkpoint(load_checkpoint(args.checkpoint), cfg, device)
    else:
        logger.warning("no --checkpoint: timing an untrained model (its detections are few and meaningless)")
        model = build_model(cfg.model, len(classes)).to(device).eval()
    amp_dtype = autocast_dtype(cfg.train.amp, device)
    t = {"inference": 0.0, "decode_nms": 0.0}
    detections = []
    with torch.no_grad():
        for images, targets in loader:
            tic = time.perf_counter()
            images = images.to(device)
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                preds = model(images)
            _sync(device)
            mid = time.perf_counter()
            grid = grid_for(tuple(images.shape[-2:]), model.strides, device)
            dets = decode(preds, grid, sigmoid_scoring(cfg, cfg.train.epochs - 1), cfg.eval.conf_thresh, cfg.eval.nms_iou,
                          cfg.eval.max_det, cfg.eval.pre_nms_topk)
            for det, meta in zip(dets, targets["meta"]):
                detections.extend(to_detection_records(det, meta))
            t["inference"] += mid - tic
            t["decode_nms"] += time.perf_counter() - mid
    tic = time.perf_counter()
    evaluate_detections(dataset.records, detections, classes, coco_backend=cfg.eval.coco_backend)
    t["metrics"] = time.perf_counter() - tic
    row = {"part": "eval", "split": split, "images": len(dataset), "detections": len(detections),
           "coco_backend": cfg.eval.coco_backend, **{f"{k}_s": v for k, v in t.items()},
           "images_per_s": len(dataset) / sum(t.values())}
    print(f"eval  {split} ({len(dataset)} images, {len(detections)} detections) on {device}: inference "
          f"{t['inference']:.2f} s, decode+NMS {t['decode_nms']:.2f} s, metrics ({cfg.eval.coco_backend}) "
          f"{t['metrics']:.2f} s: {row['images_per_s']:.1f} images/s", flush=True)
    return [row]


def _config(args):
    from yolo.config import config_from_args
    return config_from_args(args)


def local_device(name):
    from yolo.distributed import local_device as resolve
    return resolve(name)


# ---------------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from yolo.config import add_config_args

    parser = argparse.ArgumentParser(prog="python -m yolo.bench", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--json", metavar="FILE", help="also write the measurements to this JSON file")
    sub = parser.add_subparsers(dest="part", required=True)
    default_device = "cuda" if torch.cuda.is_available() else "cpu"

    step = sub.add_parser("step", help="the training step on synthetic tensors already on the device")
    step.add_argument("--device", default=default_device)
    step.add_argument("--batch", type=int, default=8)
    step.add_argument("--size", type=int, default=416)
    step.add_argument("--amp", nargs="+", default=["none", "bf16"], choices=["none", "bf16", "fp16"])
    step.add_argument("--channels-last", nargs="+", default=["off", "on"], choices=["off", "on"])
    step.add_argument("--compile", nargs="+", default=["off"], choices=["off", "on"])
    step.add_argument("--cls-loss", default="ce")
    step.add_argument("--iters", type=int, default=10)
    step.add_argument("--warmup", type=int, default=3)

    targets = sub.add_parser("targets", help="target assignment: vectorised vs the reference per-box loop")
    targets.add_argument("--device", default=default_device)
    targets.add_argument("--batch", type=int, default=64)
    targets.add_argument("--boxes", type=int, default=16, help="boxes per image (half are padding)")
    targets.add_argument("--size", type=int, default=416)
    targets.add_argument("--iters", type=int, default=20)
    targets.add_argument("--warmup", type=int, default=3)

    data = sub.add_parser("data", help="decode + augment + collate with N workers on real JPEGs")
    data.add_argument("--data-root", required=True, help="folder holding VOCdevkit (or the devkit itself)")
    data.add_argument("--data", required=True, help="data spec, e.g. 2012:trainval")
    data.add_argument("--size", type=int, default=416)
    data.add_argument("--batch", type=int, default=32)
    data.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    data.add_argument("--batches", type=int, default=20)
    data.add_argument("--warmup", type=int, default=3)

    for name, help_text in (("train", "a short real training run: data loader + step"),
                            ("eval", "inference, decoding + NMS and metrics on a split")):
        p = sub.add_parser(name, help=help_text)  # the device is the config's --device (train.device)
        p.add_argument("--steps", type=int, default=20)
        p.add_argument("--warmup", type=int, default=3)
        p.add_argument("--split", help="(eval) data spec to score; default: the config's data.test")
        p.add_argument("--checkpoint", help="(eval) weights to evaluate")
        add_config_args(p)
    return parser


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    print(f"machine: {machine()}", flush=True)
    parts = {"step": run_step, "targets": run_targets, "data": run_data, "train": run_train, "eval": run_eval}
    rows = parts[args.part](args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine(), "command": " ".join(sys.argv), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
