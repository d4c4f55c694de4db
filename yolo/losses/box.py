"""Box losses: fn(box_logits (P, 4), boxes_xyxy (P, 4) targets in input pixels, cells_xy (P, 2), strides (P,),
weights (P,)) -> dict of named (P,) terms; and the element-wise IoU that the confidence target reads.

References
----------
* YOLOv1: Redmon et al., CVPR 2016; the box parameterisation and ``2 - w*h/(W*H)`` weight follow the
  PyTorch YOLOv1 reference implementations (sigmoid cell offsets, log-scale sizes).
* GIoU: Rezatofighi et al., CVPR 2019.
"""
import torch
import torch.nn.functional as F

from yolo.boxes import decode_cell, encode_cell
from yolo.losses.common import _f32


def box_yolov1(box_logits, boxes_xyxy, cells_xy, strides, weights):
    """BCE-with-logits on the cell offsets (tx, ty) plus squared error on the log-scale sizes (tw, th),
    each box weighted by ``weights`` (the targets give ``2 - w*h/(W*H)``: small boxes count more)."""
    box_logits = _f32(box_logits)
    target = encode_cell(boxes_xyxy, cells_xy, strides).to(box_logits.dtype)
    loss_xy = F.binary_cross_entropy_with_logits(box_logits[:, :2], target[:, :2], reduction="none").sum(-1)
    loss_wh = ((box_logits[:, 2:] - target[:, 2:]) ** 2).sum(-1)
    return {"box_xy": weights * loss_xy, "box_wh": weights * loss_wh}


def box_giou(box_logits, boxes_xyxy, cells_xy, strides, weights):
    """1 - GIoU between the decoded prediction and the target box, times ``weights``."""
    box_logits = _f32(box_logits)
    pred_xyxy = decode_cell(box_logits, cells_xy, strides)
    return {"box_iou": weights * (1 - _giou(pred_xyxy, boxes_xyxy.to(pred_xyxy.dtype)))}


def _giou(a_xyxy, b_xyxy, eps=1e-7):
    """Element-wise generalised IoU of (P, 4) boxes (torchvision's is pairwise)."""
    inter_wh = (torch.minimum(a_xyxy[:, 2:], b_xyxy[:, 2:]) - torch.maximum(a_xyxy[:, :2], b_xyxy[:, :2])).clamp(min=0)
    inter = inter_wh.prod(-1)
    area_a = (a_xyxy[:, 2:] - a_xyxy[:, :2]).prod(-1)
    area_b = (b_xyxy[:, 2:] - b_xyxy[:, :2]).prod(-1)
    union = area_a + area_b - inter
    hull = (torch.maximum(a_xyxy[:, 2:], b_xyxy[:, 2:]) - torch.minimum(a_xyxy[:, :2], b_xyxy[:, :2])).prod(-1)
    return inter / (union + eps) - (hull - union) / (hull + eps)


def elementwise_iou(a_xyxy, b_xyxy) -> torch.Tensor:
    """IoU of (..., 4) boxes with the (..., 4) boxes at the same index, (...,), in [0, 1] (0 for a zero union)."""
    inter_wh = (torch.minimum(a_xyxy[..., 2:], b_xyxy[..., 2:])
                - torch.maximum(a_xyxy[..., :2], b_xyxy[..., :2])).clamp(min=0)
    inter = inter_wh.prod(-1)
    union = (a_xyxy[..., 2:] - a_xyxy[..., :2]).prod(-1) + (b_xyxy[..., 2:] - b_xyxy[..., :2]).prod(-1) - inter
    return torch.where(union > 0, inter / union.clamp(min=torch.finfo(union.dtype).tiny), 0.0)


BOX_LOSSES = {"yolov1": box_yolov1, "giou": box_giou}
