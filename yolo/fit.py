"""A whole training run: data, model, optimiser, the epoch loop, evaluation, checkpoints and TensorBoard.

``fit(cfg)`` is what ``train.py`` calls and what the ablation runner calls for every variant and seed.
"""
import json
import logging
import logging.handlers
import math
import time
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from yolo import autotune, budget, distributed
from yolo.budget import planned_schedule
from yolo.checkpoint import (CheckpointError, atomic_save, load_checkpoint, rng_state, seed_everything,
                             set_rng_state)
from yolo.config import check_resume, from_dict, parse_duration, save_yaml
from yolo.errors import ConfigError
from yolo.data.loader import build_loader, resolve_workers
from yolo.data.shapes import ensure_shapes
from yolo.data.transforms import SSD_MIN_IOUS, eval_transform, train_transform
from yolo.data.dataset import DetectionDataset
from yolo.data.layout import load_role, read_categories, require_complete
from yolo.data.record import DatasetError
from yolo.engine import ModelEMA, build_optimizer, evaluate, merge_epoch_results, sigmoid_scoring, train_one_epoch
from yolo.hardware import deterministic_algorithms, log_precision, precision_name
from yolo.losses import check_user_losses, init_loss_state, load_loss_state
from yolo.model import build_model
from yolo.stop import StopRequest, StopVote

logger = logging.getLogger(__name__)

HISTORY_KEYS = ("voc07_map50", "voc_map50", "coco_ap", "coco_ap50")   # the val curve kept with a run

NO_DATA_HELP = """no dataset at {root}.
  * PASCAL VOC: download it (about 2.8 GB):   python data/download_voc.py --root data/
    (then data/VOCdevkit/VOC2007 and VOC2012 exist)
  * Your own data: --data-root a VOC devkit, a COCO JSON or a YOLO data.yaml (README, "Your own data")
  * Or train on the embedded synthetic dataset, generated on first use (no download):
        python train.py --config configs/shapes.yaml"""


# ---------------------------------------------------------------------------------------------------------------
# set-up


def prepare_data(cfg) -> tuple[Path, tuple]:
    """The dataset root and class names of ``cfg.data`` (any layout, see ``yolo.data.layout``); the synthetic set is
    generated on first use."""
    root = Path(cfg.data.root)
    if cfg.data.dataset == "shapes":
        d = cfg.data
        if distributed.is_main():
            ensure_shapes(root.parent, seed=d.shapes_seed, num_train=d.shapes_train, num_val=d.shapes_val,
                          num_test=d.shapes_test, image_size=d.shapes_size)
        distributed.barrier()
    elif not root.exists():
        raise DatasetError(NO_DATA_HELP.format(root=root))
    return root, read_categories(cfg).names


def build_loaders(cfg, root, classes, rank: int, world_size: int, device: torch.device):
    """(train loader, val loader); the batch size is global, split over the processes. A split with fewer images
    than a batch (which would train no step) is refused with ``ConfigError``."""
    if cfg.train.batch_size % world_size:
        raise ConfigError(f"train.batch_size {cfg.train.batch_size} is not divisible by {world_size} processes "
                          f"(use a multiple of {world_size})")
    per_process = cfg.train.batch_size // world_size
    d = cfg.data
    augment = train_transform(d.img_size, zoom_out_max=d.zoom_out_max, zoom_out_p=d.zoom_out_p,
                              min_ious=SSD_MIN_IOUS if d.min_iou_crop else (),
                              photometric_p=d.photometric_p, hflip_p=d.hflip_p)
    train_set = DetectionDataset(training_records(cfg), augment, keep_difficult=d.train_difficult)
    if len(train_set) // world_size < per_process:
        raise ConfigError(f"data.train {d.train} has {len(train_set)} images, fewer than one batch of "
                          f"train.batch_size {cfg.train.batch_size}: use --batch-size "
                          f"{max(world_size, len(train_set) // world_size * world_size)} or less")
    val_set = evaluation_dataset(cfg, load_role(cfg, "val"))
    sharing = distributed.ranks_sharing_cores()
    common = dict(num_workers=resolve_workers(cfg.data.workers, device, sharing), seed=cfg.train.seed, rank=rank,
                  world_size=world_size, processes_on_host=distributed.local_world_size())
    return (build_loader(train_set, per_process, train=True, **common),
            build_loader(val_set, per_process, train=False, **common))


