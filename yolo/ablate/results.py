"""The result of each run: a small JSON file committed next to the report, so an ablation continues where it
stopped, on any clone, and an interruption loses at most the run in progress.

``RESULTS/runs/<config hash>-seed<k>.json`` holds the run's key, protocol version, config, per-epoch val curve,
precision, training time, how many runs trained at once on the machine (``--jobs``), the number of training images
per class, the machine, device and code revision, and
``scores``: one entry per (checkpoint selection, scoring) with the selected checkpoint's epoch and its test
metrics (every metric, per-class AP included). Checkpoints stay in the run folder and are not committed.
"""
import functools
import json
import logging
import os
import subprocess
from pathlib import Path

from yolo.ablate.plan import PROTOCOL_VERSION, Run

logger = logging.getLogger(__name__)


def score_key(selection: str, scoring: str) -> str:
    """The key of one test score in ``result["scores"]``: ``best_val/default``, ``final/cls_scoring=softmax``."""
    return f"{selection}/{scoring}"


def read_result(run: Run) -> dict | None:
    """The committed result of ``run``, or None (absent, unreadable, or written for another key or protocol)."""
    path = run.result_path
    try:
        result = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        logger.warning("ignoring the result file %s (%s): the run is trained again", path, exc)
        return None
    if not isinstance(result, dict) or result.get("protocol") != PROTOCOL_VERSION:
        logger.warning("ignoring the result file %s: it is not a protocol-%d result", path, PROTOCOL_VERSION)
        return None
    if result.get("key") != run.key:        # renamed or copied by hand: the file name is not the run inside
        logger.warning("ignoring the result file %s: it holds the run %s, not %s", path, result.get("key"), run.key)
        return None
    return result


def missing_scores(result: dict, run: Run, selection: str) -> list[str]:
    """The scoring names ``run``'s variants need that ``result`` does not hold yet for ``selection``."""
    return [name for name in run.scorings if score_key(selection, name) not in result.get("scores", {})]


def write_result(path: Path, result: dict):
    """Write atomically (temporary file, then rename): a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(result, indent=1, sort_keys=False) + "\n")
    os.replace(tmp, path)


def stale_results(results_dir: Path, runs: list[Run]) -> list[Path]:
    """Result files in ``results_dir/runs`` that no planned run uses (another protocol version or config)."""
    planned = {run.result_path.name for run in runs}
    return sorted(p for p in (Path(results_dir) / "runs").glob("*.json") if p.name not in planned)


@functools.cache
def code_revision() -> str:
    """``git describe`` of the code that trained a run (``-dirty`` with uncommitted changes), or ``unknown``.

    Read once per process, when this module is imported (below): the checkout may move on while a long ablation
    trains, and the revision must name the code the process runs, not the one on disk when a run ends."""
    repo = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(repo), "describe", "--always", "--dirty", "--abbrev=12"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


code_revision()  # at import: the code this process runs
