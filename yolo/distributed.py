"""torchrun / DistributedDataParallel plumbing: one process per device, rank 0 logs, evaluates and saves."""
import os
import socket

import torch
import torch.distributed as dist

from yolo.errors import ConfigError


def init_distributed(device: torch.device) -> tuple[int, int]:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); returns (rank, world_size).

    NCCL on CUDA devices, gloo on the CPU (which is how the 2-process test runs).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), world_size


def local_device(name: str) -> torch.device:
    """The device of this process: ``auto`` picks CUDA or the CPU; ``cuda`` without an index is GPU LOCAL_RANK
    under torchrun, or the one GPU this process sees when the scheduler gives each task its own
    (``CUDA_VISIBLE_DEVICES`` of one GPU per SLURM task: LOCAL_RANK 3 is then ``cuda:0``)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
        if device.index is None:
            device = torch.device("cuda", _visible_gpu(int(os.environ.get("LOCAL_RANK", "0"))))
        torch.cuda.set_device(device)
    return device


def _visible_gpu(local_rank: int) -> int:
    """The index of this rank's GPU among those it sees."""
    count = torch.cuda.device_count()
    if local_rank < count:
        return local_rank
    if count == 1:
        return 0
    raise ConfigError(f"LOCAL_RANK {local_rank} but this process sees {count} GPUs (CUDA_VISIBLE_DEVICES="
                      f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}): give each task one GPU or all of the "
                      f"node's")


def local_world_size() -> int:
    """Processes of this job on this host (torchrun's and ``yolo.cluster``'s LOCAL_WORLD_SIZE; 1 alone)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if dist.is_initialized() else 1


def is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def gather_objects(obj) -> list:
    """Every rank's ``obj`` on every rank (a one-element list without a process group)."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_to_main(obj) -> list | None:
    """Every rank's ``obj`` on rank 0 (None on the others; a one-element list without a process group)."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_buffers(module: torch.nn.Module):
    """Rank 0's buffers (batch-norm running statistics) in every rank's ``module``. DDP keeps the parameters
    equal, but each rank updates its own running statistics: sharded evaluation must use rank 0's, the ones its
    checkpoint holds."""
    if dist.is_initialized():
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def ranks_sharing_cores() -> int:
    """How many processes of this job share this process's CPU cores: the ranks on this host whose CPU affinity
    overlaps this one's (all local ranks under torchrun; one where SLURM binds each task to its own cores)."""
    if not dist.is_initialized():
        return 1
    mine = (socket.gethostname(), sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [])
    everyone = gather_objects(mine)
    return sum(host == mine[0] and (not cores or bool(set(cores) & set(mine[1]))) for host, cores in everyone)


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier():
    if dist.is_initialized():
        dist.barrier()


def cleanup():
    if dist.is_initialized():
        dist.destroy_process_group()
