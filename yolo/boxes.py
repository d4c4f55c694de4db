"""Box conventions and conversions: the one place where coordinates change meaning.

Conventions used across the project
-----------------------------------
* **Annotation (VOC) coordinates** ``boxes_voc``: what the VOC XML files hold, 1-based and inclusive,
  so a box covering pixel columns 0..9 of the image (0-based) is written ``xmin=1, xmax=10`` and is
  ``xmax - xmin + 1 = 10`` pixels wide. Evaluation follows the devkit on these coordinates (``+1`` in widths).
* **Float pixel-edge coordinates** ``boxes_xyxy``: what the model, the augmentation and the losses use.
  0-based edges, the image spans ``[0, W] x [0, H]``, width is ``x2 - x1``. Conversion:
  ``x1 = xmin - 1, y1 = ymin - 1, x2 = xmax, y2 = ymax`` (and back), so the width is preserved exactly.
* ``_px`` suffixes are pixels, ``_norm`` are fractions of the image size.
* ``boxes_cxcywh`` is centre x, centre y, width, height in the same units as the xyxy it came from.
"""
import functools

import numpy as np
import torch


def voc_to_xyxy(boxes_voc):
    """(M, 4) 1-based inclusive annotation boxes -> (M, 4) float pixel-edge xyxy. Works on numpy or torch."""
    offset = _like(boxes_voc, [1.0, 1.0, 0.0, 0.0])
    return boxes_voc - offset


def xyxy_to_voc(boxes_xyxy):
    """(M, 4) float pixel-edge xyxy -> (M, 4) 1-based inclusive annotation coordinates (not rounded)."""
    offset = _like(boxes_xyxy, [1.0, 1.0, 0.0, 0.0])
    return boxes_xyxy + offset


def _like(boxes, values):
    if isinstance(boxes, torch.Tensor):
        return torch.tensor(values, dtype=boxes.dtype, device=boxes.device)
    return np.asarray(values, dtype=np.asarray(boxes).dtype if np.asarray(boxes).dtype.kind == "f" else np.float32)


def xyxy_to_cxcywh(boxes_xyxy: torch.Tensor) -> torch.Tensor:
    """(..., 4) xyxy -> (..., 4) cxcywh."""
    x1, y1, x2, y2 = boxes_xyxy.unbind(-1)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=-1)


def cxcywh_to_xyxy(boxes_cxcywh: torch.Tensor) -> torch.Tensor:
    """(..., 4) cxcywh -> (..., 4) xyxy."""
    cx, cy, w, h = boxes_cxcywh.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


# YOLOv1 cell parameterisation: a box predicted by grid cell (gx, gy) of a level with stride s is
#   cx = (gx + sigmoid(tx)) * s,  cy = (gy + sigmoid(ty)) * s,  w = exp(tw) * s,  h = exp(th) * s.
# tw, th are clamped before exp so that a wild logit gives a huge but finite box (no inf/nan in GIoU).
MAX_LOG_SIZE = 8.0  # exp(8) = 2981 strides: far beyond any image


def encode_cell(boxes_xyxy: torch.Tensor, cells_xy: torch.Tensor, strides: torch.Tensor) -> torch.Tensor:
    """(P, 4) boxes in pixels, (P, 2) cell indices (gx, gy), (P,) strides -> (P, 4) targets (tx, ty, tw, th)
    with tx, ty the centre's offset inside the cell in [0, 1] and tw, th = log(size / stride)."""
    boxes_cxcywh = xyxy_to_cxcywh(boxes_xyxy)
    strides = strides.unsqueeze(-1)
    offsets = boxes_cxcywh[:, :2] / strides - cells_xy
    log_sizes = torch.log(boxes_cxcywh[:, 2:] / strides)
    return torch.cat([offsets, log_sizes], dim=-1)


def decode_cell(box_logits: torch.Tensor, cells_xy: torch.Tensor, strides: torch.Tensor) -> torch.Tensor:
    """(..., 4) logits (tx, ty, tw, th), (..., 2) cell indices, (...,) strides -> (..., 4) boxes_xyxy in pixels."""
    strides = strides.unsqueeze(-1)
    centres = (cells_xy + torch.sigmoid(box_logits[..., :2])) * strides
    sizes = torch.exp(box_logits[..., 2:].clamp(max=MAX_LOG_SIZE)) * strides
    return cxcywh_to_xyxy(torch.cat([centres, sizes], dim=-1))


@functools.lru_cache(maxsize=64)
def device_constant(values: tuple, dtype: torch.dtype, device) -> torch.Tensor:
    """A constant tensor (per-class weights, size thresholds) made once per device and dtype: a host -> device
    copy in every step would make the CUDA stream wait for the queued kernels (a hidden synchronisation)."""
    return torch.tensor(values, dtype=dtype, device=device)
