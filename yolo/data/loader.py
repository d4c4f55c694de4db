"""Batching: collate, a resumable/distributed epoch sampler with per-sample augmentation seeds, DataLoader.

Determinism: the sampler yields ``(index, aug_seed)`` keys and ``DetectionDataset`` seeds the augmentation of
that sample with ``aug_seed``, a hash of ``(seed, epoch, index)``. A batch is therefore the same whatever
the number of workers, with or without persistent workers, and after resuming mid-epoch with ``skip``.

Benchmark (images/s of the training pipeline, per worker)::

    python -m yolo.bench data --data-root ../shared/voc-sample \
        --data 2007:trainval+2007:test+2012:trainval --size 416 --workers 0 1 2
"""
import functools
import itertools
import logging
import math
import multiprocessing
import os
import queue
import random
import shutil
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader

from yolo.data.images import decode_image

logger = logging.getLogger(__name__)

META_KEYS = ("image_id", "index", "readable", "orig_size", "scale", "pad")


def collate(batch):
    """List of ``(image, target)`` -> ``(images, targets)``.

    ``images``: uint8 (N, 3, S, S) in channels-last memory (strides of (N, S, S, 3)): the augmentation produces
    HWC pixels, the dataset returns a CHW view of them, and stacking those views as HWC is the only copy a batch
    takes on its way to a channels_last model (no CHW transpose, no NCHW -> NHWC conversion on the device).
    In a worker process the stack goes straight into shared memory, so sending the batch copies nothing more.
    ``targets``: ``boxes_xyxy`` float32 (N, Mmax, 4) zero-padded, ``labels`` int64 (N, Mmax) padded with -1,
    ``meta``: list of N dicts with ``image_id``, ``index``, ``readable``, ``orig_size``, ``scale``, ``pad``. Mmax is
    the largest object count rounded up to a multiple of 8 (at least 8), so that a compiled model sees few distinct
    shapes.
    """
    hwc = [image.permute(1, 2, 0).numpy() for image, _ in batch]
    images_nhwc = torch.empty((len(hwc), *hwc[0].shape), dtype=torch.uint8)
    if torch.utils.data.get_worker_info() is not None:
        images_nhwc.share_memory_()
    np.stack(hwc, out=images_nhwc.numpy())      # numpy: no intra-op thread pool in a prefetch thread
    counts = [len(target["labels"]) for _, target in batch]
    max_objects = max(8, 8 * math.ceil(max(counts, default=0) / 8))
    boxes = torch.zeros(len(batch), max_objects, 4, dtype=torch.float32)
    labels = torch.full((len(batch), max_objects), -1, dtype=torch.int64)
    for i, (_, target) in enumerate(batch):
        boxes[i, :counts[i]] = target["boxes_xyxy"]
        labels[i, :counts[i]] = target["labels"]
    meta = [{key: target[key] for key in META_KEYS} for _, target in batch]
    return images_nhwc.permute(0, 3, 1, 2), {"boxes_xyxy": boxes, "labels": labels, "meta": meta}


def aug_seeds(seed: int, epoch: int, indices: np.ndarray) -> np.ndarray:
    """(N,) int64 augmentation seeds, a hash (splitmix64 finaliser) of ``(seed, epoch, index)``."""
    with np.errstate(over="ignore"):
        x = (np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
             + np.uint64(epoch) * np.uint64(0xBF58476D1CE4E5B9)
             + np.asarray(indices, dtype=np.uint64) * np.uint64(0x94D049BB133111EB))
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return (x >> np.uint64(1)).astype(np.int64)    # 63 bits: a valid non-negative seed everywhere


