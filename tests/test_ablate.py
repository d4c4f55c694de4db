"""Ablation runner: statistics on known numbers (scipy-backed), the Holm correction, the long-tail buckets, the
ablation-file contract, the committed result files (reuse on a fresh clone, invalidation), the report, and a tiny
shapes ablation end to end (sequential, cached re-run, then --jobs 2)."""
import copy
import csv
import dataclasses
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from scipy import stats

from yolo.ablate import execute, plan
from yolo.ablate.buckets import assign_buckets, bucket_ap, bucket_of, describe_edges
from yolo.ablate.cli import main, run_ablation
from yolo.ablate.execute import Progress, RunInterrupted, duration, run_one
from yolo.ablate.plan import config_hash, plan_runs
from yolo.ablate.report import format_markdown, write_report
from yolo.ablate.spec import load_ablation
from yolo.ablate.stats import (holm, independent_difference, min_detectable_difference, paired_difference,
                               summarize, verdict, wilcoxon_floor)
from yolo.ablate.tables import CSV_COLUMNS, last_quarter_gain, summarize_tables
from yolo.config import Config
from yolo.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "configs" / "ablation"
T_975_2 = 4.302653    # Student t quantiles from the published tables
T_975_1 = 12.706205


def _tiny(root: Path) -> dict:
    """Two classification losses on a reduced shapes set: a few seconds per run on a busy CPU."""
    return {
        "base": str(REPO / "configs" / "shapes.yaml"), "seeds": 2, "selection": "best_val", "baseline": "ce",
        "results": str(root / "results"), "frequency_buckets": {"rare": 6, "frequent": None},
        "overrides": {
            "data": {"root": str(root / "shapes" / "VOCdevkit"), "shapes_train": 32, "shapes_val": 8,
                     "shapes_test": 8, "shapes_size": 64, "img_size": 32, "workers": 0},
            "model": {"channels": 16, "head_convs": 1},
            "train": {"epochs": 2, "batch_size": 16, "eval_every": 1, "warmup_epochs": 0, "optimizer": "sgd",
                      "amp": "none"},
            "eval": {"conf_thresh": 0.0},  # an untrained head scores below the default 0.01: keep every box
        },
        "tables": [{"title": "Classification loss", "column": "classification loss", "rows": [
            {"name": "ce", "label": "CE", "overrides": {"loss": {"cls_loss": "ce"}}},
            {"name": "sigmoid_focal", "label": "sigmoid focal", "reference": 0.7195,
             "overrides": {"loss": {"cls_loss": "sigmoid_focal"}}},
            {"name": "sigmoid_focal_softmax", "label": "sigmoid focal, scored with softmax",
             "overrides": {"loss": {"cls_loss": "sigmoid_focal"}}, "scoring": {"cls_scoring": "softmax"}}]}],
    }


def _write(path: Path, content: dict) -> Path:
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _fail(*args, **kwargs):
    raise AssertionError("a run with a result was trained or evaluated again")


# ---------------------------------------------------------------------------------------------------------------
# statistics


def test_summarize_known_numbers():
    s = summarize([0.70, 0.72, 0.71])
    half = T_975_2 * 0.01 / math.sqrt(3)
    assert (s["n"], s["mean"], s["std"]) == (3, pytest.approx(0.71), pytest.approx(0.01))
    assert s["ci_low"] == pytest.approx(0.71 - half, abs=1e-6) and s["ci_high"] == pytest.approx(0.71 + half, abs=1e-6)
    two = summarize([0.5, 0.6])
    assert two["ci_high"] - two["mean"] == pytest.approx(T_975_1 * np.std([0.5, 0.6], ddof=1) / math.sqrt(2),
                                                         rel=1e-6)
    assert summarize([0.5]) == {"n": 1, "mean": 0.5, "std": None, "ci_low": None, "ci_high": None}
    assert summarize([])["mean"] is None


def test_paired_t_test_by_hand_and_pairing_separates_what_independent_intervals_cannot():
    baseline = {0: 0.70, 1: 0.74, 2: 0.66}
    variant = {0: 0.711, 1: 0.752, 2: 0.670, 7: 0.9}     # seed 7 has no baseline: not paired
    diff = paired_difference(variant, baseline)
    assert diff["seeds"] == [0, 1, 2] and diff["wins"] == 3
    assert diff["mean"] == pytest.approx(0.011) and diff["std"] == pytest.approx(0.001)
    assert diff["ci_low"] == pytest.approx(0.011 - T_975_2 * 0.001 / math.sqrt(3), abs=1e-6)
    # t = 0.011 / (0.001 / sqrt 3) = 19.05 on 2 df: p = 1 - t / sqrt(2 + t^2), the df = 2 closed form
    t = 0.011 / (0.001 / math.sqrt(3))
    assert diff["p_value"] == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-6)
    assert verdict(diff, diff["p_value"]) == "better"
    # the unpaired 95% intervals of the two means overlap widely: only the pairing tells them apart
    assert summarize(baseline.values())["ci_high"] > summarize([variant[s] for s in (0, 1, 2)])["ci_low"]
    reverse = paired_difference(baseline, variant)
    assert verdict(reverse, reverse["p_value"]) == "worse" and reverse["wins"] == 0
    close = paired_difference({0: 0.7, 1: 0.71}, {0: 0.71, 1: 0.70})
    assert verdict(close, close["p_value"]) == "not distinguishable at 2 seeds"
    assert verdict(paired_difference({0: 0.7}, {0: 0.6}), None).startswith("one seed")
    # significant alone, not after a correction that pushes p over 0.05
    assert verdict(diff, 0.06) == "not distinguishable at 3 seeds"


