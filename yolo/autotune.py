"""``train.amp: auto`` and ``train.channels_last: auto``: decided by timing a few training steps of each candidate.

A list of capability flags cannot tell which precision is faster on the machine at hand: two 2-core VMs that both
report ``avx512_bf16`` ran the shapes step 1.76x faster in bf16 (AMD EPYC) and 0.68x (Intel Xeon without AMX).
A measurement can. The first run with a given device (CPU model, flags and threads, or GPU name), torch version,
model config, image size and batch size times ``TIMED_STEPS`` training steps of every candidate (fp32 and bf16
autocast, channels_last on and off; in turns) on a synthetic batch, picks the fastest, and caches the decision with the
figures in ``$XDG_CACHE_HOME/yolo/autotune.json`` (``~/.cache/yolo``). Later runs read the cache.

A pinned value (``--amp none``, ``--channels-last false``) is taken as given and only the other setting is timed;
with both pinned nothing is. bf16 is a candidate only where the device computes it natively
(``yolo.hardware.native_bf16``): emulated bf16 is 4-14x slower than fp32 and timing it would take minutes.
``python -m yolo.bench autotune`` shows the cache and refreshes an entry.
"""
import dataclasses
import datetime
import functools
import hashlib
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from yolo import hardware
from yolo.hardware import AMP_DTYPES, autocast_dtype, native_bf16, precision_name
from yolo.timing import sync, synthetic_batch

logger = logging.getLogger(__name__)

CACHE_VERSION = 1
WARMUP_STEPS = 2     # untimed: memory allocation and oneDNN / cuDNN kernel selection happen here
TIMED_STEPS = 5      # the median of these is a candidate's step time


@dataclasses.dataclass
class Choice:
    """What ``train.amp`` and ``train.channels_last`` resolved to, how (``pinned``, ``measured``, ``cache``,
    ``checkpoint``), the figures it was decided on (``[{"amp", "channels_last", "step_s", "images_per_s"}]``) and
    the digest of what it was decided for (``cache_key``)."""
    amp: str
    channels_last: bool
    source: str
    figures: list = dataclasses.field(default_factory=list)
    key: str = ""

    @property
    def amp_dtype(self):
        return AMP_DTYPES[self.amp]

    def record(self) -> dict:
        """The plain dict stored in checkpoints and ``results.json``."""
        return {"amp": self.amp, "precision": precision_name(self.amp_dtype), "channels_last": self.channels_last,
                "source": self.source, "figures": self.figures, "key": self.key}


def candidates(tcfg, device: torch.device) -> list[tuple[str, bool]]:
    """``[(amp, channels_last)]`` to time: a pinned value alone, ``auto`` every option the device runs natively."""
    if tcfg.amp == "auto":
        amps = ["none", "bf16"] if native_bf16(device) else ["none"]
    else:
        autocast_dtype(tcfg.amp, device)   # an unknown value is refused here, naming the choices
        amps = [tcfg.amp]
    layouts = [False, True] if tcfg.channels_last == "auto" else [bool(tcfg.channels_last)]
    return [(amp, layout) for amp in amps for layout in layouts]


def device_identity(device: torch.device) -> dict:
    """What makes one device time differently from another: the GPU's name and compute capability, or the CPU's
    model, instruction-set flags and the threads this process computes with."""
    if device.type == "cuda":
        return {"type": "cuda", "name": torch.cuda.get_device_name(device),
                "capability": list(torch.cuda.get_device_capability(device)), "cuda": torch.version.cuda}
    capabilities = hardware.cpu_capabilities()
    flags = sorted(k for k, v in capabilities.items() if v is True)
    return {"type": device.type, "name": capabilities.get("cpu_name") or platform.processor() or platform.machine(),
            "flags": flags, "threads": torch.get_num_threads()}


