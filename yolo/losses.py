"""The loss library: classification, confidence (objectness) and box losses, and the detection loss.

Every function takes logits (never probabilities), works in log space (``log_softmax``, ``logsigmoid``) and
computes in at least float32, so it stays finite, with finite gradients, for logits of magnitude 100 and under
bf16/fp16 autocast. Each returns an *unreduced* loss; the detection loss reduces and names the terms.

References
----------
* Focal loss: Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017 (``torchvision.ops.sigmoid_focal_loss``).
* YOLOv1: Redmon et al., CVPR 2016; the box parameterisation and ``2 - w*h/(W*H)`` weight follow the
  PyTorch YOLOv1 reference implementations (sigmoid cell offsets, log-scale sizes).
* GIoU: Rezatofighi et al., CVPR 2019.
"""
import argparse
import functools
import inspect
import math

import torch
import torch.nn.functional as F

from yolo.boxes import decode_cell, device_constant, encode_cell

# ---------------------------------------------------------------------------------------------------------------
# helpers


def _f32(x: torch.Tensor) -> torch.Tensor:
    """Upcast half/bfloat16 to float32 (float64 stays float64, for gradcheck); losses never run in low precision."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _soft_targets(targets: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """(N,) int64 class indices or (N, C) float targets -> (N, C) float targets."""
    if targets.dtype in (torch.int64, torch.int32, torch.uint8):
        if targets.dim() != 1:
            raise ValueError(f"integer targets must be class indices of shape (N,), got {tuple(targets.shape)}")
        return F.one_hot(targets.long(), num_classes).to(dtype)
    if targets.dim() != 2 or targets.shape[1] != num_classes:
        raise ValueError(f"float targets must have shape (N, {num_classes}), got {tuple(targets.shape)}")
    return targets.to(dtype)


def _class_weights(alpha, num_classes: int, like: torch.Tensor) -> torch.Tensor | None:
    """alpha (None, float, or length-C sequence) -> None or a (C,) tensor of per-class weights."""
    if alpha is None:
        return None
    if isinstance(alpha, (int, float)):
        return torch.full((num_classes,), float(alpha), dtype=like.dtype, device=like.device)
    if isinstance(alpha, torch.Tensor):
        alpha = alpha.tolist()
    if len(alpha) != num_classes:
        raise ValueError(f"per-class alpha needs {num_classes} values, got {len(alpha)}")
    return device_constant(tuple(float(a) for a in alpha), like.dtype, like.device)


def _log1m_softmax(logits: torch.Tensor) -> torch.Tensor:
    """log(1 - softmax(logits)) per class, exactly: logsumexp over the *other* classes minus logsumexp over all.

    ``log1p(-p)`` would give -inf once p rounds to 1 (a logit margin of ~17 in float32); this does not.
    The "all but i" logsumexp is combined from prefix and suffix running logsumexps, O(N C). (N, C) -> (N, C).
    """
    if logits.shape[-1] < 2:
        raise ValueError("softmax losses need at least 2 classes")
    prefix = logits.logcumsumexp(-1)                     # lse(z[:i+1])
    suffix = logits.flip(-1).logcumsumexp(-1).flip(-1)   # lse(z[i:])
    pad = torch.full_like(logits[..., :1], float("-inf"))
    before = torch.cat([pad, prefix[..., :-1]], dim=-1)  # lse(z[:i]), -inf for i = 0
    after = torch.cat([suffix[..., 1:], pad], dim=-1)    # lse(z[i+1:]), -inf for i = C-1
    return torch.logaddexp(before, after) - prefix[..., -1:]


def _focal_terms(log_p, log_1mp, targets, alpha, gamma, negatives: bool):
    """Sum over classes of -a_c (1-p_c)^g log p_c [- (1-a_c) p_c^g log(1-p_c) on negatives], targets (N, C)."""
    weights = _class_weights(alpha, log_p.shape[-1], log_p)
    pos = -targets * torch.exp(gamma * log_1mp) * log_p
    if weights is not None:
        pos = pos * weights
    if not negatives:
        return pos.sum(-1)
    neg = -(1 - targets) * torch.exp(gamma * log_p) * log_1mp
    if weights is not None:
        neg = neg * (1 - weights)
    return (pos + neg).sum(-1)


# ---------------------------------------------------------------------------------------------------------------
# classification losses: fn(logits (N, C), targets (N,) int64 or (N, C) float, **hparams) -> (N,)


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


CLS_LOSSES = {
    "ce": cross_entropy,
    "softmax_focal": softmax_focal,
    "softmax_modified_focal": softmax_modified_focal,
    "sigmoid_focal": sigmoid_focal,
    "hard_truncated_ce": hard_truncated_ce,
    "soft_truncated_ce": soft_truncated_ce,
}

# Classification losses scored with per-class sigmoids at inference; every other one with a softmax.
SIGMOID_CLS_LOSSES = frozenset({"sigmoid_focal"})

# ---------------------------------------------------------------------------------------------------------------
# binary (confidence / objectness) losses: fn(logits (N,), targets (N,) in [0, 1], **hparams) -> (N,)
# pos_weight scales the terms of positive targets and neg_weight those of negative ones (YOLOv1: 5 and 1).


def _pos_neg(loss_pos, loss_neg, targets, pos_weight, neg_weight):
    return pos_weight * targets * loss_pos + neg_weight * (1 - targets) * loss_neg


def objectness_mse(logits, targets, pos_weight=5.0, neg_weight=1.0):
    """YOLOv1 confidence loss: squared error between sigmoid(logit) and the target. (N,) -> (N,)."""
    logits, targets = _f32(logits), _f32(targets)
    sq_err = (torch.sigmoid(logits) - targets) ** 2
    return _pos_neg(sq_err, sq_err, targets, pos_weight, neg_weight)


def objectness_bce(logits, targets, pos_weight=5.0, neg_weight=1.0):
    """Binary cross-entropy with logits, -log sigmoid(x) for positives and -log sigmoid(-x) for negatives."""
    logits, targets = _f32(logits), _f32(targets)
    return _pos_neg(-F.logsigmoid(logits), -F.logsigmoid(-logits), targets, pos_weight, neg_weight)


def binary_focal(logits, targets, alpha=0.25, gamma=2.0, pos_weight=1.0, neg_weight=1.0):
    """Binary focal loss: -alpha (1-p)^gamma log p (y=1), -(1-alpha) p^gamma log(1-p) (y=0), p = sigmoid(x).

    alpha = None disables the alpha weighting. (N,) -> (N,).
    """
    logits, targets = _f32(logits), _f32(targets)
    log_p, log_1mp = F.logsigmoid(logits), F.logsigmoid(-logits)
    a_pos, a_neg = (1.0, 1.0) if alpha is None else (alpha, 1.0 - alpha)
    loss_pos = -a_pos * torch.exp(gamma * log_1mp) * log_p
    loss_neg = -a_neg * torch.exp(gamma * log_p) * log_1mp
    return _pos_neg(loss_pos, loss_neg, targets, pos_weight, neg_weight)


def binary_soft_truncated(logits, targets, k=1.0, pos_weight=1.0, neg_weight=1.0):
    """Softened binary truncation: -sigmoid(-k x) log sigmoid(x) (y=1), -sigmoid(k x) log sigmoid(-x) (y=0).

    With k = 1 it is the binary focal loss with gamma = 1 and no alpha (sigmoid(-x) = 1 - p). (N,) -> (N,).
    """
    logits, targets = _f32(logits), _f32(targets)
    loss_pos = -torch.sigmoid(-k * logits) * F.logsigmoid(logits)
    loss_neg = -torch.sigmoid(k * logits) * F.logsigmoid(-logits)
    return _pos_neg(loss_pos, loss_neg, targets, pos_weight, neg_weight)


CONF_LOSSES = {
    "mse": objectness_mse,
    "bce": objectness_bce,
    "focal": binary_focal,
    "soft_truncated": binary_soft_truncated,
}

# ---------------------------------------------------------------------------------------------------------------
# box losses: fn(box_logits (P, 4), boxes_xyxy (P, 4) targets in input pixels, cells_xy (P, 2), strides (P,),
#                weights (P,)) -> dict of named (P,) terms


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


BOX_LOSSES = {"yolov1": box_yolov1, "giou": box_giou}

# ---------------------------------------------------------------------------------------------------------------
# registry access


def get_loss(registry: dict, name: str, **hparams):
    """Look a loss up by name and bind the hyper-parameters its signature accepts (the others are ignored).

    An unknown name raises ValueError listing the valid names; ``None`` hyper-parameters keep the function's
    default except ``alpha``, where None means "no weighting".
    """
    if name not in registry:
        raise ValueError(f"unknown loss {name!r}; choose one of: {', '.join(registry)}")
    fn = registry[name]
    accepted = inspect.signature(fn).parameters
    bound = {k: v for k, v in hparams.items() if k in accepted and (v is not None or k == "alpha")}
    return functools.partial(fn, **bound)


def prior_bias(pi: float) -> float:
    """Bias b with sigmoid(b) = pi: -log((1 - pi) / pi). Focal loss paper, section 3.3 ("prior" initialisation)."""
    if not 0.0 < pi < 1.0:
        raise ValueError(f"prior probability must be in (0, 1), got {pi}")
    return -math.log((1.0 - pi) / pi)


# ---------------------------------------------------------------------------------------------------------------
# the detection loss


def detection_loss(preds: torch.Tensor, targets: dict, grid, cfg, cls_loss: str | None = None) -> dict:
    """YOLOv1-style loss over every cell of every level, from tensors and the loss config (never the model).

    Args:
        preds: (N, A, 1 + C + 4) raw outputs: objectness logit, C class logits, 4 box logits (tx, ty, tw, th).
        targets: from ``yolo.targets.assign_targets``: obj (N, A), labels (N, A), boxes_xyxy (N, A, 4), weights.
        grid: the ``yolo.targets.Grid`` of the predictions.
        cfg: a ``LossConfig``.
        cls_loss: overrides ``cfg.cls_loss`` (the cross-entropy warm-up switches it).
    Returns:
        dict of scalar terms, each summed over cells and divided by the batch size as in the YOLOv1 reference:
        ``obj``, ``noobj``, ``cls``, ``box_xy`` and ``box_wh`` (or ``box_iou``), and their weighted sum ``total``.
        Computed densely with masks (no boolean indexing) so the step has static shapes and no host sync.
    """
    preds = _f32(preds)
    batch_size, num_cells = preds.shape[:2]
    obj_target = targets["obj"]                                   # (N, A)
    conf_fn = get_loss(CONF_LOSSES, cfg.conf_loss, pos_weight=cfg.obj_weight, neg_weight=cfg.noobj_weight,
                       alpha=cfg.conf_alpha, gamma=cfg.conf_gamma, k=cfg.conf_k)
    conf = conf_fn(preds[..., 0], obj_target)                     # (N, A)

    cls_fn = get_loss(CLS_LOSSES, cls_loss or cfg.cls_loss, alpha=cfg.alpha, gamma=cfg.gamma, margin=cfg.margin,
                      k=cfg.k)
    cls_logits = preds[..., 1:-4].reshape(batch_size * num_cells, -1)      # (N*A, C)
    cls = cls_fn(cls_logits, targets["labels"].clamp(min=0).flatten()).view(batch_size, num_cells)

    box_fn = get_loss(BOX_LOSSES, cfg.box_loss)
    box_terms = box_fn(preds[..., -4:].reshape(-1, 4), targets["boxes_xyxy"].reshape(-1, 4),
                       grid.cells_xy.repeat(batch_size, 1), grid.strides.repeat(batch_size),
                       targets["weights"].flatten())
    terms = {
        "obj": (conf * obj_target).sum() / batch_size,
        "noobj": (conf * (1 - obj_target)).sum() / batch_size,
        "cls": (cls * obj_target).sum() / batch_size,
    }
    terms.update({name: value.sum() / batch_size for name, value in box_terms.items()})
    terms["total"] = (terms["obj"] + terms["noobj"] + cfg.cls_weight * terms["cls"]
                      + cfg.box_weight * sum(terms[name] for name in box_terms))
    return terms


# ---------------------------------------------------------------------------------------------------------------
# the reference table and picture: python -m yolo.losses table | plot OUT.png

TABLE_GAMMAS = (0, 0.5, 1, 2, 3, 4, 5, 6, 7, 8, 16)
PLOT_GAMMAS = (0, 0.5, 1, 2, 5)


def focal_table(gammas=TABLE_GAMMAS, num_classes: int = 11) -> torch.Tensor:
    """Softmax focal loss (alpha = None) for logits [0, 0.1, ..., 1.0], each class taken in turn as the ground
    truth: (len(gammas), num_classes); the gamma = 0 row is cross-entropy."""
    logits = (torch.arange(num_classes, dtype=torch.float64) / 10).expand(num_classes, -1)
    targets = torch.arange(num_classes)
    return torch.stack([softmax_focal(logits, targets, alpha=None, gamma=g) for g in gammas])


def _print_table():
    table = focal_table()
    print("softmax focal loss, logits [0, 0.1, ..., 1.0]; columns: ground-truth class; rows: gamma")
    print("gamma " + "".join(f"{c:>9d}" for c in range(table.shape[1])))
    for gamma, row in zip(TABLE_GAMMAS, table):
        print(f"{gamma:>5} " + "".join(f"{v:9.4f}" for v in row.tolist()))


def _plot(out: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Two classes with logits (z, 0): p_t = sigmoid(z) sweeps (0, 1) and every softmax loss is exact.
    p_t = torch.linspace(1e-3, 1 - 1e-3, 500, dtype=torch.float64)
    logits = torch.stack([torch.logit(p_t), torch.zeros_like(p_t)], dim=-1)
    targets = torch.zeros(len(p_t), dtype=torch.long)
    fig, ax = plt.subplots(figsize=(7, 5))
    for gamma in PLOT_GAMMAS:
        ax.plot(p_t, softmax_focal(logits, targets, alpha=None, gamma=gamma), label=f"focal, gamma={gamma}"
                if gamma else "cross-entropy (gamma=0)")
    ax.plot(p_t, hard_truncated_ce(logits, targets), "--", label="hard truncated CE, margin=0.6")
    for k in (10, 30):
        ax.plot(p_t, soft_truncated_ce(logits, targets, k=k), ":", label=f"soft truncated CE, margin=0.6, k={k}")
    ax.set(xlabel="probability of the ground-truth class", ylabel="loss", ylim=(0, 5), xlim=(0, 1),
           title="Classification losses against the probability of the true class")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m yolo.losses", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("table", help="print the reference softmax focal loss table")
    plot = sub.add_parser("plot", help="draw loss against the probability of the true class")
    plot.add_argument("out", help="output image, e.g. losses.png")
    args = parser.parse_args(argv)
    if args.command == "table":
        _print_table()
    else:
        _plot(args.out)


if __name__ == "__main__":
    main()
