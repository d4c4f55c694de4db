"""The detection loss: every term of every cell from the predictions, the targets and the loss config.

``get_loss`` looks a loss up by name (a registry name, or ``module:function`` for a user's own loss) and binds the
config's hyper-parameters it accepts; ``check_loss_config`` is the loss part of ``yolo.config.validate``.
"""
import logging
import sys

import torch

from yolo.boxes import decode_cell
from yolo.errors import ConfigError
from yolo.losses.box import BOX_LOSSES, elementwise_iou
from yolo.losses.classification import CLS_LOSSES
from yolo.losses.common import _f32, bind_hparams
from yolo.losses.objectness import BINARY_CONF_LOSSES, CONF_LOSSES, IOU_CONF_LOSSES
from yolo.losses.state import state_for, update_loss_state
from yolo.losses.user import check_name, check_user_loss, is_user_loss, load_user_loss, user_losses

logger = logging.getLogger(__name__)

CONF_TARGETS = ("auto", "one", "iou")


def get_loss(registry: dict, name: str, **hparams):
    """Look a loss up by name and bind the hyper-parameters its signature accepts (the others are ignored).

    ``module:function`` imports a user's loss (``yolo.losses.user``). An unknown name raises ValueError listing
    the valid names; ``None`` hyper-parameters keep the function's default except ``alpha``, where None means
    "no weighting".
    """
    if is_user_loss(name) and registry is not BOX_LOSSES:
        return bind_hparams(load_user_loss(name), hparams)
    if name not in registry:
        raise ValueError(f"unknown loss {name!r}; choose one of: {', '.join(registry)}")
    return bind_hparams(registry[name], hparams)


def cls_hparams(cfg) -> dict:
    """The config's classification hyper-parameters, by the names the loss functions take."""
    return dict(alpha=cfg.alpha, gamma=cfg.gamma, margin=cfg.margin, k=cfg.k, poly_epsilon=cfg.poly_epsilon,
                seesaw_p=cfg.seesaw_p, seesaw_q=cfg.seesaw_q, efl_scale=cfg.efl_scale)


def conf_hparams(cfg) -> dict:
    """The config's confidence hyper-parameters; ``conf_gamma`` is focal's gamma, QFL's beta and VFL's gamma."""
    return dict(pos_weight=cfg.obj_weight, neg_weight=cfg.noobj_weight, alpha=cfg.conf_alpha, gamma=cfg.conf_gamma,
                k=cfg.conf_k, beta=cfg.conf_gamma, vfl_alpha=cfg.vfl_alpha)


def conf_target_is_iou(cfg) -> bool:
    """``loss.conf_target``: ``iou``, ``one``, or ``auto`` = the IoU for QFL and VFL (their definition), 1 else."""
    return cfg.conf_target == "iou" or (cfg.conf_target == "auto" and cfg.conf_loss in IOU_CONF_LOSSES)


@torch.no_grad()
def iou_target(box_logits, boxes_xyxy, cells_xy, strides, obj, floor: float = 0.0) -> torch.Tensor:
    """YOLOv1's confidence target Pr(object) x IoU, (N, A): the IoU of each cell's decoded box (P = N * A rows of
    logits, cells and strides) with its ground truth, at least ``floor``, 0 on negative cells; no gradient."""
    pred_xyxy = decode_cell(box_logits, cells_xy, strides)
    iou = elementwise_iou(pred_xyxy, boxes_xyxy.to(pred_xyxy.dtype)).view_as(obj)
    return obj * iou.clamp(min=floor)


