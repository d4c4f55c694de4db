"""The objectness branch: the IoU confidence target, QFL and VFL, each against a float64 reference written here
from the paper's formula (hand-worked values and random inputs), gradcheck and logits of magnitude 100."""
import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import box_iou

from yolo.config import Config, LossConfig, validate
from yolo.errors import ConfigError
from yolo.losses import (binary_focal, detection_loss, elementwise_iou, iou_target, objectness_bce, objectness_mse,
                         quality_focal, varifocal)
from yolo.targets import assign_targets, make_grid

SIZE, C = 128, 4


def _random_conf(n=200, seed=0):
    """float64 logits in [-8, 8] and targets: a third 0 (negative cells), a third 1, a third an IoU in (0, 1)."""
    g = torch.Generator().manual_seed(seed)
    logits = 16 * torch.rand(n, generator=g, dtype=torch.float64) - 8
    kind = torch.arange(n) % 3
    iou = torch.rand(n, generator=g, dtype=torch.float64).clamp(min=0.01)
    targets = torch.where(kind == 0, 0.0, torch.where(kind == 1, 1.0, iou))
    return logits, targets


def _value_and_grad(fn, logits, targets):
    logits = logits.detach().clone().requires_grad_()
    value = fn(logits, targets)
    (grad,) = torch.autograd.grad(value.sum(), logits)
    return value.detach(), grad


# --- QFL -----------------------------------------------------------------------------------------------------------

def qfl_reference(logits, q, beta=2.0):
    """Li et al. 2020, eq. 5, with sigma the sigmoid computed directly (float64)."""
    sigma = 1 / (1 + torch.exp(-logits))
    return -torch.abs(q - sigma) ** beta * (q * torch.log(sigma) + (1 - q) * torch.log(1 - sigma))


def test_qfl_hand_worked_values():
    logits = torch.tensor([0.0, 0.0, math.log(3), 0.0], dtype=torch.float64)   # sigma 0.5, 0.5, 0.75, 0.5
    q = torch.tensor([0.5, 1.0, 0.0, 0.6], dtype=torch.float64)
    expected = [0.0,                                  # sigma = q: no loss at all
                0.25 * math.log(2),                   # |1 - 0.5|^2 (-log 0.5)
                0.75 ** 2 * -math.log(0.25),          # negative: sigma^2 (-log(1 - sigma))
                0.1 ** 2 * math.log(2)]               # 0.01 x (0.6 + 0.4) (-log 0.5)
    torch.testing.assert_close(quality_focal(logits, q), torch.tensor(expected, dtype=torch.float64))


@pytest.mark.parametrize("beta", [2.0, 1.0, 3.5])
def test_qfl_matches_the_paper_on_random_inputs_in_value_and_gradient(beta):
    logits, q = _random_conf()
    ours = _value_and_grad(lambda x, t: quality_focal(x, t, beta=beta), logits, q)
    ref = _value_and_grad(lambda x, t: qfl_reference(x, t, beta), logits, q)
    torch.testing.assert_close(ours, ref)


def test_qfl_on_binary_targets_is_focal_loss_without_alpha():
    logits, _ = _random_conf()
    binary = (torch.arange(len(logits)) % 2).double()
    torch.testing.assert_close(quality_focal(logits, binary, beta=2.0),
                               binary_focal(logits, binary, alpha=None, gamma=2.0))


# --- VFL -----------------------------------------------------------------------------------------------------------

def vfl_reference(logits, q, alpha=0.75, gamma=2.0):
    """Zhang et al. 2021, eq. 2 (float64, p the sigmoid computed directly)."""
    p = 1 / (1 + torch.exp(-logits))
    positive = -q * (q * torch.log(p) + (1 - q) * torch.log(1 - p))
    negative = -alpha * p ** gamma * torch.log(1 - p)
    return torch.where(q > 0, positive, negative)


def test_vfl_hand_worked_values():
    logits = torch.tensor([0.0, 0.0, 0.0, math.log(3)], dtype=torch.float64)   # p 0.5, 0.5, 0.5, 0.75
    q = torch.tensor([0.0, 1.0, 0.6, 0.0], dtype=torch.float64)
    expected = [0.75 * 0.25 * math.log(2),            # negative: alpha p^2 (-log(1 - p))
                math.log(2),                          # q = 1: BCE
                0.6 * math.log(2),                    # q (q + 1 - q) (-log 0.5): weighted by q itself
                0.75 * 0.75 ** 2 * -math.log(0.25)]
    torch.testing.assert_close(varifocal(logits, q), torch.tensor(expected, dtype=torch.float64))


