"""Checkpoint files: atomic replacement, clear errors, RNG state round trip."""
import os
import random
import stat

import numpy as np
import pytest
import torch

from yolo.checkpoint import atomic_save, load_checkpoint, rng_state, set_rng_state


class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("disk full (simulated)")


def test_atomic_save_replaces_whole_files_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "last.pt"
    atomic_save({"model": {"w": torch.ones(2)}, "config": {"name": "a"}}, path)
    with pytest.raises(RuntimeError, match="disk full"):
        atomic_save({"model": Unpicklable(), "config": {}}, path)
    assert load_checkpoint(path)["config"] == {"name": "a"}  # the previous checkpoint is intact
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_loading_a_missing_or_foreign_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a yolo checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_rng_state_round_trip():
    state = rng_state()
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first
