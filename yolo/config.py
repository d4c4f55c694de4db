"""Configuration: typed dataclass defaults, YAML files that hold only the differences, and CLI overrides.

The defaults are the VOC reproduction recipe of the reference experiment (ResNet-18 + FPN, 416 px, 160 epochs,
SGD 1e-3, steps at 60 / 90). A YAML file may name a ``base`` YAML (relative to itself) whose values it overrides.
Every field can be overridden on the command line: ``--cls-loss sigmoid_focal``, ``--loss-cls-loss
sigmoid_focal`` or ``--loss.cls_loss sigmoid_focal`` (e.g. ``--data-root`` for ``data.root``); values are
parsed as YAML (``--alpha [0.2,0.3,...]``, ``--alpha null``).
Unknown keys and bad values raise ``ConfigError`` with a message that says what is allowed.
"""
import argparse
import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from yolo.errors import ConfigError
from yolo.losses import check_loss_config


@dataclass
class DataConfig:
    dataset: str = "voc"                     # voc | shapes (the synthetic set, generated on first use)
    root: str = "data/VOCdevkit"             # a VOC devkit, a COCO JSON (or its folder), a YOLO data.yaml
    train: str = "2007:trainval+2012:trainval"
    val: str = "2007:test"                   # evaluated during training (monitoring and best.pt)
    test: str = "2007:test"                  # what eval.py scores by default
    img_size: int = 416                      # square network input, a multiple of 32
    multiscale: list[int] = field(default_factory=list)  # e.g. [320, 352, ..., 512]: one size per batch
    train_difficult: bool = False            # difficult objects give training targets
    eval_resize: str = "stretch"             # stretch | letterbox
    zoom_out_max: float = 4.0                # SSD augmentation: expand the canvas up to this ratio ...
    zoom_out_p: float = 0.5                  # ... with this probability
    min_iou_crop: bool = True                # SSD's IoU-constrained random crop
    photometric_p: float = 0.5               # probability of each photometric distortion
    hflip_p: float = 0.5
    workers: typing.Union[int, str] = "auto"  # loader worker processes; auto: from the machine (yolo.hardware)
    shapes_seed: int = 0                     # the synthetic set: generator seed and number of images per split
    shapes_train: int = 3000
    shapes_val: int = 500
    shapes_test: int = 500
    shapes_size: int = 160
    format: str = "auto"                     # auto (from data.root) | voc | coco | yolo: the layout read
    drop_background: bool = False            # leave training images without any annotation out


@dataclass
class ModelConfig:
    neck: str = "fpn"                        # fpn (strides 8/16/32) | spp (single level, stride 32)
    pretrained: str = "imagenet"             # imagenet | none | PATH to a ResNet-18 state dict
    channels: int = 128                      # FPN / head width
    head_convs: int = 2                      # 3x3 conv layers in each prediction head
    decoupled_head: bool = False             # separate conv towers for the classes and for objectness + box
    zero_init_residual: bool = False         # residual blocks start as the identity (training from scratch)
    prior_prob: float = 0.01                 # objectness and class biases start at this probability
    level_thresholds: list[float] = field(default_factory=lambda: [64.0, 128.0])  # longest side in px


@dataclass
class LossConfig:
    conf_loss: str = "mse"
    cls_loss: str = "ce"
    box_loss: str = "yolov1"
    alpha: typing.Optional[typing.Union[float, list[float]]] = 0.25  # float, per-class list, or null
    gamma: float = 2.0
    margin: float = 0.6
    k: float = 10.0
    obj_weight: float = 5.0                  # confidence loss weight on cells that hold an object
    noobj_weight: float = 1.0                # ... and on the others
    conf_alpha: typing.Optional[float] = 0.25  # for conf_loss = focal
    conf_gamma: float = 2.0
    conf_k: float = 1.0                      # for conf_loss = soft_truncated
    cls_weight: float = 1.0
    box_weight: float = 1.0
    cls_loss_warmup_epochs: int = 0          # train with ce for this many epochs, then switch to cls_loss
    # added after protocol 3 (yolo.ablate.plan.HASH_NEUTRAL holds these defaults): docs/losses.md
    conf_target: str = "auto"                # one | iou (Pr(object) x IoU) | auto: iou for qfl and vfl, else one
    conf_iou_floor: float = 0.0              # the IoU target is at least this on positive cells
    vfl_alpha: float = 0.75                  # for conf_loss = vfl: the weight of its negative term
    poly_epsilon: float = 1.0                # for cls_loss = poly1 / poly1_focal
    seesaw_p: float = 0.8                    # for cls_loss = seesaw: mitigation exponent ...
    seesaw_q: float = 2.0                    # ... and compensation exponent
    efl_scale: float = 8.0                   # for cls_loss = efl: gamma_j = gamma + efl_scale * (1 - g_j)


