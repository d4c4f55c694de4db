"""The loss library: values, gradients and identities from the focal-loss literature."""
import functools
import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from yolo import losses
from yolo.losses import BOX_LOSSES, CLS_LOSSES, CONF_LOSSES, SIGMOID_CLS_LOSSES, get_loss, prior_bias
from yolo.losses.objectness import BINARY_CONF_LOSSES
from yolo.losses.reference import focal_table

C = 6


def _cls_inputs(n=7, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(n, C, generator=g, dtype=dtype)).requires_grad_()
    labels = torch.randint(0, C, (n,), generator=g)
    return logits, labels


def _statistics(name, num_classes):
    """Running statistics for the stateful losses, with every edge case: a class never seen (count 0, clamped to
    1), a positive/negative gradient ratio above 1 (clamped) and a class with no negative gradient yet (g = 1)."""
    if name == "seesaw":
        counts = torch.logspace(3, 0, num_classes, dtype=torch.float64)
        counts[-1] = 0.0
        return {"class_counts": counts}
    if name == "efl":
        pos = torch.linspace(2.0, 0.0, num_classes, dtype=torch.float64)
        neg = torch.ones(num_classes, dtype=torch.float64)
        neg[0] = 0.0
        return {"pos_grad": pos, "neg_grad": neg}
    return {}


def cls_fn(name, num_classes=C):
    """The registered classification loss, with running statistics bound for the stateful ones."""
    return functools.partial(CLS_LOSSES[name], **_statistics(name, num_classes))


def _value_and_grad(fn, logits, targets):
    logits = logits.detach().clone().requires_grad_()
    value = fn(logits, targets)
    (grad,) = torch.autograd.grad(value.sum(), logits)
    return value.detach(), grad


# --- identities --------------------------------------------------------------------------------------------------

def test_softmax_focal_gamma0_is_cross_entropy_in_value_and_gradient():
    logits, labels = _cls_inputs()
    v_focal, g_focal = _value_and_grad(lambda x, t: losses.softmax_focal(x, t, alpha=None, gamma=0.0), logits, labels)
    v_ce, g_ce = _value_and_grad(lambda x, t: F.cross_entropy(x, t, reduction="none"), logits, labels)
    torch.testing.assert_close(v_focal, v_ce)
    torch.testing.assert_close(g_focal, g_ce)
    torch.testing.assert_close(losses.cross_entropy(logits, labels), v_ce)


def test_sigmoid_focal_gamma0_is_binary_cross_entropy_in_value_and_gradient():
    logits, labels = _cls_inputs()
    one_hot = F.one_hot(labels, C).double()
    v_focal, g_focal = _value_and_grad(lambda x, t: losses.sigmoid_focal(x, t, alpha=None, gamma=0.0), logits, labels)
    v_bce, g_bce = _value_and_grad(
        lambda x, t: F.binary_cross_entropy_with_logits(x, t, reduction="none").sum(-1), logits, one_hot)
    torch.testing.assert_close(v_focal, v_bce)
    torch.testing.assert_close(g_focal, g_bce)


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (0.5, 0.5), (0.9, 5.0), (-1, 1.0)])
def test_sigmoid_focal_matches_torchvision(alpha, gamma):
    logits, labels = _cls_inputs(n=50)
    one_hot = F.one_hot(labels, C).double()
    expected = sigmoid_focal_loss(logits, one_hot, alpha=alpha, gamma=gamma).sum(-1)
    ours = losses.sigmoid_focal(logits, labels, alpha=None if alpha < 0 else alpha, gamma=gamma)
    torch.testing.assert_close(ours, expected)
    # multi-label targets too: torchvision's formula is per element
    multi = (torch.rand(50, C, generator=torch.Generator().manual_seed(1)) > 0.6).double()
    torch.testing.assert_close(losses.sigmoid_focal(logits, multi, alpha=None if alpha < 0 else alpha, gamma=gamma),
                               sigmoid_focal_loss(logits, multi, alpha=alpha, gamma=gamma).sum(-1))


def test_softmax_modified_focal_matches_its_formula():
    logits, labels = _cls_inputs()
    alpha, gamma = 0.3, 1.5
    p = logits.softmax(-1)
    one_hot = F.one_hot(labels, C).bool()
    pos = -alpha * (1 - p) ** gamma * torch.log(p)
    neg = -(1 - alpha) * p ** gamma * torch.log(1 - p)
    expected = torch.where(one_hot, pos, neg).sum(-1)
    torch.testing.assert_close(losses.softmax_modified_focal(logits, labels, alpha=alpha, gamma=gamma), expected)