def detection_loss(preds: torch.Tensor, targets: dict, grid, cfg, cls_loss: str | None = None,
                   state: dict | None = None) -> dict:
    """YOLOv1-style loss over every cell of every level, from tensors and the loss config (never the model).

    Args:
        preds: (N, A, 1 + C + 4) raw outputs: objectness logit, C class logits, 4 box logits (tx, ty, tw, th).
        targets: from ``yolo.targets.assign_targets``: obj (N, A), labels (N, A), boxes_xyxy (N, A, 4), weights.
        grid: the ``yolo.targets.Grid`` of the predictions.
        cfg: a ``LossConfig``.
        cls_loss: overrides ``cfg.cls_loss`` (the cross-entropy warm-up switches it).
        state: the running statistics of a stateful class loss (``yolo.losses.state.init_loss_state``); the loss
            reads them, then adds this batch's in place (no gradient flows through them).
    Returns:
        dict of scalar terms, each summed over cells and divided by the batch size as in the YOLOv1 reference:
        ``obj``, ``noobj``, ``cls``, ``box_xy`` and ``box_wh`` (or ``box_iou``), and their weighted sum ``total``.
        Computed densely with masks (no boolean indexing) so the step has static shapes and no host sync.
    """
    preds = _f32(preds)
    batch_size, num_cells = preds.shape[:2]
    obj_target = targets["obj"]                                                      # (N, A)
    box_logits, boxes_xyxy = preds[..., -4:].reshape(-1, 4), targets["boxes_xyxy"].reshape(-1, 4)
    cells_xy, strides = grid.cells_xy.repeat(batch_size, 1), grid.strides.repeat(batch_size)

    conf_target = obj_target
    if conf_target_is_iou(cfg):
        conf_target = iou_target(box_logits, boxes_xyxy, cells_xy, strides, obj_target, cfg.conf_iou_floor)
    conf = get_loss(CONF_LOSSES, cfg.conf_loss, **conf_hparams(cfg))(preds[..., 0], conf_target)     # (N, A)

    cls_logits = preds[..., 1:-4].reshape(batch_size * num_cells, -1)               # (N*A, C)
    cls = _cls_loss(cls_logits, targets["labels"].clamp(min=0).flatten(), obj_target.flatten(), cfg,
                    cls_loss or cfg.cls_loss, state).view(batch_size, num_cells)

    box_fn = get_loss(BOX_LOSSES, cfg.box_loss)
    box_terms = box_fn(box_logits, boxes_xyxy, cells_xy, strides, targets["weights"].flatten())
    terms = {
        "obj": (conf * obj_target).sum() / batch_size,
        "noobj": (conf * (1 - obj_target)).sum() / batch_size,
        "cls": (cls * obj_target).sum() / batch_size,
    }
    terms.update({name: value.sum() / batch_size for name, value in box_terms.items()})
    terms["total"] = (terms["obj"] + terms["noobj"] + cfg.cls_weight * terms["cls"]
                      + cfg.box_weight * sum(terms[name] for name in box_terms))
    return terms


def _cls_loss(logits, labels, positive, cfg, name: str, state: dict | None) -> torch.Tensor:
    """(P,) class loss of every cell (masked to the positives by the caller); a stateful loss reads ``state``,
    then this batch's statistics are added to it."""
    statistics = state_for(name, state)
    hparams = cls_hparams(cfg)
    cls = get_loss(CLS_LOSSES, name, **hparams, **statistics)(logits, labels)
    if statistics:
        update_loss_state(name, state, logits, labels, positive, hparams)
    return cls


def check_loss_config(cfg):
    """Loss names, targets and hyper-parameter ranges of a ``LossConfig``; ConfigError. Imports no user code."""
    for key, registry in (("conf_loss", CONF_LOSSES), ("cls_loss", CLS_LOSSES), ("box_loss", BOX_LOSSES)):
        name = getattr(cfg, key)
        if key != "box_loss" and is_user_loss(name):
            check_name(key, name)
        elif name not in registry:
            extra = "" if key == "box_loss" else ", or module:function for your own"
            raise ConfigError(f"loss.{key}: unknown loss {name!r}; choose one of: {', '.join(registry)}{extra}")
    if cfg.conf_target not in CONF_TARGETS:
        raise ConfigError(f"loss.conf_target: {cfg.conf_target!r} is not one of {', '.join(CONF_TARGETS)}")
    if cfg.conf_target == "iou" and cfg.conf_loss in BINARY_CONF_LOSSES:
        raise ConfigError(f"loss.conf_target iou: conf_loss {cfg.conf_loss} is defined on 0/1 targets; use mse, "
                          f"bce, qfl or vfl (QFL is focal loss for a soft target)")
    if not 0.0 <= cfg.conf_iou_floor <= 1.0:
        raise ConfigError(f"loss.conf_iou_floor must be in [0, 1], got {cfg.conf_iou_floor}")
    if cfg.cls_loss == "efl" and cfg.gamma <= 0:
        raise ConfigError(f"loss.gamma must be positive for efl (it divides gamma_j / gamma), got {cfg.gamma}")
    if cfg.poly_epsilon < -1:
        raise ConfigError(f"loss.poly_epsilon must be >= -1 (Poly-1 stays decreasing in p_t), got {cfg.poly_epsilon}")
    for key in ("seesaw_p", "seesaw_q", "efl_scale", "vfl_alpha"):
        if getattr(cfg, key) < 0:
            raise ConfigError(f"loss.{key} must be >= 0, got {getattr(cfg, key)}")


def check_user_losses(cfg, num_classes: int):
    """At the start of a run: import each loss the config names as ``module:function`` and check it on random
    logits with the config's hyper-parameters (``yolo.losses.user.check_user_loss``). Nothing to do otherwise."""
    for key, name in user_losses(cfg).items():
        hparams = cls_hparams(cfg) if key == "cls_loss" else conf_hparams(cfg)
        check_user_loss(key, name, num_classes, hparams, soft_targets=key == "conf_loss" and conf_target_is_iou(cfg))
        logger.info("loss.%s %s: imported from %s and checked on random logits", key, name,
                    sys.modules[name.split(":")[0]].__file__)