def test_welch_difference_by_hand_for_samples_of_other_seeds():
    tuned, default = [0.70, 0.72, 0.74, 0.71, 0.73], [0.60, 0.66, 0.63]     # variances 0.00025 and 0.0009
    diff = independent_difference(tuned, default)
    se2 = 0.00025 / 5 + 0.0009 / 3                                            # 0.00035
    df = se2 ** 2 / ((0.00025 / 5) ** 2 / 4 + (0.0009 / 3) ** 2 / 2)          # Welch-Satterthwaite: 2.685
    t = 0.09 / math.sqrt(se2)
    assert diff["n"] == (5, 3) and diff["mean"] == pytest.approx(0.09)
    assert diff["p_value"] == pytest.approx(2 * stats.t.sf(t, df), rel=1e-9)
    half = stats.t.ppf(0.975, df) * math.sqrt(se2)
    assert (diff["ci_low"], diff["ci_high"]) == pytest.approx((0.09 - half, 0.09 + half), rel=1e-9)
    assert df == pytest.approx(2.6849, abs=1e-4) and diff["p_value"] < 0.05 < diff["p_value"] * 3
    swapped = independent_difference(default, tuned)                          # antisymmetric, same p
    assert swapped["mean"] == pytest.approx(-0.09) and swapped["p_value"] == pytest.approx(diff["p_value"])
    one = independent_difference([0.7], default)                              # one run: a difference, no test
    assert one["mean"] == pytest.approx(0.07) and one["ci_low"] is None and one["p_value"] is None
    assert independent_difference([], default)["mean"] is None
    assert independent_difference([0.5, 0.5], [0.5, 0.5])["p_value"] is None  # no spread on either side


def test_holm_adjustment_on_a_worked_example():
    # m = 4: sorted 0.005, 0.01, 0.03, 0.04 -> 4 x 0.005, 3 x 0.01, max(2 x 0.03, ...), max(1 x 0.04, 0.06)
    assert holm([0.01, 0.04, 0.03, None, 0.005]) == pytest.approx([0.03, 0.06, 0.06, None, 0.02])
    assert holm([0.5, 0.9]) == [1.0, 1.0] and holm([]) == [] and holm([None]) == [None]
    assert holm([0.02]) == [0.02]       # one comparison: nothing to correct


def test_min_detectable_difference_has_the_power_it_claims():
    std, n = 0.01, 5
    delta = min_detectable_difference(std, n)
    assert 0.9 * (2.776 + 0.941) * std / math.sqrt(n) < delta < 1.1 * (2.776 + 0.941) * std / math.sqrt(n)
    rng = np.random.default_rng(0)              # simulate the t-test at that true difference: power ~ 0.8
    samples = rng.normal(delta, std, size=(40000, n))
    t = samples.mean(1) / (samples.std(1, ddof=1) / math.sqrt(n))
    assert np.mean(np.abs(t) > 2.776445) == pytest.approx(0.8, abs=0.01)
    assert min_detectable_difference(2 * std, n) == pytest.approx(2 * delta, rel=1e-6)   # scales with the sd
    with pytest.raises(ValueError, match="n >= 2"):
        min_detectable_difference(std, 1)


def test_wilcoxon_cannot_reach_significance_at_five_seeds():
    assert [wilcoxon_floor(n) for n in (3, 5, 6)] == pytest.approx([0.25, 0.0625, 0.03125])


# ---------------------------------------------------------------------------------------------------------------
# the long tail and convergence


def test_bucket_assignment_edges_and_ap():
    buckets = {"rare": 300, "common": 500, "frequent": None}
    assert [bucket_of(n, buckets) for n in (0, 299, 300, 499, 500, 1574)] == \
        ["rare", "rare", "common", "common", "frequent", "frequent"]
    members = assign_buckets({"a": 1574, "b": 430, "c": 190, "d": 258}, buckets)
    assert members == {"rare": ["c", "d"], "common": ["b"], "frequent": ["a"]}
    per_class = {"a": {"ap50_voc07": 0.9}, "b": {"ap50_voc07": None}, "c": {"ap50_voc07": 0.2},
                 "d": {"ap50_voc07": 0.4}}
    assert bucket_ap(per_class, members) == {"rare": pytest.approx(0.3), "common": None, "frequent": 0.9}
    assert describe_edges(buckets) == "rare: < 300, common: 300-499, frequent: >= 500"


@pytest.mark.parametrize("buckets,message", [
    ({"rare": 300, "frequent": 100}, "increasing"), ({"rare": 300}, "last one null"), ([], "must map")])
def test_bad_frequency_buckets_are_refused(tmp_path, buckets, message):
    content = _tiny(tmp_path)
    content["frequency_buckets"] = buckets
    with pytest.raises(ConfigError, match=message):
        load_ablation([_write(tmp_path / "a.yaml", content)])


def test_code_revision_names_the_code_the_process_imported(monkeypatch):
    from yolo.ablate import results
    at_import = results.code_revision()

    def checkout_moved_on(*args, **kwargs):
        raise AssertionError("git must not be asked again after the import")
    monkeypatch.setattr(results.subprocess, "run", checkout_moved_on)
    assert results.code_revision() == at_import != ""


