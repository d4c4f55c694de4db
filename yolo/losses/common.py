"""What every loss shares: precision, target and weight conversion, and the log-space building blocks.

Every loss takes logits (never probabilities), works in log space (``log_softmax``, ``logsigmoid``) and computes in
at least float32, so it stays finite, with finite gradients, for logits of magnitude 100 and under bf16/fp16
autocast.
"""
import functools
import inspect
import math

import torch
import torch.nn.functional as F

from yolo.boxes import device_constant


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


def _class_indices(targets: torch.Tensor, loss: str) -> torch.Tensor:
    """(N,) integer class indices as int64; losses defined per ground-truth class refuse soft targets."""
    if targets.dtype not in (torch.int64, torch.int32, torch.uint8) or targets.dim() != 1:
        raise ValueError(f"{loss} needs class indices of shape (N,), got {targets.dtype} {tuple(targets.shape)}")
    return targets.long()


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


def bind_hparams(fn, hparams: dict):
    """``fn`` with the hyper-parameters its signature accepts bound (the others are ignored); ``None`` keeps the
    function's default except for ``alpha``, where None means "no weighting"."""
    accepted = inspect.signature(fn).parameters
    bound = {k: v for k, v in hparams.items() if k in accepted and (v is not None or k == "alpha")}
    return functools.partial(fn, **bound)


def prior_bias(pi: float) -> float:
    """Bias b with sigmoid(b) = pi: -log((1 - pi) / pi). Focal loss paper, section 3.3 ("prior" initialisation)."""
    if not 0.0 < pi < 1.0:
        raise ValueError(f"prior probability must be in (0, 1), got {pi}")
    return -math.log((1.0 - pi) / pi)
