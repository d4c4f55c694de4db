"""Running the runs: train (or resume) each one through ``fit``, score its selected checkpoint on the test split
once per scoring its variants need, and write its result file as soon as it is done.

In this process one run after another, or ``--jobs N`` spawned processes (one per run). A failed run is logged and
left out while the others go on; an interrupted one resumes from its ``last.pt`` next time. ``yolo.ablate.launch``
runs the same ``run_one`` as submitit jobs (``--launcher local / slurm``).
"""
import copy
import dataclasses
import datetime
import json
import logging
import multiprocessing
import multiprocessing.connection
import signal
import sys
import time

import torch

from yolo.ablate.plan import PROTOCOL_VERSION, Run, config_hash
from yolo.ablate.results import code_revision, missing_scores, read_result, score_key, write_result
from yolo.ablate.spec import METRIC, scored_with
from yolo.errors import ConfigError
from yolo.checkpoint import load_checkpoint
from yolo.cluster import RunInterrupted
from yolo.distributed import local_device
from yolo.data.layout import read_categories
from yolo.fit import StopRequest, evaluate_checkpoint, fit, prepare_data, training_records
from yolo.hardware import cores_per_run, default_workers, describe_device, describe_machine, native_bf16

logger = logging.getLogger(__name__)

LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"
EXIT_INTERRUPTED = 3


def run_one(run: Run, selection: str, progress: bool = True, stop=None, runs_at_once: int = 1) -> dict:
    """Train (or resume) one run, score it, write ``run.result_path``; returns the result (see yolo.ablate.results).

    A committed result is reused as it is; one that lacks a scoring is completed from the run's checkpoint, or by
    training the run again where the checkpoint is not on this machine (a fresh clone). Raises ``RunInterrupted``.
    ``stop``: the stop request ``fit`` honours (default: its own, SIGTERM / SIGINT). ``runs_at_once``: how many
    runs share this machine meanwhile (``--jobs``), recorded so that the report can turn run times into wall time.
    """
    result = read_result(run)
    if result is not None and not missing_scores(result, run, selection):
        return result
    run = sharing_cores(run, runs_at_once)
    checkpoint = run.cfg.run_dir / ("best.pt" if selection == "best_val" else "last.pt")
    if result is None or not checkpoint.is_file():
        result = {**_train(run, progress, stop, runs_at_once), "scores": result["scores"] if result else {}}
    for scoring in missing_scores(result, run, selection):
        result["scores"][score_key(selection, scoring)] = _score(run, checkpoint, scoring)
    write_result(run.result_path, result)
    return result


def sharing_cores(run: Run, runs_at_once: int) -> Run:
    """``run`` with ``data.workers: auto`` resolved to its share of this machine's cores when ``runs_at_once``
    runs train side by side (``data.workers`` is not in the cache key: the result is the same run's)."""
    if runs_at_once == 1 or run.cfg.data.workers != "auto":
        return run
    cfg = copy.deepcopy(run.cfg)
    cfg.data.workers = default_workers(local_device(cfg.train.device), runs_at_once)
    return dataclasses.replace(run, cfg=cfg)


