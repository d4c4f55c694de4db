"""The loss library: classification, confidence (objectness) and box losses, and the detection loss.

Every loss takes logits (never probabilities), works in log space and computes in at least float32, so it stays
finite, with finite gradients, for logits of magnitude 100 and under bf16/fp16 autocast. Each returns an
*unreduced* loss; the detection loss reduces and names the terms. Losses are plain functions in plain dicts:

* ``classification``: ``CLS_LOSSES`` (and ``SIGMOID_CLS_LOSSES``, those scored with sigmoids);
* ``longtail``: Seesaw and Equalized Focal Loss, which read running statistics (``state``);
* ``objectness``: ``CONF_LOSSES``; ``box``: ``BOX_LOSSES``;
* ``detection``: ``detection_loss``, ``get_loss`` and the loss config's checks;
* ``user``: a user's own loss named ``module:function``; ``reference``: ``python -m yolo.losses table | plot``.
"""
from yolo.losses.box import BOX_LOSSES, box_giou, box_yolov1, elementwise_iou
from yolo.losses.classification import (CLS_LOSSES, SIGMOID_CLS_LOSSES, cross_entropy, hard_truncated_ce,
                                        poly1_cross_entropy, poly1_focal, sigmoid_focal, soft_truncated_ce,
                                        softmax_focal, softmax_modified_focal)
from yolo.losses.common import prior_bias
from yolo.losses.detection import check_loss_config, check_user_losses, detection_loss, get_loss, iou_target
from yolo.losses.longtail import efl_logit_grad, equalized_focal, seesaw
from yolo.losses.objectness import (CONF_LOSSES, binary_focal, binary_soft_truncated, objectness_bce,
                                    objectness_mse, quality_focal, varifocal)
from yolo.losses.state import STATE_KEYS, init_loss_state, load_loss_state, update_loss_state

__all__ = ["BOX_LOSSES", "CLS_LOSSES", "CONF_LOSSES", "SIGMOID_CLS_LOSSES", "STATE_KEYS", "binary_focal",
           "binary_soft_truncated", "box_giou", "box_yolov1", "check_loss_config", "check_user_losses",
           "cross_entropy", "detection_loss", "efl_logit_grad", "elementwise_iou", "equalized_focal",
           "get_loss", "hard_truncated_ce", "init_loss_state", "iou_target", "load_loss_state", "objectness_bce",
           "objectness_mse", "poly1_cross_entropy", "poly1_focal", "prior_bias", "quality_focal", "seesaw",
           "sigmoid_focal", "soft_truncated_ce", "softmax_focal", "softmax_modified_focal", "update_loss_state",
           "varifocal"]
