"""Search spaces: what a row of an ablation file may tune, as Optuna distributions, and a trial's values as config.

A row's ``search`` maps a dotted config field to one distribution::

    search:
      loss.cls_weight: {log_uniform: [0.25, 8.0]}      # FloatDistribution(log=True)
      train.lr: {log_uniform: [1.0e-3, 4.0e-3]}
      loss.gamma: {uniform: [0.0, 3.0]}                 # FloatDistribution
      train.warmup_epochs: {int: [0, 3]}                # IntDistribution, both ends included
      loss.alpha: {choice: [null, 0.25, 0.5, 0.75]}     # CategoricalDistribution

Every bound and every choice is checked against the config (type and allowed values) when the file is read, so a
space that would fail at trial 5 fails before trial 1.
"""
import copy
import math

import optuna

from yolo.config import Config, update, validate
from yolo.errors import ConfigError

KINDS = ("uniform", "log_uniform", "int", "choice")


def parse_space(search: dict, source: str) -> dict[str, optuna.distributions.BaseDistribution]:
    """``{"section.field": {kind: args}}`` -> ``{"section.field": distribution}``; ConfigError naming ``source``."""
    space = {}
    for name, spec in search.items():
        where = f"{source}: search.{name}"
        if not isinstance(name, str) or name.count(".") != 1:
            raise ConfigError(f"{where}: expected a 'section.field' config name such as loss.gamma")
        if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in KINDS:
            raise ConfigError(f"{where}: expected one of {', '.join(f'{{{k}: ...}}' for k in KINDS)}, got {spec!r}")
        kind, args = next(iter(spec.items()))
        space[name] = _distribution(kind, args, where)
    return space


def _distribution(kind: str, args, where: str) -> optuna.distributions.BaseDistribution:
    if kind == "choice":
        if not isinstance(args, list) or len(args) < 2 or len({repr(a) for a in args}) != len(args):
            raise ConfigError(f"{where}: choice needs a list of at least two distinct values, got {args!r}")
        if not all(a is None or isinstance(a, (bool, int, float, str)) for a in args):
            raise ConfigError(f"{where}: choices must be null, numbers, booleans or strings, got {args!r}")
        return optuna.distributions.CategoricalDistribution(args)
    if (not isinstance(args, list) or len(args) != 2 or any(isinstance(a, bool) for a in args)
            or not all(isinstance(a, (int, float)) and math.isfinite(a) for a in args) or not args[0] < args[1]):
        raise ConfigError(f"{where}: {kind} needs [low, high] with finite numbers low < high, got {args!r}")
    low, high = args
    if kind == "int":
        if not all(isinstance(a, int) for a in args):
            raise ConfigError(f"{where}: int needs integer bounds, got {args!r}")
        return optuna.distributions.IntDistribution(low, high)
    if kind == "log_uniform" and low <= 0:
        raise ConfigError(f"{where}: log_uniform needs a positive low bound, got {args!r}")
    return optuna.distributions.FloatDistribution(float(low), float(high), log=kind == "log_uniform")


def with_params(cfg: Config, params: dict, source: str = "trial") -> Config:
    """A validated copy of ``cfg`` with each ``"section.field": value`` of ``params`` set."""
    nested: dict = {}
    for name, value in params.items():
        section, field = name.split(".")
        nested.setdefault(section, {})[field] = value
    cfg = update(copy.deepcopy(cfg), nested, source)
    try:
        return validate(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def check_space(cfg: Config, space: dict, source: str):
    """Fail now, not at a later trial, if a bound or choice of ``space`` is not a valid value of ``cfg``'s field."""
    for name, dist in space.items():
        if isinstance(dist, optuna.distributions.CategoricalDistribution):
            values = dist.choices
        else:
            values = (dist.low, dist.high)
        for value in values:
            with_params(cfg, {name: value}, f"{source}: search.{name} = {value!r}")