def cache_key(cfg, device: torch.device, num_classes: int, batch_size: int, options: list) -> dict:
    """The readable key of a decision: device, torch version, model config (its weights' origin aside) and number
    of classes, image size, batch size per process, and the candidates (pinned values leave fewer)."""
    model = {k: v for k, v in dataclasses.asdict(cfg.model).items() if k != "pretrained"}
    return {"device": device_identity(device), "torch": torch.__version__, "model": model,
            "num_classes": num_classes, "image_size": cfg.data.img_size, "batch_size": batch_size,
            "candidates": [list(c) for c in options]}


def cache_path() -> Path:
    """``$XDG_CACHE_HOME/yolo/autotune.json``, or ``~/.cache/yolo/autotune.json``."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "yolo" / "autotune.json"


def read_cache() -> dict:
    """``{digest: entry}``; an unreadable or foreign file is ignored with a warning (a cache never stops a run)."""
    path = cache_path()
    if not path.is_file():
        return {}
    try:
        content = json.loads(path.read_text())
        if content.get("version") == CACHE_VERSION and isinstance(content.get("entries"), dict):
            return content["entries"]
    except (OSError, ValueError, AttributeError) as exc:
        logger.warning("ignoring the unreadable autotune cache %s (%s); it will be rewritten", path, exc)
        return {}
    logger.warning("ignoring the autotune cache %s: not version %d; it will be rewritten", path, CACHE_VERSION)
    return {}


def write_cache_entry(digest: str, entry: dict):
    """Add or replace one entry; written to a temporary file then renamed (runs side by side may write too)."""
    path = cache_path()
    entries = {**read_cache(), digest: entry}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".autotune.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump({"version": CACHE_VERSION, "entries": entries}, f, indent=1)
        os.chmod(tmp, 0o644)   # mkstemp creates 0600
        os.replace(tmp, path)
    except OSError as exc:
        logger.warning("could not write the autotune cache %s (%s): the next run will time the step again",
                       path, exc)


def digest_of(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def choose(cfg, device: torch.device, num_classes: int, batch_size: int, measure=None, refresh: bool = False,
           resumed: dict | None = None) -> Choice:
    """Resolve ``cfg.train.amp`` / ``channels_last`` for training ``batch_size`` images per step on ``device``.

    ``measure(options) -> [seconds per step]`` times the candidates ``[(amp, channels_last)]`` (default
    :func:`time_candidates`); ``refresh`` times again even when the cache has the decision. ``resumed``: the
    record (:meth:`Choice.record`) of the checkpoint a run resumes: decided for the same device, model and batch,
    it is kept whatever the cache says now, so that the resumed run computes what the interrupted one did.
    """
    options = candidates(cfg.train, device)
    if len(options) == 1:
        return Choice(*options[0], source="pinned")
    key = cache_key(cfg, device, num_classes, batch_size, options)
    digest = digest_of(key)
    if resumed and resumed.get("key") == digest:
        return Choice(resumed["amp"], resumed["channels_last"], "checkpoint", resumed["figures"], digest)
    entry = None if refresh else read_cache().get(digest)
    if entry is not None:
        return Choice(entry["choice"]["amp"], entry["choice"]["channels_last"], "cache", entry["figures"], digest)
    measure = measure or functools.partial(time_candidates, cfg, device, num_classes, batch_size)
    figures = [{"amp": amp, "channels_last": layout, "step_s": step_s, "images_per_s": batch_size / step_s}
               for (amp, layout), step_s in zip(options, measure(options))]
    best = min(figures, key=lambda f: f["step_s"])
    write_cache_entry(digest, {"key": key, "choice": {"amp": best["amp"], "channels_last": best["channels_last"]},
                               "figures": figures, "steps": TIMED_STEPS,
                               "measured": datetime.datetime.now().isoformat(timespec="seconds")})
    return Choice(best["amp"], best["channels_last"], "measured", figures, digest)


def time_candidates(cfg, device: torch.device, num_classes: int, batch_size: int, options: list,
                    warmup: int = WARMUP_STEPS, steps: int = TIMED_STEPS) -> list[float]:
    """Median seconds of a training step (forward, targets, losses, backward, optimiser) of ``cfg``'s model and
    optimiser on a synthetic batch, for each ``(amp, channels_last)`` of ``options``: ``warmup`` untimed steps
    each, then ``steps`` rounds that time one step of every candidate in turn (a machine whose load changes
    meanwhile slows them all alike). The generators of the run are left as they were (the models are initialised
    under ``torch.random.fork_rng``). Eager: ``train.compile`` is not timed."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        runs = [_candidate_step(cfg, device, num_classes, batch_size, amp, layout) for amp, layout in options]
        for run in runs:
            for _ in range(warmup):
                run()
        times = [[] for _ in runs]
        for _ in range(steps):
            for run, seconds in zip(runs, times):
                sync(device)
                tic = time.perf_counter()
                run()
                sync(device)
                seconds.append(time.perf_counter() - tic)
    return [statistics.median(seconds) for seconds in times]


