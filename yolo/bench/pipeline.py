"""The data pipeline alone, training end to end (loader + step, against the step alone on the same settings), and
evaluation (inference, decoding + NMS, metrics)."""
import logging
import statistics
import time

import torch

from yolo.timing import peak_memory_mb, sync, time_iterations

logger = logging.getLogger(__name__)


def run_data(args) -> list[dict]:
    from yolo.data.loader import measure_loader_throughput, measure_sample_costs
    from yolo.data.dataset import DetectionDataset
    from yolo.data.layout import open_split
    from yolo.data.transforms import train_transform

    dataset = DetectionDataset(open_split(args.data_root, args.data, args.format).records, train_transform(args.size))
    costs = measure_sample_costs(dataset)
    print(f"data  {args.data} ({len(dataset)} images) size {args.size}, CPU per image in-process: decode "
          f"{costs['decode_ms']:.2f} ms, augmentation {costs['augment_ms']:.2f} ms, whole sample "
          f"{costs['sample_ms']:.2f} ms = {1e3 / costs['sample_ms']:.0f} images/s per core", flush=True)
    rows = [{"part": "data", "data": args.data, "size": args.size, **costs}]
    for workers in args.workers:
        row = measure_loader_throughput(dataset, args.batch, workers, args.batches, warmup=args.warmup)
        row.update(part="data", data=args.data, size=args.size, images_in_split=len(dataset))
        cpu = row["images_per_cpu_s"]
        kind = "a prefetch thread" if workers == 0 else f"{workers} worker processes"
        print(f"data  batch {args.batch}, {kind}: {row['images_per_s']:.1f} images/s total, "
              f"{row['images_per_s_per_worker']:.1f} images/s per worker"
              + (f", {cpu:.0f} images per CPU-second of the loading processes" if cpu else ""), flush=True)
        rows.append(row)
    return rows


def _training_step(cfg, device, num_classes: int, choice):
    """``step(images, boxes, labels)``: the training step of ``cfg`` (model, fused optimizer, compile) with the
    precision and memory format of ``choice`` (a ``yolo.autotune.Choice``)."""
    from yolo.engine import build_optimizer, train_step
    from yolo.losses import init_loss_state
    from yolo.model import build_model

    model = build_model(cfg.model, num_classes).to(device)
    if choice.channels_last:
        model = model.to(memory_format=torch.channels_last)
    run_model = torch.compile(model) if cfg.train.compile else model
    optimizer = build_optimizer(model, cfg.train)
    scaler = torch.amp.GradScaler(device.type, enabled=choice.amp_dtype == torch.float16)
    loss_state = init_loss_state(cfg.loss.cls_loss, num_classes, device)

    def step(images, boxes, labels):
        train_step(run_model, images, boxes, labels, optimizer, cfg, cls_loss=cfg.loss.cls_loss, scaler=scaler,
                   amp_dtype=choice.amp_dtype, loss_state=loss_state)
    return step


def bench_train(cfg, steps: int, warmup: int) -> dict:
    """Images/s of training end to end (loader, copy to the device, step) and of the same step on one batch
    already on the device, at the same settings: their ratio is what the data path costs. ``train.amp`` and
    ``train.channels_last`` resolve as in training (``auto``: the decision of ``yolo.autotune``, from its cache)."""
    from yolo.autotune import choose, describe
    from yolo.data.loader import cycle_epochs, resolve_workers
    from yolo.engine import batch_to_device
    from yolo.fit import build_loaders, prepare_data

    device = _device(cfg.train.device)
    root, classes = prepare_data(cfg)
    loader, _ = build_loaders(cfg, root, classes, 0, 1, device)
    choice = choose(cfg, device, len(classes), cfg.train.batch_size)
    step = _training_step(cfg, device, len(classes), choice)
    batches, waits, totals, images = cycle_epochs(loader), [], [], 0
    for i in range(warmup + steps):
        tic = time.perf_counter()
        batch_images, targets = next(batches)
        loaded = time.perf_counter()
        x, boxes, labels = batch_to_device(batch_images, targets, device, choice.channels_last)
        step(x, boxes, labels)
        sync(device)
        if i >= warmup:
            waits.append(loaded - tic)
            totals.append(time.perf_counter() - tic)
            images += x.shape[0]
    step_s = statistics.median(time_iterations(lambda: step(x, boxes, labels), device, steps, warmup=0))
    end_to_end, step_only = images / sum(totals), x.shape[0] / step_s
    return {"part": "train", "device": str(device), "batch": cfg.train.batch_size, "size": cfg.data.img_size,
            "workers": resolve_workers(cfg.data.workers, device), "amp": cfg.train.amp,
            "channels_last": cfg.train.channels_last, "resolved": choice.record(), "resolved_text": describe(choice),
            "images_per_s": end_to_end, "step_only_images_per_s": step_only, "ratio": end_to_end / step_only,
            "data_wait_fraction": sum(waits) / sum(totals), "peak_memory_mb": peak_memory_mb(device)}