class EpochSampler(torch.utils.data.Sampler):
    """Yields ``(index, aug_seed)``; the order is a function of ``(seed, epoch)`` only.

    Distributed: each of ``world_size`` ranks gets a disjoint, equal-size shard (``rank::world_size`` of
    the epoch order), padded by repeating the start of the order (or truncated with ``drop_last``),
    like ``torch.utils.data.DistributedSampler``. ``set_epoch(epoch)`` starts an epoch; ``skip(n)``
    drops the first ``n`` samples of this rank's shard for the current epoch (resume mid-epoch).
    """

    def __init__(self, num_samples: int, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1,
                 drop_last: bool = False):
        if num_samples < 1 or seed < 0 or not 0 <= rank < world_size:
            raise ValueError(f"need num_samples >= 1, seed >= 0 and 0 <= rank < world_size; "
                             f"got {num_samples}, {seed}, {rank}, {world_size}")
        self.num_samples, self.shuffle, self.seed = num_samples, shuffle, seed
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.epoch, self.skipped = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.skipped = epoch, 0

    def skip(self, num_samples: int) -> None:
        self.skipped = num_samples

    def shard_size(self) -> int:
        """Samples per rank per epoch, before ``skip``."""
        if self.drop_last:
            return self.num_samples // self.world_size
        return math.ceil(self.num_samples / self.world_size)

    def __len__(self) -> int:
        return max(self.shard_size() - self.skipped, 0)

    def indices(self) -> np.ndarray:
        """This rank's indices for the current epoch, after ``skip``."""
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_samples)
        else:
            order = np.arange(self.num_samples)
        total = self.shard_size() * self.world_size
        order = np.resize(order, total)    # repeats the start when padding, truncates with drop_last
        return order[self.rank::self.world_size][self.skipped:]

    def __iter__(self):
        indices = self.indices()
        seeds = aug_seeds(self.seed, self.epoch, indices)
        return iter(zip(indices.tolist(), seeds.tolist()))


def _worker_init(worker_id: int) -> None:
    # One process per core: OpenCV's own thread pool would only oversubscribe the CPU.
    cv2.setNumThreads(0)
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


class ThreadLoader:
    """A DataLoader without worker processes whose batches are made ``depth`` ahead by one background thread.

    For the CPU, where the step's compute threads already use every core: a worker process would compete with
    them for the whole time it runs and send every batch through shared memory, while the small-image pipeline
    needs ~1 ms of one core an image (``python -m yolo.bench data``). The thread overlaps that work with the step
    (decoding, OpenCV and torch release the GIL), and the batches are the same as with any number of workers.
    Exposes what the training loop uses of a DataLoader: ``sampler``, ``batch_size``, ``dataset``, ``len``.
    """

    def __init__(self, loader: DataLoader, depth: int = 2):
        self.loader, self.depth = loader, depth
        self.sampler, self.batch_size, self.dataset = loader.sampler, loader.batch_size, loader.dataset
        cv2.setNumThreads(0)   # OpenCV's own pool would only oversubscribe the cores the step uses

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        batches, stop = queue.Queue(maxsize=self.depth), threading.Event()

        def produce():
            try:
                for batch in self.loader:
                    if not _put(batches, (batch, None), stop):
                        return
                _put(batches, (None, None), stop)
            except Exception as exc:  # the consumer re-raises it, with its traceback
                _put(batches, (None, exc), stop)

        thread = threading.Thread(target=produce, name="yolo-prefetch", daemon=True)
        thread.start()
        try:
            while True:
                batch, error = batches.get()
                if error is not None:
                    raise error
                if batch is None:
                    return
                yield batch
        finally:   # the consumer stopped early (a stop request): let the thread finish its batch and end
            stop.set()
            thread.join()


