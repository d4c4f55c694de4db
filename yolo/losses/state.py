"""The running statistics of the stateful class losses: made, updated after each step, all-reduced, restored.

The state is a plain dict of (C,) float64 tensors that the training loop holds beside the model and the optimiser
(never inside the model) and passes to ``detection_loss``:

* ``seesaw``: ``class_counts``, the positive cells seen per class;
* ``efl``: ``pos_grad`` and ``neg_grad``, the accumulated |d loss / d logit| of each class where it is the target
  and where it is not (positive cells only: this head's class loss sees no background).

A step's loss reads the statistics of the steps before it; ``detection_loss`` then adds the step's own. They
accumulate only while the stateful loss trains (not during a cross-entropy warm-up). Under DDP each step's
statistics are summed over the processes (``all_reduce``) before they are added, so every rank holds the same
state, that of the global batch. ``yolo.fit`` stores the dict in every checkpoint (tensors only, which the
data-only loader accepts) and copies it back on resume, so a resumed run continues bit-exactly. float64 keeps the
counts exact and the sums accurate over long runs.
"""
import torch
import torch.distributed as dist

from yolo.losses.common import bind_hparams
from yolo.losses.longtail import efl_logit_grad

STATE_KEYS = {"seesaw": ("class_counts",), "efl": ("pos_grad", "neg_grad")}


def init_loss_state(cls_loss: str, num_classes: int, device=None) -> dict:
    """Zeroed statistics for the class loss ``cls_loss``: ``{}`` for a loss that keeps none."""
    return {key: torch.zeros(num_classes, dtype=torch.float64, device=device) for key in STATE_KEYS.get(cls_loss, ())}


def state_for(cls_loss: str, state: dict | None) -> dict:
    """The statistics ``cls_loss`` reads, from ``state``; a clear error when they are missing."""
    keys = STATE_KEYS.get(cls_loss, ())
    missing = [key for key in keys if state is None or key not in state]
    if missing:
        raise ValueError(f"class loss {cls_loss!r} keeps running statistics: pass state=init_loss_state("
                         f"{cls_loss!r}, num_classes) to detection_loss (missing {', '.join(missing)})")
    return {key: state[key] for key in keys}


@torch.no_grad()
def update_loss_state(cls_loss: str, state: dict, logits, labels, cell_weights, hparams: dict):
    """Add one step's statistics to ``state`` in place, summed over the processes when distributed.

    logits (P, C) class logits of every cell, labels (P,) class indices (any value on negative cells),
    cell_weights (P,) 1 on positive cells and 0 elsewhere, hparams the loss's hyper-parameters.
    """
    if cls_loss == "seesaw":
        counts = torch.zeros_like(state["class_counts"]).index_add_(0, labels, cell_weights.to(torch.float64))
        delta = {"class_counts": counts}
    elif cls_loss == "efl":
        grad_fn = bind_hparams(efl_logit_grad, {**hparams, **state_for(cls_loss, state)})
        pos, neg = grad_fn(logits, labels)                                              # (P, C) each
        delta = {"pos_grad": (pos * cell_weights[:, None]).sum(0), "neg_grad": (neg * cell_weights[:, None]).sum(0)}
    else:
        return
    for key, value in delta.items():
        value = value.to(torch.float64)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(value)
        state[key] += value


def load_loss_state(state: dict, stored: dict):
    """Copy a checkpoint's statistics into ``state`` (in place, on its device); ValueError where they do not fit."""
    if set(stored) != set(state):
        raise ValueError(f"the checkpoint holds loss statistics {sorted(stored)}, this loss keeps {sorted(state)}")
    for key, value in stored.items():
        if not isinstance(value, torch.Tensor) or value.shape != state[key].shape:
            raise ValueError(f"loss statistic {key}: expected a tensor of shape {tuple(state[key].shape)}")
        state[key].copy_(value)