def run_train(args) -> list[dict]:
    row = {**bench_train(_config(args), args.steps, args.warmup), "config": args.config}
    loading = "a prefetch thread" if row["workers"] == 0 else f"{row['workers']} worker processes"
    print(f"train {args.config} {row['device']} batch {row['batch']} size {row['size']} amp={row['amp']} "
          f"channels_last={row['channels_last']} ({row['resolved_text']}), {loading}: "
          f"{row['images_per_s']:.1f} images/s end to end, {row['step_only_images_per_s']:.1f} images/s for the "
          f"step alone on the same settings ({100 * row['ratio']:.0f}%), waiting for data "
          f"{100 * row['data_wait_fraction']:.0f}% of the time", flush=True)
    return [row]


def run_eval(args) -> list[dict]:
    from yolo.autotune import inference_settings
    from yolo.checkpoint import load_checkpoint
    from yolo.data.loader import build_loader, resolve_workers
    from yolo.data.dataset import DetectionDataset
    from yolo.data.layout import load_role
    from yolo.data.transforms import eval_transform
    from yolo.fit import model_from_checkpoint, prepare_data
    from yolo.metrics import evaluate_detections
    from yolo.model import build_model

    cfg = _config(args)
    device = _device(cfg.train.device)
    _, classes = prepare_data(cfg)
    split = load_role(cfg, "test", args.split)
    dataset = DetectionDataset.of_split(split, eval_transform(cfg.data.img_size), keep_difficult=True,
                                        substitute=False)
    loader = build_loader(dataset, cfg.train.batch_size, train=False,
                          num_workers=resolve_workers(cfg.data.workers, device), seed=0)
    ckpt = load_checkpoint(args.checkpoint) if args.checkpoint else {}
    if args.checkpoint:
        model = model_from_checkpoint(ckpt, cfg, device)
    else:
        logger.warning("no --checkpoint: timing an untrained model (its detections are few and meaningless)")
        model = build_model(cfg.model, len(classes)).to(device).eval()
    amp_dtype, channels_last = inference_settings(ckpt, cfg, device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    detections, t = _timed_inference(model, loader, cfg, device, amp_dtype, channels_last)
    tic = time.perf_counter()
    evaluate_detections(split, detections, coco_backend=cfg.eval.coco_backend)
    t["metrics"] = time.perf_counter() - tic
    row = {"part": "eval", "split": split.spec, "images": len(dataset), "detections": len(detections),
           "coco_backend": cfg.eval.coco_backend, **{f"{k}_s": v for k, v in t.items()},
           "images_per_s": len(dataset) / sum(t.values())}
    print(f"eval  {split.spec} ({len(dataset)} images, {len(detections)} detections) on {device}: inference "
          f"{t['inference']:.2f} s, decode+NMS {t['decode_nms']:.2f} s, metrics ({cfg.eval.coco_backend}) "
          f"{t['metrics']:.2f} s: {row['images_per_s']:.1f} images/s", flush=True)
    return [row]


@torch.no_grad()
def _timed_inference(model, loader, cfg, device, amp_dtype, channels_last: bool):
    """Detections of every image, and the seconds spent in the network and in decoding + NMS."""
    from yolo.decode import decode
    from yolo.engine import grid_for, sigmoid_scoring, to_detection_records

    category_ids = loader.dataset.split.categories.ids
    t, detections = {"inference": 0.0, "decode_nms": 0.0}, []
    for images, targets in loader:
        tic = time.perf_counter()
        images = images.to(device)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            preds = model(images)
        sync(device)
        mid = time.perf_counter()
        grid = grid_for(tuple(images.shape[-2:]), model.strides, device)
        dets = decode(preds, grid, sigmoid_scoring(cfg, cfg.train.epochs - 1), cfg.eval.conf_thresh,
                      cfg.eval.nms_iou, cfg.eval.max_det, cfg.eval.pre_nms_topk)
        for det, meta in zip(dets, targets["meta"]):
            if meta["readable"]:
                detections.extend(to_detection_records(det, meta, category_ids))
        t["inference"] += mid - tic
        t["decode_nms"] += time.perf_counter() - mid
    return detections, t


def _config(args):
    from yolo.config import config_from_args
    return config_from_args(args)


def _device(name: str) -> torch.device:
    from yolo.distributed import local_device
    return local_device(name)
