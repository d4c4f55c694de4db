"""The training step alone, on a synthetic batch already on the device: images/s, its GFLOP per image (torch's
flop counter) and the achieved GFLOP/s next to the machine's own matmul rate in the same dtype; the GEMM rate;
and a torch.profiler summary of the step."""
import itertools
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from yolo.timing import peak_memory_mb, sync, synthetic_batch, time_iterations
from yolo.config import Config
from yolo.hardware import autocast_dtype, native_bf16, precision_name

GEMM_SIZE = {"cpu": 2048, "cuda": 8192}


def make_step(device, batch: int, size: int, amp: str, channels_last: bool, compile_model: bool,
              cls_loss: str = "ce"):
    """``(step, eager_step)``: one ``yolo.engine.train_step`` (forward, assignment, every loss term, backward, the
    fused SGD of the VOC recipe) on a fixed synthetic batch; ``eager_step`` skips torch.compile (for counting)."""
    from yolo.engine import build_optimizer, train_step
    from yolo.model import YOLO

    cfg = Config()
    cfg.loss.cls_loss = cls_loss
    model = YOLO(20).to(device)
    images, boxes, labels = synthetic_batch(batch, size, 20, device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg.train)
    amp_dtype = autocast_dtype(amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    compiled = torch.compile(model) if compile_model else model

    def run(module):
        return lambda: train_step(module, images, boxes, labels, optimizer, cfg, cls_loss=cls_loss, scaler=scaler,
                                  amp_dtype=amp_dtype)
    return run(compiled), run(model)


def step_flops(eager_step) -> float:
    """FLOPs of one step (matmuls and convolutions, forward and backward), from torch's FlopCounterMode."""
    with FlopCounterMode(display=False) as counter:
        eager_step()
    return float(counter.get_total_flops())


def gemm_rate(device: torch.device, dtype, n: int | None = None, iters: int = 10) -> float:
    """GFLOP/s of an n x n matmul in ``dtype`` (fp32 when None): the machine's own compute limit to compare with."""
    n = n or GEMM_SIZE.get(device.type, 2048)
    a = torch.randn(n, n, device=device, dtype=dtype or torch.float32)
    b = torch.randn(n, n, device=device, dtype=dtype or torch.float32)
    seconds = statistics.median(time_iterations(lambda: a @ b, device, iters, warmup=2))
    return 2 * n ** 3 / seconds / 1e9


def bench_step(device, batch: int, size: int, amp: str, channels_last: bool, compile_model: bool,
               iters: int, warmup: int, cls_loss: str = "ce") -> dict:
    """Images/s of the step, its GFLOP per image and the achieved GFLOP/s."""
    step, eager_step = make_step(device, batch, size, amp, channels_last, compile_model, cls_loss)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = time_iterations(step, device, iters, warmup)
    median = statistics.median(times)
    gflop_per_image = step_flops(eager_step) / batch / 1e9
    return {"part": "step", "device": str(device), "batch": batch, "size": size, "amp": amp,
            "precision": precision_name(autocast_dtype(amp, device)), "channels_last": channels_last,
            "compile": compile_model, "cls_loss": cls_loss, "median_s": median, "images_per_s": batch / median,
            "gflop_per_image": gflop_per_image, "gflops": gflop_per_image * batch / median,
            "peak_memory_mb": peak_memory_mb(device)}


def resolve_auto(device, batch: int, size: int, amp: str, channels_last: str, cls_loss: str = "ce"):
    """``(amp, channels_last: bool, note)``: the step bench's settings, with ``auto`` decided as training decides it
    (``yolo.autotune``, for this model, size and batch; from its cache when it has them)."""
    from yolo.autotune import choose, describe
    if "auto" not in (amp, channels_last):
        return amp, channels_last == "on", ""
    cfg = Config()
    cfg.model.pretrained, cfg.loss.cls_loss, cfg.data.img_size = "none", cls_loss, size
    cfg.train.amp, cfg.train.channels_last = amp, "auto" if channels_last == "auto" else channels_last == "on"
    choice = choose(cfg, device, 20, batch)
    return choice.amp, choice.channels_last, f" [auto: {describe(choice)}]"


def run_step(args) -> list[dict]:
    device = torch.device(args.device)
    rows, limits = [], {}
    for asked_amp, asked_layout, compile_model in itertools.product(args.amp, args.channels_last, args.compile):
        amp, channels_last, note = resolve_auto(device, args.batch, args.size, asked_amp, asked_layout, args.cls_loss)
        row = bench_step(device, args.batch, args.size, amp, channels_last, compile_model == "on",
                         args.iters, args.warmup, args.cls_loss)
        row.update(asked_amp=asked_amp, asked_channels_last=asked_layout)
        dtype = autocast_dtype(amp, device)
        if row["precision"] not in limits:
            # emulated bf16 matmuls ran at ~0.3 GFLOP/s on an AVX2-only CPU: 12 of 2048^3 would take over an hour
            emulated = dtype is torch.bfloat16 and not native_bf16(device)
            limits[row["precision"]] = gemm_rate(device, dtype, 512 if emulated else None)
        row["gemm_gflops"] = limits[row["precision"]]
        print(f"step  {row['device']} batch {args.batch} size {args.size} amp={asked_amp} ({row['precision']}) "
              f"channels_last={asked_layout} ({'on' if channels_last else 'off'}) compile={compile_model}{note}: "
              f"{row['images_per_s']:.1f} images/s, "
              f"{row['gflop_per_image']:.2f} GFLOP/image = {row['gflops']:.0f} GFLOP/s, "
              f"{100 * row['gflops'] / row['gemm_gflops']:.0f}% of this machine's {row['precision']} GEMM "
              f"({row['gemm_gflops']:.0f} GFLOP/s) (median {row['median_s'] * 1e3:.0f} ms, "
              f"peak {row['peak_memory_mb']:.0f} MB)", flush=True)
        rows.append(row)
    return rows


def run_gemm(args) -> list[dict]:
    device = torch.device(args.device)
    rows = []
    for amp in args.amp:
        dtype = autocast_dtype(amp, device)
        rate = gemm_rate(device, dtype, args.n)
        n = args.n or GEMM_SIZE.get(device.type, 2048)
        rows.append({"part": "gemm", "device": str(device), "precision": precision_name(dtype), "n": n,
                     "gflops": rate})
        print(f"gemm  {device} {precision_name(dtype)} {n}x{n}: {rate:.0f} GFLOP/s", flush=True)
    return rows


def profile_step(device, batch: int, size: int, amp: str, channels_last: bool, steps: int = 5,
                 top: int = 15) -> str:
    """A ``torch.profiler`` table of the step's ``top`` operators by self time (CUDA time on a GPU)."""
    from torch.profiler import ProfilerActivity, profile
    step, _ = make_step(device, batch, size, amp, channels_last, compile_model=False)
    for _ in range(2):
        step()
    sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    tic = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        sync(device)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    header = (f"profile of {steps} steps, batch {batch}, {size} px, amp={amp}, channels_last={channels_last} "
              f"({time.perf_counter() - tic:.2f} s profiled)")
    return header + "\n" + prof.key_averages().table(sort_by=sort, row_limit=top)


def run_profile(args) -> list[dict]:
    table = profile_step(torch.device(args.device), args.batch, args.size, args.amp[0],
                         args.channels_last[0] == "on", args.iters, args.top)
    print(table, flush=True)
    return [{"part": "profile", "table": table}]
