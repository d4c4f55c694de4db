"""Ablation runner: Student-t statistics on known numbers, the ablation-file contract and its errors, caching and
resuming, the report, and a tiny shapes ablation end to end (sequential, cached re-run, then --jobs 2)."""
import csv
import math
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from yolo import ablate
from yolo.ablate import (CSV_COLUMNS, RunInterrupted, config_hash, format_markdown, load_ablation,
                         paired_difference, plan_runs, run_ablation, run_one, summarize, summarize_tables,
                         t_quantile, verdict, write_report)
from yolo.config import ConfigError

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "configs" / "ablation"


def _tiny(root: Path) -> dict:
    """Two classification losses on a reduced shapes set: a few seconds per run on a busy CPU."""
    return {
        "base": str(REPO / "configs" / "shapes.yaml"), "seeds": 2, "selection": "best_val", "baseline": "ce",
        "overrides": {
            "data": {"root": str(root / "shapes" / "VOCdevkit"), "shapes_train": 32, "shapes_val": 8,
                     "shapes_test": 8, "shapes_size": 64, "img_size": 32, "workers": 0},
            "model": {"channels": 16, "head_convs": 1},
            "train": {"epochs": 1, "batch_size": 16, "eval_every": 1, "warmup_epochs": 0, "optimizer": "sgd"},
            "eval": {"conf_thresh": 0.0},  # an untrained head scores below the default 0.01: keep every box
        },
        "tables": [{"title": "Classification loss", "column": "classification loss", "rows": [
            {"name": "ce", "label": "CE", "overrides": {"loss": {"cls_loss": "ce"}}},
            {"name": "sigmoid_focal", "label": "sigmoid focal", "reference": 0.7195,
             "overrides": {"loss": {"cls_loss": "sigmoid_focal"}}}]}],
    }


def _write(path: Path, content: dict) -> Path:
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _fail(*args, **kwargs):
    raise AssertionError("a cached run was trained or evaluated again")


# ---------------------------------------------------------------------------------------------------------------
# statistics


@pytest.mark.parametrize("df,expected", [(2, 4.302653), (4, 2.776445), (10, 2.228139), (30, 2.042272)])
def test_t_quantile_matches_published_values(df, expected):
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=1e-6)


def test_t_quantile_closed_forms_and_symmetry():
    for p in (0.6, 0.9, 0.975, 0.995):
        assert t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-10)    # Cauchy
        assert t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-10)
        assert t_quantile(1 - p, 5) == pytest.approx(-t_quantile(p, 5), rel=1e-12)
    assert t_quantile(0.975, 1000) == pytest.approx(1.962339, abs=1e-6)   # close to the normal 1.959964
    with pytest.raises(ValueError, match="degrees of freedom"):
        t_quantile(0.975, 0)


def test_t_quantile_agrees_with_scipy():
    stats = pytest.importorskip("scipy.stats", reason="scipy (not a dependency) cross-checks the closed form")
    for df in range(1, 41):
        for p in (0.55, 0.9, 0.95, 0.975, 0.995):
            assert t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-9)


def test_summarize_known_numbers():
    s = summarize([0.70, 0.72, 0.71])
    half = 4.302653 * 0.01 / math.sqrt(3)
    assert (s["n"], s["mean"], s["std"]) == (3, pytest.approx(0.71), pytest.approx(0.01))
    assert s["ci_low"] == pytest.approx(0.71 - half, abs=1e-8)
    assert s["ci_high"] == pytest.approx(0.71 + half, abs=1e-8)
    one = summarize([0.5])
    assert one == {"n": 1, "mean": 0.5, "std": None, "ci_low": None, "ci_high": None}
    assert summarize([])["mean"] is None