def test_binary_soft_truncation_with_k1_equals_binary_focal_gamma1():
    g = torch.Generator().manual_seed(0)
    logits = 4 * torch.randn(100, generator=g, dtype=torch.float64)
    targets = (torch.rand(100, generator=g) > 0.5).double()
    torch.testing.assert_close(losses.binary_soft_truncated(logits, targets, k=1.0),
                               losses.binary_focal(logits, targets, alpha=None, gamma=1.0))


def test_binary_focal_gamma0_alpha_none_is_bce():
    logits = torch.linspace(-8, 8, 33, dtype=torch.float64)
    targets = (torch.arange(33) % 2).double()
    torch.testing.assert_close(losses.binary_focal(logits, targets, alpha=None, gamma=0.0),
                               F.binary_cross_entropy_with_logits(logits, targets, reduction="none"))


def test_reference_table_cross_entropy_row():
    table = focal_table()
    # gamma = 0 is cross-entropy: logsumexp(0, 0.1, ..., 1.0) - 0.2 for ground-truth class 2
    assert table[0, 2].item() == pytest.approx(2.747, abs=5e-4)
    lse = math.log(sum(math.exp(i / 10) for i in range(11)))
    torch.testing.assert_close(table[0], torch.tensor([lse - i / 10 for i in range(11)], dtype=torch.float64))
    # a larger gamma down-weights every sample, and more so the better classified ones
    assert (table[1:] < table[:-1]).all()
    ratio = table[-1] / table[0]
    assert (ratio[1:] < ratio[:-1]).all()


# --- alpha, soft targets, truncation -------------------------------------------------------------------------------

def test_per_class_alpha_weights_by_target_class():
    logits, labels = _cls_inputs()
    alpha = torch.linspace(0.1, 0.9, C, dtype=torch.float64)
    unweighted = losses.softmax_focal(logits, labels, alpha=None)
    torch.testing.assert_close(losses.softmax_focal(logits, labels, alpha=alpha.tolist()), alpha[labels] * unweighted)
    # a float alpha is a pure scale for the softmax form
    torch.testing.assert_close(losses.softmax_focal(logits, labels, alpha=0.25), 0.25 * unweighted)
    # sigmoid form: positive class weighted by alpha_c, negatives by 1 - alpha_c
    p = logits.sigmoid()
    one_hot = F.one_hot(labels, C).bool()
    expected = torch.where(one_hot, -alpha * (1 - p) ** 2 * torch.log(p), -(1 - alpha) * p ** 2 * torch.log(1 - p))
    torch.testing.assert_close(losses.sigmoid_focal(logits, labels, alpha=alpha.tolist()), expected.sum(-1))


def test_wrong_length_alpha_is_a_clear_error():
    logits, labels = _cls_inputs()
    with pytest.raises(ValueError, match="6 values"):
        losses.softmax_focal(logits, labels, alpha=[0.5, 0.5])


@pytest.mark.parametrize("name", [n for n in CLS_LOSSES if n != "seesaw"])   # seesaw: class indices only
def test_one_hot_targets_equal_index_targets_and_soft_targets_are_linear(name):
    fn = cls_fn(name)
    logits, labels = _cls_inputs()
    one_hot = F.one_hot(labels, C).double()
    torch.testing.assert_close(fn(logits, one_hot), fn(logits, labels))
    # every loss here is linear in the target distribution: a 50/50 soft target averages the two losses
    other = (labels + 1) % C
    soft = 0.5 * one_hot + 0.5 * F.one_hot(other, C).double()
    torch.testing.assert_close(fn(logits, soft), 0.5 * fn(logits, labels) + 0.5 * fn(logits, other))


def test_hard_truncation_zeroes_exactly_the_samples_above_the_margin():
    logits, labels = _cls_inputs(n=200)
    p_t = logits.softmax(-1).gather(1, labels[:, None]).squeeze(1)
    value, grad = _value_and_grad(lambda x, t: losses.hard_truncated_ce(x, t, margin=0.6), logits, labels)
    above = p_t > 0.6
    assert above.any() and (~above).any()
    assert (value[above] == 0).all() and (grad[above] == 0).all()
    torch.testing.assert_close(value[~above], F.cross_entropy(logits, labels, reduction="none")[~above].detach())


