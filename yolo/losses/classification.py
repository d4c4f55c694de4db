"""Classification losses: fn(logits (N, C), targets (N,) int64 or (N, C) float, **hparams) -> (N,), unreduced.

The detection loss calls them on every cell and keeps the positive cells only (the class branch of this head sees
no background), so each must be finite on any logits.

References
----------
* Focal loss: Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017 (``torchvision.ops.sigmoid_focal_loss``).
* Poly-1: Leng et al., "PolyLoss: A Polynomial Expansion Perspective of Classification Loss Functions", ICLR 2022.
* Seesaw and Equalized Focal Loss: ``yolo.losses.longtail``.
"""
import torch
import torch.nn.functional as F

from yolo.losses.common import _f32, _focal_terms, _log1m_softmax, _soft_targets
from yolo.losses.longtail import equalized_focal, seesaw


def cross_entropy(logits, targets):
    """Softmax cross-entropy -sum_c t_c log p_c; soft targets allowed. (N, C) -> (N,)."""
    logits = _f32(logits)
    return -(_soft_targets(targets, logits.shape[-1], logits.dtype) * logits.log_softmax(-1)).sum(-1)


def softmax_focal(logits, targets, alpha=0.25, gamma=2.0):
    """Softmax focal loss on the target class only: -alpha_t (1 - p_t)^gamma log p_t, p = softmax.

    A float alpha is a pure scale (as in the reference code); a length-C sequence weights by the target class;
    None means no weighting. gamma = 0, alpha = None is exactly cross-entropy. (N, C) -> (N,).
    """
    logits = _f32(logits)
    targets = _soft_targets(targets, logits.shape[-1], logits.dtype)
    return _focal_terms(logits.log_softmax(-1), _log1m_softmax(logits), targets, alpha, gamma, negatives=False)


def softmax_modified_focal(logits, targets, alpha=0.25, gamma=2.0):
    """Focal loss with softmax probabilities where the negative classes contribute directly:

    -alpha_t (1-p_t)^gamma log p_t - sum_{i != t} (1 - alpha_i) p_i^gamma log(1 - p_i),  p = softmax.
    A float alpha weights positives by alpha and negatives by 1 - alpha. (N, C) -> (N,).
    """
    logits = _f32(logits)
    targets = _soft_targets(targets, logits.shape[-1], logits.dtype)
    return _focal_terms(logits.log_softmax(-1), _log1m_softmax(logits), targets, alpha, gamma, negatives=True)


def sigmoid_focal(logits, targets, alpha=0.25, gamma=2.0):
    """Sigmoid focal loss (RetinaNet) summed over classes; equals
    ``torchvision.ops.sigmoid_focal_loss(logits, one_hot, alpha, gamma).sum(-1)`` for 0/1 targets.

    Multi-label and soft targets are allowed: the loss is linear in the target, t * (positive term) +
    (1 - t) * (negative term). alpha = None disables the weighting. (N, C) -> (N,).
    """
    logits = _f32(logits)
    targets = _soft_targets(targets, logits.shape[-1], logits.dtype)
    return _focal_terms(F.logsigmoid(logits), F.logsigmoid(-logits), targets, alpha, gamma, negatives=True)


def hard_truncated_ce(logits, targets, margin=0.6):
    """Cross-entropy that stops at a margin: -lambda log p_t, lambda = 1 if p_t <= margin else 0.

    lambda is a constant (no gradient flows through the step): well-classified samples leave the loss.
    (N, C) -> (N,).
    """
    logits = _f32(logits)
    targets = _soft_targets(targets, logits.shape[-1], logits.dtype)
    log_p = logits.log_softmax(-1)
    keep = (log_p.detach().exp() <= margin).to(log_p.dtype)
    return -(targets * keep * log_p).sum(-1)


def soft_truncated_ce(logits, targets, margin=0.6, k=10.0):
    """The truncation step softened: -lambda log p_t, lambda = 1 - sigmoid(k (p_t - margin)).

    The gradient flows through lambda; as k grows this tends to ``hard_truncated_ce``. (N, C) -> (N,).
    """
    logits = _f32(logits)
    targets = _soft_targets(targets, logits.shape[-1], logits.dtype)
    log_p = logits.log_softmax(-1)
    keep = torch.sigmoid(-k * (log_p.exp() - margin))
    return -(targets * keep * log_p).sum(-1)


def poly1_cross_entropy(logits, targets, poly_epsilon=1.0):
    """Poly-1 (Leng et al. 2022, eq. 3): cross-entropy plus the first polynomial term, CE + epsilon (1 - p_t),
    p = softmax. epsilon = 0 is cross-entropy; the paper keeps epsilon >= -1 so the loss stays decreasing in p_t.

    Soft targets: p_t = sum_c t_c p_c, as the paper's reference code, so the loss is linear in the target. 1 - p_c
    comes from ``_log1m_softmax``, exact where p_c rounds to 1. (N, C) -> (N,).
    """
    logits = _f32(logits)
    targets = _soft_targets(targets, logits.shape[-1], logits.dtype)
    ce = -(targets * logits.log_softmax(-1)).sum(-1)
    one_minus_p_t = (targets * _log1m_softmax(logits).exp()).sum(-1)
    return ce + poly_epsilon * one_minus_p_t


def poly1_focal(logits, targets, alpha=0.25, gamma=2.0, poly_epsilon=1.0):
    """Poly-1 in its focal form (Leng et al. 2022, eq. 5), per class with p = sigmoid as the paper's RetinaNet:
    sigmoid focal loss + epsilon (1 - p_t)^(gamma + 1), summed over classes.

    p_t = p for the target class and 1 - p for the others (soft targets: linear in the target, as
    ``sigmoid_focal``). The polynomial term is not alpha-weighted, as in the paper's reference code.
    epsilon = 0 is exactly ``sigmoid_focal``. (N, C) -> (N,).
    """
    logits = _f32(logits)
    targets = _soft_targets(targets, logits.shape[-1], logits.dtype)
    log_p, log_1mp = F.logsigmoid(logits), F.logsigmoid(-logits)
    focal = _focal_terms(log_p, log_1mp, targets, alpha, gamma, negatives=True)
    poly = targets * torch.exp((gamma + 1) * log_1mp) + (1 - targets) * torch.exp((gamma + 1) * log_p)
    return focal + poly_epsilon * poly.sum(-1)


CLS_LOSSES = {
    "ce": cross_entropy,
    "softmax_focal": softmax_focal,
    "softmax_modified_focal": softmax_modified_focal,
    "sigmoid_focal": sigmoid_focal,
    "hard_truncated_ce": hard_truncated_ce,
    "soft_truncated_ce": soft_truncated_ce,
    "poly1": poly1_cross_entropy,
    "poly1_focal": poly1_focal,
    "seesaw": seesaw,            # keeps running class counts (yolo.losses.state)
    "efl": equalized_focal,      # keeps running gradient statistics (yolo.losses.state)
}

# Classification losses scored with per-class sigmoids at inference; every other one with a softmax.
SIGMOID_CLS_LOSSES = frozenset({"sigmoid_focal", "poly1_focal", "efl"})
