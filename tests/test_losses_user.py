"""A user's own loss named module:function: it trains, its source is in the cache key, a broken one is a one-line
error at start, and a checkpoint never makes yolo import it."""
import hashlib
import importlib
import sys
import textwrap
import uuid

import pytest
import torch

from conftest import tiny_args
from yolo.ablate.plan import config_hash, hashed_config
from yolo.config import Config, validate
from yolo.errors import ConfigError
from yolo.engine import train_step
from yolo.losses import check_user_losses, detection_loss
from yolo.model import YOLO
from yolo.targets import assign_targets, make_grid

C = 4

POLY = """
import torch


def poly(logits, targets, poly_epsilon=0.0):
    # Poly-1 written by hand: it receives the config's poly_epsilon by name
    log_p_t = logits.float().log_softmax(-1).gather(1, targets[:, None]).squeeze(1)
    return -log_p_t + poly_epsilon * (1 - log_p_t.exp())


def objectness(logits, targets, pos_weight=1.0, neg_weight=1.0):
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), targets, reduction="none")
    return torch.where(targets > 0, pos_weight, neg_weight) * bce
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """write(source) -> a fresh importable module name holding ``source`` (removed from sys.modules after)."""
    monkeypatch.syspath_prepend(str(tmp_path))
    names = []

    def write(source: str, name: str | None = None) -> str:
        name = name or f"user_losses_{uuid.uuid4().hex[:8]}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        importlib.invalidate_caches()
        names.append(name)
        return name

    yield write
    for name in names:
        sys.modules.pop(name, None)


def _config(**loss) -> Config:
    cfg = Config()
    for key, value in loss.items():
        setattr(cfg.loss, key, value)
    return validate(cfg)


def _batch():
    grid = make_grid((64, 64), (8, 16, 32))
    boxes = torch.tensor([[[4.0, 4.0, 20.0, 20.0], [30.0, 30.0, 60.0, 62.0]], [[10.0, 40.0, 30.0, 60.0],
                                                                                [0.0, 0.0, 0.0, 0.0]]])
    labels = torch.tensor([[1, 3], [2, -1]])
    return grid, boxes, labels


def test_a_user_loss_trains_one_step_and_computes_what_it_says(user_module):
    module = user_module(POLY)
    cfg = _config(cls_loss=f"{module}:poly", conf_loss=f"{module}:objectness", poly_epsilon=1.0)
    cfg.model.level_thresholds = [24.0, 48.0]
    check_user_losses(cfg.loss, C)
    torch.manual_seed(0)
    model = YOLO(C, channels=16, head_convs=1)
    grid, boxes, labels = _batch()
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        preds = model(images)
    targets = assign_targets(boxes, labels, grid, (64, 64), (24.0, 48.0))
    # the user's functions, with the hyper-parameters bound by name, equal the built-in poly1 and bce
    builtin = detection_loss(preds, targets, grid, _config(cls_loss="poly1", conf_loss="bce").loss)
    user = detection_loss(preds, targets, grid, cfg.loss)
    for name in ("obj", "noobj", "cls", "total"):
        torch.testing.assert_close(user[name], builtin[name])
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    terms, grad_norm = train_step(model, images, boxes, labels, optimizer, cfg, cls_loss=cfg.loss.cls_loss,
                                  scaler=torch.amp.GradScaler("cpu", enabled=False), amp_dtype=None)
    torch.testing.assert_close(terms["total"], builtin["total"])
    assert torch.isfinite(grad_norm) and grad_norm > 0
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_the_cache_key_holds_the_user_loss_source_and_follows_its_edits(user_module, tmp_path):
    module = user_module(POLY)
    cfg = _config(cls_loss=f"{module}:poly")
    key = config_hash(cfg)
    assert key != config_hash(_config(cls_loss="poly1"))
    assert config_hash(cfg) == key                                            # the same file, the same key
    user_module(POLY.replace("(1 - log_p_t.exp())", "(1 - log_p_t.exp()) ** 2"), name=module)
    edited = config_hash(cfg)
    assert edited != key                                                     # an edited function trains again
    user_module(POLY + "\n\n# a comment\n", name=module)
    assert config_hash(cfg) not in (key, edited)                             # the whole file is hashed
    digest = hashlib.sha256((tmp_path / f"{module}.py").read_bytes()).hexdigest()
    assert hashed_config(cfg)["user_code"] == {"loss.cls_loss": digest}
    assert "user_code" not in hashed_config(_config(cls_loss="poly1"))      # built-in losses: keys unchanged


BROKEN = {
    "nan": ("def fn(logits, targets):\n    return logits.sum(-1) * float('nan')\n", "returned non-finite values"),
    "reduced": ("import torch.nn.functional as F\n\ndef fn(logits, targets):\n    return F.cross_entropy(logits, "
                "targets)\n", r"returned shape \(\) torch.float32; expected a float tensor of shape \(8,\)"),
    "detached": ("def fn(logits, targets):\n    return logits.detach().sum(-1)\n", "no gradient reaches the logits"),
    "inf_gradient": ("def fn(logits, targets):\n    return (logits - logits.detach()).abs().sqrt().sum(-1)\n",
                     "the gradient of the logits is not finite"),
    "raises": ("def fn(logits, targets):\n    raise ValueError('labels out of range')\n",
               "raised ValueError: labels out of range"),
    "import_error": ("raise RuntimeError('boom at import')\n", "cannot import .*RuntimeError: boom at import"),
    "syntax_error": ("def fn(logits, targets:\n", "cannot import .*SyntaxError"),
    "no_function": ("def other(logits, targets):\n    return logits.sum(-1)\n", "has no function fn"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_user_loss_is_a_one_line_error_at_start(user_module, case):
    source, message = BROKEN[case]
    module = user_module(source)
    with pytest.raises(ConfigError, match=message) as err:
        check_user_losses(_config(cls_loss=f"{module}:fn").loss, C)
    assert "\n" not in str(err.value) and f"loss.cls_loss {module}:fn" in str(err.value)


def test_a_missing_module_or_a_malformed_name_is_a_one_line_error():
    with pytest.raises(ConfigError, match="cannot import no_such_module_x.*ModuleNotFoundError"):
        check_user_losses(_config(conf_loss="no_such_module_x:fn").loss, C)
    for name in ("a:b:c", "mod:", "1mod:fn", "mod:fn-2"):
        with pytest.raises(ConfigError, match="is not module:function"):
            _config(cls_loss=name)
    with pytest.raises(ConfigError, match="unknown loss 'mod:fn'"):
        _config(box_loss="mod:fn")       # the box loss is not pluggable


def test_a_user_confidence_loss_gets_the_iou_target_when_asked(user_module):
    module = user_module("def fn(logits, targets):\n    assert ((targets == 0) | (targets == 1)).all(), 'soft'\n"
                         "    return logits.float() * 0 + (logits.float() - targets) ** 2\n")
    check_user_losses(_config(conf_loss=f"{module}:fn").loss, C)         # 0/1 targets: fine
    with pytest.raises(ConfigError, match="raised AssertionError: soft"):
        check_user_losses(_config(conf_loss=f"{module}:fn", conf_target="iou").loss, C)


def test_train_refuses_a_broken_user_loss_in_one_line_and_writes_nothing(tiny_config, user_module, capsys):
    import train
    module = user_module(BROKEN["nan"][0])
    args = tiny_args(tiny_config) + ["--cls-loss", f"{module}:fn", "--no-progress"]
    assert train.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: loss.cls_loss") and "non-finite" in err and "\n" not in err
    assert not tiny_config.run_dir.exists()


def test_a_checkpoint_never_makes_yolo_import_the_loss_it_names(tiny_run, user_module, tmp_path, capsys):
    """The module writes a marker when imported: resuming the checkpoint alone is refused before any import, and
    evaluating it never imports it (its classes are scored with a softmax)."""
    import eval as eval_cli
    import train
    from yolo.checkpoint import atomic_save, load_checkpoint
    marker = tmp_path / "imported"
    module = user_module(f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n" + POLY)
    ckpt = load_checkpoint(tiny_run / "last.pt")
    ckpt["config"]["loss"]["cls_loss"] = f"{module}:poly"
    path = tmp_path / "named.pt"
    atomic_save(ckpt, path)
    assert train.main(["--resume", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "a checkpoint never makes yolo import a module" in err and f"--cls-loss {module}:poly" in err
    assert eval_cli.main(["--checkpoint", str(path)]) == 0
    assert "eval never imports" in capsys.readouterr().out
    assert not marker.exists() and module not in sys.modules