def _train(run: Run, progress: bool, stop, runs_at_once: int) -> dict:
    """Train to the last epoch (resuming ``last.pt``); returns the training part of the result.

    ``fit`` writes ``results.json`` only once the last epoch is trained and evaluated: it marks a finished run
    (the folder is the config's own: its name holds the config hash).
    """
    cfg = run.cfg
    finished = cfg.run_dir / "results.json"
    if not finished.is_file():
        last = cfg.run_dir / "last.pt"
        if last.is_file():
            logger.info("resuming %s from %s", cfg.run_dir, last)
        fit(cfg, resume=str(last) if last.is_file() else None, progress=progress, stop=stop)
        if not finished.is_file():
            raise RunInterrupted(f"{cfg.run_dir} stopped before its last epoch; run the same command again to resume")
    trained = json.loads(finished.read_text())
    return {"protocol": PROTOCOL_VERSION, "key": run.key, "config_hash": config_hash(cfg, run.data_fingerprint),
            "data_fingerprint": run.data_fingerprint, "seed": run.seed,
            "variants": run.variants, "config": trained["config"], "history": trained["history"],
            "precision": trained["precision"], "train_s": trained["train_s"], "runs_at_once": runs_at_once,
            "class_images": class_images(cfg), **class_frequency(cfg),
            "machine": describe_machine(), "device": describe_device(local_device(cfg.train.device)),
            "code_revision": code_revision(),
            "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def _score(run: Run, checkpoint, scoring: str) -> dict:
    """The checkpoint's metrics on ``data.test`` with the ``scoring`` eval overrides (EMA weights when it has them)."""
    cfg = scored_with(run.cfg, run.scorings[scoring])
    ckpt = load_checkpoint(checkpoint)
    tic = time.perf_counter()
    metrics, _, _ = evaluate_checkpoint(ckpt, cfg, cfg.data.test, weights="auto")
    return {"checkpoint": checkpoint.name, "epoch": ckpt["epoch"],
            "weights": "model" if ckpt.get("ema") is None else "ema", "split": cfg.data.test,
            "val_voc07_map50": (ckpt.get("metrics") or {}).get(METRIC), "eval_s": time.perf_counter() - tic,
            "test": metrics}


def class_images(cfg) -> dict:
    """{class name: training images holding at least one training target of it} (difficult objects count only
    with ``data.train_difficult``): the frequency the long-tail buckets are drawn on."""
    _, classes = prepare_data(cfg)
    counts = dict.fromkeys(classes, 0)
    for record in training_records(cfg):
        for label in set(record.labels[record.training_mask(cfg.data.train_difficult)].tolist()):
            counts[classes[label]] += 1
    return counts


def class_frequency(cfg) -> dict:
    """``{"class_frequency": {class name: "r" / "c" / "f"}}`` for an LVIS dataset (its buckets), else ``{}``."""
    categories = read_categories(cfg)
    return {} if categories.frequency is None else {
        "class_frequency": dict(zip(categories.names, categories.frequency))}


# ---------------------------------------------------------------------------------------------------------------
# many runs


class Progress:
    """``[run 3/12] sigmoid_focal seed 1 (elapsed 5m 02s, ETA 15m 10s)``: the ETA assumes each remaining run takes
    as long as the finished ones did on average, ``jobs`` at a time, less what the runs in flight have done."""

    def __init__(self, total: int, selection: str, jobs: int = 1, clock=time.perf_counter):
        self.total, self.selection, self.jobs, self.clock = total, selection, jobs, clock
        self.tic, self.running, self.durations = clock(), {}, []

    def start(self, run: Run) -> str:
        now = self.clock()
        self.running[run.key] = now
        device = "" if run.cfg.train.device == "auto" else f" on {run.cfg.train.device}"
        return (f"[run {len(self.durations) + len(self.running)}/{self.total}] {' = '.join(run.variants)} "
                f"seed {run.seed}{device} (elapsed {duration(now - self.tic)}, ETA {self.eta(now)})")

    def eta(self, now: float) -> str:
        if not self.durations:
            return "?"
        mean = sum(self.durations) / len(self.durations)
        in_flight = sum(now - started for started in self.running.values())
        return duration(max(0.0, mean * (self.total - len(self.durations)) - in_flight) / self.jobs)

    def finish(self, run: Run, result: dict | None) -> str:
        self.durations.append(self.clock() - self.running.pop(run.key))
        score = None if result is None else result["scores"].get(score_key(self.selection, "default"))
        outcome = "failed" if result is None else (
            f"train {duration(result['train_s'])}" + ("" if score is None else
                                                       f", test mAP {score['test'][METRIC]:.4f}"))
        return f"[done {len(self.durations)}/{self.total}] {' = '.join(run.variants)} seed {run.seed}: {outcome}"


def duration(seconds: float) -> str:
    """``1h 02m``, ``5m 02s`` or ``42s``."""
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m {seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def cached_results(runs: list[Run], selection: str) -> dict:
    """{run key: result} of the runs whose committed result holds every score their variants need."""
    cached = {run.key: read_result(run) for run in runs}
    return {run.key: cached[run.key] for run in runs
            if cached[run.key] is not None and not missing_scores(cached[run.key], run, selection)}


def execute(runs: list[Run], selection: str, *, jobs: int = 1, devices: list[str] | None = None,
            progress: bool = True) -> tuple[dict, dict]:
    """Run every run without a complete result; returns ({run key: result}, {run key: why it failed}).

    ``RunInterrupted``, ``KeyboardInterrupt`` and (with ``jobs`` > 1) a SIGTERM stop everything (finished runs keep
    their result files, the interrupted ones resume next time). ``devices``: run slot i (of ``jobs``) trains on
    ``devices[i % len(devices)]``; default: the config's device.
    """
    results, todo = prepare_runs(runs, selection)
    if jobs == 1:
        failures = _run_sequential(todo, selection, results, devices, progress)
    else:
        failures = _run_parallel(todo, selection, results, jobs, devices)
    return results, failures


def prepare_runs(runs: list[Run], selection: str) -> tuple[dict, list[Run]]:
    """({run key: complete result}, the runs still to run); generates / checks each dataset once, before runs (or
    processes, or jobs) use it."""
    results = cached_results(runs, selection)
    todo = [run for run in runs if run.key not in results]
    logger.info("%d runs: %d with a result already, %d to run", len(runs), len(results), len(todo))
    for cfg in {json.dumps(dataclasses.asdict(r.cfg.data), sort_keys=True): r.cfg for r in todo}.values():
        prepare_data(cfg)
    return results, todo


def check_precision(todo: list[Run], devices: list[str] | None, allow_emulated_bf16: bool = False):
    """Refuse, before anything trains, runs that pin ``train.amp: bf16`` on a device that only emulates bf16.

    A run's config pins its precision because the precision is part of what it learns (its config hash): such a
    run cannot fall back to fp32 as ``amp: auto`` would. Emulated bf16 measured 4x slower than fp32 on a CPU with
    AVX-512 and 14x slower on one with only AVX2 (docs/performance.md): a grid of hours could take days, so one
    line now instead. ``devices``: the --devices slots (default: each run's ``train.device``).
    """
    if allow_emulated_bf16:
        return
    for run in todo:
        if run.cfg.train.amp != "bf16":
            continue
        for name in devices or [run.cfg.train.device]:
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else \
                torch.device(name)
            if device.type == "cuda" and not torch.cuda.is_available():
                continue    # the run's own error says so, not this one
            if not native_bf16(device):
                pinned = sum(r.cfg.train.amp == "bf16" for r in todo)
                raise ConfigError(
                    f"{pinned} of the {len(todo)} runs to train ({' = '.join(run.variants)} seed {run.seed} first) "
                    f"pin train.amp: bf16, which {describe_device(device)} only emulates, slowly "
                    f"(docs/performance.md): train them on a CPU with avx512_bf16 / amx_bf16 or a CUDA GPU, or "
                    f"pass --allow-emulated-bf16 to train them here anyway")


def on_device(run: Run, device: str | None) -> Run:
    """``run`` trained on ``device`` (None, or its own device: the run itself)."""
    if device is None or device == run.cfg.train.device:
        return run
    cfg = copy.deepcopy(run.cfg)
    cfg.train.device = device
    return dataclasses.replace(run, cfg=cfg)


def _run_sequential(todo, selection, results, devices, progress) -> dict:
    clock, failures = Progress(len(todo), selection), {}
    for run in todo:
        run = on_device(run, devices[0] if devices else None)
        logger.info(clock.start(run))
        try:
            results[run.key] = run_one(run, selection, progress)
        except RunInterrupted:
            raise
        except Exception as exc:  # one failed run must not lose the others: logged, reported, retried next time
            logger.exception("run %s failed", run.name)
            failures[run.key] = f"{type(exc).__name__}: {exc}"
        logger.info(clock.finish(run, results.get(run.key)))
    return failures


def _run_parallel(todo, selection, results, jobs, devices) -> dict:
    """``jobs`` spawned processes at a time, one per run (a fresh process: no state leaks between runs)."""
    context = multiprocessing.get_context("spawn")
    threads = cores_per_run(jobs)  # the CPU's cores shared, not oversubscribed
    clock, failures, queue, free, alive = Progress(len(todo), selection, jobs), {}, list(todo), list(range(jobs)), {}
    previous = signal.signal(signal.SIGTERM, raise_interrupted)  # killed alone, the runner would orphan its runs
    try:
        while queue or alive:
            while queue and free:
                slot, run = free.pop(0), queue.pop(0)
                run = on_device(run, devices[slot % len(devices)] if devices else None)
                logger.info(clock.start(run))
                process = context.Process(target=_child, args=(run, selection, threads, jobs), name=run.name)
                process.start()
                alive[process.sentinel] = (process, run, slot)
            for sentinel in multiprocessing.connection.wait(list(alive)):
                process, run, slot = alive.pop(sentinel)
                process.join()
                free.append(slot)
                _collect(process.exitcode, run, selection, results, failures)
                logger.info(clock.finish(run, results.get(run.key)))
    finally:
        signal.signal(signal.SIGTERM, previous)
        stop_workers([process for process, _, _ in alive.values()])
    return failures


def raise_interrupted(signum, frame):
    raise RunInterrupted(f"received {signal.Signals(signum).name}: the runs in flight save last.pt and stop")


def stop_workers(processes: list):
    """Ask the runs still in flight to stop (SIGTERM: each saves ``last.pt`` after its step) and wait for them.

    Whatever ended the loop (Ctrl-C, SIGTERM to the runner alone, one run interrupted, an error) ends them too:
    none keeps training unwatched, and the next invocation resumes each from its ``last.pt``."""
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join()


def _collect(exitcode: int, run: Run, selection: str, results: dict, failures: dict):
    if exitcode == EXIT_INTERRUPTED:
        raise RunInterrupted(f"{run.cfg.run_dir} was interrupted; run the same command again to resume")
    result = read_result(run) if exitcode == 0 else None
    if result is None or missing_scores(result, run, selection):
        failures[run.key] = f"process exit code {exitcode} (the traceback is in the log above)"
        logger.error("run %s failed: %s", run.name, failures[run.key])
    else:
        results[run.key] = result


def _child(run: Run, selection: str, threads: int, jobs: int):
    """A --jobs process: one run; exit status 0 (done, result written), 1 (failed) or EXIT_INTERRUPTED."""
    stop = WorkerStop()
    stop.install()
    logging.basicConfig(level=logging.INFO, format=f"[{run.name}] {LOG_FORMAT}")
    torch.set_num_threads(threads)
    try:
        run_one(run, selection, progress=False, stop=stop, runs_at_once=jobs)
    except RunInterrupted as exc:
        logger.warning("%s", exc)
        sys.exit(EXIT_INTERRUPTED)
    except Exception:
        logger.exception("run %s failed", run.name)
        sys.exit(1)


class WorkerStop(StopRequest):
    """A --jobs process's stop request, for its whole life: SIGTERM / SIGINT end its run at the next step, with
    ``last.pt`` saved. Repeats change nothing: the runner forwards the stop it got, and a terminal (Ctrl-C) or a
    scheduler may already have signalled the whole process group; a second signal must not kill the process while
    it saves. SIGKILL still ends it at once."""

    def install(self):
        for sig in self.signals:
            signal.signal(sig, self._on_signal)

    def uninstall(self):
        """Nothing to give back: the process ends with its run."""

    def _on_signal(self, signum, frame):
        if not self.requested:
            logger.warning("received %s: saving a checkpoint at the end of this step, then stopping",
                           signal.Signals(signum).name)
        self.requested = True
