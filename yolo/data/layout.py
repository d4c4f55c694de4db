"""Which reader reads a dataset: the layout detected from ``--data-root`` (``data.format`` forces one), the split
each role (train / val / test) reads, and the rule that evaluation never silently scores a subset.

    --data-root data/VOCdevkit                  a VOC devkit (or the folder holding it, or one VOC<name> folder)
    --data-root coco/instances_train.json       a COCO JSON, or a folder holding annotations/*.json (or Roboflow's
                                                train/_annotations.coco.json, valid/..., test/...)
    --data-root my/data.yaml                    an ultralytics YOLO data.yaml, or the folder holding it

Splits: VOC reads the ``data.train`` / ``data.val`` / ``data.test`` specs as today (``2007:trainval``). For COCO and
YOLO a spec is the layout's own (``train``, ``val``, ``test``, a JSON path); a role still at its VOC default
(``2007:trainval+2012:trainval``, ``2007:test``) reads the layout's split of the role's name, so that
``--data-root my/data.yaml`` alone trains on ``train``, validates on ``val`` and tests on ``test``.
"""
import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from yolo.data import coco, voc, yolo_txt
from yolo.data.record import DatasetError, Split, describe_folder

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reader:
    """The functions of one layout."""
    is_dataset: Callable        # (root) -> bool: the path is a dataset of this layout
    categories: Callable        # (root, spec) -> Categories: the class list (of the train split's file)
    load: Callable              # (root, spec, categories, check_image_size) -> Split
    image_ids: Callable         # (root, spec) -> [image id]: what the data fingerprint hashes


READERS = {
    "voc": Reader(voc.is_dataset, voc.read_categories, voc.load_split, voc.image_ids),
    "coco": Reader(coco.is_dataset, coco.read_categories, coco.load_split, coco.image_ids),
    "yolo": Reader(yolo_txt.is_dataset, yolo_txt.read_categories, yolo_txt.load_split, yolo_txt.image_ids),
}
FORMATS = ("auto", *READERS)
ROLES = ("train", "val", "test")
EXPECTED = (f"{voc.EXPECTED_LAYOUT}; or a COCO JSON (or a folder holding annotations/*.json or "
            f"<split>/_annotations.coco.json); or a YOLO data.yaml (or the folder holding it)")


def detect_layout(root, fmt: str = "auto") -> str:
    """``fmt`` unless ``auto``; else the first layout whose reader recognises ``root`` (VOC, YOLO, COCO).
    DatasetError naming the three layouts and what the path holds when none does."""
    if fmt != "auto":
        if fmt not in READERS:
            raise DatasetError(f"data.format {fmt!r} is not one of {', '.join(FORMATS)}")
        return fmt
    for name in ("voc", "yolo", "coco"):
        if READERS[name].is_dataset(root):
            return name
    if Path(root).is_file():
        raise DatasetError(f"no dataset at {root}: a file is a COCO .json or a YOLO .yaml; {EXPECTED}")
    raise DatasetError(f"no dataset at {root}: {EXPECTED}; found {describe_folder(root)}")


def spec_for(cfg, role: str, layout: str | None = None) -> str:
    """The split spec of ``role`` (train / val / test) for ``cfg.data``: its own value, except that a COCO or YOLO
    dataset reads its split named ``role`` where the value is still the VOC default (see the module docstring)."""
    from yolo.config import DataConfig
    value = getattr(cfg.data, role)
    layout = layout or detect_layout(cfg.data.root, cfg.data.format)
    default = {f.name: f.default for f in dataclasses.fields(DataConfig)}[role]
    return role if layout != "voc" and value == default else value


def read_categories(cfg, spec: str | None = None):
    """The categories of ``cfg.data``: those of the train split's file where the layout has one per split (COCO),
    or, for a dataset without a train split (evaluation only), those of ``spec`` (default: the test split's)."""
    layout = detect_layout(cfg.data.root, cfg.data.format)
    reader, root = READERS[layout], Path(cfg.data.root)
    try:
        return reader.categories(root, spec_for(cfg, "train", layout))
    except DatasetError:
        fallback = spec or spec_for(cfg, "test", layout)
        if fallback == spec_for(cfg, "train", layout):
            raise
        return reader.categories(root, fallback)


def open_split(root, spec: str, fmt: str = "auto") -> Split:
    """The records of split ``spec`` of the dataset at ``root`` (``fmt``: auto or a layout name), with its own
    categories."""
    layout = detect_layout(root, fmt)
    return READERS[layout].load(Path(root), spec, READERS[layout].categories(Path(root), spec), True)


def load_role(cfg, role: str, spec: str | None = None) -> Split:
    """The split of ``role`` of ``cfg.data``; ``spec`` (e.g. ``eval.py --split``) overrides it unless it is the
    config's own value for the role (which :func:`spec_for` may map to the layout's split). Every split of a dataset
    is read with the train split's categories (:func:`read_categories`), so labels mean the same in all."""
    layout = detect_layout(cfg.data.root, cfg.data.format)
    spec = spec if spec and spec != getattr(cfg.data, role) else spec_for(cfg, role, layout)
    return READERS[layout].load(Path(cfg.data.root), spec, read_categories(cfg, spec), True)


def role_image_ids(cfg, role: str) -> list:
    """The image ids (in the dataset's own id space) that ``role`` of ``cfg.data`` lists."""
    layout = detect_layout(cfg.data.root, cfg.data.format)
    return READERS[layout].image_ids(Path(cfg.data.root), spec_for(cfg, role, layout))


class UnreadableImages(DatasetError):
    """An evaluated split with images that cannot be read (and ``eval.skip_unreadable`` off)."""


def require_complete(split: Split, allow_partial: bool, unreadable=()) -> None:
    """Evaluation never silently scores a subset: a split that lost images (at loading, or ``unreadable`` record
    indices that failed to decode) is an error naming them, unless ``allow_partial`` (``eval.skip_unreadable``)."""
    lost = [f"{p.where} ({p.kind}: {p.detail})" for p in split.skipped()]
    lost += [f"{split.records[i].image_path} (failed to decode)" for i in sorted(unreadable)]
    if not lost:
        return
    scored = len(split.records) - len(unreadable)
    if allow_partial:
        logger.warning("scoring %d of %d images of %s: %d could not be read (first: %s)", scored, split.listed,
                       split.spec, len(lost), lost[0])
        return
    raise UnreadableImages(f"{len(lost)} of the {split.listed} images of {split.spec} cannot be read, so it cannot be "
                           f"scored whole: {'; '.join(lost[:3])}{' ...' if len(lost) > 3 else ''} (fix or remove "
                           f"them, or score the other {scored} with --skip-unreadable true)")