def training_records(cfg) -> list:
    """The records of ``data.train``, without images that have no annotation when ``data.drop_background``."""
    records = load_role(cfg, "train").records
    if cfg.data.drop_background:
        kept = [r for r in records if len(r.labels)]
        logger.info("data.drop_background: %d of %d training images have no annotation and are left out",
                    len(records) - len(kept), len(records))
        if not kept:
            raise DatasetError(f"every training image of {cfg.data.root} is background: nothing to train on")
        records = kept
    return records


def evaluation_dataset(cfg, split) -> DetectionDataset:
    """The dataset scoring a split: refused when it lost images, unless ``eval.skip_unreadable``
    (``yolo.data.layout.require_complete``); unreadable images are reported, never substituted."""
    require_complete(split, cfg.eval.skip_unreadable)
    return DetectionDataset.of_split(split, eval_transform(cfg.data.img_size, cfg.data.eval_resize),
                                     keep_difficult=True, substitute=False)


def lr_factor(step: int, steps_per_epoch: int, tcfg) -> float:
    """Learning-rate multiplier at a global step: linear warm-up over ``warmup_epochs``, then step decay by
    ``lr_gamma`` at each epoch of ``lr_steps`` (or a cosine to zero over ``epochs``)."""
    warmup_steps = tcfg.warmup_epochs * steps_per_epoch
    if step < warmup_steps:
        return 0.001 + 0.999 * step / warmup_steps
    epoch = step / steps_per_epoch
    if tcfg.scheduler == "cosine":
        progress = (step - warmup_steps) / max(1.0, tcfg.epochs * steps_per_epoch - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return tcfg.lr_gamma ** sum(epoch >= milestone for milestone in tcfg.lr_steps)


class RunLog:
    """The package's log of one run: on the console at once (when nothing else prints it), and in the run folder's
    ``train.log`` from the very first line, though that folder is only created once the set-up has passed (the
    lines until then are held in memory)."""

    def __init__(self):
        self._logger = logging.getLogger("yolo")
        self._logger.setLevel(logging.INFO)
        if not logging.getLogger().handlers:
            logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        self._held = logging.handlers.MemoryHandler(capacity=100_000, flushLevel=logging.CRITICAL + 1)
        self._file = None
        self._logger.addHandler(self._held)

    def open(self, run_dir: Path):
        """Start ``run_dir/train.log`` with the lines held so far; later lines go straight to it."""
        self._file = logging.FileHandler(run_dir / "train.log")
        self._file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self._held.setTarget(self._file)
        self._held.flush()
        self._logger.removeHandler(self._held)
        self._logger.addHandler(self._file)

    def close(self):
        """Remove the handlers (an ablation runs many fits in one process); unopened, the held lines are dropped."""
        for handler in (self._held, self._file):
            if handler is not None:
                self._logger.removeHandler(handler)
                handler.close()


# ---------------------------------------------------------------------------------------------------------------
# the run


def fit(cfg, resume: str | None = None, progress: bool = True, stop: StopRequest | None = None) -> dict:
    """Train ``cfg`` to the end (or resume ``resume``); returns the last evaluation's metrics.

    Writes into ``cfg.run_dir``: ``config.yaml``, ``train.log``, ``last.pt`` (every epoch), ``best.pt`` (best
    val VOC07 mAP), ``results.json`` (final metrics) and the TensorBoard events (or into ``cfg.logdir``).
    The folder is created only once the data, the model and the checkpoint to resume have been checked, so a run
    that fails to start leaves nothing behind. SIGTERM / SIGINT (to any rank) save ``last.pt`` after the current
    step and return early (no ``results.json``; ``stop.requested`` and ``stop.signum`` tell why); ``stop``
    replaces that stop request (``yolo.cluster`` passes one that also takes the scheduler's preemption signal).
    A failed checkpoint write raises ``CheckpointWriteError``, a non-finite loss (on any rank) ``NonFiniteLoss``.
    """
    started = time.perf_counter()
    device = distributed.local_device(cfg.train.device)
    rank, world_size = distributed.init_distributed(device)
    run_log = RunLog() if rank == 0 else None
    stop = StopRequest() if stop is None else stop
    stop.install()
    try:
        with deterministic_algorithms(cfg.train.deterministic):
            parts, state = _setup(cfg, resume, device, rank, world_size)
            if rank == 0:
                cfg.run_dir.mkdir(parents=True, exist_ok=True)
                run_log.open(cfg.run_dir)
                save_yaml(cfg, cfg.run_dir / "config.yaml")
            parts.update(vote=StopVote(stop, world_size, device), started=started)
            return _train(parts, state, device, world_size, progress and rank == 0)
    finally:
        stop.uninstall()
        if run_log is not None:
            run_log.close()
        distributed.cleanup()


def _setup(cfg, resume, device, rank, world_size) -> tuple[dict, dict]:
    """Data, model, optimiser and the state to start from (restored from ``resume``): ``(parts, state)``.
    Everything that can refuse a run happens here, before any file of the run is written."""
    seed_everything(cfg.train.seed + rank)
    root, classes = prepare_data(cfg)
    ckpt = _resume_checkpoint(resume, cfg, classes) if resume else None
    check_user_losses(cfg.loss, len(classes))       # imports the module a config names; checks it on random logits
    train_loader, val_loader = build_loaders(cfg, root, classes, rank, world_size, device)
    model = build_model(cfg.model, len(classes)).to(device)     # first: missing weights refuse the run at once
    choice = _choose_runtime(cfg, device, len(classes), train_loader.batch_size, ckpt)   # forks the RNG
    if choice.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg.train)
    steps_per_epoch = len(train_loader)
    parts = dict(model=model, optimizer=optimizer, cfg=cfg, classes=classes, steps_per_epoch=steps_per_epoch,
                 scaler=torch.amp.GradScaler(device.type, enabled=choice.amp_dtype == torch.float16),
                 ema=ModelEMA(model, cfg.train.ema_decay, cfg.train.ema_ramp_steps) if cfg.train.ema else None,
                 train_loader=train_loader, val_loader=val_loader, amp_dtype=choice.amp_dtype,
                 channels_last=choice.channels_last, schedule=cfg.train,
                 loss_state=init_loss_state(cfg.loss.cls_loss, len(classes), device))
    # the schedule is read at each step: a time budget's plan replaces it after the first steps
    parts["scheduler"] = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, steps_per_epoch, parts["schedule"]))
    precision = precision_name(choice.amp_dtype)
    state = {"epoch": 0, "step_in_epoch": 0, "best": -1.0, "metrics": None, "history": [], "train_s": 0.0,
             "precision": precision, "autotune": choice.record(), "plan": None}
    if ckpt is not None:
        state = {**_restore(ckpt, resume, parts), "autotune": choice.record()}
        parts["schedule"] = planned_schedule(cfg.train, state["plan"])
        if state["precision"] != precision:
            logger.warning("%s was trained in %s so far and continues in %s", resume, state["precision"], precision)
            state["precision"] = f"{state['precision']}+{precision}"
        logger.info("resumed %s at epoch %d step %d", resume, state["epoch"], state["step_in_epoch"])
    return parts, state


