"""Checkpoint files: atomic replacement, data-only loading, clear refusals, RNG state round trip."""
import errno
import hashlib
import os
import random
import stat
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO
from yolo.checkpoint import (CheckpointError, CheckpointWriteError, atomic_save, load_checkpoint, rng_state,
                             set_rng_state)


class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("disk full (simulated)")


def test_atomic_save_replaces_whole_files_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "last.pt"
    atomic_save({"model": {"w": torch.ones(2)}, "config": {"name": "a"}, "classes": ["x"]}, path)
    with pytest.raises(RuntimeError, match="disk full"):
        atomic_save({"model": Unpicklable(), "config": {}, "classes": []}, path)
    assert load_checkpoint(path)["config"] == {"name": "a"}  # the previous checkpoint is intact
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_loading_a_missing_or_foreign_file_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a yolo checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_rng_state_round_trips_exactly_through_a_data_only_file(tmp_path):
    random.gauss(0, 1), np.random.randn()  # a cached Gaussian is part of both states
    atomic_save(rng_state(), tmp_path / "rng.pt")
    first = (random.random(), random.gauss(0, 1), np.random.rand(), np.random.randn(), torch.rand(1).item())
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), random.gauss(0, 1), np.random.rand(), np.random.randn(), torch.rand(1).item()) == first


def test_a_checkpoint_of_a_real_run_is_plain_data(tiny_run):
    state = torch.load(tiny_run / "last.pt", weights_only=True)  # nothing allow-listed: tensors, numbers, str, ...
    from yolo.config import from_dict
    assert from_dict(state["config"]).to_dict() == state["config"] and state["epoch"] == 1
    assert isinstance(state["rng"]["numpy"]["keys"], torch.Tensor)


class RunsACommand:
    """What a malicious checkpoint holds: unpickling it calls os.system."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _run(script, *args):
    return subprocess.run([sys.executable, str(REPO / script), *args], capture_output=True, text=True, cwd=REPO,
                          timeout=300)


def _one_line_error(result, *names):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0]


def test_a_checkpoint_that_would_run_code_is_refused_and_runs_nothing(tiny_run, tmp_path):
    marker = tmp_path / "MARKER"
    evil = tmp_path / "evil.pt"
    torch.save({"model": {}, "config": {}, "classes": [], "extra": RunsACommand(marker)}, evil)
    line = _one_line_error(_run("eval.py", "--checkpoint", str(evil)), str(evil), "could run code")
    assert "posix.system" in line or "os.system" in line
    _one_line_error(_run("train.py", "--resume", str(evil), "--no-progress"), str(evil))
    from yolo.predict import main as predict
    assert predict(["--checkpoint", str(evil), str(evil), "--out", str(tmp_path / "out")]) == 2
    assert not marker.exists()  # the command never ran
    assert not (tmp_path / "out").exists()


def test_torn_empty_and_foreign_files_are_one_line_refusals_naming_the_run_checkpoints(tiny_run, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").symlink_to(tiny_run / "last.pt")
    with open(tiny_run / "last.pt", "rb") as f:
        (run / "torn.pt").write_bytes(f.read(100_000))  # the first 100 kB of a real checkpoint
    _one_line_error(_run("eval.py", "--checkpoint", str(run / "torn.pt")), str(run / "torn.pt"), "truncated",
                    str(run / "last.pt"))
    (run / "empty.pt").write_bytes(b"")
    (run / "notes.pt").write_text("not a checkpoint\n")
    torch.save([1, 2, 3], run / "list.pt")
    for name, reason in (("empty.pt", "empty file"), ("notes.pt", "not a (torch|usable) checkpoint"),
                         ("list.pt", "not a yolo checkpoint")):
        with pytest.raises(CheckpointError, match=reason) as refused:
            load_checkpoint(run / name)
        message = str(refused.value)
        assert str(run / name) in message and str(run / "last.pt") in message and "\n" not in message


def test_a_checkpoint_of_the_previous_format_is_refused_with_a_clear_message(tmp_path):
    previous = {"model": {}, "config": {}, "classes": [], "epoch": 1,  # the RNG state as yolo stored it before
                "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}}
    torch.save(previous, tmp_path / "last.pt")
    with pytest.raises(CheckpointError, match=r"last.pt: refused, not loaded: .*numpy.*before data-only checkpoints"):
        load_checkpoint(tmp_path / "last.pt")


def _md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_disk_full_keeps_the_previous_checkpoint_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    atomic_save({"model": {"w": torch.ones(2)}, "config": {"name": "a"}, "classes": ["x"]}, path)
    before = _md5(path)

    def no_space(obj, f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", no_space)
    with pytest.raises(CheckpointWriteError, match="No space left on device.*previous last.pt"):
        atomic_save({"model": {"w": torch.zeros(2)}, "config": {"name": "b"}, "classes": ["x"]}, path)
    monkeypatch.undo()
    assert _md5(path) == before and load_checkpoint(path)["config"] == {"name": "a"}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