def test_last_quarter_gain_reads_the_val_curve():
    history = [{"epoch": e, "voc07_map50": v} for e, v in ((3, 0.5), (6, 0.62), (9, 0.69), (12, 0.695))]
    assert last_quarter_gain(history, 12) == pytest.approx(0.005)      # 12 vs 9 (= 3/4 of 12)
    every_2 = [{"epoch": e, "voc07_map50": v} for e, v in ((14, 0.666), (16, 0.680), (18, 0.675), (20, 0.678))]
    assert last_quarter_gain(every_2, 20) == pytest.approx(0.678 - 0.673)   # 3/4 of 20 = 15: halfway 14 to 16
    assert last_quarter_gain(history, 14) is None                      # no evaluation at the last epoch
    assert last_quarter_gain(history[-1:], 12) is None


def test_progress_eta_counts_the_runs_in_flight_with_jobs_2():
    """Four 60-minute runs two at a time: 2 h in all, so 1 h is left when the first two finish."""
    now = [0.0]
    clock = Progress(4, "best_val", jobs=2, clock=lambda: now[0])
    run = lambda i: SimpleNamespace(key=f"k{i}", variants=[f"v{i}"], seed=0,
                                    cfg=SimpleNamespace(train=SimpleNamespace(device="auto")))
    assert clock.start(run(0)).endswith("ETA ?)") and clock.start(run(1)).startswith("[run 2/4] v1 seed 0")
    now[0] = 3600.0
    assert clock.finish(run(0), None) == "[done 1/4] v0 seed 0: failed"
    assert clock.start(run(2)) == "[run 3/4] v2 seed 0 (elapsed 1h 00m, ETA 1h 00m)"   # (3 x 60 - 60) / 2
    clock.finish(run(1), None)
    assert clock.start(run(3)).endswith("ETA 1h 00m)")                              # (2 x 60 - 0) / 2
    now[0] = 5400.0
    assert clock.eta(now[0]) == "30m 00s"                                           # (2 x 60 - 2 x 30) / 2


# ---------------------------------------------------------------------------------------------------------------
# ablation files


def test_shipped_ablation_files_reproduce_the_reference_tables():
    voc = load_ablation([SHIPPED / "voc_conf_loss.yaml", SHIPPED / "voc_cls_loss.yaml"])
    assert voc.selection == "final"     # VOC's data.val is the test split: best-on-val would be best-on-test
    references = {name: (v.cfg.loss.conf_loss, v.cfg.loss.cls_loss, v.reference)
                  for name, v in voc.variants().items()}
    assert references == {
        "mse": ("mse", "ce", 0.7149), "bce": ("bce", "ce", 0.675), "ce": ("mse", "ce", None),
        "softmax_focal": ("mse", "softmax_focal", 0.7121),
        "softmax_modified_focal": ("mse", "softmax_modified_focal", 0.7138),
        "sigmoid_focal": ("mse", "sigmoid_focal", 0.7195)}
    assert [t.baseline for t in voc.tables] == ["mse", "ce"]
    files = [SHIPPED / f"shapes_{name}.yaml" for name in ("conf_loss", "cls_loss", "extended")]
    shapes = load_ablation(files)
    assert shapes.selection == "best_val" and shapes.seeds >= 3
    assert shapes.results_dir == (REPO / "docs" / "ablations" / "shapes").resolve()
    assert all(v.reference is None and v.cfg.data.dataset == "shapes" for v in shapes.variants().values())
    runs = plan_runs(shapes, "unused")
    variants = shapes.variants()
    # every row trains once per seed, except rows whose config another row already trains
    distinct = {config_hash(v.cfg) for v in variants.values()}
    assert len(runs) == len(distinct) * shapes.seeds < len(variants) * shapes.seeds
    scored_twice = [r for r in runs if len(r.scorings) > 1]
    assert scored_twice and all(set(r.scorings) == {"default", "cls_scoring=softmax"} for r in scored_twice)


def test_the_imbalance_ablation_files_validate_and_share_their_baseline_run():
    """configs/ablation/shapes_objectness.yaml + shapes_longtail.yaml (issue 25): every row validates, both
    baselines are the default config, trained once, and the protocol is the shapes_cls_loss one."""
    imbalance = load_ablation([SHIPPED / "shapes_objectness.yaml", SHIPPED / "shapes_longtail.yaml"])
    reference = load_ablation([SHIPPED / "shapes_cls_loss.yaml"])
    assert imbalance.results_dir == (REPO / "docs" / "ablations" / "shapes_imbalance").resolve()
    assert (imbalance.selection, imbalance.seeds, imbalance.buckets) == (reference.selection, reference.seeds,
                                                                         reference.buckets)
    variants = imbalance.variants()
    rows = {name: (v.cfg.loss.conf_loss, v.cfg.loss.conf_target, v.cfg.loss.cls_loss) for name, v in variants.items()}
    assert rows == {
        "mse": ("mse", "auto", "ce"), "focal_objectness": ("focal", "auto", "ce"), "mse_iou": ("mse", "iou", "ce"),
        "bce_iou": ("bce", "iou", "ce"), "qfl": ("qfl", "auto", "ce"), "vfl": ("vfl", "auto", "ce"),
        "ce": ("mse", "auto", "ce"), "seesaw": ("mse", "auto", "seesaw"), "efl": ("mse", "auto", "efl"),
        "poly1": ("mse", "auto", "poly1"), "poly1_focal": ("mse", "auto", "poly1_focal")}
    assert [t.baseline for t in imbalance.tables] == ["mse", "ce"]
    keys = {name: config_hash(v.cfg) for name, v in variants.items()}
    assert keys["mse"] == keys["ce"] == config_hash(reference.variants()["ce"].cfg)   # the protocol's CE + MSE run
    assert len(set(keys.values())) == len(keys) - 1              # every other row is a training of its own
    for v in variants.values():
        assert (v.cfg.train.amp, v.cfg.train.epochs, v.cfg.data.dataset) == ("bf16", 30, "shapes")