def _choose_runtime(cfg, device, num_classes: int, batch_size: int, ckpt) -> autotune.Choice:
    """``train.amp`` and ``train.channels_last`` resolved (timed on rank 0 where ``auto``, the same on every rank;
    a resumed run keeps its checkpoint's decision where it was made for the same device), and logged."""
    resumed = ckpt.get("autotune") if ckpt is not None else None
    choice = autotune.choose(cfg, device, num_classes, batch_size, resumed=resumed) if distributed.is_main() else None
    choice = distributed.broadcast_object(choice)
    if cfg.train.amp != "auto":
        log_precision(cfg.train.amp, device, choice.amp_dtype)   # warns where a pinned bf16 is emulated
    autotune.log_choice(choice, device)
    return choice


def _resume_checkpoint(resume, cfg, classes) -> dict:
    """The checkpoint to resume, refused when ``cfg`` changes its training (see ``yolo.config.check_resume``)
    or the dataset's classes are not the ones it was trained on."""
    ckpt = load_checkpoint(resume)
    check_resume(from_dict(ckpt["config"]), cfg, f"--resume {resume}")
    if tuple(ckpt["classes"]) != tuple(classes):
        raise CheckpointError(f"--resume {resume}: trained on classes {list(ckpt['classes'])[:4]}..., the dataset "
                              f"at {cfg.data.root} has {list(classes)[:4]}...")
    return ckpt


