"""The studies of a tuning: one Optuna study per row in a journal file, and how workers share them.

Every row of the ablation file gets a study of its own (named after the row) in ``RESULTS/tune.journal``, Optuna's
``JournalStorage`` on a file: an append-only log that is committed beside the result files, so tuning continues on
a fresh clone, and that several processes (``--jobs``, local or SLURM jobs, several machines on one file system)
share. A worker *claims* a trial under a file lock: first a trial left running by a worker that is gone (it keeps
its values and resumes its run's ``last.pt`` where that exists), else a new trial of the row with the fewest
trials, until every row has the same number (the equal budget). Claiming is the only step that needs the lock;
``tell`` is a single journal append.

A running trial is orphaned when its worker released it (stopped by a signal); when its worker was a process of
this host that no longer runs (its pid gone, or taken by a later process: the id holds the process's start time);
or, for a worker of another host, when the heartbeat it rewrites every ``HEARTBEAT_S`` is older than ``STALE_S``
(a machine that died). A live process of this host is never taken over, however old its heartbeat: a worker
paused (SIGSTOP, Ctrl-Z, a machine asleep) continues its own run when it wakes, and two processes must never train
one run folder.
"""
import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import socket
import threading
import time
import warnings
from pathlib import Path

import optuna

from yolo.ablate.plan import DataFingerprints, Run, make_run
from yolo.ablate.spec import METRIC, Ablation, Variant
from yolo.errors import ConfigError
from yolo.tune.space import check_space, parse_space, with_params

logger = logging.getLogger(__name__)

JOURNAL = "tune.journal"
TRIALS = "trials"              # RESULTS/trials/runs/<key>.json: the trials' result files
HEARTBEAT_S = 120.0
STALE_S = 900.0
TUNE_KEYS = ("trials", "sampler", "sampler_seed", "seeds", "first_seed", "defaults")
SAMPLERS = {
    # Scrambled Sobol points. Optuna draws a study's first trial with the independent sampler (seeded random: the
    # search space is not known before it) and every later one from the sequence; a categorical takes one QMC
    # coordinate in [0, C) floored to a choice index, so each choice is equally likely.
    "qmc": lambda seed: _stable(optuna.samplers.QMCSampler, scramble=True, seed=seed,
                                warn_independent_sampling=False),
    "random": lambda seed: optuna.samplers.RandomSampler(seed=seed),
    "tpe": lambda seed: optuna.samplers.TPESampler(seed=seed),
}