@pytest.mark.parametrize("change,message", [
    (lambda a: a.update(seed=3), "unknown key(s) seed; allowed: base, overrides"),
    (lambda a: a["tables"][0]["rows"][0].update(lable="x"), "rows[0]: unknown key(s) lable"),
    (lambda a: a["tables"][0]["rows"][1].update(overrides={"loss": {"cls_los": "ce"}}),
     "rows[1] (sigmoid_focal): row overrides: unknown key loss.cls_los"),
    (lambda a: a["tables"][0]["rows"][1].update(overrides={"loss": {"cls_loss": "focal"}}),
     "unknown loss 'focal'"),
    (lambda a: a["tables"][0]["rows"][2].update(scoring={"lr": 0.1}), "lr not an eval setting"),
    (lambda a: a["tables"][0]["rows"][2].update(scoring={"cls_scoring": "tanh"}),
     "eval.cls_scoring: 'tanh' is not one of auto, softmax, sigmoid"),
    (lambda a: a["overrides"]["data"].update(val="shapes:test"), "best-on-test"),
    (lambda a: a["overrides"]["train"].update(seed=5), "train.seed is set by the ablation runner"),
    (lambda a: a.update(baseline="mse"), "baseline 'mse' is not a row name; rows: ce, sigmoid_focal"),
    (lambda a: a.update(selection="best_test"), "selection 'best_test' is not one of final, best_val"),
    (lambda a: a["tables"][0]["rows"][1].update(name="ce"), "repeated: ce"),
    (lambda a: a["tables"][0]["rows"][1].update(name="a/b"), "must be letters, digits"),
    (lambda a: a["tables"][0]["rows"][1].update(reference="high"), "reference must be a number"),
    (lambda a: a.pop("selection"), "missing required key(s) selection"),
])
def test_ablation_file_errors_name_the_problem(tmp_path, change, message):
    content = _tiny(tmp_path)
    change(content)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_ablation([_write(tmp_path / "a.yaml", content)])


def test_files_of_one_report_must_agree_on_the_selection_rule(tmp_path):
    first = _write(tmp_path / "a.yaml", _tiny(tmp_path))
    other = _tiny(tmp_path)
    other["selection"], other["tables"][0]["rows"] = "final", [{"name": "bce", "overrides": {"loss": {
        "conf_loss": "bce"}}}]
    other["baseline"] = "bce"
    with pytest.raises(ConfigError, match="disagree on selection"):
        load_ablation([first, _write(tmp_path / "b.yaml", other)])


def test_config_hash_ignores_where_and_how_a_run_is_placed_but_not_what_it_learns(tmp_path, monkeypatch):
    cfg = load_ablation([_write(tmp_path / "a.yaml", _tiny(tmp_path))]).variants()["ce"].cfg
    key = config_hash(cfg)
    for section, field, value in (("data", "root", "/elsewhere"), ("data", "workers", 8),
                                  ("train", "device", "cuda:1"), ("train", "log_every", 1), ("train", "seed", 4),
                                  ("train", "channels_last", False), ("train", "compile", True)):
        setattr(getattr(cfg, section), field, value)
    cfg.name, cfg.output_dir, cfg.logdir = "x", "y", "z"
    assert config_hash(cfg) == key
    for section, field, value in (("loss", "gamma", 1.0), ("train", "amp", "bf16"), ("eval", "nms_iou", 0.6)):
        changed = load_ablation([tmp_path / "a.yaml"]).variants()["ce"].cfg
        setattr(getattr(changed, section), field, value)
        assert config_hash(changed) != key
    monkeypatch.setattr(plan, "PROTOCOL_VERSION", plan.PROTOCOL_VERSION + 1)   # a code change that alters results
    assert config_hash(cfg) != key


# The key of the default config at PROTOCOL_VERSION 3, with no data: a config field added since then changes it.
DEFAULT_KEY_PROTOCOL_3 = "8b1c7270ec61e9a93fec2c3842f150a165225f54d03c48bc289cbed5346ee201"


def test_a_new_config_field_at_its_neutral_value_keeps_every_cache_key(monkeypatch):
    assert config_hash(Config()) == DEFAULT_KEY_PROTOCOL_3, (
        "a config field added or changed since protocol 3 changed every cache key, so every committed result "
        "would be trained again: register the new field in yolo.ablate.plan.HASH_NEUTRAL with the value that "
        "reproduces the protocol, or bump PROTOCOL_VERSION if results change")
    cfg = Config()
    cfg.loss.extra_knob = "off"             # a field the protocol did not have ...
    monkeypatch.setattr(Config, "to_dict", lambda self: {**dataclasses.asdict(self), "loss": {
        **dataclasses.asdict(self.loss), "extra_knob": self.loss.extra_knob}})
    assert config_hash(cfg) != DEFAULT_KEY_PROTOCOL_3
    monkeypatch.setitem(plan.HASH_NEUTRAL, ("loss", "extra_knob"), "off")
    assert config_hash(cfg) == DEFAULT_KEY_PROTOCOL_3      # ... registered: the old key while it is neutral
    cfg.loss.extra_knob = "on"
    assert config_hash(cfg) != DEFAULT_KEY_PROTOCOL_3      # a run that uses it gets a key of its own


