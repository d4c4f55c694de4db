"""Stopping a run early, the same way on every rank.

A signal (SIGTERM, SIGINT, a scheduler's preemption signal) sets a flag; the loop finishes its step, saves
``last.pt`` and returns. Under DDP one rank leaving the loop a step before the others would leave them blocked in
their next gradient all-reduce, and ``last.pt`` (written by rank 0) might never be written. So every rank's flag,
and whether its loss is finite, are all-reduced after each step (:class:`StopVote`): a signal to any rank, or a
non-finite loss on any rank, stops every rank after the same step.
"""
import logging
import signal

import torch
import torch.distributed as dist

from yolo.engine import NonFiniteLoss

logger = logging.getLogger(__name__)


class StopRequest:
    """Set by SIGTERM / SIGINT: the loop finishes its step, saves a checkpoint and exits cleanly.

    ``requested`` is this process's flag, ``signum`` the signal that set it (None when none did); ``agree`` is
    what the ranks decided together (see :class:`StopVote`)."""

    signals = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested = False
        self.signum = None
        self._previous = {}

    def install(self):
        def handler(signum, frame):
            logger.warning("received %s: saving a checkpoint at the end of this step, then stopping",
                           signal.Signals(signum).name)
            self.requested, self.signum = True, signum
            signal.signal(signum, self._previous[signum])  # a second signal acts as it did before the run
        self._previous = {sig: signal.getsignal(sig) for sig in self.signals}
        for sig in self.signals:
            signal.signal(sig, handler)

    def uninstall(self):
        """Give the signals back to whatever handled them before (an ablation runs many fits in one process)."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)

    def code(self) -> int:
        """This process's vote: the signal number that asked for the stop (SIGTERM when only the flag was set),
        0 for none."""
        if not self.requested:
            return 0
        return int(self.signum or signal.SIGTERM)

    def agree(self, signum: int):
        """The ranks decided to stop because some rank received ``signum``."""
        self.requested, self.signum = True, signum


class StopVote:
    """The stop decision of ``world_size`` ranks, taken together after each step and at the end of each epoch.

    One process: no communication; the flag is read as it is and the loss is checked every ``log_every`` steps by
    the training loop (no host synchronisation per step). Several: a 2-element tensor (the signal number, and
    rank + 1 where the loss is not finite) is all-reduced with MAX and read, one small collective and one host
    read per step next to DDP's gradient all-reduce.
    """

    def __init__(self, stop: StopRequest, world_size: int, device: torch.device):
        self.stop, self.world_size, self.device = stop, world_size, device

    def after_step(self, terms: dict, epoch: int, step: int) -> bool:
        """Whether every rank stops after this step; raises ``NonFiniteLoss`` on every rank when any rank's loss
        ``terms["total"]`` is not finite."""
        if self.world_size == 1:
            return self.stop.requested
        bad = (~torch.isfinite(terms["total"].detach())).float() * (dist.get_rank() + 1)
        votes = torch.stack([torch.tensor(float(self.stop.code()), device=self.device), bad.to(self.device)])
        dist.all_reduce(votes, op=dist.ReduceOp.MAX)
        signum, bad_rank = (int(v) for v in votes.tolist())
        if bad_rank:
            values = ", ".join(f"{k}={v.item():.4g}" for k, v in terms.items())
            raise NonFiniteLoss(f"non-finite loss on rank {bad_rank - 1} at epoch {epoch} step {step} (this rank, "
                                f"{dist.get_rank()}: {values}); every rank stopped. The last checkpoint on disk is "
                                f"the last good one.")
        return self._agreed(signum)

    def settle(self) -> bool:
        """Whether every rank stops now (between epochs: a signal during an evaluation or a checkpoint write)."""
        if self.world_size == 1:
            return self.stop.requested
        votes = torch.tensor([float(self.stop.code())], device=self.device)
        dist.all_reduce(votes, op=dist.ReduceOp.MAX)
        return self._agreed(int(votes.item()))

    def _agreed(self, signum: int) -> bool:
        if signum:
            if not self.stop.requested:
                logger.warning("another rank received %s: stopping after this step with it",
                               signal.Signals(signum).name)
            self.stop.agree(signum)
            return True
        return False
