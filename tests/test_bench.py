"""Benchmarks are commands, not timed tests: these check what they report (FLOPs per image, the end-to-end against
step-alone ratio) and that the all-in-one GPU script runs every part (with --smoke on the CPU)."""
import json

import pytest
import torch

from yolo.bench.cli import main
from yolo.bench.step import make_step, step_flops

CPU = torch.device("cpu")


def test_flops_per_image_do_not_depend_on_the_batch_and_grow_with_the_pixels():
    per_image = {}
    for batch, size in ((1, 64), (3, 64), (1, 128)):
        _, eager = make_step(CPU, batch, size, "none", channels_last=False, compile_model=False)
        per_image[batch, size] = step_flops(eager) / batch
    assert per_image[3, 64] == pytest.approx(per_image[1, 64], rel=1e-6)
    # convolutions dominate: 4x the pixels is 4x the FLOPs, less the few pixel-independent ones
    assert 3.8 < per_image[1, 128] / per_image[1, 64] <= 4.0


def test_step_and_gemm_report_gflops_against_the_machine(tmp_path, capsys):
    out = tmp_path / "step.json"
    assert main(["--json", str(out), "step", "--device", "cpu", "--batch", "2", "--size", "64", "--amp", "none",
                 "--channels-last", "on", "--iters", "1", "--warmup", "1"]) == 0
    row = json.loads(out.read_text())["rows"][0]
    assert row["gflops"] == pytest.approx(row["gflop_per_image"] * row["images_per_s"])
    assert row["gemm_gflops"] > 0 and row["precision"] == "fp32"
    assert "GFLOP/image" in capsys.readouterr().out
    assert main(["gemm", "--device", "cpu", "--amp", "none", "--n", "256"]) == 0
    assert "gemm  cpu fp32 256x256" in capsys.readouterr().out


def test_train_bench_reports_end_to_end_against_the_step_alone(shapes_root, tmp_path, capsys):
    from conftest import TINY
    args = ["--json", str(tmp_path / "train.json"), "train", "--steps", "2", "--warmup", "1"]
    for section in ("data", "model"):
        for key, value in TINY[section].items():
            args += [f"--{section}.{key}", json.dumps(value)]      # JSON is YAML, which the CLI parses
    args += ["--batch-size", "8", "--device", "cpu", "--data-root", str(shapes_root)]
    assert main(args) == 0
    row = json.loads((tmp_path / "train.json").read_text())["rows"][0]
    assert row["images_per_s"] > 0 and row["ratio"] == pytest.approx(row["images_per_s"] /
                                                                     row["step_only_images_per_s"])
    assert row["workers"] == 0 and "a prefetch thread" in capsys.readouterr().out


def test_the_gpu_script_runs_every_part(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["--json", "gpu.json", "gpu", "--device", "cpu", "--smoke"]) == 0
    out = json.loads((tmp_path / "gpu.json").read_text())["rows"][0]
    for part in ("step", "profile", "train", "preset"):
        assert "error" not in out[part], out[part].get("error")
    assert out["preset"]["test_voc07_map50"] is not None and out["preset"]["wall_s"] > 0
    assert "Self CPU" in out["profile"]["table"]
    printed = capsys.readouterr().out
    assert "| step 64 px, batch 4, bf16" in printed and "--smoke" in printed
    assert "compile off, train.deterministic |" in printed      # what exact resume costs, measured beside it
