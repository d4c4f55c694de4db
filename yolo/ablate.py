"""Multi-seed ablations: every variant x seed trained with ``fit``, its checkpoint chosen by a rule fixed in
advance, scored once on the test split, and summarised with confidence intervals and paired comparisons to a
baseline.

    python -m yolo.ablate --config configs/ablation/shapes_conf_loss.yaml configs/ablation/shapes_cls_loss.yaml
    python -m yolo.ablate --config configs/ablation/voc_cls_loss.yaml --seeds 5 --jobs 2 --devices cuda:0,cuda:1
    tensorboard --logdir runs/ablation/shapes_conf_loss+shapes_cls_loss/tb

An ablation file names a training config (``base``, relative to the file), ``overrides`` applied to every run, the
number of ``seeds``, the checkpoint ``selection`` (``final``: the last epoch's weights, EMA when trained with EMA;
``best_val``: best VOC07 mAP on data.val, refused when data.val is the test split), the ``baseline`` row and
``tables`` of rows (``name``, ``label``, ``overrides``, optional ``reference`` mAP). Several files make one report.

Each run lives in ``OUT/runs/<variant>-s<seed>-<hash8>`` (hash of the training config) and logs TensorBoard to
``OUT/tb/<same name>``. A finished run writes ``ablation_result.json`` and is skipped by later invocations; an
interrupted one resumes from its ``last.pt``. Identical configs (e.g. the MSE + CE row of both reference tables)
are trained once. Writes ``OUT/ablation.md``, ``OUT/ablation.csv`` (one row per variant and seed) and
``OUT/ablation.png``.
"""
import argparse
import copy
import csv
import dataclasses
import hashlib
import json
import logging
import math
import multiprocessing
import multiprocessing.connection
import os
import platform
import re
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from yolo.checkpoint import load_checkpoint
from yolo.config import Config, ConfigError, load_yaml, update, validate
from yolo.fit import evaluate_checkpoint, fit, prepare_data

logger = logging.getLogger(__name__)

CONFIDENCE = 0.95
METRIC = "voc07_map50"
RESULT_FILE = "ablation_result.json"
SELECTIONS = ("final", "best_val")
ABLATION_KEYS = ("base", "overrides", "seeds", "selection", "baseline", "tables")
TABLE_KEYS = ("title", "column", "rows")
ROW_KEYS = ("name", "label", "overrides", "reference")
# Set by the runner for every run, so an ablation file may not set them.
RUNNER_KEYS = (("name",), ("output_dir",), ("logdir",), ("train", "seed"))
# Fields that do not change what a run learns or how it is scored: left out of the config hash, so moving the
# data, changing the device or the number of loader workers reuses finished runs.
UNHASHED_KEYS = (("name",), ("output_dir",), ("logdir",), ("data", "root"), ("data", "workers"),
                 ("train", "device"), ("train", "log_every"))
VARIANT_NAME = re.compile(r"[A-Za-z0-9_.+-]+")
CSV_COLUMNS = ("table", "variant", "label", "seed", "run", "config_hash", "selection", "checkpoint", "epoch",
               "weights", "split", "voc07_map50", "voc_map50", "coco_ap", "coco_ap50", "coco_ap75",
               "val_voc07_map50", "train_s", "eval_s")


class RunInterrupted(RuntimeError):
    """Training stopped before its last epoch (SIGINT / SIGTERM); re-running the ablation resumes it."""


# ---------------------------------------------------------------------------------------------------------------
# statistics (pure numpy / math: scipy is not a dependency)


