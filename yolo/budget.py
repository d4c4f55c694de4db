"""``train.time_budget``: the number of epochs and the schedule sized so that a run ends within a wall-clock budget.

Like ultralytics' ``time=``, but decided once, from measurements of the run itself: the first ``PLAN_WARMUP_STEPS``
training steps are left untimed (allocations, kernel selection), the next ``PLAN_TIMED_STEPS`` give the seconds a
step (loader included), a few validation batches the seconds an evaluation. The plan is the largest number of
epochs whose remaining steps and evaluations fit in ``SAFETY`` of what is left of the budget; warm-up and the
step-decay milestones keep their fraction of the run (a cosine follows the new length by itself). The plan is logged, kept
in the checkpoints and ``results.json``, and a resumed run keeps it.
"""
import dataclasses
import logging
import time

import torch

from yolo.timing import sync

logger = logging.getLogger(__name__)

PLAN_WARMUP_STEPS = 5
PLAN_TIMED_STEPS = 20
EVAL_PROBE_BATCHES = 3
# decoding, NMS and the metrics of a whole evaluation on top of the probed network time (measured on the shapes
# preset: about 0.6 s of decoding and metrics for each second of inference, docs/performance.md)
EVAL_OVERHEAD = 1.8
# the plan fills this fraction of what is left: on the 2-core VM the epochs that followed ran 13% slower than the
# first steps (docs/performance.md: 0.300 s a step measured, 0.32-0.36 s in the epochs), and a plan of the whole
# remaining time ended 2% past its budget
SAFETY = 0.9


def evaluations(epochs: int, eval_every: int) -> int:
    """How many evaluations a run of ``epochs`` makes: every ``eval_every`` epochs and after the last."""
    return epochs // eval_every + (epochs % eval_every != 0)


def plan_epochs(remaining_s: float, step_s: float, steps_per_epoch: int, steps_done: int, eval_s: float,
                eval_every: int) -> int:
    """The most epochs (at least 1) whose steps still to run (``steps_done`` are done) and evaluations take at most
    ``remaining_s``."""
    def cost(epochs):
        return (epochs * steps_per_epoch - steps_done) * step_s + evaluations(epochs, eval_every) * eval_s

    per_epoch = steps_per_epoch * step_s + eval_s / eval_every
    epochs = max(1, int((remaining_s + steps_done * step_s) / per_epoch) + 1)
    while epochs > 1 and cost(epochs) > remaining_s:
        epochs -= 1
    return epochs


def make_plan(tcfg, budget_s: float, elapsed_s: float, step_s: float, steps_per_epoch: int, steps_done: int,
              eval_s: float, batch_size: int) -> dict:
    """The plan of a budgeted run (a plain dict: it goes into checkpoints and ``results.json``)."""
    remaining_s = (budget_s - elapsed_s) * SAFETY
    epochs = plan_epochs(remaining_s, step_s, steps_per_epoch, steps_done, eval_s, tcfg.eval_every)
    scale = epochs / tcfg.epochs
    predicted_s = (elapsed_s + (epochs * steps_per_epoch - steps_done) * step_s
                   + evaluations(epochs, tcfg.eval_every) * eval_s)
    return {"budget_s": budget_s, "epochs": epochs, "warmup_epochs": tcfg.warmup_epochs * scale,
            "lr_steps": [max(1, round(m * scale)) for m in tcfg.lr_steps], "configured_epochs": tcfg.epochs,
            "elapsed_s": elapsed_s, "step_s": step_s, "images_per_s": batch_size / step_s, "eval_s": eval_s,
            "steps_per_epoch": steps_per_epoch, "predicted_s": predicted_s, "fits": predicted_s <= budget_s}


def planned_schedule(tcfg, plan: dict | None):
    """``tcfg`` with the plan's epochs, warm-up and milestones (``tcfg`` itself without a plan)."""
    if plan is None:
        return tcfg
    return dataclasses.replace(tcfg, epochs=plan["epochs"], warmup_epochs=plan["warmup_epochs"],
                               lr_steps=list(plan["lr_steps"]))


def describe(plan: dict, scheduler: str) -> str:
    """The plan in one line, for the log."""
    milestones = "cosine to the end" if scheduler == "cosine" else f"lr steps at epochs {plan['lr_steps']}"
    line = (f"time budget {plan['budget_s']:.0f} s: {plan['elapsed_s']:.0f} s spent so far, {plan['step_s']:.3f} s "
            f"a step ({plan['images_per_s']:.1f} images/s), about {plan['eval_s']:.0f} s an evaluation -> "
            f"{plan['epochs']} epochs of {plan['steps_per_epoch']} steps (configured: {plan['configured_epochs']}), "
            f"warm-up {plan['warmup_epochs']:.2f} epochs, {milestones}; predicted end at {plan['predicted_s']:.0f} s")
    return line if plan["fits"] else line + " (one epoch is more than the budget: training one anyway)"


@torch.no_grad()
def time_evaluation(model, loader, cfg, *, device, amp_dtype, channels_last: bool, sigmoid_cls: bool) -> float:
    """Seconds one evaluation of ``loader``'s split should take on this rank: the network and decoding timed on up
    to ``EVAL_PROBE_BATCHES`` batches (after one untimed), scaled to the rank's shard, times ``EVAL_OVERHEAD``."""
    from yolo.engine import predict
    model.eval()
    seconds, images = 0.0, 0
    for i, (batch, _) in enumerate(loader):
        if i > EVAL_PROBE_BATCHES:
            break
        tic = time.perf_counter()
        batch = batch.to(device)
        if channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        predict(model, batch, cfg, sigmoid_cls=sigmoid_cls, amp_dtype=amp_dtype)
        sync(device)
        if i > 0:
            seconds, images = seconds + time.perf_counter() - tic, images + batch.shape[0]
    model.train()
    if images == 0:   # a split of one batch: it was timed with its warm-up
        seconds, images = time.perf_counter() - tic, batch.shape[0]
    return seconds / images * len(loader.sampler) * EVAL_OVERHEAD
