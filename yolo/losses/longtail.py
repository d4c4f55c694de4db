"""Class losses for the long tail, which read running statistics of the training so far: Seesaw and EFL.

The statistics are inputs like the logits (``class_counts``, ``pos_grad``, ``neg_grad``: (C,) tensors that
``yolo.losses.state`` keeps, updates after each step and checkpoints); the losses themselves are pure functions.

References
----------
* Seesaw loss: Wang et al., "Seesaw Loss for Long-Tailed Instance Segmentation", CVPR 2021; mmdetection
  ``mmdet/models/losses/seesaw_loss.py``.
* Equalized Focal Loss: Li et al., "Equalized Focal Loss for Dense Long-Tailed Object Detection", CVPR 2022;
  ModelTC/United-Perception ``up/tasks/det/plugins/efl/models/losses/efl.py``.
"""
import torch
import torch.nn.functional as F

from yolo.losses.common import _class_indices, _class_weights, _f32, _soft_targets


def seesaw(logits, targets, class_counts, seesaw_p=0.8, seesaw_q=2.0):
    """Seesaw loss (Wang et al. 2021, eq. 2-5): softmax cross-entropy whose negative classes are re-weighted,

        L = -log( e^{z_i} / (e^{z_i} + sum_{j != i} S_ij e^{z_j}) ),  S_ij = M_ij C_ij,  i the target class,
        M_ij = (N_j / N_i)^p where N_j < N_i, else 1     (mitigation: a rarer class j is punished less),
        C_ij = (sigma_j / sigma_i)^q where sigma_j > sigma_i, else 1   (compensation: a wrongly winning j more),

    N = ``class_counts`` (positives seen so far, clamped at 1), sigma = softmax(logits), p = 0.8, q = 2. Both
    factors are in log space: log C_ij = q max(0, z_j - z_i), exact for any logits. C is computed from detached
    logits (as mmdetection; the paper's gradient treats S_ij as a constant). Class indices only. (N, C) -> (N,).

    Where this differs from mmdetection: it divides by max(sigma_i, 0.01), which caps C at 100^q; here C is the
    paper's, uncapped. mmdetection adds the current batch to the counts before its loss; here a step's loss reads
    the counts of the steps before it (``yolo.losses.state``). Its extra 2-channel objectness softmax is this
    head's own objectness branch, and it averages over positives where the detection loss here sums over positive
    cells and divides by the batch size, like every class loss of this kit.
    """
    logits = _f32(logits)
    labels = _class_indices(targets, "seesaw")
    log_counts = class_counts.clamp(min=1).log().to(logits.dtype)                     # (C,)
    log_mitigation = seesaw_p * (log_counts - log_counts[labels][:, None]).clamp(max=0)   # (N, C), 0 at j = i
    z = logits.detach()
    log_compensation = seesaw_q * (z - z.gather(1, labels[:, None])).clamp(min=0)      # (N, C), 0 at j = i
    adjusted = logits + log_mitigation + log_compensation
    return -adjusted.log_softmax(-1).gather(1, labels[:, None]).squeeze(1)


def efl_gamma(pos_grad, neg_grad, gamma: float, efl_scale: float, dtype) -> torch.Tensor:
    """EFL's per-class focusing exponent gamma_j = gamma_b + s (1 - g_j), (C,), from the accumulated positive and
    negative gradients: g_j = clamp(pos_j / neg_j, 0, 1), and 1 (plain focal loss) before class j has any."""
    ratio = torch.where(neg_grad > 0, pos_grad / neg_grad.clamp(min=torch.finfo(neg_grad.dtype).tiny), 1.0)
    return (gamma + efl_scale * (1 - ratio.clamp(0, 1))).to(dtype)


def equalized_focal(logits, targets, pos_grad, neg_grad, alpha=0.25, gamma=2.0, efl_scale=8.0):
    """Equalized Focal Loss (Li et al. 2022, eq. 6): a sigmoid focal loss whose focusing exponent and weight grow
    for the classes whose accumulated positive gradient lags their negative gradient,

        L = sum_j -alpha_t (gamma_j / gamma_b) (1 - p_t)^gamma_j log p_t,   gamma_j = gamma_b + s (1 - g_j),

    p = sigmoid per class, p_t = p on the target class and 1 - p elsewhere, gamma_b = ``gamma`` = 2, s =
    ``efl_scale`` = 8, alpha = 0.25 as in the reference code (None: unweighted), g_j from ``efl_gamma``. gamma_j is a
    constant of the step (no gradient through the statistics). With no statistics yet it is ``sigmoid_focal``.
    Soft targets are linear in the target, as ``sigmoid_focal``. (N, C) -> (N,).

    Where this differs from United-Perception: it sees every anchor (background anchors are negatives of every
    class); this head's class loss sees the positive cells only, so the negatives of class j are the other classes'
    objects. Its statistics come from a backward hook on the normalised total loss; here from the closed-form
    gradient of each positive cell's loss (``efl_logit_grad``), so every positive counts the same in any batch and
    no fp16 loss scale enters them. It starts g at 1 and divides by neg + 1e-10; here g = 1 until neg > 0.
    """
    logits = _f32(logits)
    targets = _soft_targets(targets, logits.shape[-1], logits.dtype)
    gamma_j = efl_gamma(pos_grad, neg_grad, gamma, efl_scale, logits.dtype)             # (C,)
    log_p, log_1mp = F.logsigmoid(logits), F.logsigmoid(-logits)
    pos = -targets * torch.exp(gamma_j * log_1mp) * log_p
    neg = -(1 - targets) * torch.exp(gamma_j * log_p) * log_1mp
    weights = _class_weights(alpha, logits.shape[-1], logits)
    if weights is not None:
        pos, neg = pos * weights, neg * (1 - weights)
    return ((gamma_j / gamma) * (pos + neg)).sum(-1)


def efl_logit_grad(logits, targets, pos_grad, neg_grad, alpha=0.25, gamma=2.0, efl_scale=8.0):
    """|d loss / d logit| of ``equalized_focal``, split into its positive and negative parts: ((N, C), (N, C)).

    With q = p_t, w = alpha_t gamma_j / gamma_b: d/dz [-w (1 - q)^g log q] has magnitude
    w (1 - q)^g ((1 - q) - g q log q), q = sigmoid(z) for the target class and sigmoid(-z) for the others.
    Computed in log space, so finite for any logits; ``tests/test_losses.py`` checks it against autograd.
    """
    logits = _f32(logits).detach()
    targets = _soft_targets(targets, logits.shape[-1], logits.dtype)
    gamma_j = efl_gamma(pos_grad, neg_grad, gamma, efl_scale, logits.dtype)
    weights = _class_weights(alpha, logits.shape[-1], logits)
    a_pos, a_neg = (1.0, 1.0) if weights is None else (weights, 1 - weights)
    log_p, log_1mp = F.logsigmoid(logits), F.logsigmoid(-logits)

    def magnitude(log_q, log_1mq):
        return torch.exp(gamma_j * log_1mq) * (log_1mq.exp() - gamma_j * log_q.exp() * log_q)

    scale = gamma_j / gamma
    return (targets * a_pos * scale * magnitude(log_p, log_1mp),
            (1 - targets) * a_neg * scale * magnitude(log_1mp, log_p))