def _stable(sampler, **kwargs):
    """``sampler(**kwargs)`` without Optuna's "experimental" warning (QMCSampler has been in Optuna since 3.0)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return sampler(**kwargs)


FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL)


@dataclasses.dataclass
class TuneSpec:
    trials: int = 8            # per row: the equal budget
    sampler: str = "qmc"
    sampler_seed: int = 0      # the same for every row and every worker (one QMC sequence)
    seeds: int = 5             # the seeds stage: each row's best trial retrained with this many fresh seeds ...
    first_seed: int = 1        # ... train.seed + first_seed, + first_seed + 1, ... (the trials train at + 0)
    defaults: Path | None = None   # results of the rows at their declared values (yolo.tune.outcome compares)


def load_tune(ablation: Ablation) -> tuple[TuneSpec, dict]:
    """The ``tune`` section and ``{row: search space}`` of ``ablation``, every bound checked against its config."""
    source = " + ".join(str(p) for p in ablation.files) or ablation.name
    raw = ablation.tune
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: no `tune` section: python -m yolo.tune needs one, such as "
                          f"tune: {{trials: 8, sampler: qmc, seeds: 5}}")
    unknown = [k for k in raw if k not in TUNE_KEYS]
    if unknown:
        raise ConfigError(f"{source}: tune: unknown key(s) {', '.join(map(str, unknown))}; allowed: "
                          f"{', '.join(TUNE_KEYS)}")
    spec = TuneSpec(**raw)
    for key in ("trials", "seeds", "sampler_seed", "first_seed"):
        value = getattr(spec, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < (0 if "seed" in key else 1):
            raise ConfigError(f"{source}: tune.{key} must be a{' non-negative' if 'seed' in key else ' positive'} "
                              f"integer, got {value!r}")
    if spec.sampler not in SAMPLERS:
        raise ConfigError(f"{source}: tune.sampler {spec.sampler!r} is not one of {', '.join(SAMPLERS)}")
    if spec.defaults is not None:
        if not isinstance(spec.defaults, str) or not ablation.files:
            raise ConfigError(f"{source}: tune.defaults must be a results folder (relative to the file), got "
                              f"{spec.defaults!r}")
        spec.defaults = (ablation.files[0].parent / spec.defaults).resolve()
    spaces = {}
    for variant in ablation.variants().values():
        spaces[variant.name] = parse_space(variant.search, f"{source}: row {variant.name}")
        check_space(variant.cfg, spaces[variant.name], f"{source}: row {variant.name}")
    if not any(spaces.values()):
        raise ConfigError(f"{source}: no row has a `search` space: there is nothing to tune")
    return spec, spaces


@dataclasses.dataclass
class Tuning:
    """Everything a worker needs: the rows, their spaces, the studies and where runs and results go."""
    ablation: Ablation
    spec: TuneSpec
    spaces: dict
    storage: optuna.storages.JournalStorage
    studies: dict                  # {row: optuna.Study} of the rows with a search space
    output_dir: Path
    results_dir: Path
    fingerprints: DataFingerprints = dataclasses.field(default_factory=DataFingerprints)

    @property
    def lock_path(self) -> Path:
        return self.results_dir / f"{JOURNAL}.claim.lock"


def open_tuning(ablation: Ablation, output_dir, results_dir) -> Tuning:
    """Load the spaces and open (or create) every row's study in ``results_dir/tune.journal``."""
    spec, spaces = load_tune(ablation)
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    storage = open_journal(results_dir / JOURNAL)
    existing = {s.study_name for s in storage.get_all_studies()}
    studies = {row: _open_study(storage, row, SAMPLERS[spec.sampler](spec.sampler_seed), existing)
               for row, space in spaces.items() if space}   # a row without a space trains as declared
    return Tuning(ablation, spec, spaces, storage, studies, Path(output_dir), results_dir)


def _open_study(storage, row: str, sampler, existing: set) -> optuna.Study:
    """Load the row's study, or create it. Loading appends nothing: ``create_study(load_if_exists=True)`` logs a
    creation to the journal on every call (then loads), a line per row each time a worker or report opens it."""
    if row in existing:
        return optuna.load_study(study_name=row, storage=storage, sampler=sampler)
    return optuna.create_study(storage=storage, study_name=row, direction="maximize", load_if_exists=True,
                               sampler=sampler)      # two workers may create it at once: the second loads it


def open_journal(path: Path) -> optuna.storages.JournalStorage:
    """Optuna's journal storage on ``path``, its file checked (and a torn last line set aside, see
    ``mend_journal``) under the lock that every append takes."""
    lock = optuna.storages.journal.JournalFileSymlinkLock(str(path))
    if path.is_file():
        lock.acquire()
        try:
            mend_journal(path)
        finally:
            lock.release()
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path), lock_obj=lock))


def mend_journal(path: Path):
    """A last line without its newline is a write cut short (a worker killed mid-append, or a copy or commit taken
    during one). Optuna skips it when reading, but the next append would run on from it and leave a line that
    makes the whole journal unreadable. It is moved to ``<journal>.torn`` (kept, never dropped) and the journal
    cut back to its last whole line. Any other line that is not a JSON record is refused, naming the line."""
    data = path.read_bytes()
    whole = data.rfind(b"\n") + 1
    if whole < len(data):
        with open(path.with_name(path.name + ".torn"), "ab") as torn:
            torn.write(data[whole:] + b"\n")
        with open(path, "r+b") as f:
            f.truncate(whole)
        logger.warning("%s: its last line (%d bytes) was cut short by an interrupted write; moved to %s.torn",
                       path, len(data) - whole, path.name)
    for number, line in enumerate(data[:whole].splitlines(), start=1):
        try:
            json.loads(line)
        except ValueError:
            raise ConfigError(f"{path}:{number}: not a record of Optuna's journal (a JSON object a line); the "
                              f"file was edited or merged by hand: restore it from git") from None