@pytest.mark.parametrize("alpha,gamma", [(0.75, 2.0), (0.25, 1.5), (1.0, 0.0)])
def test_vfl_matches_the_paper_on_random_inputs_in_value_and_gradient(alpha, gamma):
    logits, q = _random_conf(seed=1)
    ours = _value_and_grad(lambda x, t: varifocal(x, t, vfl_alpha=alpha, gamma=gamma), logits, q)
    ref = _value_and_grad(lambda x, t: vfl_reference(x, t, alpha, gamma), logits, q)
    torch.testing.assert_close(ours, ref)


def test_vfl_negatives_are_binary_focal_negatives_and_its_positives_bce():
    logits, _ = _random_conf()
    zeros, ones = torch.zeros_like(logits), torch.ones_like(logits)
    torch.testing.assert_close(varifocal(logits, zeros), binary_focal(logits, zeros, alpha=0.25, gamma=2.0))
    torch.testing.assert_close(varifocal(logits, ones), F.binary_cross_entropy_with_logits(logits, ones,
                                                                                         reduction="none"))


@pytest.mark.parametrize("fn", [quality_focal, varifocal, objectness_mse, objectness_bce])
def test_pos_and_neg_weights_scale_the_cells_by_whether_their_target_is_above_zero(fn):
    logits, q = _random_conf()
    unweighted = fn(logits, q, pos_weight=1.0, neg_weight=1.0)
    weighted = fn(logits, q, pos_weight=5.0, neg_weight=0.5)
    torch.testing.assert_close(weighted, torch.where(q > 0, 5.0, 0.5) * unweighted)


# --- MSE and BCE with soft targets ---------------------------------------------------------------------------------

def test_mse_and_bce_on_binary_targets_are_bit_identical_to_their_protocol_3_form():
    """The cell-weighted forms that accept an IoU target compute exactly what the old target-weighted forms did."""
    logits = (20 * torch.randn(500, generator=torch.Generator().manual_seed(0))).requires_grad_()
    targets = (torch.rand(500, generator=torch.Generator().manual_seed(1)) > 0.7).float()

    def old_mse(x, t, pw=5.0, nw=1.0):
        sq = (torch.sigmoid(x) - t) ** 2
        return pw * t * sq + nw * (1 - t) * sq

    def old_bce(x, t, pw=5.0, nw=1.0):
        return pw * t * -F.logsigmoid(x) + nw * (1 - t) * -F.logsigmoid(-x)

    for new, old in ((objectness_mse, old_mse), (objectness_bce, old_bce)):
        v_new, g_new = _value_and_grad(new, logits, targets)
        v_old, g_old = _value_and_grad(old, logits, targets)
        assert torch.equal(v_new, v_old) and torch.equal(g_new, g_old), new.__name__


@pytest.mark.parametrize("fn", [objectness_mse, objectness_bce, quality_focal])
def test_losses_for_a_soft_target_are_minimal_where_the_probability_equals_it(fn):
    q = torch.tensor([0.2, 0.55, 0.9], dtype=torch.float64)
    at_target = torch.logit(q).requires_grad_()
    (grad,) = torch.autograd.grad(fn(at_target, q, pos_weight=5.0, neg_weight=1.0).sum(), at_target)
    torch.testing.assert_close(grad, torch.zeros_like(grad), atol=1e-12, rtol=0)
    for shift in (-0.3, 0.3):
        assert (fn(at_target.detach() + shift, q) > fn(at_target.detach(), q)).all()


# --- the IoU target ------------------------------------------------------------------------------------------------

def test_elementwise_iou_is_the_diagonal_of_torchvisions_pairwise_iou():
    g = torch.Generator().manual_seed(0)
    xy = 100 * torch.rand(50, 2, 2, generator=g, dtype=torch.float64)
    boxes = torch.cat([xy.min(1).values, xy.max(1).values], -1)
    other = boxes + 20 * torch.randn(50, 4, generator=g, dtype=torch.float64).clamp(-1, 1)
    other = torch.cat([other[:, :2], torch.maximum(other[:, 2:], other[:, :2] + 1)], -1)
    torch.testing.assert_close(elementwise_iou(boxes, other), box_iou(boxes, other).diagonal())
    assert elementwise_iou(torch.zeros(1, 4), torch.zeros(1, 4)).item() == 0.0    # empty boxes: 0, not NaN