def _put(batches: queue.Queue, item, stop: threading.Event) -> bool:
    """Put ``item`` when there is room, unless the consumer has gone (``stop``); False if it has."""
    while not stop.is_set():
        try:
            batches.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def build_loader(dataset, batch_size: int, *, train: bool, num_workers: int, seed: int, rank: int = 0,
                 world_size: int = 1, pin_memory=None, prefetch_factor: int = 4, processes_on_host: int = 1):
    """A loader over ``dataset`` with an :class:`EpochSampler` and :func:`collate`.

    ``num_workers`` > 0: a DataLoader with that many persistent worker processes; 0: a :class:`ThreadLoader`
    (the work in this process, one prefetching thread). Training shuffles and drops the last incomplete batch;
    evaluation keeps the order and every sample (with ``world_size`` > 1 the shards are padded by repetition:
    deduplicate results by ``meta["index"]``). ``pin_memory`` defaults to ``torch.cuda.is_available()``. The
    sampler is ``loader.sampler``: call ``loader.sampler.set_epoch(epoch)`` before each epoch (and ``skip`` to
    resume). The batches workers prefetch live in ``/dev/shm``, which ``processes_on_host`` such loaders share:
    where it is too small for them, fewer are prefetched (see :func:`fit_shared_memory`).
    """
    sampler = EpochSampler(len(dataset), shuffle=train, seed=seed, rank=rank, world_size=world_size)
    if num_workers > 0:
        batch_bytes = batch_size * _sample_bytes(dataset)
        num_workers, prefetch_factor = fit_shared_memory(batch_bytes, num_workers, prefetch_factor,
                                                         processes_on_host)
    workers = num_workers > 0
    loader = DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate, drop_last=train,
        num_workers=num_workers, persistent_workers=workers,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        prefetch_factor=prefetch_factor if workers else None,
        worker_init_fn=_worker_init if workers else None,
        generator=torch.Generator().manual_seed(seed),
    )
    return loader if workers else ThreadLoader(loader)


SHM = Path("/dev/shm")
SHM_HEADROOM = 2   # a batch being collated and one being freed next to each prefetched one


def fit_shared_memory(batch_bytes: int, num_workers: int, prefetch_factor: int, processes: int = 1,
                      shm: Path = SHM) -> tuple[int, int]:
    """``(num_workers, prefetch_factor)`` whose batches in flight fit the free space of ``shm``.

    Worker processes hand their batches over in shared memory, ``num_workers * prefetch_factor`` of them per
    loader; ``processes`` loaders (the DDP ranks of this host) share ``/dev/shm``, which a container often limits to
    64 MB, and a batch that does not fit ends the run with a Bus error. When short: fewer batches prefetched, then
    fewer workers, then none (batches made in this process, no shared memory), with a warning that says why.
    (File-system sharing would not help: it places the same bytes in the same ``/dev/shm``.)
    """
    try:
        free = shutil.disk_usage(shm).free
    except OSError:          # no /dev/shm (not Linux): nothing to check
        return num_workers, prefetch_factor
    per_batch = batch_bytes * SHM_HEADROOM * processes
    fitted_workers, fitted_prefetch = num_workers, prefetch_factor
    while fitted_workers > 0 and fitted_workers * fitted_prefetch * per_batch > free:
        if fitted_prefetch > 1:
            fitted_prefetch -= 1
        else:
            fitted_workers -= 1
    if (fitted_workers, fitted_prefetch) != (num_workers, prefetch_factor):
        logger.warning("%s has %.0f MB free, too little for %d loader workers x %d prefetched batches of %.1f MB "
                       "in each of %d processes: using %d workers x %d batches%s (a larger /dev/shm, e.g. docker "
                       "--shm-size 8g, restores them)", shm, free / 2**20, num_workers, prefetch_factor,
                       batch_bytes / 2**20, processes, fitted_workers, fitted_prefetch,
                       "" if fitted_workers else ", i.e. batches made in this process")
    return fitted_workers, fitted_prefetch if fitted_workers else prefetch_factor


def _sample_bytes(dataset) -> int:
    """Bytes of one sample's image as collated (uint8), from the dataset's first sample."""
    image, _ = dataset[(0, 0)]
    return image.numel() * image.element_size()


def resolve_workers(workers, device: torch.device, processes_sharing_cores: int = 1) -> int:
    """``data.workers``: an int as given, ``auto`` from the machine (:func:`yolo.hardware.default_workers`), the
    cores shared among ``processes_sharing_cores`` processes (the DDP ranks of this host)."""
    from yolo.hardware import default_workers
    return default_workers(device, processes_sharing_cores) if workers == "auto" else int(workers)


