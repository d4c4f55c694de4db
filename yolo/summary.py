"""TensorBoard summaries of evaluations: mAP, per-class AP, PR curves, pictures, and the run's hyper-parameters."""
import numpy as np
import torch
from torchvision.utils import draw_bounding_boxes

PR_POINTS = 101
IMAGE_SCORE_THRESHOLD = 0.3


def log_evaluation(writer, results: dict, pr_curves: dict, step: int, prefix: str = "val"):
    """Scalars (every summary metric and per-class VOC07 AP) and a PR curve per class."""
    for key, value in results.items():
        if isinstance(value, float):
            writer.add_scalar(f"{prefix}/{key}", value, step)
    for name, row in results["per_class"].items():
        if row["ap50_voc07"] is not None:
            writer.add_scalar(f"{prefix}_ap50_voc07/{name}", row["ap50_voc07"], step)
    for name, curve in pr_curves.items():
        counts = pr_counts(curve["precision"], curve["recall"])
        if counts is not None:
            writer.add_pr_curve_raw(f"{prefix}_pr/{name}", *counts, num_thresholds=len(counts[0]), global_step=step)


def pr_counts(precision: np.ndarray, recall: np.ndarray):
    """Per-rank precision/recall (decreasing score) -> the (tp, fp, tn, fn, precision, recall) arrays of
    ``add_pr_curve_raw``, ordered by increasing threshold and sampled at up to PR_POINTS ranks."""
    if len(precision) == 0 or recall[-1] == 0:
        return None
    ranks = np.unique(np.linspace(0, len(precision) - 1, PR_POINTS).round().astype(int))[::-1]
    tp = precision[ranks] * (ranks + 1)
    num_gt = tp[0] / recall[ranks[0]]
    fp = (ranks + 1) - tp
    return tp, fp, np.zeros_like(tp), num_gt - tp, precision[ranks], recall[ranks]


def draw_detections(image: torch.Tensor, gt_boxes_xyxy: torch.Tensor, gt_labels: torch.Tensor, det: dict,
                    classes, score_threshold: float = IMAGE_SCORE_THRESHOLD) -> torch.Tensor:
    """uint8 (3, H, W) image with ground truth in green and detections above a score in red (input pixels)."""
    image = image.cpu()
    if len(gt_labels):
        image = draw_bounding_boxes(image, gt_boxes_xyxy.cpu(), [classes[i] for i in gt_labels.tolist()],
                                    colors="lime", width=1)
    keep = det["scores"] >= score_threshold
    if not keep.any():
        return image
    names = [f"{classes[c]} {s:.2f}" for c, s in zip(det["labels"][keep].tolist(), det["scores"][keep].tolist())]
    return draw_bounding_boxes(image, det["boxes_xyxy"][keep].cpu().float(), names, colors="red", width=1)


def image_collector(classes, max_images: int = 4):
    """An ``on_batch`` hook for ``yolo.engine.run_inference`` that keeps the first images, drawn."""
    drawn = []

    def on_batch(images, targets, dets):
        for i in range(min(len(dets), max_images - len(drawn))):
            valid = targets["labels"][i] >= 0
            drawn.append(draw_detections(images[i].to(torch.uint8).contiguous(), targets["boxes_xyxy"][i][valid],
                                         targets["labels"][i][valid], dets[i], classes))
    return drawn, on_batch


def log_hparams(writer, config: dict, metrics: dict):
    """The run's configuration with its final metrics in TensorBoard's HPARAMS tab, for side-by-side runs."""
    flat = {}
    for section, values in config.items():
        for key, value in (values.items() if isinstance(values, dict) else [(None, values)]):
            name = f"{section}.{key}" if key else section
            flat[name] = value if isinstance(value, (int, float, str, bool)) else str(value)
    scalars = {f"hparam/{k}": v for k, v in metrics.items() if isinstance(v, float)}
    writer.add_hparams(flat, scalars, run_name=".")