def test_the_cache_key_holds_the_data_but_not_where_it_lives(tmp_path):
    """Two datasets with the same split names but other images (or classes) never share a result; the same
    dataset moved elsewhere does."""
    ablation = load_ablation([_write(tmp_path / "a.yaml", _tiny(tmp_path))])
    key = plan_runs(ablation, tmp_path / "out")[0].key
    moved = tmp_path / "moved"
    shutil.copytree(tmp_path / "shapes", moved)
    ablation.variants()["ce"].cfg.data.root = str(moved / "VOCdevkit")
    assert plan_runs(ablation, tmp_path / "out")[0].key == key
    split = moved / "VOCdevkit" / "VOCshapes" / "ImageSets" / "Main" / "train.txt"
    split.write_text("".join(split.read_text().splitlines(keepends=True)[:-1]))     # one image fewer
    assert plan_runs(ablation, tmp_path / "out")[0].key != key
    shutil.copy(tmp_path / "shapes" / "VOCdevkit" / "VOCshapes" / "ImageSets" / "Main" / "train.txt", split)
    classes = moved / "VOCdevkit" / "classes.txt"
    classes.write_text(classes.read_text().replace("red_circle", "crimson_circle"))
    assert plan_runs(ablation, tmp_path / "out")[0].key != key


# ---------------------------------------------------------------------------------------------------------------
# runs: resume, result files, failures (fit and the evaluation replaced by fakes)


def _fake_metrics(value: float) -> dict:
    per_class = {name: {"ap50_voc07": value} for name in ("red_circle", "blue_cross")}
    return {"voc07_map50": value, "voc_map50": value, "coco_ap": value / 2, "coco_ap50": value, "coco_ap75": 0.0,
            "per_class": per_class}


def _fake_fit(calls: list, finish_at: int = 1, fail=lambda cfg: False):
    def fit(cfg, resume=None, progress=True, stop=None):
        calls.append(resume)
        if fail(cfg):
            raise FloatingPointError("loss became NaN")
        if len(calls) >= finish_at:
            cfg.run_dir.mkdir(parents=True, exist_ok=True)
            (cfg.run_dir / "best.pt").write_bytes(b"checkpoint")
            (cfg.run_dir / "results.json").write_text(json.dumps({
                "config": cfg.to_dict(), "history": [{"epoch": 1, "voc07_map50": 0.1}, {"epoch": 2,
                                                                                         "voc07_map50": 0.105}],
                "precision": "fp32", "train_s": 12.5}))
    return fit


def _fakes(monkeypatch, fit, score=lambda cfg: 0.25):
    monkeypatch.setattr(execute, "fit", fit)
    monkeypatch.setattr(execute, "prepare_data", lambda cfg: None)
    monkeypatch.setattr(execute, "class_images", lambda cfg: {"red_circle": 20, "blue_cross": 3})
    monkeypatch.setattr(execute, "load_checkpoint", lambda path: {"epoch": 2, "ema": None,
                                                                  "metrics": {"voc07_map50": 0.5}})
    monkeypatch.setattr(execute, "evaluate_checkpoint", lambda ckpt, cfg, split, weights: (
        _fake_metrics(score(cfg)), {}, []))


def test_runs_side_by_side_share_the_loader_workers_and_keep_their_cache_key(tmp_path, monkeypatch):
    config = _tiny(tmp_path)
    config["overrides"]["data"]["workers"] = "auto"
    config["overrides"]["train"]["device"] = "cuda:0"
    run = plan_runs(load_ablation([_write(tmp_path / "a.yaml", config)]), tmp_path / "out")[0]
    monkeypatch.setattr(execute, "local_device", lambda name: torch.device("cuda", 0))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    shared = execute.sharing_cores(run, 9)
    assert (shared.cfg.data.workers, run.cfg.data.workers) == (1, "auto")   # the planned run is left as it was
    assert shared.key == run.key == plan.run_key(shared.cfg, run.data_fingerprint)
    assert shared.result_path == run.result_path
    assert execute.sharing_cores(run, 1) is run                             # alone: the machine's own default
    config["overrides"]["data"]["workers"] = 4
    explicit = plan_runs(load_ablation([_write(tmp_path / "b.yaml", config)]), tmp_path / "out")[0]
    assert execute.sharing_cores(explicit, 9).cfg.data.workers == 4         # a number is taken as given