def _train(parts, state, device, world_size, progress) -> dict:
    cfg = parts["cfg"]
    main = distributed.is_main()
    writer = _open_writer(cfg) if main else None
    try:
        state = _epochs(_wrap(parts["model"], cfg, device, world_size), parts, state, device, writer, progress)
        if main and not parts["vote"].stop.requested and state["metrics"] is not None:
            _write_results(cfg.run_dir, cfg, state, writer, time.perf_counter() - parts["started"])
    finally:
        if writer is not None:
            writer.close()
    return state["metrics"] or {}


def _wrap(model, cfg, device, world_size):
    """The module the training loop calls: DDP around the plain model, then torch.compile around that (compiling
    the DDP module lets the compiled graph overlap the gradient all-reduce with the backward pass)."""
    train_model = model
    if world_size > 1:
        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return torch.compile(train_model) if cfg.train.compile else train_model


def _open_writer(cfg):
    from torch.utils.tensorboard import SummaryWriter
    return SummaryWriter(log_dir=str(cfg.logdir or cfg.run_dir))


def _epochs(train_model, parts, state, device, writer, progress):
    cfg, vote = parts["cfg"], parts["vote"]
    epoch = state["epoch"]
    while epoch < parts["schedule"].epochs:     # a time budget's plan sets the number of epochs in the first one
        out = _run_epoch(train_model, parts, state, epoch, device, writer, progress)
        done = not out["interrupted"]
        epochs = parts["schedule"].epochs
        logger.info("epoch %d/%d: %s (%.0f s, %.1f images/s)", epoch + 1, epochs,
                    " ".join(f"{k}={v:.4f}" for k, v in out["terms"].items()), out["seconds"],
                    out["images"] / max(out["seconds"], 1e-9))
        state.update(epoch=epoch + 1 if done else epoch, step_in_epoch=0 if done else out["steps"],
                     train_s=state["train_s"] + out["seconds"])
        if done and ((epoch + 1) % cfg.train.eval_every == 0 or epoch + 1 == epochs):
            _evaluate_epoch(parts, state, epoch, device, writer)
        _save(parts, state, "last.pt")
        if vote.settle():            # every rank stops here, after rank 0 has written last.pt
            distributed.barrier()
            logger.warning("stopped at epoch %d step %d; resume with --resume %s", state["epoch"],
                           state["step_in_epoch"], cfg.run_dir / "last.pt")
            break
        epoch += 1
    return state


def _run_epoch(train_model, parts, state, epoch, device, writer, progress) -> dict:
    """One epoch from ``state["step_in_epoch"]``; the first one of a budgeted run also makes the plan."""
    cfg, loader = parts["cfg"], parts["train_loader"]
    loader.sampler.set_epoch(epoch)
    bar = _progress_bar(len(loader), epoch, parts["schedule"].epochs) if progress else None
    if bar is not None:
        bar.update(state["step_in_epoch"])
    options = dict(device=device, scaler=parts["scaler"], amp_dtype=parts["amp_dtype"],
                   channels_last=parts["channels_last"], ema=parts["ema"], writer=writer, progress=bar,
                   stop=parts["vote"], loss_state=parts["loss_state"])

    def train(start_step, max_steps=None):
        loader.sampler.skip(start_step * loader.batch_size)
        return train_one_epoch(train_model, loader, parts["optimizer"], parts["scheduler"], cfg, epoch,
                               start_step=start_step, max_steps=max_steps, **options)
    try:
        if cfg.train.time_budget is None or state["plan"] is not None:
            return train(state["step_in_epoch"])
        return _plan_then_train(train, parts, state, epoch, device)
    finally:
        if bar is not None:
            bar.close()


def _plan_then_train(train, parts, state, epoch, device) -> dict:
    """Train the first steps, time them and an evaluation, make the time budget's plan (on rank 0, the same on
    every rank), and train the rest of the epoch under it. A run stopped before the plan makes it when resumed."""
    start, steps_per_epoch = state["step_in_epoch"], parts["steps_per_epoch"]
    outs = [train(start, budget.PLAN_WARMUP_STEPS)]
    if not outs[-1]["interrupted"] and outs[-1]["steps"] < steps_per_epoch:
        outs.append(train(outs[-1]["steps"], budget.PLAN_TIMED_STEPS))
    timed = outs[-1]    # an epoch shorter than the warm-up: its steps, warm-up included (a conservative figure)
    if timed["interrupted"]:
        return merge_epoch_results(outs, start)
    first = outs[0]["steps"] if len(outs) == 2 else start
    _make_plan(parts, state, timed["seconds"] / max(timed["steps"] - first, 1), timed["steps"], epoch, device)
    if timed["steps"] < steps_per_epoch:
        outs.append(train(timed["steps"]))
    return merge_epoch_results(outs, start)