def test_soft_truncation_tends_to_hard_truncation():
    logits, labels = _cls_inputs(n=200)
    hard = losses.hard_truncated_ce(logits, labels)
    p_t = logits.softmax(-1).gather(1, labels[:, None]).squeeze(1)
    far = (p_t - 0.6).abs() > 0.05
    errors = [(losses.soft_truncated_ce(logits, labels, k=k) - hard)[far].abs().max().item() for k in (10, 100, 1000)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-8


# --- gradients and numerics over every registered loss --------------------------------------------------------------

def _box_inputs(n=5, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    cells = torch.randint(0, 10, (n, 2), generator=g).to(dtype)
    strides = torch.full((n,), 16.0, dtype=dtype)
    centres = (cells + 0.1 + 0.8 * torch.rand(n, 2, generator=g, dtype=dtype)) * 16
    sizes = 10 + 80 * torch.rand(n, 2, generator=g, dtype=dtype)
    boxes = torch.cat([centres - sizes / 2, centres + sizes / 2], -1)
    logits = torch.randn(n, 4, generator=g, dtype=dtype)
    weights = 1 + torch.rand(n, generator=g, dtype=dtype)
    return logits, boxes, cells, strides, weights


@pytest.mark.parametrize("name", list(CLS_LOSSES))
def test_gradcheck_cls(name):
    logits, labels = _cls_inputs(n=4)
    if name == "seesaw":   # its compensation factor is a constant of the step (detached): make it 1 around here
        labels = logits.detach().argmax(-1)
    assert torch.autograd.gradcheck(lambda x: cls_fn(name)(x, labels), (logits,))


@pytest.mark.parametrize("name", list(CONF_LOSSES))
def test_gradcheck_conf(name):
    logits = torch.randn(8, dtype=torch.float64, requires_grad=True)
    targets = (torch.arange(8) % 2).double()
    if name not in BINARY_CONF_LOSSES:
        targets = targets * torch.linspace(0.3, 1.0, 8, dtype=torch.float64)     # the IoU target
    assert torch.autograd.gradcheck(lambda x: CONF_LOSSES[name](x, targets), (logits,))


@pytest.mark.parametrize("name", list(BOX_LOSSES))
def test_gradcheck_box(name):
    logits, boxes, cells, strides, weights = _box_inputs()
    logits.requires_grad_()
    assert torch.autograd.gradcheck(lambda x: sum(BOX_LOSSES[name](x, boxes, cells, strides, weights).values()),
                                    (logits,))


@pytest.mark.parametrize("name", list(CLS_LOSSES))
def test_cls_extreme_logits_finite(name):
    logits = torch.tensor([[100.0, -100.0, 0.0], [-100.0, 100.0, -100.0], [-100.0, -100.0, -100.0]],
                          requires_grad=True)
    labels = torch.tensor([1, 1, 2])  # wrong with certainty, right with certainty, uniform
    value = cls_fn(name, num_classes=3)(logits, labels)
    value.sum().backward()
    assert torch.isfinite(value).all() and torch.isfinite(logits.grad).all()
    assert value[0] > 40  # confidently wrong costs a lot (-log p_t = 200, times alpha = 0.25 for the focal forms)


@pytest.mark.parametrize("name", list(CONF_LOSSES))
def test_conf_extreme_logits_finite(name):
    logits = torch.tensor([100.0, -100.0, 100.0, -100.0], requires_grad=True)
    targets = torch.tensor([1.0, 1.0, 0.0, 0.0])
    value = CONF_LOSSES[name](logits, targets)
    value.sum().backward()
    assert torch.isfinite(value).all() and torch.isfinite(logits.grad).all()
    assert value[1] > value[0] and value[2] > value[3]
    if name not in BINARY_CONF_LOSSES:   # and with an IoU target, which no logit reaches
        wide = torch.tensor([100.0, -100.0], requires_grad=True)
        value = CONF_LOSSES[name](wide, torch.tensor([0.5, 0.5]))
        (grad,) = torch.autograd.grad(value.sum(), wide)
        assert torch.isfinite(value).all() and torch.isfinite(grad).all() and (value > 1).all()


@pytest.mark.parametrize("name", list(BOX_LOSSES))
def test_box_extreme_logits_finite(name):
    _, boxes, cells, strides, weights = _box_inputs(n=4, dtype=torch.float32)
    logits = torch.tensor([[100.0, -100.0, 100.0, -100.0]] * 4, requires_grad=True)
    value = sum(BOX_LOSSES[name](logits, boxes, cells, strides, weights).values())
    value.sum().backward()
    assert torch.isfinite(value).all() and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("registry", [CLS_LOSSES, CONF_LOSSES])
def test_losses_compute_in_float32_under_autocast(registry):
    for name in registry:
        fn = cls_fn(name, num_classes=5) if registry is CLS_LOSSES else registry[name]
        logits = torch.randn(16, 5) if registry is CLS_LOSSES else torch.randn(16)
        targets = torch.randint(0, 5, (16,)) if registry is CLS_LOSSES else (torch.rand(16) > 0.5).float()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            value = fn(logits.bfloat16(), targets)
        assert value.dtype == torch.float32, name
        torch.testing.assert_close(value, fn(logits.bfloat16().float(), targets))


def test_perfect_box_prediction_has_minimal_loss():
    _, boxes, cells, strides, weights = _box_inputs()
    from yolo.boxes import encode_cell
    target = encode_cell(boxes, cells, strides)
    perfect = torch.cat([torch.logit(target[:, :2]), target[:, 2:]], -1)
    iou = BOX_LOSSES["giou"](perfect, boxes, cells, strides, weights)["box_iou"]
    torch.testing.assert_close(iou, torch.zeros_like(iou), atol=1e-6, rtol=0)
    yolo = BOX_LOSSES["yolov1"](perfect, boxes, cells, strides, weights)
    torch.testing.assert_close(yolo["box_wh"], torch.zeros_like(yolo["box_wh"]))
    # BCE on the offsets is minimal (the target's entropy) at the perfect prediction
    worse = BOX_LOSSES["yolov1"](perfect + 0.1, boxes, cells, strides, weights)
    assert (worse["box_xy"] > yolo["box_xy"]).all()


def test_giou_loss_of_disjoint_boxes_exceeds_one():
    _, boxes, cells, strides, weights = _box_inputs(n=1)
    far = torch.tensor([[-10.0, -10.0, 0.0, 0.0]], dtype=torch.float64)  # a tiny box in the corner
    value = BOX_LOSSES["giou"](far, boxes + 500, cells, strides, torch.ones(1, dtype=torch.float64))["box_iou"]
    assert value.item() > 1.0


# --- registry ------------------------------------------------------------------------------------------------------

def test_registry_names_are_exactly_the_documented_ones():
    assert set(CLS_LOSSES) == {"ce", "softmax_focal", "softmax_modified_focal", "sigmoid_focal",
                               "hard_truncated_ce", "soft_truncated_ce", "poly1", "poly1_focal", "seesaw", "efl"}
    assert set(CONF_LOSSES) == {"mse", "bce", "focal", "soft_truncated", "qfl", "vfl"}
    assert set(BOX_LOSSES) == {"yolov1", "giou"}
    assert SIGMOID_CLS_LOSSES == {"sigmoid_focal", "poly1_focal", "efl"}


def test_unknown_loss_name_lists_the_choices():
    with pytest.raises(ValueError, match="softmax_focal.*sigmoid_focal"):
        get_loss(CLS_LOSSES, "focal_typo")


def test_get_loss_binds_only_accepted_hyperparameters():
    fn = get_loss(CLS_LOSSES, "softmax_focal", alpha=None, gamma=0.0, margin=0.9, k=3.0)
    logits, labels = _cls_inputs()
    torch.testing.assert_close(fn(logits, labels), F.cross_entropy(logits, labels, reduction="none"))


def test_prior_bias():
    assert torch.sigmoid(torch.tensor(prior_bias(0.01))).item() == pytest.approx(0.01)
    assert prior_bias(0.5) == 0.0
    with pytest.raises(ValueError):
        prior_bias(1.0)


def test_reference_tables_and_plot_hold_every_loss(tmp_path, capsys):
    from yolo.losses.reference import cls_table, conf_table, main
    rows = cls_table()
    assert {name for name in CLS_LOSSES if name not in ("seesaw", "efl")} <= set(rows)
    assert {label.split(",")[0] for label in rows} == set(CLS_LOSSES)
    p = (torch.arange(11, dtype=torch.float64) / 10).softmax(-1)
    torch.testing.assert_close(rows["poly1"], rows["ce"] + 1 - p)                    # CE + (1 - p_t)
    torch.testing.assert_close(rows["efl, no statistics"], rows["sigmoid_focal"])
    torch.testing.assert_close(rows["seesaw, equal counts"][-1], rows["ce"][-1])     # the target leads: CE
    # class c seen 2^(10 - c) times: every rarer class is mitigated, so each class but the rarest costs less
    assert (rows["seesaw, N_c = 2^(10-c)"][:-1] < rows["seesaw, equal counts"][:-1]).all()
    conf = conf_table()
    assert {name for _, name in conf} == set(CONF_LOSSES)
    assert conf[1.0, "qfl"][3].item() == pytest.approx(0.25 * math.log(2))           # p = 0.5, target 1
    assert conf[0.6, "focal"] is None and conf[0.6, "vfl"] is not None
    main(["table"])
    out = capsys.readouterr().out
    assert all(name in out for name in list(CLS_LOSSES) + list(CONF_LOSSES))
    main(["plot", str(tmp_path / "losses.png")])
    assert (tmp_path / "losses.png").stat().st_size > 10_000