@dataclass
class TrainConfig:
    epochs: int = 160
    batch_size: int = 32
    optimizer: str = "sgd"                   # sgd | adamw
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    scheduler: str = "step"                  # step | cosine
    lr_steps: list[int] = field(default_factory=lambda: [60, 90])  # epochs, for the step scheduler
    lr_gamma: float = 0.1
    warmup_epochs: float = 2.0
    grad_clip: float = 10.0                  # max gradient norm, 0 disables
    amp: str = "auto"                        # auto (the faster of fp32 and bf16, timed: yolo.autotune) | bf16 | fp16 | none
    channels_last: typing.Union[bool, str] = "auto"  # auto (timed with amp: yolo.autotune) | true | false
    compile: bool = False
    ema: bool = False
    ema_decay: float = 0.9998
    ema_ramp_steps: float = 2000.0           # the EMA decay ramps up as decay * (1 - exp(-step / ema_ramp_steps))
    eval_every: int = 10                     # epochs; the last epoch is always evaluated
    log_every: int = 20                      # steps between logged loss values
    seed: int = 0
    device: str = "auto"                     # auto | cpu | cuda | cuda:N
    deterministic: bool = False              # CUDA / cuDNN deterministic algorithms (exact resume on a GPU)
    time_budget: typing.Optional[str] = None  # e.g. 10m, 1.5h, 600 (s): epochs and schedule sized to end within it


@dataclass
class EvalConfig:
    conf_thresh: float = 0.01
    nms_iou: float = 0.5
    max_det: int = 100
    pre_nms_topk: int = 1000
    coco_backend: str = "pycocotools"        # pycocotools | faster
    cls_scoring: str = "auto"                # class scores at inference: auto (match the loss) | softmax | sigmoid
    skip_unreadable: bool = False            # score the rest of a split with unreadable images (else an error)


@dataclass
class Config:
    name: str = "voc"
    output_dir: str = "runs"
    logdir: typing.Optional[str] = None      # TensorBoard directory; default: the run folder
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


SECTIONS = ("data", "model", "loss", "train", "eval")
CHOICES = {
    ("data", "dataset"): ("voc", "shapes"),
    ("data", "eval_resize"): ("stretch", "letterbox"),
    ("data", "format"): ("auto", "voc", "coco", "yolo"),
    ("model", "neck"): ("fpn", "spp"),
    ("train", "optimizer"): ("sgd", "adamw"),
    ("train", "scheduler"): ("step", "cosine"),
    ("train", "amp"): ("auto", "bf16", "fp16", "none"),
    ("eval", "coco_backend"): ("pycocotools", "faster"),
    ("eval", "cls_scoring"): ("auto", "softmax", "sigmoid"),
}


# ---------------------------------------------------------------------------------------------------------------
# type coercion and validation