def _abs_t_cdf(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with integer ``df``, in closed form: Abramowitz & Stegun, Handbook of
    Mathematical Functions (1964), 26.7.3 (odd df) and 26.7.4 (even df), with theta = atan(t / sqrt(df))."""
    theta = math.atan(t / math.sqrt(df))
    cos2 = math.cos(theta) ** 2
    series = 0.0
    if df % 2:
        term = math.cos(theta)
        for k in range(1, (df - 1) // 2 + 1):    # cos + 2/3 cos^3 + (2*4)/(3*5) cos^5 + ... up to cos^(df-2)
            series += term
            term *= cos2 * (2 * k) / (2 * k + 1)
        return 2 / math.pi * (theta + math.sin(theta) * series)
    term = 1.0
    for k in range(df // 2):                     # 1 + 1/2 cos^2 + (1*3)/(2*4) cos^4 + ... up to cos^(df-2)
        series += term
        term *= cos2 * (2 * k + 1) / (2 * k + 2)
    return math.sin(theta) * series


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (e.g. t_{0.975, 2} = 4.302653).

    Inverts the closed-form CDF of :func:`_abs_t_cdf` by bisection (to ~1e-12 relative); exact for any integer
    ``df`` >= 1, meant for the small df of seed counts (the cost grows linearly with ``df``).
    """
    if not (isinstance(df, (int, np.integer)) and df >= 1):
        raise ValueError(f"degrees of freedom must be an integer >= 1, got {df!r}")
    if not 0 < p < 1:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p <= 0.5:
        return 0.0 if p == 0.5 else -t_quantile(1 - p, df)
    target = 2 * p - 1
    low, high = 0.0, 1.0
    while _abs_t_cdf(high, df) < target:
        low, high = high, 2 * high
    while high - low > 1e-12 * high:
        mid = 0.5 * (low + high)
        low, high = (mid, high) if _abs_t_cdf(mid, df) < target else (low, mid)
    return 0.5 * (low + high)


def summarize(values, confidence: float = CONFIDENCE) -> dict:
    """Mean, sample standard deviation (ddof=1) and the Student-t confidence interval of the mean of ``values``.

    Returns ``{"n", "mean", "std", "ci_low", "ci_high"}``: ``mean ± t_{(1+confidence)/2, n-1} * std / sqrt(n)``.
    ``std`` and the interval are None below 2 values (one number has no spread), ``mean`` is None for none.
    """
    x = np.asarray(list(values), dtype=np.float64)
    out = {"n": int(x.size), "mean": float(x.mean()) if x.size else None, "std": None, "ci_low": None,
           "ci_high": None}
    if x.size >= 2:
        std = float(x.std(ddof=1))
        half = t_quantile(0.5 + confidence / 2, x.size - 1) * std / math.sqrt(x.size)
        out.update(std=std, ci_low=out["mean"] - half, ci_high=out["mean"] + half)
    return out


def paired_difference(values: dict, baseline: dict, confidence: float = CONFIDENCE) -> dict:
    """``summarize`` of the per-seed differences ``values[s] - baseline[s]`` over the seeds both hold.

    Pairing by seed (same data order, augmentation and initialisation) removes the seed-to-seed variance the two
    variants share, so the interval is usually much narrower than comparing two independent means.
    ``values`` / ``baseline``: {seed: metric}. Adds ``"seeds"``, the paired seeds.
    """
    seeds = sorted(set(values) & set(baseline))
    return {**summarize([values[s] - baseline[s] for s in seeds], confidence), "seeds": seeds}


def verdict(difference: dict) -> str:
    """The plain reading of a paired difference (higher is better): better, worse or not distinguishable."""
    n = difference["n"]
    if n == 0:
        return "no seed with both results"
    if n == 1:
        return "one seed: no confidence interval, run more seeds"
    if difference["ci_low"] > 0:
        return "better"
    if difference["ci_high"] < 0:
        return "worse"
    return f"not distinguishable at {n} seeds"


# ---------------------------------------------------------------------------------------------------------------
# ablation files


@dataclasses.dataclass
class Variant:
    name: str
    label: str
    reference: float | None
    cfg: Config                    # the validated training config; the runner sets seed, name and folders


@dataclasses.dataclass
class Table:
    title: str
    column: str                    # header of the first column, as in the reference table
    baseline: str                  # variant name the rows are compared to
    variants: list[Variant]


@dataclasses.dataclass
class Ablation:
    name: str
    tables: list[Table]
    seeds: int
    selection: str

    def variants(self) -> dict:
        return {v.name: v for t in self.tables for v in t.variants}


def load_ablation(paths, seeds: int | None = None) -> Ablation:
    """Read and validate one or more ablation files (their tables make one report). ``seeds`` overrides theirs.

    Every row's config is built (base, then the file's ``overrides``, then the row's) and validated, so a bad key
    or value fails here, before any training, with the file and row in the message (``ConfigError``).
    """
    files = [_load_file(Path(p)) for p in paths]
    if not files:
        raise ConfigError("no ablation file given")
    for key in ("selection",) + (("seeds",) if seeds is None else ()):
        values = {f[key] for f in files}
        if len(values) > 1:
            raise ConfigError(f"the ablation files disagree on {key} ({sorted(values)}); one report needs one "
                              f"value" + ("" if key == "selection" else ": pass --seeds"))
    if seeds is not None and (not isinstance(seeds, int) or seeds < 1):
        raise ConfigError(f"--seeds must be a positive integer, got {seeds!r}")
    ablation = Ablation(name="+".join(f["name"] for f in files), tables=[t for f in files for t in f["tables"]],
                        seeds=seeds or files[0]["seeds"], selection=files[0]["selection"])
    names = [v.name for t in ablation.tables for v in t.variants]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"variant names must be unique across the ablation; repeated: {', '.join(repeated)} "
                          f"(identical configs under different names are trained once anyway)")
    return ablation


