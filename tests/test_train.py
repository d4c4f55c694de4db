"""Training end to end on a tiny synthetic set: exact resume, interruption, non-finite loss, the CLIs."""
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO, request_stop_at_step, tiny_args
from yolo.checkpoint import load_checkpoint
from yolo.engine import NonFiniteLoss
from yolo.fit import StopRequest, fit, lr_factor


def _weights(path):
    return load_checkpoint(path)["model"]


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("ema", [False, True])
def test_two_epochs_equal_one_epoch_then_resume(tiny_config, ema):
    tiny_config.train.ema = ema
    fit(tiny_config, progress=False)
    straight = _weights(tiny_config.run_dir / "last.pt")
    straight_ema = load_checkpoint(tiny_config.run_dir / "last.pt")["ema"]

    tiny_config.name, tiny_config.train.epochs = "split", 1
    fit(tiny_config, progress=False)
    assert load_checkpoint(tiny_config.run_dir / "last.pt")["epoch"] == 1
    tiny_config.train.epochs = 2
    fit(tiny_config, resume=str(tiny_config.run_dir / "last.pt"), progress=False)
    _assert_same_weights(straight, _weights(tiny_config.run_dir / "last.pt"))
    if ema:
        resumed_ema = load_checkpoint(tiny_config.run_dir / "last.pt")["ema"]
        assert resumed_ema["updates"] == straight_ema["updates"] == 8
        _assert_same_weights(straight_ema["module"], resumed_ema["module"])


@pytest.mark.parametrize("cls_loss", ["seesaw", "efl"])
def test_stateful_losses_resume_bit_exactly_with_their_statistics(tiny_config, cls_loss):
    """8 steps straight against 4 steps, a checkpoint, a fresh process state and 4 more: the same weights and the
    same running statistics, bit for bit (the statistics travel in the checkpoint)."""
    tiny_config.loss.cls_loss = cls_loss
    fit(tiny_config, progress=False)
    straight = load_checkpoint(tiny_config.run_dir / "last.pt")
    assert straight["loss_state"] and all(v.sum() > 0 for v in straight["loss_state"].values())

    tiny_config.name, tiny_config.train.epochs = "split", 1
    fit(tiny_config, progress=False)
    halfway = load_checkpoint(tiny_config.run_dir / "last.pt")["loss_state"]
    tiny_config.train.epochs = 2
    fit(tiny_config, resume=str(tiny_config.run_dir / "last.pt"), progress=False)
    resumed = load_checkpoint(tiny_config.run_dir / "last.pt")
    _assert_same_weights(straight["model"], resumed["model"])
    _assert_same_weights(straight["loss_state"], resumed["loss_state"])
    assert not any(torch.equal(halfway[k], resumed["loss_state"][k]) for k in halfway)   # it kept accumulating