@contextlib.contextmanager
def claim_lock(path: Path):
    """An exclusive ``flock`` on ``path``: one worker claims at a time (on one host or a shared file system)."""
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def worker_id() -> str:
    """``host:pid:start``; ``start`` (the process's start time in clock ticks since boot, on Linux) tells this
    process from a later one that reuses its pid."""
    return f"{socket.gethostname()}:{os.getpid()}:{_start_ticks(os.getpid())}"


def _start_ticks(pid: int) -> str:
    """Field 22 of ``/proc/PID/stat`` ('' where there is none: another OS, or the process is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rpartition(")")[2].split()[19]       # after the command name, which may hold spaces: field 3 on


def orphaned(trial: optuna.trial.FrozenTrial, now: float) -> bool:
    """Whether a running ``trial`` has no live worker (see the module docstring)."""
    worker, beat = trial.user_attrs.get("worker", ""), trial.user_attrs.get("heartbeat", 0.0)
    if beat == 0.0:
        return True                                  # released by its worker
    host, pid, start = (worker.split(":") + ["", ""])[:3]
    if host == socket.gethostname() and pid.isdigit():
        return not _running(int(pid), start)
    return now - beat > STALE_S


def _running(pid: int, start: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass                                         # another user's process: it exists
    return not start or _start_ticks(pid) == start


def trial_counts(tuning: Tuning) -> dict:
    """{row: trials that count against the budget}: finished ones and those running (claimed)."""
    states = FINISHED + (optuna.trial.TrialState.RUNNING,)
    return {row: len(study.get_trials(deepcopy=False, states=states)) for row, study in tuning.studies.items()}


def claim_trial(tuning: Tuning) -> tuple[str, optuna.trial.FrozenTrial] | None:
    """(row, trial) this worker trains next, or None when every row has its budget and nothing is orphaned."""
    with claim_lock(tuning.lock_path):
        now = time.time()
        for row, study in tuning.studies.items():
            for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
                if orphaned(trial, now):
                    _mark(tuning.storage, trial._trial_id)
                    logger.info("%s trial %d: taken over (its worker is gone)", row, trial.number)
                    return row, study.get_trials(deepcopy=False)[trial.number]
        counts = trial_counts(tuning)
        open_rows = [row for row in tuning.studies if counts[row] < tuning.spec.trials]
        if not open_rows:
            return None
        row = min(open_rows, key=lambda r: counts[r])     # ties: table order
        study = tuning.studies[row]
        trial = study.ask(tuning.spaces[row])
        _mark(tuning.storage, trial._trial_id)
        return row, study.get_trials(deepcopy=False)[trial.number]


def _mark(storage, trial_id: int):
    storage.set_trial_user_attr(trial_id, "worker", worker_id())
    storage.set_trial_user_attr(trial_id, "heartbeat", time.time())


def release(tuning: Tuning, row: str, trial: optuna.trial.FrozenTrial):
    """Leave ``trial`` running but claimable at once (its worker was stopped; its run resumes from last.pt)."""
    tuning.storage.set_trial_user_attr(trial._trial_id, "heartbeat", 0.0)


@contextlib.contextmanager
def heartbeat(tuning: Tuning, row: str, trial: optuna.trial.FrozenTrial):
    """Rewrite the trial's heartbeat every ``HEARTBEAT_S`` while the block runs."""
    done = threading.Event()

    def beat():
        while not done.wait(HEARTBEAT_S):
            tuning.storage.set_trial_user_attr(trial._trial_id, "heartbeat", time.time())
    thread = threading.Thread(target=beat, name=f"heartbeat-{row}-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def trial_run(tuning: Tuning, row: str, params: dict, number: int) -> Run:
    """The run that trains ``row`` with a trial's ``params`` at the file's seed: a normal ablation run, whose result
    file lands in ``results_dir/trials/runs`` (apart from the seeds stage's), keyed by its config like any other."""
    variant: Variant = tuning.ablation.variants()[row]
    cfg = with_params(variant.cfg, params, f"{row} trial {number}")
    run = make_run(f"{row}-t{number}", cfg, tuning.fingerprints(cfg), tuning.output_dir,
                   tuning.results_dir / TRIALS)
    run.variants.append(row)
    run.scorings[variant.scoring_name] = variant.scoring
    return run


def best_val(result: dict) -> float:
    """The objective: the run's best ``METRIC`` on its validation split over its evaluations (never the test)."""
    return max(entry[METRIC] for entry in result["history"])