def test_pairing_by_seed_separates_what_independent_intervals_cannot():
    baseline = {0: 0.70, 1: 0.74, 2: 0.66}
    variant = {0: 0.711, 1: 0.752, 2: 0.670, 7: 0.9}     # seed 7 has no baseline: not paired
    diff = paired_difference(variant, baseline)
    assert diff["seeds"] == [0, 1, 2]
    assert diff["mean"] == pytest.approx(0.011) and diff["std"] == pytest.approx(0.001)
    assert diff["ci_low"] == pytest.approx(0.011 - 4.302653 * 0.001 / math.sqrt(3), abs=1e-8)
    assert verdict(diff) == "better"
    # the unpaired 95% intervals of the two means overlap widely: only the pairing tells them apart
    a, b = summarize(baseline.values()), summarize([variant[s] for s in (0, 1, 2)])
    assert a["ci_high"] > b["ci_low"]
    assert verdict(paired_difference(baseline, variant)) == "worse"
    assert verdict(paired_difference({0: 0.7, 1: 0.71}, {0: 0.71, 1: 0.70})) == "not distinguishable at 2 seeds"
    assert verdict(paired_difference({0: 0.7}, {0: 0.6})).startswith("one seed: no confidence interval")


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
    shapes = load_ablation([SHIPPED / "shapes_conf_loss.yaml", SHIPPED / "shapes_cls_loss.yaml"])
    assert shapes.selection == "best_val" and shapes.seeds == 3
    assert all(v.reference is None and v.cfg.data.dataset == "shapes" for v in shapes.variants().values())
    runs = plan_runs(shapes, "unused")
    # six rows, five distinct configs: MSE (table 1) and CE (table 2) are one run per seed
    assert len(runs) == 5 * 3
    assert sorted(r.variants for r in runs if len(r.variants) > 1) == [["mse", "ce"]] * 3


