"""Predictions -> detections: scores, confidence threshold, per-class NMS, top-k per image."""
import torch
from torchvision.ops import batched_nms

from yolo.boxes import decode_cell


def class_probs(cls_logits: torch.Tensor, sigmoid: bool) -> torch.Tensor:
    """Class probabilities the way the classification loss trained them: per-class sigmoid or softmax."""
    return torch.sigmoid(cls_logits) if sigmoid else cls_logits.softmax(-1)


@torch.no_grad()
def decode(preds: torch.Tensor, grid, sigmoid_cls: bool, conf_thresh: float = 0.01, nms_iou: float = 0.5,
           max_det: int = 100, pre_nms_topk: int = 1000) -> list[dict]:
    """Detections of a batch of raw predictions.

    Args:
        preds: (N, A, 1 + C + 4) model outputs.
        grid: the ``yolo.targets.Grid`` of the predictions.
        sigmoid_cls: score classes with sigmoids (sigmoid focal loss) instead of a softmax.
        conf_thresh: minimum score = sigmoid(objectness) x class probability (every class of a cell is a
            candidate, as in multi-class NMS).
        nms_iou: IoU threshold of the per-class NMS (``torchvision.ops.batched_nms``).
        max_det: detections kept per image after NMS; pre_nms_topk: candidates kept per image before NMS.
    Returns:
        one dict per image: ``boxes_xyxy`` (K, 4) float32 in network-input pixels, ``scores`` (K,), ``labels`` (K,)
        int64 0-based, sorted by decreasing score.
    """
    preds = preds.float()
    batch_size, num_cells = preds.shape[:2]
    num_classes = preds.shape[-1] - 5
    scores = torch.sigmoid(preds[..., :1]) * class_probs(preds[..., 1:-4], sigmoid_cls)  # (N, A, C)
    boxes_xyxy = decode_cell(preds[..., -4:], grid.cells_xy, grid.strides)                # (N, A, 4)
    k = min(pre_nms_topk, num_cells * num_classes)
    top_scores, top_index = scores.flatten(1).topk(k, dim=1)                              # (N, k)
    cell_index, labels = top_index // num_classes, top_index % num_classes
    top_boxes = boxes_xyxy.gather(1, cell_index.unsqueeze(-1).expand(-1, -1, 4))           # (N, k, 4)

    image_index = torch.arange(batch_size, device=preds.device).unsqueeze(1).expand(-1, k)
    keep = top_scores > conf_thresh
    boxes, scores_kept = top_boxes[keep], top_scores[keep]
    labels, image_index = labels[keep], image_index[keep]
    # one NMS call for the whole batch: boxes of different images or classes never suppress each other
    kept = batched_nms(boxes, scores_kept, image_index * num_classes + labels, nms_iou)
    detections = []
    for i in range(batch_size):
        mine = kept[image_index[kept] == i][:max_det]  # batched_nms returns indices by decreasing score
        detections.append({"boxes_xyxy": boxes[mine], "scores": scores_kept[mine], "labels": labels[mine]})
    return detections
