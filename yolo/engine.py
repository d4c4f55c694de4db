"""Training and evaluation: plain functions, no trainer class and no callbacks.

``train_one_epoch`` runs the step (forward, target assignment, every loss term, backward, optimiser) with no host
synchronisation except every ``log_every`` steps, when the accumulated loss terms are read once, logged and
checked for non-finite values. ``evaluate`` decodes, maps boxes back to the original images and scores them.
``fit`` (in ``yolo.fit``) puts them together.
"""
import copy
import functools
import logging
import math
import random
import time

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from yolo.data.layout import UnreadableImages, require_complete
from yolo.data.transforms import to_original
from yolo.decode import decode
from yolo.distributed import barrier, broadcast_object, gather_to_main
from yolo.losses import SIGMOID_CLS_LOSSES, detection_loss
from yolo.metrics import detections_from_xyxy, evaluate_detections
from yolo.targets import assign_targets, make_grid

logger = logging.getLogger(__name__)


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; the message holds every term."""


class ModelEMA:
    """Exponential moving average of the weights (and buffers), with the decay ramped up over the first updates
    as in timm / ultralytics: decay_t = decay * (1 - exp(-t / ramp_steps)) (ultralytics: 2000 steps; a short run
    wants a shorter ramp). Updated on the device without syncing."""

    def __init__(self, model: torch.nn.Module, decay: float, ramp_steps: float = 2000.0):
        self.module = copy.deepcopy(unwrap(model)).eval().requires_grad_(False)
        self.decay, self.ramp_steps, self.updates = decay, ramp_steps, 0
        # state_dict() tensors share storage with the modules, so these lists stay valid (loads copy in place)
        self._ema = [t for t in self.module.state_dict().values() if t.dtype.is_floating_point]
        self._live = [t for t in unwrap(model).state_dict().values() if t.dtype.is_floating_point]

    @torch.no_grad()
    def update(self):
        self.updates += 1
        decay = self.decay * (1 - math.exp(-self.updates / self.ramp_steps))
        torch._foreach_lerp_(self._ema, self._live, 1 - decay)

    def state_dict(self):
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state):
        self.module.load_state_dict(state["module"])
        self.updates = state["updates"]


def unwrap(model):
    """The plain module behind DDP and torch.compile wrappers, in either order."""
    while True:
        if isinstance(model, DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


@functools.lru_cache(maxsize=16)
def grid_for(image_hw: tuple[int, int], strides: tuple[int, ...], device: torch.device):
    return make_grid(image_hw, strides, device)


def cls_loss_for_epoch(cfg, epoch: int) -> str:
    """Cross-entropy during ``cls_loss_warmup_epochs``, the configured classification loss afterwards."""
    return "ce" if epoch < cfg.loss.cls_loss_warmup_epochs else cfg.loss.cls_loss


# ---------------------------------------------------------------------------------------------------------------
# training


def batch_to_device(images, targets, device, channels_last: bool):
    """A collated batch on ``device``: (images (N, 3, H, W) uint8, boxes_xyxy (N, M, 4), labels (N, M)).

    The loader's images are already in channels-last memory, so with ``channels_last`` this is only the copy to
    the device (none on the CPU); without it, one conversion to contiguous NCHW."""
    images = images.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    else:
        images = images.contiguous()
    boxes = targets["boxes_xyxy"].to(device, non_blocking=True)
    labels = targets["labels"].to(device, non_blocking=True)
    return images, boxes, labels


def _rescale(images, boxes, size: int):
    """Multi-scale training: resize a batch on the device (one size per batch) and its boxes with it."""
    if size == images.shape[-1]:
        return images, boxes
    scale = size / images.shape[-1]
    images = F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False)
    return images, boxes * scale


def build_optimizer(model, tcfg) -> torch.optim.Optimizer:
    """SGD (or AdamW); no weight decay on biases and normalisation weights (they are 1-D).

    The fused implementations update every parameter in one kernel: on 2 CPU cores the AdamW step of this
    12.6 M-parameter model takes 5.5 ms fused against 21.6 ms with ``foreach`` (SGD 3.6 against 9.9 ms).
    """
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": tcfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if tcfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=tcfg.lr, momentum=tcfg.momentum, nesterov=False, fused=True)
    return torch.optim.AdamW(groups, lr=tcfg.lr, fused=True)


def train_step(model, images, boxes, labels, optimizer, cfg, *, cls_loss: str, scaler, amp_dtype, loss_state=None):
    """One optimisation step; returns (loss terms, gradient norm) as device tensors (nothing is synced).
    ``loss_state``: the running statistics of a stateful class loss (``yolo.losses.state``), updated in place."""
    image_hw = tuple(images.shape[-2:])
    grid = grid_for(image_hw, unwrap(model).strides, images.device)
    with torch.autocast(images.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        preds = model(images)                                                       # (N, A, 1 + C + 4)
    targets = assign_targets(boxes, labels, grid, image_hw, cfg.model.level_thresholds)
    terms = detection_loss(preds, targets, grid, cfg.loss, cls_loss=cls_loss, state=loss_state)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(terms["total"]).backward()
    scaler.unscale_(optimizer)
    max_norm = cfg.train.grad_clip if cfg.train.grad_clip > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    scaler.step(optimizer)
    scaler.update()
    return terms, grad_norm


def train_one_epoch(model, loader, optimizer, scheduler, cfg, epoch: int, *, device, scaler, amp_dtype=None,
                    channels_last: bool = False, ema=None, writer=None, progress=None, stop=None,
                    start_step: int = 0, max_steps: int | None = None, loss_state=None) -> dict:
    """Train for one epoch (from batch ``start_step`` when resuming mid-epoch; at most ``max_steps`` steps).

    ``stop`` (a ``yolo.stop.StopVote``) is asked after each step whether every rank stops: the epoch then ends so
    that the caller can save a checkpoint. Raises ``NonFiniteLoss``.
    Returns ``{"terms": {name: mean}, "steps": steps done, "images", "seconds", "interrupted": bool}``
    (``steps`` counts from the start of the epoch; ``interrupted``: stopped by ``stop`` before the epoch's end).
    """
    model.train()
    cls_loss = cls_loss_for_epoch(cfg, epoch)
    steps_per_epoch = len(loader) + start_step
    last_step = steps_per_epoch if max_steps is None else min(steps_per_epoch, start_step + max_steps)
    window = _Window()   # the current logging interval
    total = _Window()    # the whole epoch
    step, stopping = start_step - 1, False
    for step, (images, targets) in enumerate(loader, start=start_step):
        global_step = epoch * steps_per_epoch + step
        images, boxes, labels = batch_to_device(images, targets, device, channels_last)
        if cfg.data.multiscale:
            size = random.Random(cfg.train.seed * 1_000_003 + global_step).choice(cfg.data.multiscale)
            images, boxes = _rescale(images, boxes, size)
        terms, grad_norm = train_step(model, images, boxes, labels, optimizer, cfg, cls_loss=cls_loss,
                                      scaler=scaler, amp_dtype=amp_dtype, loss_state=loss_state)
        scheduler.step()
        if ema is not None:
            ema.update()
        window.add(torch.stack([t.detach() for t in terms.values()] + [grad_norm.detach().float()]),
                   images.shape[0])
        stopping = stop is not None and stop.after_step(terms, epoch, step)
        if window.count == cfg.train.log_every or step + 1 in (steps_per_epoch, last_step) or stopping:
            _check_and_log(window, list(terms), epoch, step, global_step, optimizer, writer, progress)
            total.merge(window)
            window = _Window()
        if progress is not None:
            progress.update(1)
        if stopping or step + 1 == last_step:
            break
    names = list(terms) if total.count else []
    means = (total.sums / total.count).tolist() if total.count else []
    return {"terms": dict(zip(names, means)), "steps": step + 1, "images": total.images,
            "seconds": time.perf_counter() - total.start, "interrupted": stopping and step + 1 < steps_per_epoch}


def merge_epoch_results(outs: list[dict], start_step: int) -> dict:
    """The result of an epoch trained in parts from ``start_step`` (``train_one_epoch`` results, in order)."""
    ends = [out["steps"] for out in outs]
    counts = [end - begin for begin, end in zip([start_step] + ends[:-1], ends)]
    names = next((out["terms"] for out in reversed(outs) if out["terms"]), {})
    terms = {k: sum(out["terms"].get(k, 0.0) * n for out, n in zip(outs, counts)) / max(sum(counts), 1)
             for k in names}
    return {"terms": terms, "steps": ends[-1], "images": sum(out["images"] for out in outs),
            "seconds": sum(out["seconds"] for out in outs), "interrupted": outs[-1]["interrupted"]}


class _Window:
    """Loss terms summed on the device over some steps (no host sync until they are read)."""

    def __init__(self):
        self.sums, self.count, self.images, self.start = None, 0, 0, time.perf_counter()

    def add(self, values, images):
        self.sums = values if self.sums is None else self.sums + values
        self.count, self.images = self.count + 1, self.images + images

    def merge(self, other):
        self.sums = other.sums if self.sums is None else self.sums + other.sums
        self.count, self.images = self.count + other.count, self.images + other.images


def _check_and_log(window, names, epoch, step, global_step, optimizer, writer, progress):
    """The one host sync of a logging interval: read the mean terms, stop on non-finite values, log them."""
    values = dict(zip(names + ["grad_norm"], (window.sums / window.count).tolist()))
    if not all(math.isfinite(v) for k, v in values.items() if k != "grad_norm"):
        terms = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
        raise NonFiniteLoss(f"non-finite loss at epoch {epoch} step {step}: {terms}. The run stopped; the last "
                            f"checkpoint on disk is the last good one.")
    lr = optimizer.param_groups[0]["lr"]
    images_per_s = window.images / (time.perf_counter() - window.start)
    if writer is not None:
        for name, value in values.items():
            writer.add_scalar(f"train/{name}", value, global_step)
        writer.add_scalar("train/lr", lr, global_step)
        writer.add_scalar("train/images_per_s", images_per_s, global_step)
    if progress is not None:
        progress.set_postfix(loss=f"{values['total']:.3f}", lr=f"{lr:.2e}", img_s=f"{images_per_s:.1f}")


# ---------------------------------------------------------------------------------------------------------------
# evaluation


@torch.no_grad()
def predict(model, images, cfg, *, sigmoid_cls: bool, amp_dtype=None) -> list[dict]:
    """Detections (network-input pixels) of a batch of uint8 images already on the model's device."""
    image_hw = tuple(images.shape[-2:])
    grid = grid_for(image_hw, unwrap(model).strides, images.device)
    with torch.autocast(images.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        preds = model(images)
    e = cfg.eval
    return decode(preds, grid, sigmoid_cls, e.conf_thresh, e.nms_iou, e.max_det, e.pre_nms_topk)


def to_detection_records(dets: dict, meta: dict, category_ids) -> list[dict]:
    """One image's detections in the external JSON format (``yolo.metrics``): original-image pixel edges,
    ``bbox`` = [x, y, w, h] with x1 = x, x2 = x + w, the dataset's image and ``category_ids``."""
    boxes = to_original(dets["boxes_xyxy"].float().cpu(), meta["scale"], meta["pad"], meta["orig_size"])
    return detections_from_xyxy(meta["image_id"], boxes.numpy(), dets["scores"].float().cpu().numpy(),
                                dets["labels"].cpu().numpy(), category_ids)


def run_inference(model, loader, cfg, *, device, sigmoid_cls: bool, amp_dtype=None, channels_last: bool = False,
                  on_batch=None):
    """``(detections, unreadable)`` of every image of ``loader``, each image once (the duplicates that pad the
    last rank's shard removed), gathered on rank 0: the detections list, and the record indices whose image could
    not be read (no detections); ``(None, None)`` on the other ranks.

    ``on_batch(images, targets, dets)`` sees each batch (used to draw a few images for TensorBoard).
    """
    model.eval()
    category_ids = loader.dataset.split.categories.ids
    per_image = {}
    for images, targets in loader:
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        dets = predict(model, images, cfg, sigmoid_cls=sigmoid_cls, amp_dtype=amp_dtype)
        if on_batch is not None:
            on_batch(images, targets, dets)
        for det, meta in zip(dets, targets["meta"]):
            per_image[meta["index"]] = to_detection_records(det, meta, category_ids) if meta["readable"] else None
    parts = gather_to_main(per_image)
    if parts is None:
        return None, None
    merged = {}
    for part in parts:
        merged.update(part)
    unreadable = [index for index in sorted(merged) if merged[index] is None]
    return [d for index in sorted(merged) if merged[index] is not None for d in merged[index]], unreadable


def evaluate(model, loader, cfg, *, device, sigmoid_cls: bool, amp_dtype=None, channels_last: bool = False,
             on_batch=None):
    """Score a model on the split of ``loader``: returns (metrics dict, PR curves, detections list).

    Metrics: VOC07 11-point and all-point mAP@0.5 and COCO-style AP via ``yolo.metrics.evaluate_detections``
    on ``loader.dataset.split``. Under DDP each rank infers its shard, rank 0 scores every image once and sends the
    metrics to the others (their PR curves and detections are None); the model's buffers must be the same on
    every rank. An image that fails to decode is an error (``UnreadableImages``) unless ``eval.skip_unreadable``,
    which scores the others.
    """
    tic = time.perf_counter()
    detections, unreadable = run_inference(model, loader, cfg, device=device, sigmoid_cls=sigmoid_cls,
                                           amp_dtype=amp_dtype, channels_last=channels_last, on_batch=on_batch)
    inference_s = time.perf_counter() - tic
    results = pr_curves = None
    if detections is not None:
        split = loader.dataset.split
        try:
            require_complete(split, cfg.eval.skip_unreadable, unreadable)
        except UnreadableImages as error:
            results = error         # sent to every rank, which raises it: the others wait in the broadcast
        else:
            results, pr_curves = evaluate_detections(split, detections, coco_backend=cfg.eval.coco_backend,
                                                     unreadable=unreadable)
            logger.info("evaluated %d images in %.1f s (inference %.1f s)", len(loader.dataset.records),
                        time.perf_counter() - tic, inference_s)
    results = broadcast_object(results)
    if isinstance(results, UnreadableImages):
        barrier()       # rank 0 tears its process group down as it raises: not before every rank has the error
        raise results
    return results, pr_curves, detections


def sigmoid_scoring(cfg, epoch: int) -> bool:
    """Whether class scores at inference are per-class sigmoids (else a softmax over classes).

    ``eval.cls_scoring``: ``auto`` matches the classification loss the head was trained with in ``epoch``
    (sigmoid for ``SIGMOID_CLS_LOSSES``, softmax for the others and for a user's own loss, which is never imported
    here); ``softmax`` / ``sigmoid`` force one, e.g. to score a sigmoid-focal head the way the reference code base
    decodes every head, softmax(class) x sigmoid(object).
    """
    if cfg.eval.cls_scoring == "auto":
        return cls_loss_for_epoch(cfg, epoch) in SIGMOID_CLS_LOSSES
    return cfg.eval.cls_scoring == "sigmoid"