def _coerce(value, annotation, key: str):
    """Check a parsed YAML value against a field annotation; ints are accepted for floats."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(annotation):
            try:
                return _coerce(value, option, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{key}: {value!r} is none of {_type_name(annotation)}")
    if annotation is type(None):
        if value is None:
            return None
    elif origin is list:
        if isinstance(value, (list, tuple)):
            (item,) = typing.get_args(annotation)
            return [_coerce(v, item, key) for v in value]
    elif annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    raise ConfigError(f"{key}: expected {_type_name(annotation)}, got {value!r}")


def _type_name(annotation) -> str:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return "null"
    if typing.get_origin(annotation) is list:
        return f"a list of {_type_name(typing.get_args(annotation)[0])}"
    return annotation.__name__


def _fields(obj) -> dict:
    return {f.name: f for f in dataclasses.fields(obj)}


def update(cfg: Config, overrides: dict, source: str = "config") -> Config:
    """Apply a nested dict of overrides in place, rejecting unknown keys and values of the wrong type."""
    top = _fields(cfg)
    for key, value in overrides.items():
        if key not in top:
            raise ConfigError(f"{source}: unknown key {key!r}; valid top-level keys: {', '.join(top)}")
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {key!r} must be a mapping of its fields")
            _update_section(getattr(cfg, key), key, value, source)
        else:
            setattr(cfg, key, _coerce(value, typing.get_type_hints(Config)[key], key))
    return cfg


def _update_section(section, name: str, values: dict, source: str):
    fields = _fields(section)
    hints = typing.get_type_hints(type(section))
    for key, value in values.items():
        if key not in fields:
            close = [f for f in fields if f.startswith(key[:3])]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(f"{source}: unknown key {name}.{key}{hint}; valid keys of {name}: {', '.join(fields)}")
        setattr(section, key, _coerce(value, hints[key], f"{name}.{key}"))


def validate(cfg: Config) -> Config:
    """Check values (choices, ranges, loss names) after all overrides were applied."""
    for (section, key), allowed in CHOICES.items():
        value = getattr(getattr(cfg, section), key)
        if value not in allowed:
            raise ConfigError(f"{section}.{key}: {value!r} is not one of {', '.join(allowed)}")
    check_loss_config(cfg.loss)
    for size in [cfg.data.img_size, *cfg.data.multiscale]:
        if size <= 0 or size % 32:
            raise ConfigError(f"data.img_size / data.multiscale: {size} is not a positive multiple of 32")
    _check_positive(cfg, [("train", "epochs"), ("train", "batch_size"), ("train", "lr"), ("model", "channels"),
                          ("eval", "max_det"), ("train", "eval_every"), ("train", "log_every"),
                          ("train", "ema_ramp_steps")])
    if cfg.data.workers != "auto" and not (isinstance(cfg.data.workers, int) and cfg.data.workers >= 0):
        raise ConfigError(f"data.workers: expected auto or a number >= 0, got {cfg.data.workers!r}")
    if cfg.train.channels_last not in (True, False, "auto"):
        raise ConfigError(f"train.channels_last: expected auto, true or false, got {cfg.train.channels_last!r}")
    if cfg.train.time_budget is not None:
        parse_duration(cfg.train.time_budget, "train.time_budget")
    if not 0 < cfg.model.prior_prob < 1:
        raise ConfigError(f"model.prior_prob must be in (0, 1), got {cfg.model.prior_prob}")
    expected = 2 if cfg.model.neck == "fpn" else 0
    if len(cfg.model.level_thresholds) != expected:
        raise ConfigError(f"model.level_thresholds: the {cfg.model.neck} neck needs {expected} thresholds, got "
                          f"{cfg.model.level_thresholds}")
    return cfg


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_duration(text, key: str = "duration") -> float:
    """Seconds of ``10m``, ``1.5h``, ``90s`` or a plain number of seconds; raises ``ConfigError``."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([smh]?)\s*", str(text))
    if not match or float(match[1]) <= 0:
        raise ConfigError(f"{key}: expected a positive duration such as 10m, 1.5h, 90s or 600 (seconds), "
                          f"got {text!r}")
    return float(match[1]) * DURATION_UNITS[match[2] or "s"]


def _check_positive(cfg, keys):
    for section, key in keys:
        if not getattr(getattr(cfg, section), key) > 0:
            raise ConfigError(f"{section}.{key} must be positive, got {getattr(getattr(cfg, section), key)}")


# ---------------------------------------------------------------------------------------------------------------
# files and command line