def _load_file(path: Path) -> dict:
    raw = _mapping(_read_yaml(path), ABLATION_KEYS, str(path),
                   required=("base", "selection", "baseline", "tables"))
    if raw["selection"] not in SELECTIONS:
        raise ConfigError(f"{path}: selection {raw['selection']!r} is not one of {', '.join(SELECTIONS)}")
    seeds = raw.get("seeds", 3)
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
        raise ConfigError(f"{path}: seeds must be a positive integer, got {seeds!r}")
    base = load_yaml(path.parent / str(raw["base"]))
    common = raw.get("overrides") or {}
    _reject_runner_keys(common, f"{path}: overrides")
    if not isinstance(raw["tables"], list) or not raw["tables"]:
        raise ConfigError(f"{path}: tables must be a non-empty list of tables")
    tables = [_load_table(table, f"{path}: tables[{i}]", base, common, raw["selection"], raw["baseline"])
              for i, table in enumerate(raw["tables"])]
    rows = [v.name for t in tables for v in t.variants]
    if raw["baseline"] not in rows:
        raise ConfigError(f"{path}: baseline {raw['baseline']!r} is not a row name; rows: {', '.join(rows)}")
    return {"name": path.stem, "tables": tables, "seeds": seeds, "selection": raw["selection"]}


def _load_table(raw, source: str, base: dict, common: dict, selection: str, baseline: str) -> Table:
    table = _mapping(raw, TABLE_KEYS, source, required=("title", "rows"))
    if not isinstance(table["rows"], list) or not table["rows"]:
        raise ConfigError(f"{source}: rows must be a non-empty list")
    variants = [_load_row(row, f"{source}.rows[{i}]", base, common, selection)
                for i, row in enumerate(table["rows"])]
    return Table(title=str(table["title"]), column=str(table.get("column", "variant")),
                 baseline=str(baseline), variants=variants)


def _load_row(raw, source: str, base: dict, common: dict, selection: str) -> Variant:
    row = _mapping(raw, ROW_KEYS, source, required=("name",))
    name = row["name"]
    if not isinstance(name, str) or not VARIANT_NAME.fullmatch(name):
        raise ConfigError(f"{source}: name {name!r} must be letters, digits and _ . + - (it names folders)")
    source = f"{source} ({name})"
    overrides = row.get("overrides") or {}
    _reject_runner_keys(overrides, f"{source}: overrides")
    cfg = update(Config(), copy.deepcopy(base), f"{source}: base config")
    update(cfg, copy.deepcopy(common), f"{source}: ablation overrides")
    validate(update(cfg, copy.deepcopy(overrides), f"{source}: row overrides"))
    _check_selection(cfg, selection, source)
    reference = row.get("reference")
    if reference is not None and (isinstance(reference, bool) or not isinstance(reference, (int, float))):
        raise ConfigError(f"{source}: reference must be a number (an mAP) or absent, got {reference!r}")
    return Variant(name=name, label=str(row.get("label", name)),
                   reference=None if reference is None else float(reference), cfg=cfg)


def _check_selection(cfg: Config, selection: str, source: str):
    if selection == "best_val" and cfg.data.val == cfg.data.test:
        raise ConfigError(f"{source}: selection best_val would pick the checkpoint that scores best on data.val = "
                          f"data.test = {cfg.data.test!r}, i.e. best-on-test, which inflates the result; use "
                          f"selection: final, or a data.val split that is not the test split")


def _read_yaml(path: Path):
    if not path.is_file():
        raise ConfigError(f"ablation file not found: {path}")
    try:
        with open(path) as f:
            return yaml.safe_load(f)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None


def _mapping(raw, allowed, source: str, required=()) -> dict:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping with keys {', '.join(allowed)}, got {raw!r}")
    unknown = [k for k in raw if k not in allowed]
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(map(str, unknown))}; allowed: "
                          f"{', '.join(allowed)}")
    missing = [k for k in required if raw.get(k) is None]
    if missing:
        raise ConfigError(f"{source}: missing required key(s) {', '.join(missing)}")
    return raw


def _reject_runner_keys(overrides, source: str):
    if not isinstance(overrides, dict):
        raise ConfigError(f"{source}: overrides must be a mapping like {{loss: {{cls_loss: sigmoid_focal}}}}")
    for keys in RUNNER_KEYS:
        section = overrides if len(keys) == 1 else overrides.get(keys[0])
        if isinstance(section, dict) and keys[-1] in section:
            raise ConfigError(f"{source}: {'.'.join(keys)} is set by the ablation runner (seeds: the `seeds` "
                              f"count or --seeds; folders: --output-dir)")


# ---------------------------------------------------------------------------------------------------------------
# runs


@dataclasses.dataclass
class Run:
    key: str                       # sha256 of the training config (seed included): the cache key
    name: str                      # folder name, <variant>-s<seed>-<hash8>
    seed: int
    variants: list[str]            # every variant whose config this is
    cfg: Config                    # seed, output_dir, name and logdir set


def config_hash(cfg: Config) -> str:
    """sha256 of the config minus the fields that change neither training nor scoring (``UNHASHED_KEYS``)."""
    values = cfg.to_dict()
    for keys in UNHASHED_KEYS:
        (values if len(keys) == 1 else values[keys[0]]).pop(keys[-1])
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()


