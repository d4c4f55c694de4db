"""Checkpoints: atomic writes, safe (data-only) reads, everything needed to resume exactly, and the RNG states.

A checkpoint holds only what ``torch.load(..., weights_only=True)`` accepts: tensors, numbers, strings, None and
lists / tuples / dicts of them. Nothing is allow-listed beyond that, so loading a file can never run code; a file
that needs more (a pickle with an object whose ``__reduce__`` runs a command, or a checkpoint of an older yolo that
stored NumPy arrays) is refused with ``CheckpointError``.
"""
import errno
import logging
import os
import pickle
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

from yolo.errors import ConfigError

logger = logging.getLogger(__name__)

CHECKPOINT_KEYS = ("model", "config", "classes")


class CheckpointError(ConfigError):
    """A checkpoint (or weights file) that cannot be used: missing, torn, foreign or holding code."""


class CheckpointWriteError(RuntimeError):
    """Writing a checkpoint failed (disk full, permissions, ...); the previous file at that path is intact."""


def atomic_save(obj, path):
    """torch.save to a temporary file in the same folder, fsync, then rename: a crash never leaves a torn file.

    An OSError (ENOSPC, EIO, EACCES, ...) becomes ``CheckpointWriteError``; the temporary file is removed and
    the previous file at ``path`` is left as it was.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            hint = "; free some space" if exc.errno == errno.ENOSPC else ""
            raise CheckpointWriteError(f"could not write checkpoint {path}: {reason}{hint}; the previous "
                                       f"{path.name} (if any) is intact and can be resumed") from None
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def safe_load(path, what: str = "checkpoint", map_location="cpu"):
    """``torch.load(path, weights_only=True)`` with every failure turned into one ``CheckpointError`` line that
    names the file and why: missing, empty, truncated / not a torch file, or holding objects that could run code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} not found: {path}")
    hint = _siblings_hint(path) if what == "checkpoint" else ""
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes), not a {what}{hint}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = _unpickler_reason(str(exc))
        if "GLOBAL" in reason:
            raise CheckpointError(f"{path}: refused, not loaded: a {what} may hold only tensors, numbers, strings, "
                                  f"lists and dicts, this one holds an object that could run code ({reason}); "
                                  f"checkpoints of yolo before data-only checkpoints (NumPy RNG state) are refused "
                                  f"too: retrain") from None
        raise CheckpointError(f"{path}: not a torch {what} ({reason}){hint}") from None
    except Exception as exc:  # torch reports torn zips, foreign bytes and short reads with many exception types
        reason = "truncated or corrupted" if "zip archive" in str(exc) else f"unreadable: {type(exc).__name__}"
        raise CheckpointError(f"{path}: not a usable {what} ({reason}){hint}") from None


def _unpickler_reason(message: str) -> str:
    """The one informative line of torch's weights-only error (it wraps it in paragraphs of advice)."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    for line in lines:
        if "GLOBAL" in line or line.startswith("Unsupported"):
            return line.rstrip(".")
    return lines[-1] if lines else "unpickling failed"


def _siblings_hint(path: Path) -> str:
    """'; try .../last.pt or .../best.pt' naming the readable-looking checkpoints of the same run folder."""
    others = [p for p in (path.parent / "last.pt", path.parent / "best.pt")
              if p.is_file() and p.stat().st_size > 0 and p.resolve() != path.resolve()]
    if others:
        return "; try " + " or ".join(str(p) for p in others)
    return f"; use last.pt or best.pt of its run folder (no other one is in {path.parent})"


def load_checkpoint(path, map_location="cpu") -> dict:
    """Read a checkpoint written by ``atomic_save`` with the data-only loader; raises ``CheckpointError``."""
    state = safe_load(path, "checkpoint", map_location)
    if not isinstance(state, dict) or any(key not in state for key in CHECKPOINT_KEYS):
        raise CheckpointError(f"{path} is not a yolo checkpoint (expected a dict with keys "
                              f"{', '.join(map(repr, CHECKPOINT_KEYS))}){_siblings_hint(Path(path))}")
    return state


def rng_state() -> dict:
    """Python, NumPy and torch (CPU and every CUDA device) generator states, as tensors and plain numbers.

    Python's state is ``(version, 625 ints < 2**32, gauss_next)`` and NumPy's ``('MT19937', uint32[624], pos,
    has_gauss, cached_gaussian)``; the integer vectors are stored as int64 tensors, which hold them exactly.
    """
    version, internal, gauss_next = random.getstate()
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state = {"python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64),
                        "gauss_next": gauss_next},
             "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> list[str]:
    """Restore the generators from ``rng_state()``'s dict; returns what could not be restored: the CUDA generators
    of GPUs this machine does not have (a run saved on 8 GPUs, resumed on 4 or on the CPU), or the devices it has
    and the checkpoint has no state for."""
    py, npy = state["python"], state["numpy"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss_next"]))
    np.random.set_state((npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    saved = list(state.get("cuda", []))
    here = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for index, cuda_state in enumerate(saved[:here]):
        torch.cuda.set_rng_state(cuda_state, index)
    if len(saved) == here:
        return []
    return [f"the checkpoint holds the CUDA generator states of {len(saved)} GPUs and this machine has {here}: "
            f"{min(len(saved), here)} restored; the random draws on the device (none in the training step "
            f"itself) will differ from an uninterrupted run"]


def seed_everything(seed: int):
    """Seed Python, NumPy and torch (data-loader workers are seeded by the loader from its own seed)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
