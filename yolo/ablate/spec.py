"""Ablation files: what to train, how to choose the checkpoint, where the results live, and their checks.

An ablation file names a training config (``base``, relative to the file), ``overrides`` applied to every run, the
number of ``seeds``, the checkpoint ``selection``, the ``baseline`` row, ``tables`` of rows, the ``results`` folder
(relative to the file; the committed per-run results and the report) and ``frequency_buckets`` (AP by how many
training images hold a class, as LVIS's APr / APc / APf). A row has a ``name``, a ``label``, training
``overrides``, an optional ``reference`` mAP and optional ``scoring``: ``eval`` settings used only to score the
row's checkpoint on the test split, so that two rows differing only there share one training run.

For ``python -m yolo.tune`` a file may also hold a ``tune`` section (trials per row, sampler, the seeds that
retrain the winners) and, per row, a ``search`` space (``yolo.tune.space``); ``yolo.ablate`` trains such rows at
their declared values, untuned.
"""
import copy
import dataclasses
import re
from pathlib import Path

import yaml

from yolo.ablate.buckets import check_buckets
from yolo.config import Config, EvalConfig, load_yaml, update, validate
from yolo.errors import ConfigError

METRIC = "voc07_map50"            # what the tables compare: VOC07 11-point mAP@0.5 on the test split
SELECTIONS = ("final", "best_val")
ABLATION_KEYS = ("base", "overrides", "seeds", "selection", "baseline", "tables", "results", "frequency_buckets",
                 "tune")
TABLE_KEYS = ("title", "column", "rows")
ROW_KEYS = ("name", "label", "overrides", "reference", "scoring", "search")
# Set by the runner for every run, so an ablation file may not set them.
RUNNER_KEYS = (("name",), ("output_dir",), ("logdir",), ("train", "seed"))
VARIANT_NAME = re.compile(r"[A-Za-z0-9_.+-]+")
# LVIS (Gupta et al., CVPR 2019): rare 1-10, common 11-100, frequent > 100 training images; a file sets its own.
DEFAULT_BUCKETS = {"rare": 11, "common": 101, "frequent": None}


@dataclasses.dataclass
class Variant:
    name: str
    label: str
    reference: float | None
    cfg: Config                    # the validated training config; the runner sets seed, name and folders
    scoring: dict                  # eval overrides for the test score only ({} = the config's own eval)
    search: dict = dataclasses.field(default_factory=dict)   # yolo.tune: {"section.field": distribution}
    tuned: dict = dataclasses.field(default_factory=dict)    # yolo.tune's seeds stage: the best trial it retrains

    @property
    def scoring_name(self) -> str:
        """``default``, or the scoring overrides as ``key=value,...`` (a key of the stored test scores)."""
        return ",".join(f"{k}={v}" for k, v in sorted(self.scoring.items())) or "default"


@dataclasses.dataclass
class Table:
    title: str
    column: str                    # header of the first column, as in the reference table
    baseline: str                  # variant name the rows are compared to
    variants: list[Variant]


@dataclasses.dataclass
class Ablation:
    name: str
    tables: list[Table]
    seeds: int
    selection: str
    results_dir: Path | None       # committed results and report; None: the output folder
    buckets: dict                  # {bucket name: exclusive upper bound on training images, None = no bound}
    tune: dict | None = None       # the files' ``tune`` section (yolo.tune), None when they have none
    files: tuple = ()              # the ablation files it was read from

    def variants(self) -> dict:
        return {v.name: v for t in self.tables for v in t.variants}


def load_ablation(paths, seeds: int | None = None) -> Ablation:
    """Read and validate one or more ablation files (their tables make one report). ``seeds`` overrides theirs.

    Every row's config is built (base, then the file's ``overrides``, then the row's) and validated, so a bad key
    or value fails here, before any training, with the file and row in the message (``ConfigError``).
    """
    files = [_load_file(Path(p)) for p in paths]
    if not files:
        raise ConfigError("no ablation file given")
    for key in ("selection", "results_dir", "buckets", "tune") + (("seeds",) if seeds is None else ()):
        values = {repr(f[key]) for f in files}
        if len(values) > 1:
            raise ConfigError(f"the ablation files disagree on {key} ({sorted(values)}); one report needs one "
                              f"value" + (": pass --seeds" if key == "seeds" else ""))
    if seeds is not None and (not isinstance(seeds, int) or seeds < 1):
        raise ConfigError(f"--seeds must be a positive integer, got {seeds!r}")
    ablation = Ablation(name="+".join(f["name"] for f in files), tables=[t for f in files for t in f["tables"]],
                        seeds=seeds or files[0]["seeds"], selection=files[0]["selection"],
                        results_dir=files[0]["results_dir"], buckets=files[0]["buckets"], tune=files[0]["tune"],
                        files=tuple(Path(p) for p in paths))
    names = [v.name for t in ablation.tables for v in t.variants]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"variant names must be unique across the ablation; repeated: {', '.join(repeated)} "
                          f"(identical configs under different names are trained once anyway)")
    return ablation


