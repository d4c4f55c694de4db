"""From an ablation to runs: one Run per distinct (training config, seed), its cache key and its folders.

The cache key is a hash of the training config (minus where and how a run is placed), of the data it reads (a
fingerprint of the class list and of the image ids of every split, so another dataset with the same split names
never reuses a result) and of ``PROTOCOL_VERSION``. Bump ``PROTOCOL_VERSION`` whenever a change to the training or
scoring code alters what a run produces (a different loss, augmentation, schedule, assignment or metric): every
cached result then stops matching on purpose and is trained again, instead of silently mixing results of two code
versions.

A config field added after the protocol was fixed changes no key while it holds the value that reproduces the
protocol's behaviour: register it in ``HASH_NEUTRAL`` with that value (a test fails on a field that is neither
hashed at the protocol nor registered). Any other value is hashed, so a run that uses the new feature gets a key
of its own.
"""
import copy
import dataclasses
import hashlib
import json
from pathlib import Path

from yolo.ablate.spec import Ablation
from yolo.config import Config

PROTOCOL_VERSION = 3   # 3: the heads' prediction convolutions run in fp32 under autocast; the key holds the data
# Fields that do not change what a run learns or how it is scored: left out of the config hash, so moving the
# data, changing the device, the memory format, compilation or the number of loader workers reuses finished runs.
# The seed is in the run key.
UNHASHED_KEYS = (("name",), ("output_dir",), ("logdir",), ("data", "root"), ("data", "workers"),
                 ("train", "device"), ("train", "channels_last"), ("train", "compile"), ("train", "log_every"),
                 ("train", "seed"))
# Fields added after PROTOCOL_VERSION was fixed: {(section, field): the value that reproduces the protocol}.
HASH_NEUTRAL: dict[tuple, object] = {
    ("loss", "conf_target"): "auto", ("loss", "conf_iou_floor"): 0.0, ("loss", "vfl_alpha"): 0.75,
    ("loss", "poly_epsilon"): 1.0, ("loss", "seesaw_p"): 0.8, ("loss", "seesaw_q"): 2.0, ("loss", "efl_scale"): 8.0,
    ("data", "format"): "auto", ("data", "drop_background"): False, ("eval", "skip_unreadable"): False,
    ("train", "deterministic"): False, ("train", "time_budget"): None,
}


@dataclasses.dataclass
class Run:
    key: str                       # "<config hash, 12 hex>-seed<seed>": the cache key and result file name
    name: str                      # run folder name, <variant>-s<seed>-<hash8>
    seed: int
    variants: list[str]            # every variant whose training config this is
    cfg: Config                    # seed, output_dir, name and logdir set
    scorings: dict                 # {scoring name: eval overrides} the variants need on the test split
    result_path: Path              # RESULTS/runs/<key>.json, the committed result
    data_fingerprint: str = ""     # of the classes and split image ids (``data_fingerprint``), part of the key

    @property
    def config_hash(self) -> str:
        return self.key.rsplit("-seed", 1)[0]


def hashed_config(cfg: Config) -> dict:
    """The config as hashed: minus ``UNHASHED_KEYS``, and minus ``HASH_NEUTRAL`` fields at their neutral value.

    A loss named ``module:function`` adds ``user_code``: the sha256 of that module's source file, so editing the
    user's loss trains again; configs of built-in losses have no such entry (their keys are unchanged)."""
    from yolo.losses.user import source_sha256, user_losses    # torch-heavy, as prepare_data below
    values = cfg.to_dict()
    for keys in UNHASHED_KEYS:
        (values if len(keys) == 1 else values[keys[0]]).pop(keys[-1])
    for keys, neutral in HASH_NEUTRAL.items():
        section = values if len(keys) == 1 else values[keys[0]]
        if section.get(keys[-1]) == neutral:
            section.pop(keys[-1])
    user_code = {f"loss.{key}": source_sha256(name, key) for key, name in user_losses(cfg.loss).items()}
    if user_code:
        values["user_code"] = user_code
    return values


