"""What the machine can do: native bf16 (both branches, the capability query mocked; ``auto`` itself is timed, see
test_autotune.py), loader workers that follow the device, deterministic algorithms on request."""
import logging
import os

import pytest
import torch

from yolo import hardware
from yolo.hardware import autocast_dtype, default_workers, native_bf16

CPU = torch.device("cpu")


@pytest.mark.parametrize("capabilities,expected", [
    ({"avx512_bf16": True, "avx512_f": True}, torch.bfloat16),    # Zen 4 / Cooper Lake and newer
    ({"amx_bf16": True, "amx_tile": True}, torch.bfloat16),       # Sapphire Rapids
    ({"bf16": True, "architecture": "aarch64"}, torch.bfloat16),  # ARMv8.6 BF16 (Graviton 3)
    ({"avx512_f": True, "avx512_bf16": False}, None),             # AVX-512 without bf16: emulated, 4x slower
    ({"avx2": True}, None),
])
def test_amp_auto_on_the_cpu_follows_native_bf16(monkeypatch, capabilities, expected):
    monkeypatch.setattr(hardware, "cpu_capabilities", lambda: capabilities)
    assert autocast_dtype("auto", CPU) is expected
    assert native_bf16(CPU) is (expected is torch.bfloat16)
    # explicit choices are taken as given, whatever the machine
    assert autocast_dtype("bf16", CPU) is torch.bfloat16 and autocast_dtype("none", CPU) is None
    assert autocast_dtype("fp16", CPU) is torch.float16


@pytest.mark.parametrize("supported", [True, False])
def test_amp_auto_on_cuda_asks_the_device(monkeypatch, supported):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: supported)
    monkeypatch.setattr(hardware, "cpu_capabilities", lambda: pytest.fail("a GPU run must not ask the CPU"))
    assert autocast_dtype("auto", torch.device("cuda", 0)) is (torch.bfloat16 if supported else None)


def test_unknown_amp_is_refused():
    with pytest.raises(ValueError, match="choose one of: auto, bf16, fp16, none"):
        autocast_dtype("tf32", CPU)


def test_forcing_bf16_on_a_cpu_without_it_warns(monkeypatch, caplog):
    monkeypatch.setattr(hardware, "cpu_capabilities", lambda: {"avx2": True})
    with caplog.at_level(logging.INFO, logger="yolo.hardware"):
        assert hardware.log_precision("bf16", CPU, torch.bfloat16) == "bf16"
        assert hardware.log_precision("auto", CPU, None) == "fp32"
    assert "no native bf16: it is emulated and slow" in caplog.text
    assert "train.amp auto on cpu" in caplog.text and "fp32 (no native bf16)" in caplog.text


def test_workers_follow_the_device(monkeypatch):
    assert default_workers(CPU) == 0                       # a prefetch thread: the step uses every core
    monkeypatch.setattr(hardware.os, "sched_getaffinity", lambda pid: set(range(32)), raising=False)
    assert default_workers(torch.device("cuda", 0)) == 16  # one per core, one left over, at most 16
    monkeypatch.setattr(hardware.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert default_workers(torch.device("cuda", 0)) == 3


def test_workers_share_the_cores_among_runs_side_by_side(monkeypatch):
    monkeypatch.setattr(hardware.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    cuda = torch.device("cuda", 0)
    assert [default_workers(cuda, runs) for runs in (1, 2, 4, 9, 16, 40)] == [15, 7, 3, 1, 1, 1]
    assert default_workers(CPU, 9) == 0


def test_deterministic_algorithms_are_on_inside_the_run_and_restored_after(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
              torch.backends.cudnn.benchmark)
    with hardware.deterministic_algorithms(False):
        assert not torch.are_deterministic_algorithms_enabled() and "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    with hardware.deterministic_algorithms(True):
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
            torch.backends.cudnn.benchmark) == before