def _load_file(path: Path) -> dict:
    raw = _mapping(_read_yaml(path), ABLATION_KEYS, str(path),
                   required=("base", "selection", "baseline", "tables"))
    if raw["selection"] not in SELECTIONS:
        raise ConfigError(f"{path}: selection {raw['selection']!r} is not one of {', '.join(SELECTIONS)}")
    seeds = raw.get("seeds", 3)
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
        raise ConfigError(f"{path}: seeds must be a positive integer, got {seeds!r}")
    base = load_yaml(path.parent / str(raw["base"]))
    common = raw.get("overrides") or {}
    _reject_runner_keys(common, f"{path}: overrides")
    if not isinstance(raw["tables"], list) or not raw["tables"]:
        raise ConfigError(f"{path}: tables must be a non-empty list of tables")
    tables = [_load_table(table, f"{path}: tables[{i}]", base, common, raw["selection"], raw["baseline"])
              for i, table in enumerate(raw["tables"])]
    rows = [v.name for t in tables for v in t.variants]
    if raw["baseline"] not in rows:
        raise ConfigError(f"{path}: baseline {raw['baseline']!r} is not a row name; rows: {', '.join(rows)}")
    results = raw.get("results")
    return {"name": path.stem, "tables": tables, "seeds": seeds, "selection": raw["selection"],
            "results_dir": None if results is None else (path.parent / str(results)).resolve(),
            "buckets": _buckets(raw.get("frequency_buckets", DEFAULT_BUCKETS), path), "tune": raw.get("tune")}


def _buckets(raw, path: Path) -> dict:
    try:
        return check_buckets(raw)
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _load_table(raw, source: str, base: dict, common: dict, selection: str, baseline: str) -> Table:
    table = _mapping(raw, TABLE_KEYS, source, required=("title", "rows"))
    if not isinstance(table["rows"], list) or not table["rows"]:
        raise ConfigError(f"{source}: rows must be a non-empty list")
    variants = [_load_row(row, f"{source}.rows[{i}]", base, common, selection)
                for i, row in enumerate(table["rows"])]
    return Table(title=str(table["title"]), column=str(table.get("column", "variant")),
                 baseline=str(baseline), variants=variants)


def _load_row(raw, source: str, base: dict, common: dict, selection: str) -> Variant:
    row = _mapping(raw, ROW_KEYS, source, required=("name",))
    name = row["name"]
    if not isinstance(name, str) or not VARIANT_NAME.fullmatch(name):
        raise ConfigError(f"{source}: name {name!r} must be letters, digits and _ . + - (it names folders)")
    source = f"{source} ({name})"
    overrides = row.get("overrides") or {}
    _reject_runner_keys(overrides, f"{source}: overrides")
    cfg = update(Config(), copy.deepcopy(base), f"{source}: base config")
    update(cfg, copy.deepcopy(common), f"{source}: ablation overrides")
    validate(update(cfg, copy.deepcopy(overrides), f"{source}: row overrides"))
    _check_selection(cfg, selection, source)
    scoring = row.get("scoring") or {}
    scored_with(cfg, scoring, f"{source}: scoring")      # validates the eval keys and values
    reference = row.get("reference")
    if reference is not None and (isinstance(reference, bool) or not isinstance(reference, (int, float))):
        raise ConfigError(f"{source}: reference must be a number (an mAP) or absent, got {reference!r}")
    search = row.get("search") or {}
    if not isinstance(search, dict):
        raise ConfigError(f"{source}: search must be a mapping of 'section.field' to a distribution such as "
                          f"{{log_uniform: [0.001, 0.004]}}")
    return Variant(name=name, label=str(row.get("label", name)),
                   reference=None if reference is None else float(reference), cfg=cfg, scoring=dict(scoring),
                   search=dict(search))


def scored_with(cfg: Config, scoring: dict, source: str = "scoring") -> Config:
    """A copy of ``cfg`` whose ``eval`` section has the ``scoring`` overrides (only eval keys are allowed)."""
    if not isinstance(scoring, dict):
        raise ConfigError(f"{source}: expected a mapping of eval settings such as {{cls_scoring: softmax}}")
    allowed = [f.name for f in dataclasses.fields(EvalConfig)]
    unknown = [k for k in scoring if k not in allowed]
    if unknown:
        raise ConfigError(f"{source}: {', '.join(map(str, unknown))} not an eval setting; allowed: "
                          f"{', '.join(allowed)}")
    return validate(update(copy.deepcopy(cfg), {"eval": copy.deepcopy(scoring)}, source))


def _check_selection(cfg: Config, selection: str, source: str):
    if selection == "best_val" and cfg.data.val == cfg.data.test:
        raise ConfigError(f"{source}: selection best_val would pick the checkpoint that scores best on data.val = "
                          f"data.test = {cfg.data.test!r}, i.e. best-on-test, which inflates the result; use "
                          f"selection: final, or a data.val split that is not the test split")


def _read_yaml(path: Path):
    if not path.is_file():
        raise ConfigError(f"ablation file not found: {path}")
    try:
        with open(path) as f:
            return yaml.safe_load(f)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None


def _mapping(raw, allowed, source: str, required=()) -> dict:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping with keys {', '.join(allowed)}, got {raw!r}")
    unknown = [k for k in raw if k not in allowed]
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(map(str, unknown))}; allowed: "
                          f"{', '.join(allowed)}")
    missing = [k for k in required if raw.get(k) is None]
    if missing:
        raise ConfigError(f"{source}: missing required key(s) {', '.join(missing)}")
    return raw


def _reject_runner_keys(overrides, source: str):
    if not isinstance(overrides, dict):
        raise ConfigError(f"{source}: overrides must be a mapping like {{loss: {{cls_loss: sigmoid_focal}}}}")
    for keys in RUNNER_KEYS:
        section = overrides if len(keys) == 1 else overrides.get(keys[0])
        if isinstance(section, dict) and keys[-1] in section:
            raise ConfigError(f"{source}: {'.'.join(keys)} is set by the ablation runner (seeds: the `seeds` "
                              f"count or --seeds; folders: --output-dir)")
