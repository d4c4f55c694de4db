"""What timings share (the benchmarks, the autotune, the time budget): synchronisation, repeated timing, peak
memory, a synthetic batch, and the line that says where they ran."""
import resource
import time

import torch

from yolo.hardware import describe_device, describe_machine


def machine(device: torch.device | None = None) -> str:
    """One line: the machine, and the device the benchmark ran on."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return f"{describe_machine()}; device {describe_device(device)}"


def peak_memory_mb(device: torch.device) -> float:
    """Peak CUDA memory allocated, or the process's peak resident set on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_iterations(fn, device, iters: int, warmup: int) -> list[float]:
    """Seconds of each of ``iters`` calls of ``fn`` after ``warmup`` untimed calls (synchronised on CUDA)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(iters):
        tic = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - tic)
    return times


def synthetic_batch(batch: int, size: int, num_classes: int, device, boxes_per_image: int = 8, seed: int = 0):
    """uint8 images and padded boxes/labels shaped like a collated batch, already on ``device``."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=g)
    centres = torch.rand(batch, boxes_per_image, 2, generator=g) * size
    sides = (0.05 + 0.6 * torch.rand(batch, boxes_per_image, 2, generator=g)) * size
    boxes = torch.cat([centres - sides / 2, centres + sides / 2], -1).clamp(0, size)
    labels = torch.randint(0, num_classes, (batch, boxes_per_image), generator=g)
    labels[:, boxes_per_image // 2:] = -1  # half padding, like a real batch
    return images.to(device), boxes.to(device), labels.to(device)
