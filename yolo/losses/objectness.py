"""Confidence (objectness) losses: fn(logits (N,), targets (N,) in [0, 1], **hparams) -> (N,), unreduced.

The target of a cell is 1 or 0 (``loss.conf_target: one``), or YOLOv1's own confidence target Pr(object) x IoU:
the IoU of the cell's predicted box with its ground truth, 0 on negative cells (``iou``, built by
``yolo.losses.detection``). A cell is positive where its target is > 0; ``pos_weight`` scales the loss of the
positive cells and ``neg_weight`` that of the others (YOLOv1: 5 and 1). With the IoU target, a positive cell whose
predicted box misses its object (IoU 0) counts as background, as in mmdetection's VFL (``conf_iou_floor`` > 0
keeps it positive).

References
----------
* YOLOv1: Redmon et al., CVPR 2016 (confidence = Pr(object) x IoU; YOLOv5 ``tobj = iou.detach()``).
* Focal loss: Lin et al., ICCV 2017.
* QFL: Li et al., "Generalized Focal Loss", NeurIPS 2020; mmdetection ``mmdet/models/losses/gfocal_loss.py``.
* VFL: Zhang et al., "VarifocalNet", CVPR 2021; mmdetection ``varifocal_loss.py``, ultralytics ``VarifocalLoss``.
"""
import torch
import torch.nn.functional as F

from yolo.losses.common import _f32


def _cell_weights(targets, pos_weight, neg_weight):
    """pos_weight on positive cells (target > 0), neg_weight on the others: (N,)."""
    return torch.where(targets > 0, pos_weight, neg_weight).to(targets.dtype)


def _pos_neg(loss_pos, loss_neg, targets, pos_weight, neg_weight):
    """For 0/1 targets only (focal and soft truncation are defined on them)."""
    return pos_weight * targets * loss_pos + neg_weight * (1 - targets) * loss_neg


def objectness_mse(logits, targets, pos_weight=5.0, neg_weight=1.0):
    """YOLOv1 confidence loss: squared error between sigmoid(logit) and the target (1/0 or the IoU). (N,) -> (N,)."""
    logits, targets = _f32(logits), _f32(targets)
    return _cell_weights(targets, pos_weight, neg_weight) * (torch.sigmoid(logits) - targets) ** 2


def objectness_bce(logits, targets, pos_weight=5.0, neg_weight=1.0):
    """Binary cross-entropy with logits, -t log sigmoid(x) - (1 - t) log sigmoid(-x); with a soft (IoU) target it
    is minimal at sigmoid(x) = t. (N,) -> (N,)."""
    logits, targets = _f32(logits), _f32(targets)
    bce = targets * -F.logsigmoid(logits) + (1 - targets) * -F.logsigmoid(-logits)
    return _cell_weights(targets, pos_weight, neg_weight) * bce


def binary_focal(logits, targets, alpha=0.25, gamma=2.0, pos_weight=1.0, neg_weight=1.0):
    """Binary focal loss: -alpha (1-p)^gamma log p (y=1), -(1-alpha) p^gamma log(1-p) (y=0), p = sigmoid(x).

    alpha = None disables the alpha weighting. 0/1 targets (QFL is its soft-target form). (N,) -> (N,).
    """
    logits, targets = _f32(logits), _f32(targets)
    log_p, log_1mp = F.logsigmoid(logits), F.logsigmoid(-logits)
    a_pos, a_neg = (1.0, 1.0) if alpha is None else (alpha, 1.0 - alpha)
    loss_pos = -a_pos * torch.exp(gamma * log_1mp) * log_p
    loss_neg = -a_neg * torch.exp(gamma * log_p) * log_1mp
    return _pos_neg(loss_pos, loss_neg, targets, pos_weight, neg_weight)


def binary_soft_truncated(logits, targets, k=1.0, pos_weight=1.0, neg_weight=1.0):
    """Softened binary truncation: -sigmoid(-k x) log sigmoid(x) (y=1), -sigmoid(k x) log sigmoid(-x) (y=0).

    With k = 1 it is the binary focal loss with gamma = 1 and no alpha (sigmoid(-x) = 1 - p). 0/1 targets.
    (N,) -> (N,).
    """
    logits, targets = _f32(logits), _f32(targets)
    loss_pos = -torch.sigmoid(-k * logits) * F.logsigmoid(logits)
    loss_neg = -torch.sigmoid(k * logits) * F.logsigmoid(-logits)
    return _pos_neg(loss_pos, loss_neg, targets, pos_weight, neg_weight)


def quality_focal(logits, targets, beta=2.0, pos_weight=1.0, neg_weight=1.0):
    """Quality Focal Loss (Li et al. 2020, eq. 5): -|q - sigma|^beta [q log sigma + (1 - q) log(1 - sigma)],
    sigma = sigmoid(x), q the target (the IoU, 0 on negative cells), beta = 2. (N,) -> (N,).

    The log terms are ``logsigmoid``; the modulating factor is differentiated (as mmdetection). mmdetection
    applies it to C class scores per anchor and averages over positives; here it is the single objectness score of
    each cell, summed over cells and divided by the batch size, with ``pos_weight`` / ``neg_weight`` (the paper's
    QFL is pos_weight = neg_weight = 1).
    """
    logits, targets = _f32(logits), _f32(targets)
    bce = targets * -F.logsigmoid(logits) + (1 - targets) * -F.logsigmoid(-logits)
    modulating = (targets - torch.sigmoid(logits)).abs() ** beta
    return _cell_weights(targets, pos_weight, neg_weight) * modulating * bce


def varifocal(logits, targets, vfl_alpha=0.75, gamma=2.0, pos_weight=1.0, neg_weight=1.0):
    """Varifocal Loss (Zhang et al. 2021, eq. 2), p = sigmoid(x), q the target (the IoU, 0 on negative cells):
    -q [q log p + (1 - q) log(1 - p)] where q > 0, -alpha p^gamma log(1 - p) where q = 0; alpha = 0.75, gamma = 2.

    Positives are weighted by q itself, negatives are focal-down-weighted; p^gamma is differentiated (as
    mmdetection and ultralytics). mmdetection averages over positives (or the sum of q), ultralytics sums over
    anchors per image; here the cells' losses are summed and divided by the batch size, with ``pos_weight`` /
    ``neg_weight`` (the paper's VFL is pos_weight = neg_weight = 1). ultralytics splits by its foreground mask
    rather than q > 0: the same cells unless a positive cell's IoU is 0. (N,) -> (N,).
    """
    logits, targets = _f32(logits), _f32(targets)
    log_p, log_1mp = F.logsigmoid(logits), F.logsigmoid(-logits)
    loss_pos = -targets * (targets * log_p + (1 - targets) * log_1mp)
    loss_neg = -vfl_alpha * torch.exp(gamma * log_p) * log_1mp
    return _cell_weights(targets, pos_weight, neg_weight) * torch.where(targets > 0, loss_pos, loss_neg)


CONF_LOSSES = {
    "mse": objectness_mse,
    "bce": objectness_bce,
    "focal": binary_focal,
    "soft_truncated": binary_soft_truncated,
    "qfl": quality_focal,
    "vfl": varifocal,
}

# Confidence losses defined on 0/1 targets only (``loss.conf_target: iou`` is refused for them).
BINARY_CONF_LOSSES = frozenset({"focal", "soft_truncated"})
# Confidence losses whose definition is the IoU target (``loss.conf_target: auto`` gives it to them).
IOU_CONF_LOSSES = frozenset({"qfl", "vfl"})