def _make_plan(parts, state, step_s: float, steps_done: int, epoch: int, device):
    """The plan of ``train.time_budget`` from the measured step time and a timed evaluation (see yolo.budget)."""
    cfg = parts["cfg"]
    eval_s = budget.time_evaluation(parts["model"], parts["val_loader"], cfg, device=device,
                                    amp_dtype=parts["amp_dtype"], channels_last=parts["channels_last"],
                                    sigmoid_cls=sigmoid_scoring(cfg, epoch))
    plan = budget.make_plan(cfg.train, parse_duration(cfg.train.time_budget), time.perf_counter() - parts["started"],
                            step_s, parts["steps_per_epoch"], steps_done, eval_s, cfg.train.batch_size)
    state["plan"] = distributed.broadcast_object(plan)
    parts["schedule"] = planned_schedule(cfg.train, state["plan"])
    logger.info("%s", budget.describe(state["plan"], cfg.train.scheduler))


def _progress_bar(total, epoch, epochs):
    from tqdm import tqdm
    return tqdm(total=total, desc=f"epoch {epoch + 1}/{epochs}", leave=False, dynamic_ncols=True)


def _evaluate_epoch(parts, state, epoch, device, writer):
    """Evaluate at the end of ``epoch``: the metrics, the val curve, and ``best.pt`` when they are the best."""
    global_step = (epoch + 1) * parts["steps_per_epoch"]
    state["metrics"] = _evaluate(parts, parts["val_loader"], epoch, global_step, device, writer)
    state["history"].append({"epoch": epoch + 1, **{k: state["metrics"][k] for k in HISTORY_KEYS}})
    if state["metrics"]["voc07_map50"] is not None and state["metrics"]["voc07_map50"] > state["best"]:
        state["best"] = state["metrics"]["voc07_map50"]
        _save(parts, state, "best.pt")


def _evaluate(parts, val_loader, epoch, step, device, writer) -> dict:
    from yolo.metrics import format_results
    from yolo.summary import image_collector, log_evaluation
    cfg = parts["cfg"]
    eval_model = parts["ema"].module if parts["ema"] is not None else parts["model"]
    distributed.broadcast_buffers(eval_model)   # every rank's shard scored with the statistics last.pt holds
    drawn, on_batch = image_collector(parts["classes"])
    results, pr_curves, _ = evaluate(eval_model, val_loader, cfg, device=device,
                                     sigmoid_cls=sigmoid_scoring(cfg, epoch), amp_dtype=parts["amp_dtype"],
                                     channels_last=parts["channels_last"],
                                     on_batch=on_batch if writer is not None else None)
    if distributed.is_main():
        logger.info("epoch %d: VOC07 mAP@0.5 %.4f, COCO AP %.4f\n%s", epoch + 1, results["voc07_map50"] or 0.0,
                    results["coco_ap"] or 0.0, format_results(results, parts["classes"]))
    if writer is not None:
        log_evaluation(writer, results, pr_curves, step)
        if drawn:
            writer.add_images("val/predictions", torch.stack(drawn), step)
    return results


def _save(parts, state, name):
    if not distributed.is_main():
        return
    ckpt = {
        "model": parts["model"].state_dict(),
        "ema": parts["ema"].state_dict() if parts["ema"] is not None else None,
        "optimizer": parts["optimizer"].state_dict(),
        "scheduler": parts["scheduler"].state_dict(),
        "scaler": parts["scaler"].state_dict(),
        "config": parts["cfg"].to_dict(),
        "classes": list(parts["classes"]),
        "rng": rng_state(),
        "loss_state": parts["loss_state"],       # the statistics of a stateful class loss, {} for the others
        **state,
    }
    atomic_save(ckpt, parts["cfg"].run_dir / name)