def test_interrupted_run_resumes_from_last_pt_and_its_result_file_is_written_once_done(tmp_path, monkeypatch):
    ablation = load_ablation([_write(tmp_path / "a.yaml", _tiny(tmp_path))])
    run = plan_runs(ablation, tmp_path / "out", ablation.results_dir)[0]
    last = run.cfg.run_dir / "last.pt"
    run.cfg.run_dir.mkdir(parents=True)
    last.write_bytes(b"stand-in for the checkpoint an interrupted invocation saved")
    calls = []
    _fakes(monkeypatch, _fake_fit(calls, finish_at=2))     # the second try reaches the last epoch
    with pytest.raises(RunInterrupted, match="run the same command again to resume"):
        run_one(run, "best_val", progress=False)
    assert not run.result_path.exists()
    result = run_one(run, "best_val", progress=False)
    assert calls == [str(last), str(last)]
    assert run.result_path == tmp_path / "results" / "runs" / f"{run.key}.json"
    assert json.loads(run.result_path.read_text()) == result
    assert (result["key"], result["protocol"], result["seed"], result["train_s"]) == \
        (run.key, plan.PROTOCOL_VERSION, 0, 12.5)
    score = result["scores"]["best_val/default"]
    assert (score["checkpoint"], score["split"], score["val_voc07_map50"], score["test"]["voc07_map50"]) == \
        ("best.pt", "shapes:test", 0.5, 0.25)
    assert result["history"][-1]["voc07_map50"] == 0.105 and result["class_images"]["blue_cross"] == 3
    assert result["code_revision"] != "" and "CPU cores" in result["machine"]

    monkeypatch.setattr(execute, "fit", _fail)
    monkeypatch.setattr(execute, "evaluate_checkpoint", _fail)
    assert run_one(run, "best_val") == result
    # another selection rule scores the trained run again from its checkpoint, without training it
    monkeypatch.setattr(execute, "evaluate_checkpoint", lambda ckpt, cfg, split, weights: (_fake_metrics(0.2),
                                                                                          {}, []))
    (run.cfg.run_dir / "last.pt").write_bytes(b"checkpoint")
    both = run_one(run, "final")
    assert both["scores"]["final/default"]["checkpoint"] == "last.pt"
    assert both["scores"]["best_val/default"] == result["scores"]["best_val/default"]


def test_a_failed_run_is_reported_and_the_others_go_on(tmp_path, monkeypatch):
    ablation = load_ablation([_write(tmp_path / "a.yaml", _tiny(tmp_path))])
    _fakes(monkeypatch, _fake_fit([], fail=lambda cfg: cfg.loss.cls_loss == "sigmoid_focal" and cfg.train.seed == 1),
           score=lambda cfg: 0.3 + 0.1 * cfg.train.seed)
    out = run_ablation(ablation, tmp_path / "out", progress=False, command="python -m yolo.ablate ...")
    assert list(out["failures"].values()) == ["FloatingPointError: loss became NaN"]
    assert len(out["rows"]) == 2 + 1 + 1        # ce x 2 seeds, each sigmoid-focal row x 1 seed
    focal = out["summary"][0]["rows"][1]
    assert focal["voc07_map50"]["n"] == 1 and focal["paired"]["voc07_map50"]["verdict"].startswith("one seed")
    markdown = out["paths"]["md"].read_text()
    assert "Runs without a result (1 of 4" in markdown
    assert "sigmoid_focal = sigmoid_focal_softmax seed 1 (failed: FloatingPointError" in markdown
    assert "| sigmoid focal | 0.7195 | 0.3000 | — (1 seed) | 1 |" in markdown
    assert out["paths"]["md"].parent == tmp_path / "results"     # the report lives with the result files


# ---------------------------------------------------------------------------------------------------------------
# report


def _known_rows():
    values = {"ce": [0.70, 0.74, 0.66], "sigmoid_focal": [0.711, 0.752, 0.670],
              "sigmoid_focal_softmax": [0.69, 0.735, 0.655]}
    return [{"variant": name, "table": "Classification loss", "seed": seed, "voc07_map50": v, "coco_ap": v / 2,
             "coco_ap50": v, "ap_rare": v - 0.2, "ap_frequent": v + 0.1, "last_quarter_gain": 0.004 * seed,
             "history": [{"epoch": 1, "voc07_map50": v / 2}, {"epoch": 2, "voc07_map50": v}]}
            for name, series in values.items() for seed, v in enumerate(series)]


def test_report_on_known_numbers(tmp_path):
    ablation = load_ablation([_write(tmp_path / "a.yaml", _tiny(tmp_path))])
    rows = _known_rows()
    summary = summarize_tables(ablation, rows)
    setup = {"name": "a", "command": "python -m yolo.ablate --config a.yaml", "wall_s": 3725, "train_s": 7300,
             "grid_wall_s": 4500,
             "num_runs": 6, "num_finished": 6, "seeds": 3, "missing": [], "stale": [], "machines": ["test machine"],
             "devices": ["cpu, bf16"], "revisions": ["abc123"], "selection": "`best_val`", "test": "shapes:test",
             "train": "shapes:train", "buckets": "rare: < 6, frequent: >= 6", "class_images": {},
             "has_reference": True, "tuned": {}}
    markdown = format_markdown(summary, setup)
    half = T_975_2 * 0.04 / math.sqrt(3)
    assert f"| CE | — | 0.7000 ± 0.0400 | [{0.70 - half:.4f}, {0.70 + half:.4f}] | 3 | 0.3500 ± 0.0200 |" \
        in markdown
    focal = summary[0]["rows"][1]["paired"]["voc07_map50"]
    softmax = summary[0]["rows"][2]["paired"]["voc07_map50"]
    assert [focal["p_holm"], softmax["p_holm"]] == holm([focal["p_value"], softmax["p_value"]])
    half = T_975_2 * 0.001 / math.sqrt(3)
    assert "| sigmoid focal | 0.7195 | 0.7110 ± 0.0410 |" in markdown
    assert f"| +0.0110 | [{0.011 - half:+.4f}, {0.011 + half:+.4f}] | {focal['p_holm']:.3f} | 3/3 |" in markdown
    assert "- sigmoid focal vs CE: better (Δ = +0.0110" in markdown
    assert "took 2h 01m summed over the runs (as recorded when each ran), about 1h 15m of wall time" \
        in markdown
    assert "0/3 seeds higher" in markdown and "Wilcoxon signed-rank test cannot go below p = 0.2500" in markdown
    assert "| CE | 0.5000 ± 0.0400 | (baseline) | 0.8000 ± 0.0400 | (baseline) |" in markdown   # the buckets
    assert "| CE | +0.0000, +0.0040, +0.0080 | +0.0080 | yes |" in markdown                  # convergence
    assert "| sigmoid focal | 0.7110 | 0.7520 | 0.6700 |" in markdown                          # per seed
    paths = write_report(tmp_path / "report", summary, [], setup, ablation.buckets)
    for chart in ("png", "curves", "buckets"):
        assert paths[chart].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths[chart].stat().st_size > 5000
    assert _read_csv(paths["csv"]) == [] and paths["csv"].read_text().startswith(",".join(CSV_COLUMNS[:3]))


