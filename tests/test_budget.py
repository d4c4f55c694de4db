"""``train.time_budget``: the plan's arithmetic (the most epochs whose steps and evaluations fit), the schedule scaled
with it, and a budgeted run that trains its plan, stores it, and keeps it when resumed (exactly)."""
import json

import pytest
import torch

from conftest import request_stop_at_step
from yolo import budget
from yolo.budget import evaluations, make_plan, plan_epochs
from yolo.checkpoint import load_checkpoint
from yolo.config import TrainConfig, parse_duration
from yolo.errors import ConfigError
from yolo.fit import fit


@pytest.mark.parametrize("text,seconds", [("10m", 600), ("1.5h", 5400), ("90s", 90), ("600", 600), (600, 600)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["10 minutes", "-5m", "0", "m", "1d"])
def test_bad_durations_are_refused_naming_the_key(text):
    with pytest.raises(ConfigError, match=r"train.time_budget: expected a positive duration such as 10m"):
        parse_duration(text, "train.time_budget")


def test_evaluations_come_every_eval_every_epochs_and_after_the_last():
    assert [evaluations(e, 2) for e in (1, 2, 3, 4, 5)] == [1, 1, 2, 2, 3]
    assert [evaluations(e, 1) for e in (1, 7)] == [1, 7]


@pytest.mark.parametrize("remaining_s,step_s,steps_per_epoch,steps_done,eval_s,eval_every", [
    (600, 0.35, 187, 25, 12.0, 2),      # the shapes preset on 2 CPU cores
    (600, 0.35, 187, 25, 0.0, 1),
    (36_000, 0.05, 517, 25, 60.0, 10),  # VOC on a GPU, 10 hours
    (10, 0.35, 187, 25, 12.0, 2),       # less than one epoch: one anyway
])
def test_the_plan_is_the_most_epochs_that_fit(remaining_s, step_s, steps_per_epoch, steps_done, eval_s, eval_every):
    def cost(epochs):
        return (epochs * steps_per_epoch - steps_done) * step_s + evaluations(epochs, eval_every) * eval_s
    epochs = plan_epochs(remaining_s, step_s, steps_per_epoch, steps_done, eval_s, eval_every)
    assert epochs >= 1 and cost(epochs + 1) > remaining_s
    assert cost(epochs) <= remaining_s or epochs == 1


def test_the_schedule_keeps_its_shape():
    voc = TrainConfig()                                    # 160 epochs, warm-up 2, steps at 60 and 90
    plan = make_plan(voc, budget_s=3600, elapsed_s=100, step_s=1.0, steps_per_epoch=200, steps_done=25, eval_s=0,
                     batch_size=32)
    assert plan["epochs"] == 15 and plan["fits"]           # (0.9 * 3500 + 25) / 200 = 15.9
    assert plan["warmup_epochs"] == pytest.approx(2 * 15 / 160) and plan["lr_steps"] == [6, 8]
    assert plan["predicted_s"] == pytest.approx(100 + 15 * 200 - 25) and plan["images_per_s"] == 32
    schedule = budget.planned_schedule(voc, plan)
    assert (schedule.epochs, schedule.lr_steps, voc.epochs) == (15, [6, 8], 160)   # the config is left as it was
    too_short = make_plan(voc, budget_s=60, elapsed_s=10, step_s=1.0, steps_per_epoch=200, steps_done=25, eval_s=0,
                          batch_size=32)
    assert too_short["epochs"] == 1 and not too_short["fits"]
    assert "one epoch is more than the budget" in budget.describe(too_short, "step")


def _budgeted(cfg, monkeypatch, epochs: int = 3):
    """``cfg`` with a time budget whose plan is ``epochs`` epochs (the measurements are real, the rounding to
    epochs fixed: this machine's speed must not decide what the test checks); the first epoch is trained in three
    parts (1 step untimed, 2 timed, the rest)."""
    monkeypatch.setattr(budget, "PLAN_WARMUP_STEPS", 1)
    monkeypatch.setattr(budget, "PLAN_TIMED_STEPS", 2)
    monkeypatch.setattr(budget, "plan_epochs", lambda *args: epochs)
    cfg.train.time_budget, cfg.train.scheduler, cfg.train.amp, cfg.train.channels_last = "2m", "step", "none", True
    return cfg


def test_a_budgeted_run_trains_its_plan_and_stores_it(tiny_config, monkeypatch):
    cfg = _budgeted(tiny_config, monkeypatch)
    fit(cfg, progress=False)
    ckpt = load_checkpoint(cfg.run_dir / "last.pt")
    results = json.loads((cfg.run_dir / "results.json").read_text())
    plan = results["plan"]
    assert plan == ckpt["plan"] and plan["budget_s"] == 120 and plan["epochs"] == 3
    assert plan["warmup_epochs"] == pytest.approx(0.5 * 3 / 2) and plan["lr_steps"] == [2]   # [1] of 2 epochs
    assert plan["step_s"] > 0 and plan["eval_s"] > 0 and plan["steps_per_epoch"] == 4
    assert ckpt["epoch"] == 3 and [h["epoch"] for h in results["history"]] == [1, 2, 3]   # eval_every 1
    assert results["config"]["train"]["epochs"] == 2 and results["wall_s"] > 0           # the config as given
    log = (cfg.run_dir / "train.log").read_text()
    assert "time budget 120 s:" in log and "-> 3 epochs of 4 steps (configured: 2)" in log and "epoch 3/3:" in log
    # the plan's schedule: warm-up over 0.75 epochs = 3 steps, x0.1 from epoch 2 (step 8)
    lrs = [group["lr"] for group in ckpt["optimizer"]["param_groups"]]
    assert lrs[0] == pytest.approx(cfg.train.lr * cfg.train.lr_gamma)


def test_resume_keeps_the_plan_and_ends_with_the_weights_of_an_uninterrupted_run(tiny_config, monkeypatch):
    cfg = _budgeted(tiny_config, monkeypatch)
    fit(cfg, progress=False)
    straight = load_checkpoint(cfg.run_dir / "last.pt")

    cfg.name = "interrupted"
    with pytest.MonkeyPatch.context() as patch:
        steps = request_stop_at_step(patch, 6)          # SIGTERM at epoch 2, step 2 of 4: after the plan
        fit(cfg, progress=False)
    assert (load_checkpoint(cfg.run_dir / "last.pt")["step_in_epoch"], len(steps)) == (2, 6)
    monkeypatch.setattr(budget, "plan_epochs", lambda *args: pytest.fail("planned again on resume"))
    fit(cfg, resume=str(cfg.run_dir / "last.pt"), progress=False)
    resumed = load_checkpoint(cfg.run_dir / "last.pt")
    assert resumed["plan"]["epochs"] == 3 and resumed["epoch"] == 3
    for key, value in straight["model"].items():
        assert torch.equal(resumed["model"][key], value), key


def test_an_epoch_trained_in_parts_reports_the_mean_of_all_its_steps():
    from yolo.engine import merge_epoch_results
    parts = [{"terms": {"total": 2.0}, "steps": 3, "images": 8, "seconds": 1.0, "interrupted": False},   # step 2
             {"terms": {"total": 5.0}, "steps": 5, "images": 16, "seconds": 2.0, "interrupted": False},  # 3-4
             {"terms": {"total": 1.0}, "steps": 6, "images": 8, "seconds": 0.5, "interrupted": True}]    # 5
    out = merge_epoch_results(parts, start_step=2)          # resumed at step 2
    assert out["terms"]["total"] == pytest.approx((2.0 * 1 + 5.0 * 2 + 1.0 * 1) / 4)
    assert (out["steps"], out["images"], out["seconds"], out["interrupted"]) == (6, 32, 3.5, True)