def _restore(ckpt, path, parts) -> dict:
    """Load the weights, optimiser, schedule, scaler, EMA, RNG and loss states of ``ckpt``; returns the loop
    state. RNG states of devices this machine does not have are reported, not restored."""
    try:
        parts["model"].load_state_dict(ckpt["model"])
        parts["optimizer"].load_state_dict(ckpt["optimizer"])
        parts["scheduler"].load_state_dict(ckpt["scheduler"])
        parts["scaler"].load_state_dict(ckpt["scaler"])
        if parts["ema"] is not None:
            parts["ema"].load_state_dict(ckpt["ema"])
        for note in set_rng_state(ckpt["rng"]):
            logger.warning("--resume %s: %s", path, note)
        load_loss_state(parts["loss_state"], ckpt.get("loss_state", {}))   # checkpoints before it: no statistics
        return {**{k: ckpt[k] for k in ("epoch", "step_in_epoch", "best", "metrics", "history", "train_s",
                                         "precision")}, "plan": ckpt.get("plan")}
    except (KeyError, TypeError, RuntimeError, ValueError) as exc:  # a file that passed the safe load, but not ours
        raise CheckpointError(f"--resume {path}: cannot restore the run from it ({_reason(exc)})") from None


def _reason(exc: Exception) -> str:
    """The exception's type and first line (torch's load_state_dict errors run over many lines)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _write_results(run_dir, cfg, state, writer, wall_s: float):
    """``results.json``: the config, the last val metrics, the val curve, the precision and how it was chosen, the
    time budget's plan, the training time and the wall time of this invocation."""
    from yolo.summary import log_hparams
    results = {"config": cfg.to_dict(), "val": state["metrics"], "history": state["history"],
               "precision": state["precision"], "autotune": state["autotune"], "plan": state["plan"],
               "train_s": state["train_s"], "wall_s": wall_s}
    (run_dir / "results.json").write_text(json.dumps(results, indent=1))
    if writer is not None:
        log_hparams(writer, cfg.to_dict(), state["metrics"])


# ---------------------------------------------------------------------------------------------------------------
# evaluating a checkpoint


def model_from_checkpoint(ckpt: dict, cfg, device, weights: str = "auto"):
    """The detector stored in a checkpoint: its EMA weights when it has them (``weights='auto'``), else the
    trained weights; ``weights`` may force ``ema`` or ``model``."""
    model = build_model(_no_download(cfg.model), len(ckpt["classes"]))
    use_ema = weights == "ema" or (weights == "auto" and ckpt.get("ema") is not None)
    if use_ema and ckpt.get("ema") is None:
        raise CheckpointError("--weights ema: this checkpoint has no EMA weights")
    try:
        model.load_state_dict(ckpt["ema"]["module"] if use_ema else ckpt["model"])
    except (KeyError, TypeError, RuntimeError) as exc:
        raise CheckpointError(f"the checkpoint's weights do not fit the model of its config (did a model flag "
                              f"change it?): {_reason(exc)}") from None
    model = model.to(device).eval()
    _, channels_last = autotune.inference_settings(ckpt, cfg, device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def _no_download(model_cfg):
    """A copy of the model config that builds an uninitialised backbone: the checkpoint holds the weights."""
    import dataclasses
    return dataclasses.replace(model_cfg, pretrained="none")


def evaluate_checkpoint(ckpt: dict, cfg, split: str | None = None, weights: str = "auto"):
    """Score a checkpoint on ``split`` (a spec; default the test role, see ``yolo.data.layout.load_role``) of
    ``cfg.data``: returns (results, pr_curves, detections)."""
    device = distributed.local_device(cfg.train.device)
    root, classes = prepare_data(cfg)
    if tuple(classes) != tuple(ckpt["classes"]):
        raise ValueError(f"the dataset at {root} has classes {list(classes)[:4]}..., the checkpoint was trained "
                         f"on {ckpt['classes'][:4]}...")
    dataset = evaluation_dataset(cfg, load_role(cfg, "test", split))
    loader = build_loader(dataset, cfg.train.batch_size, train=False,
                          num_workers=resolve_workers(cfg.data.workers, device), seed=cfg.train.seed)
    model = model_from_checkpoint(ckpt, cfg, device, weights)
    amp_dtype, channels_last = autotune.inference_settings(ckpt, cfg, device)
    trained_epoch = max(ckpt.get("epoch", 1) - 1, 0)  # the head was last trained with this epoch's loss
    return evaluate(model, loader, cfg, device=device, sigmoid_cls=sigmoid_scoring(cfg, trained_epoch),
                    amp_dtype=amp_dtype, channels_last=channels_last)
