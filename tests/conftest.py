"""Shared fixtures: where ../shared lives, and a tiny synthetic dataset + config for end-to-end runs."""
import contextlib
import io
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

# A run small enough for a CPU test: 64 px images, a narrow head, a few images.
TINY = {
    "data": {"dataset": "shapes", "train": "shapes:train", "val": "shapes:val", "test": "shapes:test",
             "img_size": 64, "workers": 0, "shapes_train": 32, "shapes_val": 8, "shapes_test": 8,
             "shapes_size": 64, "zoom_out_max": 1.5},
    "model": {"pretrained": "none", "channels": 32, "head_convs": 1, "level_thresholds": [16.0, 32.0]},
    "train": {"epochs": 2, "batch_size": 8, "optimizer": "adamw", "lr": 0.002, "weight_decay": 0.0,
              "warmup_epochs": 0.5, "lr_steps": [1], "eval_every": 1, "log_every": 2, "device": "cpu"},
}


@pytest.fixture(scope="session", autouse=True)
def _autotune_cache_in_tmp(tmp_path_factory):
    """``yolo.autotune`` caches its decisions under $XDG_CACHE_HOME: the tests' own folder (shared by the tests of
    a session, and by the processes they start), never the user's. Session-wide and autouse, so it is in place
    before the session fixtures that train (``tiny_run``); a patch of its own, so a test's ``monkeypatch.undo()``
    does not give the user's cache back."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
        yield


def shared_path(*parts) -> Path:
    """A path under ../shared, or skip the test with the reason (a user's clone has no ../shared)."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not found: the reference material in ../shared is not available")
    return path


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory) -> Path:
    """The devkit of a tiny generated shapes set, shared by the tests of a session."""
    from yolo.data.shapes import ensure_shapes
    d = TINY["data"]
    root = tmp_path_factory.mktemp("shapes")
    return ensure_shapes(root, seed=0, num_train=d["shapes_train"], num_val=d["shapes_val"],
                         num_test=d["shapes_test"], image_size=d["shapes_size"])


@pytest.fixture
def tiny_config(shapes_root, tmp_path):
    """A validated Config for a 2-epoch CPU run on the tiny shapes set, writing under tmp_path."""
    from yolo.config import Config, update, validate
    cfg = update(Config(), TINY)
    cfg.data.root = str(shapes_root)
    cfg.output_dir = str(tmp_path / "runs")
    cfg.name = "tiny"
    return validate(cfg)


def tiny_args(cfg) -> list[str]:
    """The same configuration as command-line flags (for train.py / eval.py / torchrun)."""
    import json
    args = []
    for section, values in TINY.items():
        for key, value in values.items():
            args += [f"--{section}.{key}", json.dumps(value)]  # JSON is YAML, which the CLI parses
    return args + ["--data-root", cfg.data.root, "--output-dir", cfg.output_dir, "--name", cfg.name]


@pytest.fixture(scope="session")
def tiny_run(shapes_root, tmp_path_factory) -> Path:
    """The run folder of one finished 1-epoch tiny run (config.yaml, last.pt, best.pt), shared by the tests that
    only read it; copy a file before changing it."""
    from yolo.config import Config, update, validate
    from yolo.fit import fit
    cfg = update(Config(), TINY)
    cfg.data.root = str(shapes_root)
    cfg.output_dir = str(tmp_path_factory.mktemp("tiny-run"))
    cfg.name, cfg.train.epochs = "tiny", 1
    fit(validate(cfg), progress=False)
    return cfg.run_dir


def request_stop_at_step(monkeypatch, n: int) -> list:
    """What a SIGTERM does, at a known point: the run's stop request is set during its ``n``-th training step
    (counted over everything ``fit`` runs while the patch holds), so the run saves mid-epoch and stops. Returns the
    list that counts the steps."""
    from yolo import engine
    from yolo.fit import StopRequest
    stops, steps, real_step = [], [], engine.train_step

    class RecordedStop(StopRequest):
        def __init__(self):
            super().__init__()
            stops.append(self)

    def step_then_signal(*args, **kwargs):
        steps.append(1)
        if len(steps) == n:
            stops[-1].requested = True
        return real_step(*args, **kwargs)

    monkeypatch.setattr("yolo.fit.StopRequest", RecordedStop)
    monkeypatch.setattr(engine, "train_step", step_then_signal)
    return steps


def pycocotools_stats(gt_path: Path, results_path: Path) -> list:
    """The 12 numbers pycocotools' bbox evaluation prints for a ground-truth JSON and a results list: the
    reference our COCO scores must equal."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        evaluator = COCOeval(gt, gt.loadRes(str(results_path)), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return list(evaluator.stats[:12])