def load_yaml(path) -> dict:
    """Read a config YAML, following ``base:`` links (a base's values are overridden by the file's own)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    with open(path) as f:
        values = yaml.safe_load(f) or {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: a config file must be a mapping")
    base = values.pop("base", None)
    if base is None:
        return values
    return _merge(load_yaml(path.parent / base), values)


def _merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) \
            else value
    return merged


def add_config_args(parser: argparse.ArgumentParser):
    """Add ``--config FILE`` and one option per config field (both spellings) to a parser."""
    parser.add_argument("--config", help="YAML file of differences from the defaults (configs/*.yaml)")
    group = parser.add_argument_group("config overrides (values parsed as YAML)")
    for f in dataclasses.fields(Config):
        if f.name in SECTIONS:
            for sub in dataclasses.fields(getattr(Config(), f.name)):
                dashed = sub.name.replace('_', '-')
                flags = [f"--{dashed}", f"--{f.name}-{dashed}", f"--{f.name}.{sub.name}"]
                group.add_argument(*flags, dest=f"cfg:{f.name}.{sub.name}", metavar="V", default=argparse.SUPPRESS)
        else:
            group.add_argument(f"--{f.name.replace('_', '-')}", dest=f"cfg:{f.name}", metavar="V",
                               default=argparse.SUPPRESS)


def config_from_args(args: argparse.Namespace, base: dict | None = None) -> Config:
    """Defaults, then ``base`` (e.g. a checkpoint's stored config), then --config, then CLI overrides."""
    cfg = Config()
    if base:
        update(cfg, base, "stored config")
    if getattr(args, "config", None):
        update(cfg, load_yaml(args.config), args.config)
    overrides: dict = {}
    for dest, raw in vars(args).items():
        if dest.startswith("cfg:"):
            keys = dest[4:].split(".")
            target = overrides.setdefault(keys[0], {}) if len(keys) == 2 else overrides
            target[keys[-1]] = yaml.safe_load(raw)
    update(cfg, overrides, "command line")
    return validate(cfg)


def from_dict(values: dict) -> Config:
    """A Config from a nested dict (a stored config), validated."""
    return validate(update(Config(), values, "stored config"))


def diff_configs(a: Config, b: Config) -> dict[str, tuple]:
    """``{"section.key": (value in a, value in b)}`` for every field that differs (top-level keys undotted)."""
    def flat(cfg):
        values = {}
        for key, value in cfg.to_dict().items():
            if isinstance(value, dict):
                values.update({f"{key}.{sub}": v for sub, v in value.items()})
            else:
                values[key] = value
        return values
    left, right = flat(a), flat(b)
    return {key: (left[key], right[key]) for key in left if left[key] != right[key]}


# What a resumed run may change: where it writes and runs, how often it logs and evaluates, how it scores
# (the eval section only affects evaluation), and train.epochs upward. Everything else changes what is learnt.
RESUME_MAY_CHANGE = ("name", "output_dir", "logdir", "data.workers", "train.device", "train.compile",
                     "train.channels_last", "train.deterministic", "train.log_every", "train.eval_every", "eval.*")


def check_resume(stored: Config, cfg: Config, source: str = "--resume"):
    """Refuse to resume the run of ``stored`` with ``cfg`` where they differ in anything that changes training;
    ``train.epochs`` may grow (the run continues to the new end). Raises ``ConfigError`` listing the keys."""
    def allowed(key):
        return any(key == rule or (rule.endswith(".*") and key.startswith(rule[:-1])) for rule in RESUME_MAY_CHANGE)

    changed = {k: v for k, v in diff_configs(stored, cfg).items() if not allowed(k)}
    epochs = changed.pop("train.epochs", None)
    if epochs is not None and epochs[1] < epochs[0]:
        changed["train.epochs"] = epochs  # fewer epochs would end the run before the schedule it was trained on
    if changed:
        listed = ", ".join(f"{k} ({old!r} -> {new!r})" for k, (old, new) in changed.items())
        raise ConfigError(f"{source}: the config differs from the checkpoint's in {listed}; a resumed run may "
                          f"only raise train.epochs or change {', '.join(RESUME_MAY_CHANGE)} "
                          f"(start a new run with --name to train a different config)")


def save_yaml(cfg: Config, path):
    with open(path, "w") as f:
        yaml.safe_dump(cfg.to_dict(), f, sort_keys=False)
