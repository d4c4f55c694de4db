"""``python -m yolo.bench gpu``: every GPU figure of docs/performance.md in one run of at most ~10 minutes, on
whatever CUDA machine is at hand.

1. the training step at 416 px, batch 64, bf16 + channels_last, torch.compile off and on, and with
   ``train.deterministic`` (what exact resume costs on CUDA), with GFLOP/s against the device's bf16 GEMM rate;
2. a torch.profiler summary of the step (top 15 operators by CUDA time);
3. training end to end on the shapes preset at 416 px with 8 and 16 loader workers (against the step alone);
4. the shapes preset (``configs/shapes.yaml``) trained end to end: its wall time and VOC07 mAP on shapes:test.

Each part is timed and guarded: a failing part is recorded and the others still run. ``--json FILE`` keeps every
number; the Markdown summary printed at the end is what goes into docs/performance.md. ``--smoke`` shrinks every
part (tiny sizes, a tiny shapes set) to check the script itself on a machine without a GPU.
"""
import copy
import tempfile
import time
import traceback
from pathlib import Path

import torch

from yolo.timing import machine
from yolo.bench.pipeline import bench_train
from yolo.bench.step import bench_step, gemm_rate, profile_step
from yolo.config import Config, load_yaml, update, validate
from yolo.hardware import deterministic_algorithms

REPO = Path(__file__).resolve().parents[2]
FULL = {"size": 416, "batch": 64, "iters": 20, "warmup": 5, "compile": (False, True), "workers": (8, 16),
        "train_steps": 60}
SMOKE = {"size": 64, "batch": 4, "iters": 2, "warmup": 1, "compile": (False,), "workers": (0,), "train_steps": 3}
SMOKE_DATA = {"shapes_train": 16, "shapes_val": 8, "shapes_test": 8, "shapes_size": 64, "img_size": 64}


def shapes_config(output_dir: Path, smoke: bool, device: str, **data) -> Config:
    """``configs/shapes.yaml`` writing under ``output_dir`` (its data too, for --smoke: a tiny set)."""
    cfg = update(Config(), load_yaml(REPO / "configs" / "shapes.yaml"))
    overrides = {"output_dir": str(output_dir), "train": {"device": device}, "data": dict(data)}
    if smoke:
        overrides["data"].update(SMOKE_DATA, root=str(output_dir / "shapes" / "VOCdevkit"))
        overrides["train"].update(epochs=1, eval_every=1)
        overrides["model"] = {"level_thresholds": [16.0, 32.0]}
    return validate(update(cfg, overrides))


def _step_part(device, p) -> dict:
    rows = [bench_step(device, p["batch"], p["size"], "bf16", True, compiled, p["iters"], p["warmup"])
            for compiled in p["compile"]]
    with deterministic_algorithms(True):   # what train.deterministic costs (exact resume on CUDA)
        rows.append({**bench_step(device, p["batch"], p["size"], "bf16", True, False, p["iters"], p["warmup"]),
                     "deterministic": True})
    return {"rows": rows, "gemm_bf16_gflops": gemm_rate(device, torch.bfloat16)}


def _train_part(device, p, work: Path, smoke: bool) -> dict:
    rows = []
    for workers in p["workers"]:
        cfg = shapes_config(work, smoke, str(device), img_size=p["size"], workers=workers)
        cfg.train.batch_size = p["batch"]
        rows.append(bench_train(cfg, p["train_steps"], p["warmup"]))
    return {"rows": rows}


def _preset_part(device, work: Path, smoke: bool) -> dict:
    from yolo.checkpoint import load_checkpoint
    from yolo.fit import evaluate_checkpoint, fit
    cfg = shapes_config(work, smoke, str(device))
    cfg.name = "gpu-shapes"
    tic = time.perf_counter()
    fit(cfg, progress=False)
    wall_s = time.perf_counter() - tic
    test, _, _ = evaluate_checkpoint(load_checkpoint(cfg.run_dir / "last.pt"), copy.deepcopy(cfg), cfg.data.test)
    return {"wall_s": wall_s, "epochs": cfg.train.epochs, "test_voc07_map50": test["voc07_map50"],
            "test_coco_ap": test["coco_ap"]}


def run_gpu(args) -> list[dict]:
    device = torch.device(args.device)
    p = SMOKE if args.smoke else FULL
    out = {"part": "gpu", "machine": machine(device), "smoke": args.smoke, "settings": dict(p)}
    with tempfile.TemporaryDirectory(prefix="yolo-gpu-bench-") as tmp:
        work = Path(tmp)
        parts = {"step": lambda: _step_part(device, p),
                 "profile": lambda: {"table": profile_step(device, p["batch"], p["size"], "bf16", True)},
                 "train": lambda: _train_part(device, p, work, args.smoke),
                 "preset": lambda: _preset_part(device, work, args.smoke)}
        for name, part in parts.items():
            tic = time.perf_counter()
            try:
                out[name] = part()
            except Exception:  # record it and go on: the other figures are still worth having
                out[name] = {"error": traceback.format_exc(limit=3)}
            out[name]["seconds"] = time.perf_counter() - tic
            print(f"gpu   {name}: done in {out[name]['seconds']:.0f} s", flush=True)
    print(summary_markdown(out), flush=True)
    return [out]


def summary_markdown(out: dict) -> str:
    """The Markdown lines of a ``run_gpu`` result for docs/performance.md."""
    lines = [f"Machine: {out['machine']}" + (" (--smoke: tiny settings, not a measurement)" if out["smoke"] else ""),
             "", "| part | result |", "|---|---|"]
    for row in out["step"].get("rows", []):
        lines.append(f"| step {row['size']} px, batch {row['batch']}, bf16, channels_last, compile "
                     f"{'on' if row['compile'] else 'off'}{', train.deterministic' if row.get('deterministic') else ''}"
                     f" | {row['images_per_s']:.0f} images/s, "
                     f"{row['gflops']:.0f} GFLOP/s ({row['gflop_per_image']:.2f} GFLOP/image; bf16 GEMM "
                     f"{out['step']['gemm_bf16_gflops']:.0f} GFLOP/s) |")
    for row in out["train"].get("rows", []):
        lines.append(f"| train end to end, shapes at {row['size']} px, batch {row['batch']}, {row['workers']} workers "
                     f"| {row['images_per_s']:.0f} images/s ({100 * row['ratio']:.0f}% of the step alone, "
                     f"{row['step_only_images_per_s']:.0f}) |")
    preset = out["preset"]
    if "wall_s" in preset:
        lines.append(f"| `configs/shapes.yaml` trained ({preset['epochs']} epochs) | {preset['wall_s']:.0f} s, "
                     f"shapes:test VOC07 mAP {preset['test_voc07_map50']:.3f} |")
    errors = [name for name in ("step", "profile", "train", "preset") if "error" in out[name]]
    if errors:
        lines.append(f"\nFailed parts: {', '.join(errors)} (tracebacks in the JSON)")
    return "\n".join(lines + ["", out["profile"].get("table", "")])