def _candidate_step(cfg, device, num_classes: int, batch_size: int, amp: str, channels_last: bool):
    """One training step of a fresh model of ``cfg`` in ``amp`` / ``channels_last``, as a function."""
    from yolo.engine import build_optimizer, train_step
    from yolo.losses import init_loss_state
    from yolo.model import build_model
    model = build_model(dataclasses.replace(cfg.model, pretrained="none"), num_classes).to(device)
    images, boxes, labels = synthetic_batch(batch_size, cfg.data.img_size, num_classes, device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg.train)
    amp_dtype = AMP_DTYPES[amp]
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    loss_state = init_loss_state(cfg.loss.cls_loss, num_classes, device)   # a stateful class loss needs its own
    return lambda: train_step(model, images, boxes, labels, optimizer, cfg, cls_loss=cfg.loss.cls_loss,
                              scaler=scaler, amp_dtype=amp_dtype, loss_state=loss_state)


def describe(choice: Choice) -> str:
    """``bf16 autocast, channels_last on (measured: fp32/off 41.0, ... images/s)``: the log line's substance."""
    what = (f"{'fp32' if choice.amp_dtype is None else precision_name(choice.amp_dtype) + ' autocast'}, "
            f"channels_last {'on' if choice.channels_last else 'off'}")
    if not choice.figures:
        return f"{what} ({choice.source})"
    figures = ", ".join(f"{precision_name(AMP_DTYPES[f['amp']])}/{'on' if f['channels_last'] else 'off'} "
                        f"{f['images_per_s']:.1f}" for f in choice.figures)
    return f"{what} ({choice.source}: {figures} images/s a training step)"


def log_choice(choice: Choice, device: torch.device):
    """Log at the start of a run what ``auto`` resolved to and the figures; a no-op when both were pinned."""
    if choice.source != "pinned":
        logger.info("train.amp / train.channels_last auto on %s: %s; cache %s", device, describe(choice),
                    cache_path())


def inference_settings(ckpt: dict, cfg, device: torch.device) -> tuple:
    """``(amp_dtype, channels_last)`` to run a trained checkpoint's model on ``device`` without timing anything:
    a pinned value as given; ``auto`` what the run trained with (its ``autotune`` record), bf16 only where the
    device computes it natively; a checkpoint without the record: the capability rule and channels_last on."""
    trained = ckpt.get("autotune") or {}
    if cfg.train.amp != "auto":
        amp_dtype = autocast_dtype(cfg.train.amp, device)
    elif trained.get("amp") in AMP_DTYPES:
        emulated = trained["amp"] == "bf16" and not native_bf16(device)
        amp_dtype = None if emulated else AMP_DTYPES[trained["amp"]]
    else:
        amp_dtype = autocast_dtype("auto", device)
    if cfg.train.channels_last != "auto":
        return amp_dtype, bool(cfg.train.channels_last)
    return amp_dtype, bool(trained.get("channels_last", True))