def test_ema_follows_the_weights_with_a_warming_up_decay():
    from yolo.engine import ModelEMA
    from yolo.model import YOLO
    torch.manual_seed(0)
    model = YOLO(3, channels=16, head_convs=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ema = ModelEMA(model, decay=0.999)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        model.backbone.stem[1].running_mean.add_(2.0)
    ema.update()
    decay = 0.999 * (1 - math.exp(-1 / 2000))  # nearly 0 at first: the average starts at the live weights
    after, averaged = model.state_dict(), ema.module.state_dict()
    for key in ("heads.0.pred.weight", "backbone.stem.1.running_mean"):
        torch.testing.assert_close(averaged[key], decay * before[key] + (1 - decay) * after[key])
    assert torch.equal(averaged["backbone.stem.1.num_batches_tracked"], before["backbone.stem.1.num_batches_tracked"])
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_a_stop_request_saves_mid_epoch_and_resume_is_exact(tiny_config, monkeypatch):
    fit(tiny_config, progress=False)
    straight = _weights(tiny_config.run_dir / "last.pt")

    tiny_config.name = "interrupted"
    with pytest.MonkeyPatch.context() as patch:
        request_stop_at_step(patch, 6)      # epoch 2, step 2 of 4
        fit(tiny_config, progress=False)
    ckpt = load_checkpoint(tiny_config.run_dir / "last.pt")
    assert (ckpt["epoch"], ckpt["step_in_epoch"]) == (1, 2)
    assert not (tiny_config.run_dir / "results.json").exists()  # the run did not finish
    fit(tiny_config, resume=str(tiny_config.run_dir / "last.pt"), progress=False)
    _assert_same_weights(straight, _weights(tiny_config.run_dir / "last.pt"))


def test_signals_request_a_stop():
    stop = StopRequest()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        stop.install()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # a second SIGTERM ends the process
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def test_a_non_finite_loss_stops_with_the_terms_and_keeps_the_last_good_checkpoint(tiny_config, monkeypatch):
    tiny_config.train.epochs = 1
    fit(tiny_config, progress=False)
    good = _weights(tiny_config.run_dir / "last.pt")

    from yolo import engine
    real = engine.detection_loss

    def exploding(*args, **kwargs):
        terms = real(*args, **kwargs)
        terms["cls"] = terms["cls"] * float("nan")
        terms["total"] = terms["total"] + terms["cls"]
        return terms

    monkeypatch.setattr(engine, "detection_loss", exploding)
    tiny_config.train.epochs = 2
    with pytest.raises(NonFiniteLoss, match=r"epoch 1 step 1: obj=.* cls=nan"):
        fit(tiny_config, resume=str(tiny_config.run_dir / "last.pt"), progress=False)
    _assert_same_weights(good, _weights(tiny_config.run_dir / "last.pt"))


def test_run_folder_holds_config_log_checkpoints_results_and_tensorboard(tiny_config):
    metrics = fit(tiny_config, progress=False)
    run = tiny_config.run_dir
    assert {"config.yaml", "train.log", "last.pt", "best.pt", "results.json"} <= {p.name for p in run.iterdir()}
    results = json.loads((run / "results.json").read_text())
    assert results["val"]["voc07_map50"] == metrics["voc07_map50"] and results["config"]["name"] == "tiny"
    assert "epoch 2/2" in (run / "train.log").read_text()
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["config"] == tiny_config.to_dict() and ckpt["classes"][0] == "red_circle"

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(run))
    events.Reload()
    tags = events.Tags()
    assert {"train/total", "train/obj", "train/noobj", "train/cls", "train/box_xy", "train/box_wh", "train/lr",
            "train/grad_norm", "train/images_per_s", "val/voc07_map50", "val/coco_ap"} <= set(tags["scalars"])
    assert "val/predictions" in tags["images"]
    assert len(events.Scalars("val/voc07_map50")) == 2  # eval_every = 1


def test_fit_gives_back_the_signals_and_the_log_file(tiny_config):
    """An ablation runs many fits in one process: each must leave Ctrl-C and logging as it found them."""
    import logging
    before = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM),
              list(logging.getLogger("yolo").handlers))
    tiny_config.train.epochs = 1
    fit(tiny_config, progress=False)
    after = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM),
             list(logging.getLogger("yolo").handlers))
    assert after == before


def test_lr_schedule_warms_up_then_steps():
    from yolo.config import TrainConfig
    tcfg = TrainConfig(warmup_epochs=2, lr_steps=[60, 90], lr_gamma=0.1)
    assert lr_factor(0, 100, tcfg) == pytest.approx(0.001)
    assert lr_factor(100, 100, tcfg) == pytest.approx(0.5005)
    assert lr_factor(200, 100, tcfg) == 1.0 and lr_factor(5999, 100, tcfg) == 1.0
    assert lr_factor(6000, 100, tcfg) == pytest.approx(0.1) and lr_factor(9000, 100, tcfg) == pytest.approx(0.01)
    cosine = TrainConfig(warmup_epochs=0, scheduler="cosine", epochs=10)
    assert lr_factor(0, 10, cosine) == 1.0 and lr_factor(50, 10, cosine) == pytest.approx(0.5)


def _run(script, *args, **kwargs):
    return subprocess.run([sys.executable, str(REPO / script), *args], capture_output=True, text=True,
                          cwd=kwargs.pop("cwd", REPO), timeout=600, **kwargs)