# ---------------------------------------------------------------------------------------------------------------
# end to end


def test_tiny_ablation_end_to_end_continues_on_a_fresh_clone(tmp_path, monkeypatch):
    path = _write(tmp_path / "tiny.yaml", _tiny(tmp_path))
    out, results = tmp_path / "out", tmp_path / "results"
    first = run_ablation(load_ablation([path]), out, progress=False, command="test")
    rows = _read_csv(results / "ablation.csv")
    assert len(rows) == 6 and tuple(rows[0])[:len(CSV_COLUMNS)] == CSV_COLUMNS and not first["failures"]
    assert [(r["variant"], r["seed"]) for r in rows] == [(v, s) for v in ("ce", "sigmoid_focal",
                                                                          "sigmoid_focal_softmax") for s in "01"]
    assert {(r["selection"], r["checkpoint"], r["split"]) for r in rows} == {("best_val", "best.pt", "shapes:test")}
    assert len(first["runs"]) == 4 and len(list((results / "runs").glob("*.json"))) == 4
    for run in first["runs"]:
        assert run.name == f"{run.variants[0]}-s{run.seed}-{run.key[:8]}"
        assert list((out / "tb" / run.name).glob("events.out.tfevents.*"))
    focal, softmax = ([r for r in rows if r["variant"] == name] for name in ("sigmoid_focal", "sigmoid_focal_softmax"))
    assert [r["run"] for r in focal] == [r["run"] for r in softmax]          # one training, two scorings
    assert [r["scoring"] for r in softmax] == ["cls_scoring=softmax"] * 2

    # the statistics, by hand from the CSV: two seeds, t_{0.975, 1} = 12.706205
    ce = [float(r["voc07_map50"]) for r in rows if r["variant"] == "ce"]
    ce_stats = first["summary"][0]["rows"][0]["voc07_map50"]
    assert ce_stats["ci_low"] == pytest.approx(np.mean(ce) - T_975_1 * np.std(ce, ddof=1) / math.sqrt(2),
                                               rel=1e-6, abs=1e-9)
    markdown = (results / "ablation.md").read_text()
    assert f"| CE | — | {np.mean(ce):.4f} ± {np.std(ce, ddof=1):.4f} |" in markdown

    # a fresh clone: the committed result files and the ablation file, no checkpoint: nothing is trained again
    clone = tmp_path / "clone"
    shutil.copytree(results / "runs", clone / "results" / "runs")
    content = _tiny(tmp_path)
    content["results"] = str(clone / "results")
    cloned = _write(tmp_path / "clone.yaml", content)
    monkeypatch.setattr(execute, "fit", _fail)
    monkeypatch.setattr(execute, "evaluate_checkpoint", _fail)
    assert main(["--config", str(cloned), "--output-dir", str(clone / "out"), "--no-progress"]) == 0
    assert _read_csv(clone / "results" / "ablation.csv") == rows
    assert not (clone / "out").exists()

    # a code change that alters results: the protocol version is bumped and every run is trained again
    trained = []
    monkeypatch.setattr(execute, "fit", lambda cfg, resume=None, progress=True, stop=None: trained.append(cfg.name))
    monkeypatch.setattr(plan, "PROTOCOL_VERSION", plan.PROTOCOL_VERSION + 1)
    with pytest.raises(RunInterrupted):   # the fake fit writes no results.json: the run did not finish
        run_ablation(load_ablation([cloned]), clone / "out", progress=False)
    assert len(trained) == 1
    monkeypatch.undo()

    # a third seed, two runs at a time in spawned processes (which train for real): only the new runs train
    assert main(["--config", str(path), "--output-dir", str(out), "--seeds", "3", "--jobs", "2"]) == 0
    grown = _read_csv(results / "ablation.csv")
    assert len(grown) == 9 and [r for r in grown if r["seed"] != "2"] == rows
    # the report's wall time counts a run that shared the machine with another (--jobs 2) half
    done = [json.loads(p.read_text()) for p in sorted((results / "runs").glob("*.json"))]
    assert sorted(r["runs_at_once"] for r in done) == [1, 1, 1, 1, 2, 2]
    grid_wall_s = sum(r["train_s"] / r["runs_at_once"] for r in done)
    assert f"about {duration(grid_wall_s)} of wall time" in (results / "ablation.md").read_text()


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux: from /proc)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:     # ended meanwhile
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads the process table from /proc (Linux)")
def test_sigterm_to_the_runner_alone_stops_its_jobs_2_processes_each_saving_last_pt(tmp_path):
    config = _tiny(tmp_path)
    config["overrides"]["train"]["epochs"] = 10_000      # would train for hours: only the signal ends it
    path = _write(tmp_path / "a.yaml", config)
    out = tmp_path / "out"
    with open(tmp_path / "runner.log", "w") as log:
        runner = subprocess.Popen([sys.executable, "-m", "yolo.ablate", "--config", str(path), "--output-dir",
                                   str(out), "--jobs", "2", "--no-progress"], cwd=REPO, stdout=log, stderr=log)
        deadline = time.monotonic() + 240
        while len(list(out.glob("**/last.pt"))) < 2 and runner.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        workers = [pid for pid in _children(runner.pid)
                   if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")]
        os.kill(runner.pid, signal.SIGTERM)                  # the runner alone, not its process group
        returncode = runner.wait(timeout=240)
    text = (tmp_path / "runner.log").read_text()
    assert len(workers) == 2, text
    assert returncode == 130 and "interrupted: received SIGTERM" in text
    assert text.count("stopped at epoch") == 2               # each saved last.pt after its step, then stopped
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()]   # none left training unwatched
    assert not (tmp_path / "results" / "runs").exists()      # nothing finished, nothing reported as finished