def plan_runs(ablation: Ablation, output_dir) -> list[Run]:
    """One Run per distinct (config, seed), in table order; seeds are ``train.seed + 0 .. seeds - 1``.

    A run finished under another variant name in the same output folder (same hash) is reused.
    """
    output_dir = Path(output_dir)
    runs: dict[str, Run] = {}
    for seed_index in range(ablation.seeds):
        for variant in ablation.variants().values():
            cfg = copy.deepcopy(variant.cfg)
            cfg.train.seed += seed_index
            key = config_hash(cfg)
            if key in runs:
                runs[key].variants.append(variant.name)
                continue
            name = _existing_run_name(output_dir / "runs", cfg.train.seed, key) or \
                f"{variant.name}-s{cfg.train.seed}-{key[:8]}"
            cfg.name, cfg.output_dir, cfg.logdir = name, str(output_dir / "runs"), str(output_dir / "tb" / name)
            runs[key] = Run(key=key, name=name, seed=cfg.train.seed, variants=[variant.name], cfg=cfg)
    return list(runs.values())


def _existing_run_name(runs_dir: Path, seed: int, key: str) -> str | None:
    matches = sorted(p.name for p in runs_dir.glob(f"*-s{seed}-{key[:8]}") if p.is_dir())
    return matches[0] if matches else None


def run_one(run: Run, selection: str, progress: bool = True) -> dict:
    """Train (or resume) one run, score its selected checkpoint on ``data.test``, cache the result.

    Returns the content of ``ablation_result.json``: ``config_hash``, ``selection``, ``checkpoint``, ``epoch``,
    ``weights`` (ema | model), ``split``, ``test`` (the full metrics dict), ``val_voc07_map50`` of the selected
    checkpoint, ``train_s`` and ``eval_s`` (this invocation's seconds). Raises ``RunInterrupted``.
    """
    cfg = run.cfg
    cached = read_result(cfg.run_dir / RESULT_FILE, run.key, selection)
    if cached is not None:
        return cached
    tic = time.perf_counter()
    _train(cfg, progress)
    train_s, tic = time.perf_counter() - tic, time.perf_counter()
    result = _score(cfg, selection)
    result.update(config_hash=run.key, selection=selection, run=run.name, seed=run.seed, train_s=train_s,
                  eval_s=time.perf_counter() - tic)
    _write_json(cfg.run_dir / RESULT_FILE, result)
    return result


def read_result(path: Path, key: str, selection: str) -> dict | None:
    """A cached result of this config hash and selection rule, or None."""
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return result if result.get("config_hash") == key and result.get("selection") == selection else None


def _train(cfg: Config, progress: bool):
    """Train to the last epoch, resuming ``last.pt`` when an earlier invocation was interrupted.

    ``fit`` writes ``results.json`` only once the last epoch is trained and evaluated: it marks a finished run
    (without loading a checkpoint); the folder is the config's own (its name holds the config hash).
    """
    finished = cfg.run_dir / "results.json"
    if finished.is_file():
        return
    last = cfg.run_dir / "last.pt"
    if last.is_file():
        logger.info("resuming %s from %s", cfg.run_dir, last)
    fit(cfg, resume=str(last) if last.is_file() else None, progress=progress)
    if not finished.is_file():
        raise RunInterrupted(f"{cfg.run_dir} stopped before its last epoch; run the same command again to resume")


def _score(cfg: Config, selection: str) -> dict:
    """The selected checkpoint's metrics on ``cfg.data.test`` (its EMA weights when it has them)."""
    name = "best.pt" if selection == "best_val" else "last.pt"
    ckpt = load_checkpoint(cfg.run_dir / name)
    metrics, _, _ = evaluate_checkpoint(ckpt, cfg, cfg.data.test, weights="auto")
    return {"checkpoint": name, "epoch": ckpt["epoch"], "weights": "model" if ckpt.get("ema") is None else "ema",
            "split": cfg.data.test, "val_voc07_map50": (ckpt.get("metrics") or {}).get(METRIC), "test": metrics}


def _write_json(path: Path, value: dict):
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=1))
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------------------
# executing the runs: in this process, or --jobs N spawned processes


LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"
EXIT_INTERRUPTED = 3