def measure_loader_throughput(dataset, batch_size: int, num_workers: int, num_batches: int,
                              warmup: int = 2) -> dict:
    """Images/s of ``build_loader(dataset, train=True)`` over ``num_batches`` after ``warmup`` batches.

    Cycles epochs as needed. With ``num_workers=0`` the work runs in this process with OpenCV limited to
    one thread, so ``images_per_s_per_worker`` is per core in every case. ``images_per_cpu_s`` divides by
    the CPU time the loading processes (the workers, or this process) actually got, which stays meaningful
    on a machine shared with other jobs (with workers, None where ``/proc`` is unavailable).
    """
    loader = build_loader(dataset, batch_size, train=True, num_workers=num_workers, seed=0, pin_memory=False)
    previous_threads = cv2.getNumThreads()
    if num_workers == 0:
        cv2.setNumThreads(0)
    try:
        batches = cycle_epochs(loader)
        for _ in range(warmup):
            next(batches)
        # this process's own clock is exact; /proc counts the workers' time in 10 ms ticks
        cpu_clock = (functools.partial(_cpu_seconds, [p.pid for p in multiprocessing.active_children()])
                     if num_workers else time.process_time)
        cpu_start, start = cpu_clock(), time.perf_counter()
        images = sum(len(next(batches)[0]) for _ in range(num_batches))
        seconds, cpu_end = time.perf_counter() - start, cpu_clock()
    finally:
        cv2.setNumThreads(previous_threads)
        del loader    # shuts the persistent workers down
    per_s = images / seconds
    cpu_seconds = None if cpu_start is None or cpu_end is None else cpu_end - cpu_start
    return {"num_workers": num_workers, "batch_size": batch_size, "images": images, "seconds": seconds,
            "images_per_s": per_s, "images_per_s_per_worker": per_s / max(num_workers, 1),
            "cpu_seconds": cpu_seconds, "images_per_cpu_s": images / cpu_seconds if cpu_seconds else None}


def measure_sample_costs(dataset, num_images: int = 200, passes: int = 3) -> dict:
    """Where a worker's time goes: CPU milliseconds per image of decoding, of the augmentation alone (on
    already decoded images) and of a whole ``dataset[(index, aug_seed)]``, in this process with OpenCV on
    one thread; best of ``passes`` over the first ``num_images`` records of a DetectionDataset."""
    records = dataset.records[:num_images]
    decoded = [decode_image(r.image_path) for r in records]

    def decode(i):
        decode_image(records[i].image_path)

    def augment(i):
        dataset.transform(decoded[i], records[i].boxes_xyxy, records[i].labels, seed=i)

    def sample(i):
        dataset[(i, i)]

    previous_threads = cv2.getNumThreads()
    cv2.setNumThreads(0)
    try:
        costs = {}
        for name, step in (("decode_ms", decode), ("augment_ms", augment), ("sample_ms", sample)):
            costs[name] = min(_cpu_ms_per_call(step, len(records)) for _ in range(passes))
    finally:
        cv2.setNumThreads(previous_threads)
    return costs


def _cpu_ms_per_call(step, count: int) -> float:
    start = time.process_time()
    for i in range(count):
        step(i)
    return 1e3 * (time.process_time() - start) / count


def _cpu_seconds(pids) -> float | None:
    """Total user + system CPU time of live processes, from Linux ``/proc``; None elsewhere."""
    total = 0.0
    try:
        for pid in pids:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")   # utime, stime
    except (OSError, ValueError, IndexError):
        return None
    return total


def cycle_epochs(loader):
    """Batches of ``loader`` forever, calling ``sampler.set_epoch`` at each pass."""
    for epoch in itertools.count():
        loader.sampler.set_epoch(epoch)
        yield from loader