@pytest.mark.parametrize("change,message", [
    (lambda a: a.update(seed=3), "unknown key(s) seed; allowed: base, overrides"),
    (lambda a: a["tables"][0]["rows"][0].update(lable="x"), "rows[0]: unknown key(s) lable"),
    (lambda a: a["tables"][0]["rows"][1].update(overrides={"loss": {"cls_los": "ce"}}),
     "rows[1] (sigmoid_focal): row overrides: unknown key loss.cls_los"),
    (lambda a: a["tables"][0]["rows"][1].update(overrides={"loss": {"cls_loss": "focal"}}),
     "unknown loss 'focal'"),
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


def test_config_hash_ignores_where_and_how_a_run_is_placed_but_not_what_it_learns(tmp_path):
    cfg = load_ablation([_write(tmp_path / "a.yaml", _tiny(tmp_path))]).variants()["ce"].cfg
    key = config_hash(cfg)
    for section, field, value in (("data", "root", "/elsewhere"), ("data", "workers", 8),
                                  ("train", "device", "cuda:1"), ("train", "log_every", 1)):
        setattr(getattr(cfg, section), field, value)
    cfg.name, cfg.output_dir, cfg.logdir = "x", "y", "z"
    assert config_hash(cfg) == key
    for section, field, value in (("loss", "gamma", 1.0), ("train", "seed", 1), ("eval", "nms_iou", 0.6)):
        changed = load_ablation([tmp_path / "a.yaml"]).variants()["ce"].cfg
        setattr(getattr(changed, section), field, value)
        assert config_hash(changed) != key


# ---------------------------------------------------------------------------------------------------------------
# runs: resume, cache, failures (fit and the evaluation replaced by fakes)


def _fake_metrics(value: float) -> dict:
    return {"voc07_map50": value, "voc_map50": value, "coco_ap": value / 2, "coco_ap50": value, "coco_ap75": 0.0}


def test_interrupted_run_resumes_from_last_pt_and_a_finished_run_is_cached(tmp_path, monkeypatch):
    run = plan_runs(load_ablation([_write(tmp_path / "a.yaml", _tiny(tmp_path))]), tmp_path / "out")[0]
    last = run.cfg.run_dir / "last.pt"
    run.cfg.run_dir.mkdir(parents=True)
    last.write_bytes(b"stand-in for the checkpoint an interrupted invocation saved")
    calls = []

    def fake_fit(cfg, resume=None, progress=True):
        calls.append(resume)
        if len(calls) == 2:                                          # the second try reaches the last epoch
            (cfg.run_dir / "results.json").write_text("{}")

    monkeypatch.setattr(ablate, "fit", fake_fit)
    monkeypatch.setattr(ablate, "load_checkpoint", lambda path: {"epoch": 1, "ema": None,
                                                                 "metrics": {"voc07_map50": 0.5}})
    monkeypatch.setattr(ablate, "evaluate_checkpoint", lambda ckpt, cfg, split, weights: (_fake_metrics(0.25),
                                                                                          {}, []))
    with pytest.raises(RunInterrupted, match="run the same command again to resume"):
        run_one(run, "best_val", progress=False)
    result = run_one(run, "best_val", progress=False)
    assert calls == [str(last), str(last)]
    assert (result["checkpoint"], result["split"], result["val_voc07_map50"]) == ("best.pt", "shapes:test", 0.5)
    assert result["test"]["voc07_map50"] == 0.25 and result["config_hash"] == run.key

    monkeypatch.setattr(ablate, "fit", _fail)
    monkeypatch.setattr(ablate, "evaluate_checkpoint", _fail)
    assert run_one(run, "best_val") == result
    # another selection rule scores the trained run again, without training it
    monkeypatch.setattr(ablate, "evaluate_checkpoint", lambda ckpt, cfg, split, weights: (_fake_metrics(0.2),
                                                                                          {}, []))
    assert run_one(run, "final")["checkpoint"] == "last.pt"


def test_a_failed_run_is_reported_and_the_others_go_on(tmp_path, monkeypatch):
    ablation = load_ablation([_write(tmp_path / "a.yaml", _tiny(tmp_path))])

    def fake_fit(cfg, resume=None, progress=True):
        if cfg.loss.cls_loss == "sigmoid_focal" and cfg.train.seed == 1:
            raise FloatingPointError("loss became NaN")
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        (cfg.run_dir / "results.json").write_text("{}")

    monkeypatch.setattr(ablate, "prepare_data", lambda cfg: None)
    monkeypatch.setattr(ablate, "fit", fake_fit)
    monkeypatch.setattr(ablate, "load_checkpoint", lambda path: {"epoch": 1, "ema": None, "metrics": None})
    monkeypatch.setattr(ablate, "evaluate_checkpoint",
                        lambda ckpt, cfg, split, weights: (_fake_metrics(0.3 + 0.1 * cfg.train.seed), {}, []))
    out = run_ablation(ablation, tmp_path / "out", progress=False, command="python -m yolo.ablate ...")
    assert list(out["failures"].values()) == ["FloatingPointError: loss became NaN"]
    assert len(out["rows"]) == 3
    focal = out["summary"][0]["rows"][1]
    assert focal["voc07_map50"]["n"] == 1 and focal["verdict"].startswith("one seed")
    markdown = out["paths"]["md"].read_text()
    assert "Runs without a result (1 of 4" in markdown
    assert "sigmoid_focal seed 1 (failed: FloatingPointError" in markdown
    assert "| sigmoid focal | 0.7195 | 0.3000 | — (1 seed) | 1 |" in markdown


# ---------------------------------------------------------------------------------------------------------------
# report


def test_report_on_known_numbers(tmp_path):
    ablation = load_ablation([_write(tmp_path / "a.yaml", _tiny(tmp_path))])
    values = {"ce": [0.70, 0.74, 0.66], "sigmoid_focal": [0.711, 0.752, 0.670]}
    rows = [{"variant": name, "seed": seed, "voc07_map50": v, "coco_ap": v / 2, "coco_ap50": v}
            for name, series in values.items() for seed, v in enumerate(series)]
    summary = summarize_tables(ablation, rows)
    setup = {"name": "a", "command": "python -m yolo.ablate --config a.yaml", "wall_s": 3725, "runs_s": 7300,
             "num_runs": 6, "num_finished": 6, "seeds": 3, "missing": [], "machine": "test machine",
             "device": "cpu", "selection": "`best_val`", "test": "shapes:test", "has_reference": True}
    markdown = format_markdown(summary, setup)
    half = 4.302653 * 0.04 / math.sqrt(3)
    assert f"| CE | — | 0.7000 ± 0.0400 | [{0.70 - half:.4f}, {0.70 + half:.4f}] | 3 | 0.3500 ± 0.0200 |" \
        in markdown
    half = 4.302653 * 0.001 / math.sqrt(3)
    assert "| sigmoid focal | 0.7195 | 0.7110 ± 0.0410 |" in markdown
    assert f"| +0.0110 | [{0.011 - half:+.4f}, {0.011 + half:+.4f}] | better |" in markdown
    assert (f"- sigmoid focal vs CE: better (Δ = +0.0110, 95% CI [{0.011 - half:+.4f}, {0.011 + half:+.4f}], "
            f"3 paired seeds).") in markdown
    assert "| classification loss | reference mAP |" in markdown and "Δ vs CE" in markdown
    assert "Wall time: 1h 02m for this invocation" in markdown
    assert "| sigmoid focal | 0.7110 | 0.7520 | 0.6700 |" in markdown     # the per-seed table
    paths = write_report(tmp_path / "report", summary, [], setup)
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths["png"].stat().st_size > 5000
    assert _read_csv(paths["csv"]) == [] and paths["csv"].read_text().startswith(",".join(CSV_COLUMNS[:3]))


# ---------------------------------------------------------------------------------------------------------------
# end to end


def test_tiny_ablation_end_to_end(tmp_path, monkeypatch):
    path = _write(tmp_path / "tiny.yaml", _tiny(tmp_path))
    out = tmp_path / "out"
    first = run_ablation(load_ablation([path]), out, progress=False, command="test")
    rows = _read_csv(out / "ablation.csv")
    assert len(rows) == 4 and tuple(rows[0]) == CSV_COLUMNS and not first["failures"]
    assert [(r["variant"], r["seed"]) for r in rows] == [("ce", "0"), ("ce", "1"), ("sigmoid_focal", "0"),
                                                         ("sigmoid_focal", "1")]
    assert {(r["selection"], r["checkpoint"], r["split"], r["epoch"]) for r in rows} == \
        {("best_val", "best.pt", "shapes:test", "1")}
    for run in first["runs"]:
        assert run.name == f"{run.variants[0]}-s{run.seed}-{run.key[:8]}"
        assert (out / "runs" / run.name / "ablation_result.json").is_file()
        assert list((out / "tb" / run.name).glob("events.out.tfevents.*"))

    # the statistics, by hand from the CSV: two seeds, t_{0.975, 1} = tan(0.475 pi) = 12.706205 (Cauchy)
    t = math.tan(0.475 * math.pi)
    ce, focal = ([float(r["voc07_map50"]) for r in rows if r["variant"] == name]
                 for name in ("ce", "sigmoid_focal"))
    ce_stats, focal_row = first["summary"][0]["rows"][0]["voc07_map50"], first["summary"][0]["rows"][1]
    half = t * np.std(ce, ddof=1) / math.sqrt(2)
    assert ce_stats["mean"] == pytest.approx(np.mean(ce))
    assert ce_stats["ci_low"] == pytest.approx(np.mean(ce) - half, rel=1e-9, abs=1e-12)
    differences = np.subtract(focal, ce)
    half = t * np.std(differences, ddof=1) / math.sqrt(2)
    assert focal_row["paired"]["ci_high"] == pytest.approx(differences.mean() + half, rel=1e-9, abs=1e-12)
    markdown = (out / "ablation.md").read_text()
    assert "| CE | — |" in markdown and "| sigmoid focal | 0.7195 |" in markdown
    assert f"| CE | — | {np.mean(ce):.4f} ± {np.std(ce, ddof=1):.4f} |" in markdown
    assert (out / "ablation.png").stat().st_size > 0

    # a re-run trains and evaluates nothing
    monkeypatch.setattr(ablate, "fit", _fail)
    monkeypatch.setattr(ablate, "evaluate_checkpoint", _fail)
    assert ablate.main(["--config", str(path), "--output-dir", str(out), "--no-progress"]) == 0
    assert _read_csv(out / "ablation.csv") == rows

    # a third seed, two runs at a time in spawned processes (which train for real): only the new runs train
    assert ablate.main(["--config", str(path), "--output-dir", str(out), "--seeds", "3", "--jobs", "2"]) == 0
    grown = _read_csv(out / "ablation.csv")
    assert len(grown) == 6 and [r for r in grown if r["seed"] != "2"] == rows
    assert {r["variant"] for r in grown if r["seed"] == "2"} == {"ce", "sigmoid_focal"}


def test_report_only_trains_nothing_and_lists_the_missing_runs(tmp_path, monkeypatch):
    ablation = load_ablation([_write(tmp_path / "a.yaml", _tiny(tmp_path))])
    monkeypatch.setattr(ablate, "fit", _fail)
    out = run_ablation(ablation, tmp_path / "out", report_only=True)
    assert out["rows"] == [] and "Runs without a result (4 of 4" in out["paths"]["md"].read_text()
    assert "ce seed 0 (not run)" in out["paths"]["md"].read_text()