def _one_box_batch():
    """One 32 x 32 box centred in cell (1, 1) of the stride-16 level of a 64 px image, label 2."""
    grid = make_grid((64, 64), (8, 16, 32))
    boxes = torch.tensor([[[8.0, 8.0, 40.0, 40.0]]])
    targets = assign_targets(boxes, torch.tensor([[2]]), grid, (64, 64), (24.0, 48.0))
    cell = targets["obj"][0].nonzero().item()
    return grid, targets, cell


def _preds_with_box(grid, cell, width_px: float, stride: float = 16.0):
    """Predictions whose box at ``cell`` is centred on the ground truth with width ``width_px`` (height 32)."""
    preds = torch.zeros(1, grid.num_cells, 1 + C + 4)
    preds[0, cell, -4:] = torch.tensor([0.0, 0.0, math.log(width_px / stride), math.log(32 / stride)])
    return preds


def test_iou_target_is_the_iou_of_the_predicted_box_on_positive_cells_and_0_elsewhere():
    grid, targets, cell = _one_box_batch()
    assert grid.strides[cell].item() == 16 and grid.cells_xy[cell].tolist() == [1.0, 1.0]
    preds = _preds_with_box(grid, cell, width_px=16.0)      # the ground truth is 32 wide: IoU 1/2
    args = (preds[..., -4:].reshape(-1, 4), targets["boxes_xyxy"].reshape(-1, 4), grid.cells_xy, grid.strides,
            targets["obj"])
    target = iou_target(*args)
    assert target[0, cell].item() == pytest.approx(0.5)
    assert target.sum().item() == pytest.approx(0.5)       # every negative cell: 0
    assert iou_target(*args, floor=0.7)[0, cell].item() == pytest.approx(0.7)
    assert iou_target(*args, floor=0.7).sum().item() == pytest.approx(0.7)


def test_mse_with_the_iou_target_in_the_detection_loss_and_no_gradient_through_the_target():
    grid, targets, cell = _one_box_batch()
    preds = _preds_with_box(grid, cell, width_px=16.0).requires_grad_()
    cfg = LossConfig(conf_loss="mse", conf_target="iou")
    terms = detection_loss(preds, targets, grid, cfg)
    # one positive cell: obj_weight x (sigmoid(0) - IoU)^2 = 5 x (0.5 - 0.5)^2; with a 24 px box IoU 3/4
    assert terms["obj"].item() == pytest.approx(0.0, abs=1e-12)
    wider = detection_loss(_preds_with_box(grid, cell, width_px=24.0), targets, grid, cfg)
    assert wider["obj"].item() == pytest.approx(5 * (0.5 - 0.75) ** 2, rel=1e-5)
    one = detection_loss(preds, targets, grid, LossConfig(conf_loss="mse"))
    assert one["obj"].item() == pytest.approx(5 * 0.25, rel=1e-6)             # the 0/1 target: (0.5 - 1)^2
    (grad,) = torch.autograd.grad(detection_loss(preds, targets, grid, LossConfig(
        conf_loss="mse", conf_target="iou"))["obj"], preds)
    assert (grad[..., -4:] == 0).all()        # the IoU target is detached: the box is trained by the box loss only


@pytest.mark.parametrize("conf_loss,iou", [("mse", False), ("bce", False), ("focal", False), ("qfl", True),
                                           ("vfl", True)])
def test_conf_target_auto_gives_the_iou_to_qfl_and_vfl_and_1_to_the_others(conf_loss, iou):
    grid, targets, cell = _one_box_batch()
    preds = _preds_with_box(grid, cell, width_px=16.0)
    auto = detection_loss(preds, targets, grid, LossConfig(conf_loss=conf_loss))
    explicit = detection_loss(preds, targets, grid, LossConfig(conf_loss=conf_loss,
                                                               conf_target="iou" if iou else "one"))
    assert torch.equal(auto["total"], explicit["total"])


@pytest.mark.parametrize("loss,message", [
    ({"conf_loss": "focal", "conf_target": "iou"}, "defined on 0/1 targets"),
    ({"conf_loss": "soft_truncated", "conf_target": "iou"}, "defined on 0/1 targets"),
    ({"conf_target": "soft"}, "'soft' is not one of auto, one, iou"),
    ({"conf_iou_floor": 1.5}, "conf_iou_floor must be in [0, 1]"),
    ({"vfl_alpha": -0.1}, "vfl_alpha must be >= 0"),
])
def test_bad_objectness_settings_are_one_line_config_errors(loss, message):
    cfg = Config()
    for key, value in loss.items():
        setattr(cfg.loss, key, value)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        validate(cfg)