def test_train_and_eval_commands(tiny_config, tmp_path):
    args = tiny_args(tiny_config) + ["--epochs", "1", "--no-progress"]
    train = _run("train.py", *args)
    assert train.returncode == 0, train.stderr
    assert '"voc07_map50"' in train.stdout
    ckpt = str(tiny_config.run_dir / "last.pt")

    dets, metrics = tmp_path / "dets.json", tmp_path / "metrics.json"
    evaluation = _run("eval.py", "--checkpoint", ckpt, "--split", "shapes:val", "--json", str(metrics),
                      "--save-detections", str(dets))
    assert evaluation.returncode == 0, evaluation.stderr
    assert "AP50 VOC07" in evaluation.stdout and "red_circle" in evaluation.stdout
    from_model = json.loads(metrics.read_text())

    # the saved detections, scored without the model, give the same numbers
    rescored = tmp_path / "rescored.json"
    external = _run("eval.py", "--detections", str(dets), "--data-root", tiny_config.data.root, "--split",
                    "shapes:val", "--json", str(rescored))
    assert external.returncode == 0, external.stderr
    again = json.loads(rescored.read_text())
    for key in ("voc07_map50", "voc_map50", "coco_ap", "coco_ap50", "per_class"):
        assert again[key] == from_model[key], key


def test_train_without_voc_explains_how_to_get_data_and_leaves_nothing_behind(tmp_path):
    result = _run("train.py", "--data-root", str(tmp_path / "nowhere"), cwd=tmp_path)
    assert result.returncode == 2
    assert "download_voc.py" in result.stderr and "configs/shapes.yaml" in result.stderr
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []  # no runs/voc/ with a log and a config


def test_a_failed_start_creates_no_run_folder(tiny_config, tmp_path):
    from yolo.errors import ConfigError
    (tmp_path / "empty").mkdir()
    tiny_config.data.dataset, tiny_config.data.root = "voc", str(tmp_path / "empty")
    with pytest.raises(ConfigError, match="no dataset at .*empty: expected .*; found an empty folder"):
        fit(tiny_config, progress=False)
    assert not tiny_config.run_dir.parent.exists()


def _md5s(folder):
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_resume_refuses_a_changed_run_and_touches_nothing(tiny_run, capsys):
    import train
    before = _md5s(tiny_run)
    last = str(tiny_run / "last.pt")
    assert train.main(["--resume", last, "--lr", "0.01", "--cls-loss", "sigmoid_focal", "--no-progress"]) == 2
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and "train.lr (0.002 -> 0.01)" in line and "loss.cls_loss ('ce' -> 'sigmoid_focal')" in line
    assert "train.epochs" in line  # the message says what may change
    assert train.main(["--resume", last, "--data.img_size", "96", "--no-progress"]) == 2
    assert "data.img_size (64 -> 96)" in capsys.readouterr().err
    assert _md5s(tiny_run) == before