def test_a_worker_stops_once_and_a_repeated_signal_does_not_kill_it_while_it_saves():
    previous = {sig: signal.getsignal(sig) for sig in execute.WorkerStop.signals}
    try:
        stop = execute.WorkerStop()
        stop.install()
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGINT)     # Ctrl-C reached the whole group ...
        os.kill(os.getpid(), signal.SIGTERM)    # ... and the runner forwards its own stop: still alive here
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested
        stop.uninstall()                        # fit's uninstall leaves the worker's handler in place
        os.kill(os.getpid(), signal.SIGINT)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def test_report_only_trains_nothing_and_lists_the_missing_runs(tmp_path, monkeypatch):
    ablation = load_ablation([_write(tmp_path / "a.yaml", _tiny(tmp_path))])
    monkeypatch.setattr(execute, "fit", _fail)
    out = run_ablation(ablation, tmp_path / "out", report_only=True)
    markdown = out["paths"]["md"].read_text()
    assert out["rows"] == [] and "Runs without a result (4 of 4" in markdown and "ce seed 0 (not run)" in markdown


def test_runs_pinned_to_bf16_are_refused_up_front_where_bf16_is_only_emulated(tmp_path, monkeypatch, capsys):
    config = _tiny(tmp_path)
    config["overrides"]["train"]["amp"] = "bf16"
    argv = ["--config", str(_write(tmp_path / "a.yaml", config)), "--output-dir", str(tmp_path / "out"),
            "--no-progress"]
    calls = []
    _fakes(monkeypatch, _fake_fit(calls))
    monkeypatch.setattr(execute, "native_bf16", lambda device: False)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: 4 of the 4 runs to train (ce seed 0 first) pin "
                                                   "train.amp: bf16, which cpu (") and "--allow-emulated-bf16" in err
    assert calls == [] and not (tmp_path / "results").exists()
    assert main(argv + ["--allow-emulated-bf16"]) == 0 and len(calls) == 4
    assert main(argv) == 0 and len(calls) == 4       # nothing left to train: nothing to refuse

    monkeypatch.setattr(execute, "native_bf16", lambda device: device.type == "cuda")
    runs = plan_runs(load_ablation([_write(tmp_path / "b.yaml", config)]), tmp_path / "out2")
    with pytest.raises(ConfigError, match="4 of the 4 runs"):
        execute.check_precision(runs, ["cpu"])
    fp32 = plan_runs(load_ablation([_write(tmp_path / "c.yaml", _tiny(tmp_path))]), tmp_path / "out3")
    execute.check_precision(fp32, ["cpu"])           # amp none: nothing pinned to bf16, nothing refused
    monkeypatch.setattr(execute, "native_bf16", lambda device: True)
    execute.check_precision(runs, None)              # a device with native bf16 trains them


def test_a_subset_run_writes_its_own_report_and_leaves_a_larger_one_untouched(tmp_path, monkeypatch):
    """Running one file of a set (or fewer seeds) must not replace the report of the whole set."""
    _fakes(monkeypatch, _fake_fit([]), score=lambda cfg: 0.3 + 0.1 * cfg.train.seed)
    whole = _tiny(tmp_path)
    run_ablation(load_ablation([_write(tmp_path / "whole.yaml", whole)]), tmp_path / "out", progress=False)
    results = tmp_path / "results"
    before = {p.name: p.read_bytes() for p in results.glob("ablation*")}
    assert set(before) == {"ablation.md", "ablation.csv", "ablation.png", "ablation_curves.png",
                           "ablation_buckets.png"}

    subset = copy.deepcopy(whole)
    subset["tables"][0]["rows"] = subset["tables"][0]["rows"][:1]
    out = run_ablation(load_ablation([_write(tmp_path / "subset.yaml", subset)]), tmp_path / "out",
                       progress=False)
    assert out["paths"]["md"] == results / "ablation-subset.md"
    assert {p.name: p.read_bytes() for p in results.glob("ablation*") if p.name in before} == before
    assert "| CE | 0.3000 | 0.4000 |" in out["paths"]["md"].read_text()
    assert "sigmoid" not in out["paths"]["md"].read_text()

    fewer = run_ablation(load_ablation([results.parent / "whole.yaml"], seeds=1), tmp_path / "out",
                         progress=False)                                   # one seed of the two: also a subset
    assert fewer["paths"]["md"] == results / "ablation-whole.md"
    assert (results / "ablation.md").read_bytes() == before["ablation.md"]
    again = run_ablation(load_ablation([results.parent / "whole.yaml"]), tmp_path / "out", progress=False)
    assert again["paths"]["md"] == results / "ablation.md"                # the same coverage: rewritten
