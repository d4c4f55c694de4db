"""Configuration: defaults, YAML differences, CLI overrides and the errors for bad keys and values."""
import argparse
from pathlib import Path

import pytest
import yaml

from yolo.config import Config, add_config_args, config_from_args, from_dict, load_yaml, save_yaml
from yolo.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _parse(argv):
    parser = argparse.ArgumentParser()
    add_config_args(parser)
    return config_from_args(parser.parse_args(argv))


def test_defaults_are_the_voc_reproduction_recipe():
    cfg = _parse([])
    assert (cfg.model.neck, cfg.data.img_size, cfg.train.epochs, cfg.train.lr, cfg.train.lr_steps) == \
        ("fpn", 416, 160, 1e-3, [60, 90])
    assert (cfg.train.momentum, cfg.train.weight_decay, cfg.train.batch_size, cfg.train.warmup_epochs) == \
        (0.9, 5e-4, 32, 2.0)
    assert cfg.data.train == "2007:trainval+2012:trainval" and cfg.data.test == "2007:test"


def test_every_cli_spelling_overrides_a_field():
    assert _parse(["--cls-loss", "sigmoid_focal"]).loss.cls_loss == "sigmoid_focal"
    assert _parse(["--loss.cls_loss", "softmax_focal"]).loss.cls_loss == "softmax_focal"
    assert _parse(["--data-root", "/x/VOCdevkit"]).data.root == "/x/VOCdevkit"
    cfg = _parse(["--alpha", "[0.1, 0.2]", "--gamma", "1", "--ema", "true", "--name", "run7", "--multiscale",
                  "[320, 352]"])
    assert cfg.loss.alpha == [0.1, 0.2] and cfg.loss.gamma == 1.0 and isinstance(cfg.loss.gamma, float)
    assert cfg.train.ema is True and cfg.name == "run7" and cfg.data.multiscale == [320, 352]
    assert _parse(["--alpha", "null"]).loss.alpha is None


def test_yaml_holds_differences_and_cli_wins(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\nloss:\n  cls_loss: sigmoid_focal\n  gamma: 1.5\ntrain:\n  epochs: 3\n")
    cfg = _parse(["--config", str(path), "--gamma", "0.5"])
    assert (cfg.name, cfg.loss.cls_loss, cfg.loss.gamma, cfg.train.epochs) == ("mine", "sigmoid_focal", 0.5, 3)
    assert cfg.train.lr == 1e-3  # untouched fields keep their defaults


def test_base_files_are_followed(tmp_path):
    (tmp_path / "a.yaml").write_text("name: a\ntrain:\n  epochs: 5\n  lr: 0.01\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\nname: b\ntrain:\n  epochs: 7\n")
    assert load_yaml(tmp_path / "b.yaml") == {"name": "b", "train": {"epochs": 7, "lr": 0.01}}


@pytest.mark.parametrize("argv,message", [
    (["--cls-loss", "focal"], "unknown loss 'focal'; choose one of: ce, softmax_focal"),
    (["--neck", "bifpn"], "model.neck: 'bifpn' is not one of fpn, spp"),
    (["--epochs", "ten"], "train.epochs: expected int, got 'ten'"),
    (["--epochs", "0"], "train.epochs must be positive"),
    (["--img-size", "100"], "not a positive multiple of 32"),
    (["--alpha", "high"], "loss.alpha: 'high' is none of float or a list of float or null"),
    (["--ema", "maybe"], "train.ema: expected bool"),
    (["--neck", "spp"], "the spp neck needs 0 thresholds"),
])
def test_bad_values_are_rejected_with_a_clear_message(argv, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _parse(argv)


def test_unknown_keys_are_rejected(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("loss:\n  gama: 2\n")
    with pytest.raises(ConfigError, match="unknown key loss.gama.*did you mean gamma"):
        _parse(["--config", str(path)])
    path.write_text("optimiser: sgd\n")
    with pytest.raises(ConfigError, match="unknown key 'optimiser'"):
        _parse(["--config", str(path)])
    with pytest.raises(ConfigError, match="config file not found"):
        _parse(["--config", str(tmp_path / "missing.yaml")])


def test_saved_config_round_trips(tmp_path):
    cfg = _parse(["--cls-loss", "sigmoid_focal", "--alpha", "[0.5, 0.5]", "--epochs", "3"])
    save_yaml(cfg, tmp_path / "config.yaml")
    assert from_dict(yaml.safe_load((tmp_path / "config.yaml").read_text())) == cfg
    assert from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_are_valid(path):
    """Every training preset parses and validates (configs/ablation/ files are checked in test_ablate.py)."""
    cfg = _parse(["--config", str(path)])
    assert isinstance(cfg, Config) and cfg.name


def test_diff_configs_and_the_resume_rule():
    from yolo.config import check_resume, diff_configs
    stored = Config()
    assert diff_configs(stored, Config()) == {}
    more = Config()
    more.train.epochs, more.name, more.eval.conf_thresh, more.data.workers = 200, "other", 0.05, 0
    assert diff_configs(stored, more) == {"name": ("voc", "other"), "data.workers": ("auto", 0),
                                          "train.epochs": (160, 200), "eval.conf_thresh": (0.01, 0.05)}
    check_resume(stored, more)  # more epochs, another name, worker count and scoring: the same training
    for section, key, value in (("loss", "cls_loss", "sigmoid_focal"), ("data", "train", "2007:trainval"),
                                ("model", "channels", 64), ("train", "lr", 0.01), ("train", "lr_steps", [50]),
                                ("train", "seed", 1), ("train", "epochs", 100)):
        changed = Config()
        setattr(getattr(changed, section), key, value)
        with pytest.raises(ConfigError, match=rf"differs from the checkpoint's in {section}\.{key} "):
            check_resume(stored, changed)
