"""What the machine can do, asked of torch: native bf16, autocast dtypes, loader workers, deterministic algorithms.

Decisions follow the machine the code runs on, never a figure measured on another one: bf16 autocast is 1.7x
faster than fp32 on a CPU with AVX512_BF16 and 4x slower on one without (docs/performance.md).
"""
import contextlib
import logging
import os
import platform

import torch

logger = logging.getLogger(__name__)

# CPU features with bf16 arithmetic in hardware, as torch.cpu.get_capabilities() names them (x86 and ARM).
NATIVE_BF16_FEATURES = ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16")
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}


def cpu_capabilities() -> dict:
    """``torch.cpu.get_capabilities()`` (instruction sets, cores, caches) as a plain dict."""
    return dict(torch.cpu.get_capabilities())


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively: CUDA with bf16 support, or a CPU with AVX512_BF16 / AMX (x86)
    or BF16 / SVE-BF16 (ARM). oneDNN's ``_is_mkldnn_bf16_supported`` is not enough: it is also true on AVX512
    CPUs that only emulate bf16."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    capabilities = cpu_capabilities()
    return any(capabilities.get(feature, False) for feature in NATIVE_BF16_FEATURES)


def autocast_dtype(amp: str, device: torch.device):
    """The autocast dtype of ``train.amp`` on ``device`` (None = full precision).

    ``auto`` here is the capability rule, bf16 where the device computes it natively (see :func:`native_bf16`)
    and fp32 elsewhere: what runs where nothing was timed (a checkpoint from before ``yolo.autotune``,
    ``yolo.bench gemm / profile --amp auto``). Training decides ``auto`` by timing (``yolo.autotune``).
    ``bf16`` / ``fp16`` / ``none`` are taken as given. Losses are computed in float32 either way.
    """
    if amp == "auto":
        return torch.bfloat16 if native_bf16(device) else None
    if amp not in AMP_DTYPES:
        raise ValueError(f"unknown train.amp {amp!r}; choose one of: auto, {', '.join(AMP_DTYPES)}")
    return AMP_DTYPES[amp]


def precision_name(dtype) -> str:
    """``bf16``, ``fp16`` or ``fp32``: what a run computed in, as logged and stored with it."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}[dtype]


def log_precision(amp: str, device: torch.device, dtype) -> str:
    """Log (once, at the start of a run) what ``train.amp`` resolved to and why; returns the precision name."""
    name = precision_name(dtype)
    native = native_bf16(device)
    if amp == "auto":
        logger.info("train.amp auto on %s: %s (%s native bf16)", describe_device(device),
                    "bf16 autocast" if dtype is not None else "fp32", "has" if native else "no")
    elif dtype is torch.bfloat16 and not native:
        logger.warning("train.amp bf16 on %s, which has no native bf16: it is emulated and slow (amp auto would "
                       "use fp32 here)", describe_device(device))
    return name


def describe_device(device: torch.device) -> str:
    """``cuda:0 (NVIDIA H100 80GB HBM3)`` or ``cpu (AMD EPYC, 2 threads, avx512_bf16)``."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    capabilities = cpu_capabilities()
    features = [f for f in NATIVE_BF16_FEATURES if capabilities.get(f)] or ["no native bf16"]
    name = capabilities.get("cpu_name") or platform.processor() or platform.machine()
    return f"cpu ({name}, {torch.get_num_threads()} threads, {', '.join(features)})"


def describe_machine() -> str:
    """One line: OS, CPU cores, Python, torch, and the CUDA devices if any."""
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return (f"{platform.platform()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, "
            f"torch {torch.__version__}" + (f", {len(gpus)} x {gpus[0]}" if gpus else ", no GPU"))


def cores_per_run(runs_at_once: int = 1) -> int:
    """This process's usable cores (its CPU affinity, which SLURM and taskset narrow) shared among
    ``runs_at_once`` runs training side by side (``yolo.ablate --jobs``), at least 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // max(1, runs_at_once))


def default_workers(device: torch.device, runs_at_once: int = 1) -> int:
    """Loader worker processes for ``data.workers: auto``.

    On the CPU the compute threads already use every core, and the small-image pipeline costs ~1 ms an image
    (``python -m yolo.bench data``): a worker process would only take cores from the step, so 0 workers and a
    prefetching thread. On a GPU the step runs on the device: one worker per core, one core left to the main
    process, at most 16. ``runs_at_once`` processes sharing the cores (runs side by side, ``yolo.ablate --jobs``,
    or the DDP ranks of one host) each get their share, else 8 ranks on one 64-core host would start 128 workers
    for training and as many for evaluation.
    """
    if device.type != "cuda":
        return 0
    return max(1, min(16, cores_per_run(runs_at_once) - 1))


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool):
    """``train.deterministic``: while the block runs, torch's deterministic algorithms (a warning names any
    operation that has none), cuDNN's deterministic convolutions without autotuning, and cuBLAS's fixed workspace
    (``CUBLAS_WORKSPACE_CONFIG``, read when CUDA's first matmul creates its handle). The previous settings are
    restored afterwards (an ablation runs many fits in one process). On the CPU the step is deterministic already."""
    if not enabled:
        yield
        return
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
                torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = previous[2], previous[3]
