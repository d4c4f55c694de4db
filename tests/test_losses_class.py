"""The new class losses: Poly-1 (both forms), Seesaw and EFL against float64 references written here from the
papers' formulas (hand-worked values and random inputs), and the running statistics Seesaw and EFL keep.
Gradcheck and logits of magnitude 100 for every registered loss: tests/test_losses.py."""
import math
import socket

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from yolo.config import Config, LossConfig, validate
from yolo.errors import ConfigError
from yolo.losses import (CLS_LOSSES, detection_loss, efl_logit_grad, equalized_focal, init_loss_state,
                         load_loss_state, poly1_cross_entropy, poly1_focal, seesaw, sigmoid_focal)
from yolo.targets import assign_targets, make_grid

C = 5


def _inputs(n=40, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(n, C, generator=g, dtype=torch.float64), torch.randint(0, C, (n,), generator=g)


def _value_and_grad(fn, logits, targets):
    logits = logits.detach().clone().requires_grad_()
    value = fn(logits, targets)
    (grad,) = torch.autograd.grad(value.sum(), logits)
    return value.detach(), grad


# --- Poly-1 --------------------------------------------------------------------------------------------------------

def poly1_reference(logits, labels, epsilon):
    """Leng et al. 2022, eq. 3: -log p_t + epsilon (1 - p_t), p = softmax (float64, computed directly)."""
    p_t = (logits.exp() / logits.exp().sum(-1, keepdim=True)).gather(1, labels[:, None]).squeeze(1)
    return -torch.log(p_t) + epsilon * (1 - p_t)


def test_poly1_hand_worked_values():
    logits = torch.tensor([[0.0, 0.0], [math.log(3), 0.0]], dtype=torch.float64)     # p_t = 1/2, 3/4
    labels = torch.tensor([0, 0])
    expected = torch.tensor([math.log(2) + 0.5, -math.log(0.75) + 0.25], dtype=torch.float64)
    torch.testing.assert_close(poly1_cross_entropy(logits, labels), expected)
    torch.testing.assert_close(poly1_cross_entropy(logits, labels, poly_epsilon=-1.0), expected - 2 * torch.tensor(
        [0.5, 0.25], dtype=torch.float64))


@pytest.mark.parametrize("epsilon", [1.0, -1.0, 3.0])
def test_poly1_matches_the_paper_on_random_inputs_in_value_and_gradient(epsilon):
    logits, labels = _inputs()
    ours = _value_and_grad(lambda x, t: poly1_cross_entropy(x, t, poly_epsilon=epsilon), logits, labels)
    torch.testing.assert_close(ours, _value_and_grad(lambda x, t: poly1_reference(x, t, epsilon), logits, labels))
    # the paper's point: d/dp_t of the loss is -1/p_t - epsilon, i.e. d/dz_t = -(1 - p_t)(1 + epsilon p_t)
    p = logits.softmax(-1)
    p_t = p.gather(1, labels[:, None]).squeeze(1)
    torch.testing.assert_close(ours[1].gather(1, labels[:, None]).squeeze(1), -(1 - p_t) * (1 + epsilon * p_t))


def poly1_focal_reference(logits, labels, alpha=0.25, gamma=2.0, epsilon=1.0):
    """Leng et al. 2022, eq. 5, per class with p = sigmoid: FL + epsilon (1 - p_t)^(gamma + 1) (float64)."""
    p = 1 / (1 + torch.exp(-logits))
    y = F.one_hot(labels, logits.shape[-1]).double()
    p_t = y * p + (1 - y) * (1 - p)
    alpha_t = y * alpha + (1 - y) * (1 - alpha)
    return (-alpha_t * (1 - p_t) ** gamma * torch.log(p_t) + epsilon * (1 - p_t) ** (gamma + 1)).sum(-1)


def test_poly1_focal_hand_worked_value_and_random_inputs():
    one = poly1_focal(torch.zeros(1, 1, dtype=torch.float64), torch.tensor([0]))    # p = 1/2, one class, target
    assert one.item() == pytest.approx(0.25 * 0.25 * math.log(2) + 0.5 ** 3)
    logits, labels = _inputs(scale=2.0)
    for alpha, gamma, epsilon in ((0.25, 2.0, 1.0), (0.5, 1.0, -1.0)):
        ours = _value_and_grad(lambda x, t: poly1_focal(x, t, alpha, gamma, epsilon), logits, labels)
        ref = _value_and_grad(lambda x, t: poly1_focal_reference(x, t, alpha, gamma, epsilon), logits, labels)
        torch.testing.assert_close(ours, ref)


def test_poly1_with_epsilon_0_is_exactly_its_base_loss():
    logits, labels = _inputs()
    assert torch.equal(poly1_cross_entropy(logits, labels, poly_epsilon=0.0), CLS_LOSSES["ce"](logits, labels))
    assert torch.equal(poly1_focal(logits, labels, poly_epsilon=0.0), sigmoid_focal(logits, labels))


# --- Seesaw --------------------------------------------------------------------------------------------------------

def seesaw_reference(logits, labels, counts, p=0.8, q=2.0):
    """Wang et al. 2021, eq. 2-5, element by element (float64): sigma_hat_i = e^{z_i} / (sum_{j != i} S_ij e^{z_j}
    + e^{z_i}) with S_ij = M_ij C_ij; C is computed from detached probabilities, as the paper's gradient treats it."""
    sigma = logits.detach().softmax(-1)
    counts = counts.clamp(min=1)
    losses = []
    for z, i, s in zip(logits, labels.tolist(), sigma):
        denominator = torch.exp(z[i])
        for j in range(len(z)):
            if j == i:
                continue
            m = (counts[j] / counts[i]) ** p if counts[i] > counts[j] else 1.0
            c = (s[j] / s[i]) ** q if s[j] > s[i] else 1.0
            denominator = denominator + m * c * torch.exp(z[j])
        losses.append(-(z[i] - torch.log(denominator)))
    return torch.stack(losses)


def test_seesaw_hand_worked_values():
    rare_first = torch.tensor([10.0, 1000.0], dtype=torch.float64)
    zeros = torch.zeros(2, 2, dtype=torch.float64)
    value = seesaw(zeros, torch.tensor([0, 1]), rare_first)
    # class 0 (rare) as the target: the frequent class is not mitigated, CE = log 2; class 1 (frequent) as the
    # target: the rare class's negative term is scaled by (10 / 1000)^0.8
    torch.testing.assert_close(value, torch.tensor([math.log(2), math.log(1 + 0.01 ** 0.8)], dtype=torch.float64))
    # compensation: the other class wins by a logit margin of 1 -> C = (e^1)^2, loss = log(1 + e^2 e^1)
    equal = torch.ones(2, dtype=torch.float64)
    wrong = seesaw(torch.tensor([[1.0, 0.0]], dtype=torch.float64), torch.tensor([1]), equal)
    assert wrong.item() == pytest.approx(math.log(1 + math.exp(3)))


@pytest.mark.parametrize("p,q", [(0.8, 2.0), (0.0, 2.0), (0.8, 0.0), (1.5, 1.0)])
def test_seesaw_matches_the_paper_on_random_inputs_in_value_and_gradient(p, q):
    logits, labels = _inputs(n=30)
    counts = torch.tensor([5000.0, 800.0, 60.0, 3.0, 0.0], dtype=torch.float64)    # a class never seen yet
    ours = _value_and_grad(lambda x, t: seesaw(x, t, counts, seesaw_p=p, seesaw_q=q), logits, labels)
    ref = _value_and_grad(lambda x, t: seesaw_reference(x, t, counts, p, q), logits, labels)
    torch.testing.assert_close(ours, ref)


def test_seesaw_is_cross_entropy_when_counts_are_equal_and_the_target_leads():
    logits, _ = _inputs()
    labels = logits.argmax(-1)
    counts = torch.full((C,), 7.0, dtype=torch.float64)
    torch.testing.assert_close(seesaw(logits, labels, counts), F.cross_entropy(logits, labels, reduction="none"))


def test_seesaw_needs_class_indices():
    logits, labels = _inputs()
    with pytest.raises(ValueError, match="seesaw needs class indices"):
        seesaw(logits, F.one_hot(labels, C).double(), torch.ones(C, dtype=torch.float64))


# --- EFL -----------------------------------------------------------------------------------------------------------

def efl_reference(logits, labels, g, alpha=0.25, gamma_b=2.0, s=8.0):
    """Li et al. 2022, eq. 6 (float64, p the sigmoid computed directly): sum_j -alpha_t (gamma_j / gamma_b)
    (1 - p_t)^gamma_j log p_t with gamma_j = gamma_b + s (1 - g_j)."""
    p = 1 / (1 + torch.exp(-logits))
    y = F.one_hot(labels, logits.shape[-1]).double()
    p_t = y * p + (1 - y) * (1 - p)
    alpha_t = y * alpha + (1 - y) * (1 - alpha)
    gamma_j = gamma_b + s * (1 - g)
    return (-alpha_t * gamma_j / gamma_b * (1 - p_t) ** gamma_j * torch.log(p_t)).sum(-1)


def _efl_statistics():
    pos = torch.tensor([3.0, 1.0, 0.5, 0.0, 2.0], dtype=torch.float64)
    neg = torch.tensor([1.0, 4.0, 1.0, 9.0, 0.0], dtype=torch.float64)     # class 4: no negatives yet
    g = torch.tensor([1.0, 0.25, 0.5, 0.0, 1.0], dtype=torch.float64)      # clamp(pos / neg, 0, 1); 1 without
    return pos, neg, g


def test_efl_hand_worked_value():
    # one class, the target, p = 1/2, g = 1/2: gamma_j = 2 + 8 x 1/2 = 6, weight 6 / 2 = 3
    value = equalized_focal(torch.zeros(1, 1, dtype=torch.float64), torch.tensor([0]),
                            torch.tensor([0.5], dtype=torch.float64), torch.ones(1, dtype=torch.float64))
    assert value.item() == pytest.approx(0.25 * 3 * 0.5 ** 6 * math.log(2))


@pytest.mark.parametrize("alpha,gamma,scale", [(0.25, 2.0, 8.0), (0.5, 1.0, 4.0), (0.25, 2.0, 0.0)])
def test_efl_matches_the_paper_on_random_inputs_in_value_and_gradient(alpha, gamma, scale):
    logits, labels = _inputs(scale=2.0)
    pos, neg, g = _efl_statistics()
    ours = _value_and_grad(lambda x, t: equalized_focal(x, t, pos, neg, alpha, gamma, scale), logits, labels)
    ref = _value_and_grad(lambda x, t: efl_reference(x, t, g, alpha, gamma, scale), logits, labels)
    torch.testing.assert_close(ours, ref)


def test_efl_without_statistics_is_sigmoid_focal():
    logits, labels = _inputs()
    zeros = torch.zeros(C, dtype=torch.float64)
    torch.testing.assert_close(equalized_focal(logits, labels, zeros, zeros), sigmoid_focal(logits, labels),
                               rtol=0, atol=0)


@pytest.mark.parametrize("soft", [False, True])
def test_efl_closed_form_gradient_matches_autograd(soft):
    logits, labels = _inputs(scale=4.0)
    targets = F.one_hot(labels, C).double()
    if soft:
        targets = 0.8 * targets + 0.2 / C
    pos, neg, _ = _efl_statistics()
    pos_part, neg_part = efl_logit_grad(logits, targets, pos, neg)
    # the loss is t x (positive term) + (1 - t) x (negative term), element by element: each part's gradient is
    # the gradient of the loss with every target 1 (or 0), times t (or 1 - t)
    positive = _value_and_grad(lambda x, t: equalized_focal(x, t, pos, neg), logits, torch.ones_like(targets))[1]
    negative = _value_and_grad(lambda x, t: equalized_focal(x, t, pos, neg), logits, torch.zeros_like(targets))[1]
    torch.testing.assert_close(pos_part, targets * positive.abs())
    torch.testing.assert_close(neg_part, (1 - targets) * negative.abs())
    if not soft:   # and for class targets, the parts split the loss's own gradient
        full = _value_and_grad(lambda x, t: equalized_focal(x, t, pos, neg), logits, labels)[1]
        torch.testing.assert_close(pos_part + neg_part, full.abs())
    wide = torch.tensor([[100.0, -100.0, 0.0, 100.0, -100.0]])
    parts = efl_logit_grad(wide, torch.tensor([0]), pos.float(), neg.float())
    assert all(torch.isfinite(part).all() for part in parts)


# --- the running statistics ----------------------------------------------------------------------------------------

def _batch(num_classes=C):
    """Two images, three boxes (labels 1, 3, 3) on a 64 px grid; all the cells of every level."""
    grid = make_grid((64, 64), (8, 16, 32))
    boxes = torch.tensor([[[4.0, 4.0, 20.0, 20.0], [30.0, 30.0, 60.0, 62.0]], [[10.0, 40.0, 30.0, 60.0],
                                                                                [0.0, 0.0, 0.0, 0.0]]])
    labels = torch.tensor([[1, 3], [3, -1]])
    targets = assign_targets(boxes, labels, grid, (64, 64), (24.0, 48.0))
    preds = torch.randn(2, grid.num_cells, 1 + num_classes + 4, generator=torch.Generator().manual_seed(0))
    return grid, targets, preds


def test_seesaw_counts_the_positive_cells_after_reading_the_counts_before_them():
    grid, targets, preds = _batch()
    cfg = LossConfig(cls_loss="seesaw")
    state = init_loss_state("seesaw", C)
    first = detection_loss(preds, targets, grid, cfg, state=state)
    assert state["class_counts"].tolist() == [0.0, 1.0, 0.0, 2.0, 0.0]
    # the first step read no counts (M = 1 everywhere): the same as with explicitly empty counts
    again = detection_loss(preds, targets, grid, cfg, state=init_loss_state("seesaw", C))
    assert torch.equal(first["cls"], again["cls"])
    second = detection_loss(preds, targets, grid, cfg, state=state)
    assert state["class_counts"].tolist() == [0.0, 2.0, 0.0, 4.0, 0.0]
    assert second["cls"].item() < first["cls"].item()     # class 3 now outnumbers 1: class 1 is mitigated


def test_efl_accumulates_the_gradient_each_positive_cell_gives_its_class_logits():
    grid, targets, preds = _batch()
    cfg = LossConfig(cls_loss="efl")
    state = init_loss_state("efl", C)
    preds = preds.requires_grad_()
    terms = detection_loss(preds, targets, grid, cfg, state=state)
    (grad,) = torch.autograd.grad(terms["cls"], preds)
    batch_size = preds.shape[0]
    class_grad = grad[..., 1:1 + C].reshape(-1, C).abs().double() * batch_size    # the loss divides by the batch
    one_hot = F.one_hot(targets["labels"].clamp(min=0).flatten(), C).double()
    torch.testing.assert_close(state["pos_grad"], (class_grad * one_hot).sum(0))
    torch.testing.assert_close(state["neg_grad"], (class_grad * (1 - one_hot)).sum(0))
    assert state["pos_grad"][[0, 2, 4]].tolist() == [0.0, 0.0, 0.0] and (state["neg_grad"] > 0).all()


def test_a_stateful_loss_without_its_state_and_a_mismatched_checkpoint_are_clear_errors():
    grid, targets, preds = _batch()
    with pytest.raises(ValueError, match="pass state=init_loss_state"):
        detection_loss(preds, targets, grid, LossConfig(cls_loss="efl"))
    state = init_loss_state("seesaw", C)
    with pytest.raises(ValueError, match=r"holds loss statistics \['neg_grad', 'pos_grad'\]"):
        load_loss_state(state, init_loss_state("efl", C))
    with pytest.raises(ValueError, match="shape"):
        load_loss_state(state, {"class_counts": torch.zeros(C + 1)})
    assert init_loss_state("ce", C) == {}


def test_the_ce_warm_up_leaves_the_statistics_alone():
    grid, targets, preds = _batch()
    state = init_loss_state("seesaw", C)
    detection_loss(preds, targets, grid, LossConfig(cls_loss="seesaw"), cls_loss="ce", state=state)
    assert state["class_counts"].sum().item() == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_update(rank, port, results):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    grid, targets, preds = _batch()
    half = slice(rank, rank + 1)          # each rank sees one image of the batch
    for name in ("seesaw", "efl"):
        state = init_loss_state(name, C)
        detection_loss(preds[half], {k: v[half] for k, v in targets.items()}, grid, LossConfig(cls_loss=name),
                       state=state)
        results[f"{name}{rank}"] = {k: v.clone() for k, v in state.items()}
    dist.destroy_process_group()


def test_statistics_are_summed_over_processes_under_ddp():
    """Two gloo processes, one image each: both end with the statistics of the whole batch."""
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_rank_update, args=(_free_port(), results), nprocs=2)
        results = dict(results)
    grid, targets, preds = _batch()
    for name in ("seesaw", "efl"):
        whole = init_loss_state(name, C)
        detection_loss(preds, targets, grid, LossConfig(cls_loss=name), state=whole)
        for rank in (0, 1):
            for key in whole:
                torch.testing.assert_close(results[f"{name}{rank}"][key], whole[key])


@pytest.mark.parametrize("settings,message", [
    ({"cls_loss": "efl", "gamma": 0.0}, "gamma must be positive for efl"),
    ({"poly_epsilon": -2.0}, "poly_epsilon must be >= -1"),
    ({"seesaw_q": -1.0}, "seesaw_q must be >= 0"),
    ({"efl_scale": -8.0}, "efl_scale must be >= 0"),
])
def test_bad_class_loss_settings_are_one_line_config_errors(settings, message):
    cfg = Config()
    for key, value in settings.items():
        setattr(cfg.loss, key, value)
    with pytest.raises(ConfigError, match=message):
        validate(cfg)
