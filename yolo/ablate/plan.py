"""From an ablation to runs: one Run per distinct (training config, seed), its cache key and its folders.

The cache key is a hash of the training config (minus where and how a run is placed) and of
``PROTOCOL_VERSION``. Bump ``PROTOCOL_VERSION`` whenever a change to the training or scoring code alters what a
run produces (a different loss, augmentation, schedule, assignment or metric): every cached result then stops
matching on purpose and is trained again, instead of silently mixing results of two code versions.
"""
import copy
import dataclasses
import hashlib
import json
from pathlib import Path

from yolo.ablate.spec import Ablation
from yolo.config import Config

PROTOCOL_VERSION = 2
# Fields that do not change what a run learns or how it is scored: left out of the config hash, so moving the
# data, changing the device or the number of loader workers reuses finished runs. The seed is in the run key.
UNHASHED_KEYS = (("name",), ("output_dir",), ("logdir",), ("data", "root"), ("data", "workers"),
                 ("train", "device"), ("train", "log_every"), ("train", "seed"))


@dataclasses.dataclass
class Run:
    key: str                       # "<config hash, 12 hex>-seed<seed>": the cache key and result file name
    name: str                      # run folder name, <variant>-s<seed>-<hash8>
    seed: int
    variants: list[str]            # every variant whose training config this is
    cfg: Config                    # seed, output_dir, name and logdir set
    scorings: dict                 # {scoring name: eval overrides} the variants need on the test split
    result_path: Path              # RESULTS/runs/<key>.json, the committed result

    @property
    def config_hash(self) -> str:
        return self.key.rsplit("-seed", 1)[0]


def config_hash(cfg: Config) -> str:
    """sha256 (hex) of the protocol version and the config minus ``UNHASHED_KEYS``."""
    values = cfg.to_dict()
    for keys in UNHASHED_KEYS:
        (values if len(keys) == 1 else values[keys[0]]).pop(keys[-1])
    return hashlib.sha256(json.dumps({"protocol": PROTOCOL_VERSION, "config": values},
                                     sort_keys=True).encode()).hexdigest()


def run_key(cfg: Config) -> str:
    return f"{config_hash(cfg)[:12]}-seed{cfg.train.seed}"


def plan_runs(ablation: Ablation, output_dir, results_dir=None) -> list[Run]:
    """One Run per distinct (config, seed), in table order; seeds are ``train.seed + 0 .. seeds - 1``.

    Checkpoints and TensorBoard go to ``output_dir/runs`` and ``output_dir/tb``; the result of each run to
    ``results_dir/runs/<key>.json`` (default: ``output_dir``). Rows that differ only in ``scoring`` share a run.
    """
    output_dir = Path(output_dir)
    results_dir = Path(results_dir) if results_dir is not None else output_dir
    runs: dict[str, Run] = {}
    for seed_index in range(ablation.seeds):
        for variant in ablation.variants().values():
            cfg = copy.deepcopy(variant.cfg)
            cfg.train.seed += seed_index
            key = run_key(cfg)
            if key not in runs:
                name = _existing_run_name(output_dir / "runs", key) or f"{variant.name}-s{cfg.train.seed}-{key[:8]}"
                cfg.name, cfg.output_dir, cfg.logdir = name, str(output_dir / "runs"), str(output_dir / "tb" / name)
                runs[key] = Run(key=key, name=name, seed=cfg.train.seed, variants=[], cfg=cfg, scorings={},
                                result_path=results_dir / "runs" / f"{key}.json")
            runs[key].variants.append(variant.name)
            runs[key].scorings[variant.scoring_name] = variant.scoring
    return list(runs.values())


def _existing_run_name(runs_dir: Path, key: str) -> str | None:
    """The folder of this run made by an earlier invocation under another variant name (to resume it)."""
    seed = key.rsplit("-seed", 1)[1]
    matches = sorted(p.name for p in runs_dir.glob(f"*-s{seed}-{key[:8]}") if p.is_dir())
    return matches[0] if matches else None
