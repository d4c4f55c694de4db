"""A user's own loss, named ``module:function`` (``--cls-loss my_losses:poly2``, ``--conf-loss my_losses:obj``).

Naming a module runs its code: the module is imported (from the working directory or ``PYTHONPATH``) when a
training run starts. Only a config the user gives (a YAML file or a flag) makes yolo import anything; a checkpoint
never does: it stores the name, ``train.py --resume`` refuses to re-import a module that only the checkpoint names,
and evaluation never imports the loss at all. The contract is in docs/losses.md: the same as the built-in losses,
unreduced, one value per row.
"""
import hashlib
import importlib
import importlib.util
import re
from pathlib import Path

import torch

from yolo.errors import ConfigError
from yolo.losses.common import bind_hparams

USER_LOSS_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")
USER_LOSS_KEYS = ("cls_loss", "conf_loss")   # the box loss is not pluggable by name
CHECK_ROWS = 8                               # rows of the random batch a user loss is checked on at start


def is_user_loss(name: str) -> bool:
    return ":" in name


def check_name(key: str, name: str):
    """A syntactic check only (config validation imports nothing)."""
    if not USER_LOSS_NAME.fullmatch(name):
        raise ConfigError(f"loss.{key}: {name!r} is not module:function (e.g. my_losses:poly2)")


def load_user_loss(name: str, key: str = "loss"):
    """Import ``module`` and return its ``function``; a one-line ConfigError when that fails."""
    module_name, fn_name = name.split(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:   # the user's module may raise anything while it is imported
        raise ConfigError(f"loss.{key} {name}: cannot import {module_name} ({_reason(exc)}); it must be importable "
                          f"from the working directory or PYTHONPATH") from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise ConfigError(f"loss.{key} {name}: {module_name} has no function {fn_name}")
    return fn


def source_sha256(name: str, key: str = "loss") -> str:
    """sha256 of the source file of the module a user loss names (the whole file: an edit to a helper beside the
    function changes it too; code the module imports from elsewhere does not). Finds the file without importing the
    module itself (a dotted name imports its parent packages)."""
    module_name = name.split(":")[0]
    try:
        spec = importlib.util.find_spec(module_name)
    except Exception as exc:
        raise ConfigError(f"loss.{key} {name}: cannot find {module_name} ({_reason(exc)})") from None
    if spec is None or not spec.origin or not Path(spec.origin).is_file():
        raise ConfigError(f"loss.{key} {name}: no source file for module {module_name} on the path (the working "
                          f"directory or PYTHONPATH)")
    return hashlib.sha256(Path(spec.origin).read_bytes()).hexdigest()


def user_losses(loss_cfg) -> dict:
    """``{config key: name}`` of the losses that name a module (``{}`` for built-in losses only)."""
    return {key: getattr(loss_cfg, key) for key in USER_LOSS_KEYS if is_user_loss(getattr(loss_cfg, key))}


def check_user_loss(key: str, name: str, num_classes: int, hparams: dict, soft_targets: bool = False):
    """Import a user loss and call it once on random logits: it must return one finite value per row and give the
    logits a finite gradient. Raises a one-line ConfigError naming what is wrong. Uses its own generator, so the
    run's random streams are untouched."""
    fn = bind_hparams(load_user_loss(name, key), hparams)
    generator = torch.Generator().manual_seed(0)
    if key == "cls_loss":
        logits = 3 * torch.randn(CHECK_ROWS, num_classes, generator=generator)
        targets = torch.randint(0, num_classes, (CHECK_ROWS,), generator=generator)
    else:
        logits = 3 * torch.randn(CHECK_ROWS, generator=generator)
        targets = (torch.arange(CHECK_ROWS) % 2).float()
        if soft_targets:           # the IoU target: values in (0, 1] on positive cells
            targets = targets * torch.rand(CHECK_ROWS, generator=generator).clamp(min=0.05)
    logits.requires_grad_()
    where = f"loss.{key} {name} on random logits {tuple(logits.shape)}"
    try:
        value = fn(logits, targets)
    except Exception as exc:
        raise ConfigError(f"{where}: raised {_reason(exc)}") from None
    if not isinstance(value, torch.Tensor) or value.shape != (CHECK_ROWS,) or not value.is_floating_point():
        got = f"shape {tuple(value.shape)} {value.dtype}" if isinstance(value, torch.Tensor) else type(value).__name__
        raise ConfigError(f"{where}: returned {got}; expected a float tensor of shape ({CHECK_ROWS},), one "
                          f"unreduced loss per row")
    if not torch.isfinite(value).all():
        raise ConfigError(f"{where}: returned non-finite values {value.tolist()}")
    if not value.requires_grad:
        raise ConfigError(f"{where}: no gradient reaches the logits (is the loss detached?)")
    (grad,) = torch.autograd.grad(value.sum(), logits, allow_unused=True)
    if grad is None or not torch.isfinite(grad).all():
        raise ConfigError(f"{where}: " + ("no gradient reaches the logits" if grad is None
                                         else "the gradient of the logits is not finite"))


def _reason(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def refuse_code_named_by_checkpoint(stored_config: dict, own_loss_cfg, source: str):
    """``train.py --resume``: the checkpoint's config is the base of the run's config, so a user loss that only
    the checkpoint names would be imported because of a file. Refuse unless the user's own config or flags name it."""
    stored_loss = stored_config.get("loss") if isinstance(stored_config, dict) else None
    for key in USER_LOSS_KEYS:
        name = stored_loss.get(key) if isinstance(stored_loss, dict) else None
        if isinstance(name, str) and is_user_loss(name) and getattr(own_loss_cfg, key) != name:
            raise ConfigError(f"{source}: the checkpoint's config names code (loss.{key} {name}) and a checkpoint "
                              f"never makes yolo import a module: name it yourself to resume "
                              f"(--{key.replace('_', '-')} {name})")