def test_disk_full_stops_the_run_with_one_line_and_keeps_the_last_checkpoint(tiny_config, monkeypatch, capsys):
    import errno
    import train
    from yolo import checkpoint
    real_save, saves = torch.save, []

    def save_until_the_disk_is_full(obj, f):
        saves.append(1)
        if len(saves) > 2:  # epoch 1 writes best.pt and last.pt; the disk fills up during epoch 2's last.pt
            f.write(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(obj, f)

    monkeypatch.setattr(checkpoint.torch, "save", save_until_the_disk_is_full)
    assert train.main(tiny_args(tiny_config) + ["--epochs", "2", "--no-progress"]) == 1
    monkeypatch.undo()
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "No space left on device" in lines[0] and "last.pt" in lines[0], lines
    assert load_checkpoint(tiny_config.run_dir / "last.pt")["epoch"] == 1  # intact and loadable
    assert not [p for p in tiny_config.run_dir.iterdir() if p.name.endswith(".tmp")]
    assert not (tiny_config.run_dir / "results.json").exists()


def test_bad_config_values_are_one_line_errors(tmp_path):
    result = _run("train.py", "--cls-loss", "focal", cwd=tmp_path)
    assert result.returncode == 2 and "unknown loss 'focal'" in result.stderr and "Traceback" not in result.stderr


def test_eval_of_a_bad_detections_file_is_a_one_line_error(shapes_root, tmp_path):
    bad = tmp_path / "dets.json"
    bad.write_text(json.dumps([{"image_id": "nope", "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}]))
    result = _run("eval.py", "--detections", str(bad), "--data-root", str(shapes_root), "--split", "shapes:val")
    assert result.returncode == 2 and "Traceback" not in result.stderr and "nope" in result.stderr


def test_predict_draws_detections(tiny_config, tmp_path):
    tiny_config.train.epochs = 1
    fit(tiny_config, progress=False)
    images = sorted(Path(tiny_config.data.root).glob("VOCshapes/JPEGImages/*.jpg"))[:2]
    out = tmp_path / "pred"
    result = subprocess.run([sys.executable, "-m", "yolo.predict", "--checkpoint",
                             str(tiny_config.run_dir / "last.pt"), *map(str, images), "--out", str(out),
                             "--score", "0.0"], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr
    import cv2
    for image in images:
        drawn, original = cv2.imread(str(out / image.name)), cv2.imread(str(image))
        assert drawn.shape == original.shape and (drawn != original).any()  # boxes were drawn


def test_distributed_training_with_two_cpu_processes(tiny_config):
    args = tiny_args(tiny_config) + ["--epochs", "1", "--no-progress", "--name", "ddp"]
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                             "--standalone", str(REPO / "train.py"), *args], capture_output=True, text=True,
                            cwd=REPO, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count('"voc07_map50"') == 1  # rank 0 reports
    run = tiny_config.run_dir.parent / "ddp"
    assert (run / "last.pt").is_file() and (run / "results.json").is_file()
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["epoch"] == 1 and not any(k.startswith("module.") for k in ckpt["model"])


def test_overfits_real_voc_images(tmp_path):
    """The real-image path (JPEG decode, XML, difficult flags, 20 VOC classes) learns: a few VOC images from
    ../shared/voc-sample are memorised, from scratch, in about a minute on the CPU."""
    from conftest import shared_path
    from yolo.config import Config, update, validate
    sample = shared_path("voc-sample", "VOCdevkit", "VOC2012")
    devkit = tmp_path / "VOCdevkit" / "VOC2012"  # the sample, read in place, with a split of 8 images
    (devkit / "ImageSets" / "Main").mkdir(parents=True)
    for sub in ("Annotations", "JPEGImages"):
        (devkit / sub).symlink_to(sample / sub)
    ids = (sample / "ImageSets" / "Main" / "trainval.txt").read_text().split()[:8]
    (devkit / "ImageSets" / "Main" / "overfit.txt").write_text("\n".join(ids) + "\n")
    cfg = update(Config(), {
        "name": "voc-overfit", "output_dir": str(tmp_path / "runs"),
        "data": {"root": str(tmp_path / "VOCdevkit"), "train": "2012:overfit", "val": "2012:overfit",
                 "img_size": 96, "workers": 0, "zoom_out_p": 0.0, "min_iou_crop": False, "photometric_p": 0.0,
                 "hflip_p": 0.0},
        "model": {"pretrained": "none", "channels": 64, "head_convs": 1, "level_thresholds": [24.0, 48.0]},
        "train": {"epochs": 70, "batch_size": 8, "optimizer": "adamw", "lr": 0.003, "weight_decay": 0.0,
                  "warmup_epochs": 3, "scheduler": "cosine", "eval_every": 70, "log_every": 10, "device": "cpu"},
    })
    metrics = fit(validate(cfg), progress=False)
    assert metrics["voc07_map50"] > 0.5, metrics["voc07_map50"]


def test_a_reduced_shapes_run_learns_well_above_chance(tmp_path):
    """The shapes preset, reduced to run in about a minute (400 images of 96 px, 6 epochs): far above chance
    (an untrained model scores 0.000 here)."""
    from yolo.config import Config, load_yaml, update, validate
    cfg = update(Config(), load_yaml(REPO / "configs" / "shapes.yaml"))
    update(cfg, {"name": "reduced", "output_dir": str(tmp_path / "runs"),
                 "data": {"root": str(tmp_path / "shapes" / "VOCdevkit"), "img_size": 96, "workers": 0,
                          "shapes_train": 400, "shapes_val": 100, "shapes_test": 10, "shapes_size": 96},
                 "model": {"level_thresholds": [24.0, 48.0]},
                 "train": {"epochs": 6, "eval_every": 6, "device": "cpu"}})
    metrics = fit(validate(cfg), progress=False)
    assert metrics["voc07_map50"] > 0.04, metrics["voc07_map50"]  # measured 0.096 (seed 0, 2 CPU cores)


def test_fewer_training_images_than_a_batch_is_a_one_line_error(tiny_config, capsys):
    """It was a ZeroDivisionError traceback from lr_factor: no step in an epoch."""
    import train
    assert train.main(tiny_args(tiny_config) + ["--batch-size", "64", "--no-progress"]) == 2   # 32 images
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and ("data.train shapes:train has 32 images, fewer than one batch of "
                                "train.batch_size 64: use --batch-size 32 or less") in err
    assert not tiny_config.run_dir.exists()