class _Progress:
    """``[run 3/12] sigmoid_focal seed 1 (elapsed 5m 02s, ETA 15m 10s)``: the ETA assumes the remaining runs take
    as long as the finished ones did (with --jobs N, N at a time, which the elapsed time already reflects)."""

    def __init__(self, total: int):
        self.total, self.started, self.finished, self.tic = total, 0, 0, time.perf_counter()

    def start(self, run: Run) -> str:
        self.started += 1
        elapsed = time.perf_counter() - self.tic
        eta = _duration(elapsed / self.finished * (self.total - self.finished)) if self.finished else "?"
        device = "" if run.cfg.train.device == "auto" else f" on {run.cfg.train.device}"
        return (f"[run {self.started}/{self.total}] {' = '.join(run.variants)} seed {run.seed}{device} "
                f"(elapsed {_duration(elapsed)}, ETA {eta})")

    def finish(self, run: Run, result: dict | None) -> str:
        self.finished += 1
        outcome = "failed" if result is None else (
            f"test mAP {_plain(result['test'][METRIC])} (train {_duration(result['train_s'])}, "
            f"eval {_duration(result['eval_s'])})")
        return f"[done {self.finished}/{self.total}] {' = '.join(run.variants)} seed {run.seed}: {outcome}"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m {seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def cached_results(runs: list[Run], selection: str) -> dict:
    """{run key: result} of the runs finished by an earlier invocation."""
    cached = {run.key: read_result(run.cfg.run_dir / RESULT_FILE, run.key, selection) for run in runs}
    return {key: result for key, result in cached.items() if result is not None}


def execute(runs: list[Run], selection: str, *, jobs: int = 1, devices: list[str] | None = None,
            progress: bool = True) -> tuple[dict, dict]:
    """Run every run without a cached result; returns ({run key: result}, {run key: why it failed}).

    A failed run (e.g. a diverging loss) is logged and left out; the others go on. ``RunInterrupted`` and
    ``KeyboardInterrupt`` stop everything (finished runs stay cached, the interrupted one resumes next time).
    ``devices``: run slot i (of ``jobs``) trains on ``devices[i % len(devices)]``; default: the config's device.
    """
    results = cached_results(runs, selection)
    todo = [run for run in runs if run.key not in results]
    logger.info("%d runs: %d finished earlier (cached), %d to run", len(runs), len(results), len(todo))
    for cfg in {json.dumps(dataclasses.asdict(r.cfg.data), sort_keys=True): r.cfg for r in todo}.values():
        prepare_data(cfg)  # generate / check the data once, before runs (or processes) use it
    if jobs == 1:
        failures = _run_sequential(todo, selection, results, devices, progress)
    else:
        failures = _run_parallel(todo, selection, results, jobs, devices)
    return results, failures


def _on_device(run: Run, device: str | None) -> Run:
    if device is None:
        return run
    cfg = copy.deepcopy(run.cfg)
    cfg.train.device = device
    return dataclasses.replace(run, cfg=cfg)


def _run_sequential(todo, selection, results, devices, progress) -> dict:
    clock, failures = _Progress(len(todo)), {}
    for run in todo:
        run = _on_device(run, devices[0] if devices else None)
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
    threads = max(1, (os.cpu_count() or 1) // jobs)  # the CPU's cores shared, not oversubscribed
    clock, failures, queue, free, alive = _Progress(len(todo)), {}, list(todo), list(range(jobs)), {}
    try:
        while queue or alive:
            while queue and free:
                slot, run = free.pop(0), queue.pop(0)
                run = _on_device(run, devices[slot % len(devices)] if devices else None)
                logger.info(clock.start(run))
                process = context.Process(target=_child, args=(run, selection, threads), name=run.name)
                process.start()
                alive[process.sentinel] = (process, run, slot)
            for sentinel in multiprocessing.connection.wait(list(alive)):
                process, run, slot = alive.pop(sentinel)
                process.join()
                free.append(slot)
                _collect(process.exitcode, run, selection, results, failures)
                logger.info(clock.finish(run, results.get(run.key)))
    finally:
        for process, _, _ in alive.values():  # after Ctrl-C they save a checkpoint and stop: wait for that
            process.join()
    return failures


def _collect(exitcode: int, run: Run, selection: str, results: dict, failures: dict):
    if exitcode == EXIT_INTERRUPTED:
        raise RunInterrupted(f"{run.cfg.run_dir} was interrupted; run the same command again to resume")
    result = read_result(run.cfg.run_dir / RESULT_FILE, run.key, selection) if exitcode == 0 else None
    if result is None:
        failures[run.key] = f"process exit code {exitcode} (the traceback is in the log above)"
        logger.error("run %s failed: %s", run.name, failures[run.key])
    else:
        results[run.key] = result


def _child(run: Run, selection: str, threads: int):
    """A --jobs process: one run; exit status 0 (done, result cached), 1 (failed) or EXIT_INTERRUPTED."""
    logging.basicConfig(level=logging.INFO, format=f"[{run.name}] {LOG_FORMAT}")
    torch.set_num_threads(threads)
    try:
        run_one(run, selection, progress=False)
    except RunInterrupted as exc:
        logger.warning("%s", exc)
        sys.exit(EXIT_INTERRUPTED)
    except Exception:
        logger.exception("run %s failed", run.name)
        sys.exit(1)


# ---------------------------------------------------------------------------------------------------------------
# results: rows, statistics, report


def collect_rows(ablation: Ablation, runs: list[Run], results: dict) -> list[dict]:
    """One row (``CSV_COLUMNS``) per variant and seed with a result (a run shared by two variants: one row each)."""
    rows = []
    for table in ablation.tables:
        for variant in table.variants:
            for run in sorted((r for r in runs if variant.name in r.variants), key=lambda r: r.seed):
                if run.key in results:
                    rows.append(_csv_row(table, variant, run, results[run.key]))
    return rows


def _csv_row(table: Table, variant: Variant, run: Run, result: dict) -> dict:
    row = {"table": table.title, "variant": variant.name, "label": variant.label, "seed": run.seed, "run": run.name}
    row.update({key: result[key] for key in ("config_hash", "selection", "checkpoint", "epoch", "weights", "split",
                                             "val_voc07_map50", "train_s", "eval_s")})
    row.update({key: result["test"][key] for key in ("voc07_map50", "voc_map50", "coco_ap", "coco_ap50",
                                                     "coco_ap75")})
    return row


def summarize_tables(ablation: Ablation, rows: list[dict]) -> list[dict]:
    """Per table and variant: summaries of VOC07 mAP, COCO AP and AP50 over seeds, and (except for the baseline)
    the paired difference of VOC07 mAP to the table's baseline with its verdict."""
    values: dict = {}
    for row in rows:
        for metric in (METRIC, "coco_ap", "coco_ap50"):
            if row[metric] is not None:
                values.setdefault((row["variant"], metric), {})[row["seed"]] = row[metric]
    variants = ablation.variants()
    summary = []
    for table in ablation.tables:
        baseline = values.get((table.baseline, METRIC), {})
        entries = []
        for variant in table.variants:
            own = values.get((variant.name, METRIC), {})
            entry = {"variant": variant.name, "label": variant.label, "reference": variant.reference,
                     "is_baseline": variant.name == table.baseline, "per_seed": own,
                     **{metric: summarize(values.get((variant.name, metric), {}).values())
                        for metric in (METRIC, "coco_ap", "coco_ap50")}}
            if not entry["is_baseline"]:
                entry["paired"] = paired_difference(own, baseline)
                entry["verdict"] = verdict(entry["paired"])
            entries.append(entry)
        summary.append({"title": table.title, "column": table.column, "baseline": table.baseline,
                        "baseline_label": variants[table.baseline].label, "rows": entries})
    return summary


SELECTION_TEXT = {
    "final": "`final`: the last epoch's weights (its EMA weights when trained with train.ema)",
    "best_val": "`best_val`: the epoch with the best VOC07 mAP@0.5 on data.val ({val}; never the test split)",
}


def describe_setup(ablation: Ablation, runs: list[Run], results: dict, failures: dict, *, command: str,
                   wall_s: float, devices: list[str] | None) -> dict:
    """The report header's facts: command, times, machine, device, selection rule and the runs without results."""
    variants = ablation.variants()
    missing = [f"{' = '.join(r.variants)} seed {r.seed}"
               + (f" (failed: {failures[r.key]})" if r.key in failures else " (not run)")
               for r in runs if r.key not in results]
    return {
        "name": ablation.name, "command": command, "wall_s": wall_s, "seeds": ablation.seeds,
        "runs_s": sum(results[r.key]["train_s"] + results[r.key]["eval_s"] for r in runs if r.key in results),
        "num_runs": len(runs), "num_finished": sum(r.key in results for r in runs), "missing": missing,
        "machine": f"{platform.platform()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, "
                   f"torch {torch.__version__}",
        "device": _device_description(devices or sorted({r.cfg.train.device for r in runs})),
        "selection": SELECTION_TEXT[ablation.selection].format(
            val=", ".join(sorted({v.cfg.data.val for v in variants.values()}))),
        "test": ", ".join(sorted({v.cfg.data.test for v in variants.values()})),
        "has_reference": any(v.reference is not None for v in variants.values()),
    }


def _device_description(devices) -> str:
    described = []
    for name in devices:
        if name == "auto":
            name = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(name)
        cuda = device.type == "cuda" and (device.index or 0) < torch.cuda.device_count()
        described.append(f"{name} ({torch.cuda.get_device_name(device.index or 0)})" if cuda else name)
    return ", ".join(described)


def format_markdown(summary: list[dict], setup: dict) -> str:
    """``ablation.md``: the header, then per reference table the results table and the per-seed values."""
    lines = [f"# Ablation `{setup['name']}`", "",
             f"- Command: `{setup['command']}`",
             f"- Wall time: {_duration(setup['wall_s'])} for this invocation; the {setup['num_finished']} "
             f"finished runs took {_duration(setup['runs_s'])} of training and evaluation in all (as recorded "
             f"when each ran)",
             f"- Machine: {setup['machine']}; device: {setup['device']}",
             f"- Checkpoint: {setup['selection']}, fixed before any test score; scored once on data.test "
             f"({setup['test']})",
             f"- mAP = VOC07 11-point mAP@0.5; mean ± sample std (ddof=1) over {setup['seeds']} seeds; 95% CI = "
             f"mean ± t(0.975, n-1)·std/√n. Δ = the paired per-seed difference to the baseline (same seed = same "
             f"data order and initialisation), with its 95% t CI; \"better\" / \"worse\" when that CI excludes 0."]
    if setup["has_reference"]:
        lines.append("- Reference: the single-run numbers of the reference experiment (VOC07 test), beside ours.")
    if setup["missing"]:
        lines.append(f"- Runs without a result ({len(setup['missing'])} of {setup['num_runs']}, left out of the "
                     f"statistics): " + "; ".join(setup["missing"]))
    for table in summary:
        lines += ["", f"## {table['title']}", "", *_results_table(table), "", *_verdict_sentences(table), "",
                  *_per_seed_table(table)]
    return "\n".join(lines) + "\n"


def _results_table(table: dict) -> list[str]:
    header = (f"| {table['column']} | reference mAP | mAP (mean ± std) | 95% CI | seeds | COCO AP | COCO AP50 | "
              f"Δ vs {table['baseline_label']} | 95% CI of Δ | verdict |")
    lines = [header, "|" + "---|" * header.count(" | ") + "---|"]
    for row in table["rows"]:
        paired = row.get("paired")
        comparison = ["(baseline)", "—", "—"] if row["is_baseline"] else [
            _signed(paired["mean"]), _interval(paired, signed=True), row["verdict"]]
        cells = [row["label"], "—" if row["reference"] is None else f"{row['reference']:.4f}",
                 _mean_std(row[METRIC]), _interval(row[METRIC]), str(row[METRIC]["n"]),
                 _mean_std(row["coco_ap"]), _mean_std(row["coco_ap50"]), *comparison]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _verdict_sentences(table: dict) -> list[str]:
    lines = []
    for row in table["rows"]:
        if not row["is_baseline"]:
            paired = row["paired"]
            numbers = "" if paired["n"] < 2 else (
                f" (Δ = {_signed(paired['mean'])}, 95% CI {_interval(paired, signed=True)}, "
                f"{paired['n']} paired seeds)")
            lines.append(f"- {row['label']} vs {table['baseline_label']}: {row['verdict']}{numbers}.")
    return lines


def _per_seed_table(table: dict) -> list[str]:
    seeds = sorted({s for row in table["rows"] for s in row["per_seed"]})
    lines = [f"| {table['column']} (mAP per seed) | " + " | ".join(f"seed {s}" for s in seeds) + " |",
             "|---|" + "---|" * len(seeds)]
    for row in table["rows"]:
        values = [f"{row['per_seed'][s]:.4f}" if s in row["per_seed"] else "—" for s in seeds]
        lines.append(f"| {row['label']} | " + " | ".join(values) + " |")
    return lines


def _mean_std(stats: dict) -> str:
    if stats["mean"] is None:
        return "—"
    return f"{stats['mean']:.4f}" if stats["std"] is None else f"{stats['mean']:.4f} ± {stats['std']:.4f}"


def _interval(stats: dict, signed: bool = False) -> str:
    if stats["ci_low"] is None:
        return "— (1 seed)" if stats["n"] == 1 else "—"
    fmt = _signed if signed else "{:.4f}".format
    return f"[{fmt(stats['ci_low'])}, {fmt(stats['ci_high'])}]"


def _plain(value) -> str:
    return "—" if value is None else f"{value:.4f}"


def _signed(value) -> str:
    return "—" if value is None else f"{value:+.4f}"


def write_csv(rows: list[dict], path: Path):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def write_plot(summary: list[dict], path: Path):
    """Bars of mean mAP per variant (one panel per table) with 95% CI error bars, the per-seed values as dots and
    the reference value as a diamond. The y axis is zoomed to the values: the differences are a fraction of mAP."""
    import textwrap
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend
    widths = [max(3.0, 1.6 * len(t["rows"])) for t in summary]
    fig = Figure(figsize=(sum(widths) + 1, 4.5))
    axes = fig.subplots(1, len(summary), squeeze=False, gridspec_kw={"width_ratios": widths})[0]
    for ax, table in zip(axes, summary):
        stats = [row[METRIC] for row in table["rows"]]
        means = [s["mean"] if s["mean"] is not None else np.nan for s in stats]
        errors = np.array([[s["mean"] - s["ci_low"], s["ci_high"] - s["mean"]] if s["ci_low"] is not None
                           else [0.0, 0.0] for s in stats]).T
        colours = ["tab:grey" if row["is_baseline"] else "tab:blue" for row in table["rows"]]
        ax.bar(range(len(stats)), means, yerr=errors, capsize=4, color=colours, alpha=0.8, label="mean, 95% CI")
        for i, row in enumerate(table["rows"]):
            ax.plot([i] * len(row["per_seed"]), list(row["per_seed"].values()), "k.", ms=5,
                    label="seeds" if i == 0 else None)
            if row["reference"] is not None:
                ax.plot(i, row["reference"], "D", color="tab:red", label="reference" if i == 0 else None)
        ax.set_ylim(*_zoomed_limits(table["rows"]))
        ax.set_xticks(range(len(stats)), [textwrap.fill(row["label"], 22) for row in table["rows"]], fontsize=7)
        ax.set_title(table["title"], fontsize=10)
        ax.set_ylabel("VOC07 mAP@0.5 (axis not from 0)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _zoomed_limits(rows: list[dict]) -> tuple[float, float]:
    values = [v for row in rows for v in row["per_seed"].values()]
    values += [row["reference"] for row in rows if row["reference"] is not None]
    values += [row[METRIC][k] for row in rows for k in ("ci_low", "ci_high") if row[METRIC][k] is not None]
    if not values:
        return 0.0, 1.0
    low, high = min(values), max(values)
    margin = max(0.2 * (high - low), 0.005)
    return max(0.0, low - margin), min(1.0, high + margin)


def write_report(output_dir, summary: list[dict], rows: list[dict], setup: dict) -> dict:
    """Writes ablation.md, ablation.csv and ablation.png into ``output_dir``; returns their paths."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {kind: output_dir / f"ablation.{kind}" for kind in ("md", "csv", "png")}
    paths["md"].write_text(format_markdown(summary, setup))
    write_csv(rows, paths["csv"])
    write_plot(summary, paths["png"])
    return paths


def run_ablation(ablation: Ablation, output_dir, *, jobs: int = 1, devices: list[str] | None = None,
                 progress: bool = True, report_only: bool = False, command: str = "") -> dict:
    """Plan, run what is not cached (nothing with ``report_only``), and write the report into ``output_dir``.

    Returns ``{"runs", "results", "failures", "rows", "summary", "paths"}`` (see ``plan_runs``, ``execute``,
    ``collect_rows``, ``summarize_tables`` and ``write_report``).
    """
    tic = time.perf_counter()
    runs = plan_runs(ablation, output_dir)
    if report_only:
        results, failures = cached_results(runs, ablation.selection), {}
    else:
        results, failures = execute(runs, ablation.selection, jobs=jobs, devices=devices, progress=progress)
    rows = collect_rows(ablation, runs, results)
    summary = summarize_tables(ablation, rows)
    setup = describe_setup(ablation, runs, results, failures, command=command, wall_s=time.perf_counter() - tic,
                           devices=devices)
    paths = write_report(output_dir, summary, rows, setup)
    return {"runs": runs, "results": results, "failures": failures, "rows": rows, "summary": summary,
            "paths": paths}


# ---------------------------------------------------------------------------------------------------------------
# command line


def parse_devices(text: str | None) -> list[str] | None:
    """``"cuda:0,cuda:1"`` -> ["cuda:0", "cuda:1"], each checked to exist on this machine."""
    if not text:
        return None
    devices = [d.strip() for d in text.split(",") if d.strip()]
    for name in devices:
        if name == "auto":
            continue
        try:
            device = torch.device(name)
        except RuntimeError:
            raise ConfigError(f"--devices: {name!r} is not a device name (e.g. cpu, cuda:0)") from None
        if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
            raise ConfigError(f"--devices: {name} does not exist here ({torch.cuda.device_count()} CUDA devices)")
    return devices


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m yolo.ablate",
                                     description="Run a multi-seed ablation and write its report.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--config", nargs="+", required=True, metavar="FILE",
                        help="ablation file(s) (configs/ablation/*.yaml); several make one report")
    parser.add_argument("--seeds", type=int, help="number of seeds (default: the files' `seeds`)")
    parser.add_argument("--output-dir", metavar="DIR", help="default: runs/ablation/<name of the file(s)>")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time, each in its own process")
    parser.add_argument("--devices", help="comma-separated devices for the --jobs slots, e.g. cuda:0,cuda:1 "
                                          "(default: each config's train.device)")
    parser.add_argument("--report-only", action="store_true", help="train nothing: report the finished runs")
    parser.add_argument("--no-progress", action="store_true", help="no per-epoch progress bars")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    command = shlex.join(["python", "-m", "yolo.ablate", *(sys.argv[1:] if argv is None else argv)])
    try:
        if args.jobs < 1:
            raise ConfigError(f"--jobs must be at least 1, got {args.jobs}")
        ablation = load_ablation(args.config, args.seeds)
        output_dir = Path(args.output_dir or Path("runs") / "ablation" / ablation.name)
        out = run_ablation(ablation, output_dir, jobs=args.jobs, devices=parse_devices(args.devices),
                           progress=not args.no_progress, report_only=args.report_only, command=command)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except RunInterrupted as exc:
        print(f"interrupted: {exc} (finished runs are cached)", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted: finished runs are cached; run the same command again to resume", file=sys.stderr)
        return 130
    print(out["paths"]["md"].read_text())
    print("wrote " + ", ".join(str(p) for p in out["paths"].values()))
    return 1 if out["failures"] else 0


if __name__ == "__main__":
    # The importable module's main, so log names and what --jobs processes unpickle say yolo.ablate, not __main__.
    from yolo.ablate import main as ablate_main
    sys.exit(ablate_main())