def config_hash(cfg: Config, data: str = "") -> str:
    """sha256 (hex) of the protocol version, the config minus what is not hashed, and the data fingerprint."""
    return hashlib.sha256(json.dumps({"protocol": PROTOCOL_VERSION, "config": hashed_config(cfg), "data": data},
                                     sort_keys=True).encode()).hexdigest()


def data_fingerprint(cfg: Config) -> str:
    """sha256 (hex) of the class list and of the image ids of the train, val and test splits of ``cfg.data``.

    Where the data lives is not in it (moving a dataset keeps its results); which images and classes it holds is.
    The ids are each layout's own (``yolo.data.layout``): ``<VOC folder name>/<image id>`` for a VOC devkit (the
    shapes set included), the JSON's image ids for COCO, file stems for YOLO. The synthetic shapes set is generated
    here if it is missing, as the first run would.
    """
    from yolo.data.layout import role_image_ids
    from yolo.fit import prepare_data          # torch-heavy: imported when a plan is made, not with this module
    _, classes = prepare_data(cfg)
    splits = {role: role_image_ids(cfg, role) for role in ("train", "val", "test")}
    return hashlib.sha256(json.dumps({"classes": list(classes), "splits": splits}).encode()).hexdigest()


def run_key(cfg: Config, data: str = "") -> str:
    return f"{config_hash(cfg, data)[:12]}-seed{cfg.train.seed}"


def plan_runs(ablation: Ablation, output_dir, results_dir=None) -> list[Run]:
    """One Run per distinct (config, seed), in table order; seeds are ``train.seed + 0 .. seeds - 1``.

    Checkpoints and TensorBoard go to ``output_dir/runs`` and ``output_dir/tb``; the result of each run to
    ``results_dir/runs/<key>.json`` (default: ``output_dir``). Rows that differ only in ``scoring`` share a run.
    """
    runs: dict[str, Run] = {}
    fingerprints = DataFingerprints()
    for seed_index in range(ablation.seeds):
        for variant in ablation.variants().values():
            cfg = copy.deepcopy(variant.cfg)
            cfg.train.seed += seed_index
            run = make_run(variant.name, cfg, fingerprints(cfg), output_dir, results_dir)
            run = runs.setdefault(run.key, run)
            run.variants.append(variant.name)
            run.scorings[variant.scoring_name] = variant.scoring
    return list(runs.values())


class DataFingerprints:
    """``data_fingerprint`` once per distinct data section: reading the splits once is enough."""

    def __init__(self):
        self.known: dict[str, str] = {}

    def __call__(self, cfg: Config) -> str:
        data_key = json.dumps(dataclasses.asdict(cfg.data), sort_keys=True)
        if data_key not in self.known:
            self.known[data_key] = data_fingerprint(cfg)
        return self.known[data_key]


def make_run(label: str, cfg: Config, fingerprint: str, output_dir, results_dir=None) -> Run:
    """The Run of ``cfg`` (seed included; not modified), named ``<label>-s<seed>-<hash8>`` unless an earlier
    invocation made its folder under another name, with no variants or scorings yet."""
    output_dir = Path(output_dir)
    results_dir = Path(results_dir) if results_dir is not None else output_dir
    cfg = copy.deepcopy(cfg)
    key = run_key(cfg, fingerprint)
    name = _existing_run_name(output_dir / "runs", key) or f"{label}-s{cfg.train.seed}-{key[:8]}"
    cfg.name, cfg.output_dir, cfg.logdir = name, str(output_dir / "runs"), str(output_dir / "tb" / name)
    return Run(key=key, name=name, seed=cfg.train.seed, variants=[], cfg=cfg, scorings={},
               result_path=result_path(results_dir, key), data_fingerprint=fingerprint)


def result_path(results_dir: Path, key: str) -> Path:
    """Where the result file of the run ``key`` lives under ``results_dir``: ``runs/<key>.json``."""
    return Path(results_dir) / "runs" / f"{key}.json"


def _existing_run_name(runs_dir: Path, key: str) -> str | None:
    """The folder of this run made by an earlier invocation under another variant name (to resume it)."""
    seed = key.rsplit("-seed", 1)[1]
    matches = sorted(p.name for p in runs_dir.glob(f"*-s{seed}-{key[:8]}") if p.is_dir())
    return matches[0] if matches else None
