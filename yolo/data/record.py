"""The format-neutral dataset record every reader produces and everything downstream consumes.

The three readers (``yolo.data.voc``, ``yolo.data.coco``, ``yolo.data.yolo_txt``) turn their layout into
:class:`Record` lists inside a :class:`Split`; augmentation, targets, metrics, the COCO conversion, the ablation's
buckets and the audit read only these. Coordinates are the model's (see ``yolo.boxes``): 0-based float pixel edges,
the image spans ``[0, W] x [0, H]``, a box is ``x2 - x1`` pixels wide. VOC's 1-based inclusive corners stay inside
the VOC reader and the devkit-exact VOC metric.
"""
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from yolo.errors import ConfigError

logger = logging.getLogger(__name__)


class DatasetError(ConfigError):
    """A dataset that cannot be used as asked: the message says what was expected and what was found."""


@dataclass
class Record:
    """One annotated image."""
    image_id: str | int        # the dataset's own id: VOC / YOLO file stem, COCO integer image id
    image_path: Path
    width: int                 # of the stored pixel grid (EXIF orientation is not applied)
    height: int
    boxes_xyxy: np.ndarray     # (M, 4) float32 pixel-edge x1, y1, x2, y2
    labels: np.ndarray         # (M,) int64 index into the dataset's class list
    ignore: np.ndarray         # (M,) bool: not scored (VOC difficult, COCO iscrowd): neither a hit nor a miss
    crowd: np.ndarray          # (M,) bool: a crowd region (COCO iscrowd): never a training target
    truncated: np.ndarray      # (M,) bool: VOC's truncated flag (False where the layout has none)
    neg_labels: tuple = ()             # LVIS: classes verified absent from the image
    not_exhaustive_labels: tuple = ()  # LVIS: classes whose instances are not all annotated

    def training_mask(self, keep_ignored: bool = False) -> np.ndarray:
        """(M,) bool: the objects that are training targets. Crowd regions never are; ignored (difficult)
        objects only with ``keep_ignored`` (``data.train_difficult``)."""
        keep = ~self.crowd
        return keep if keep_ignored else keep & ~self.ignore


def make_record(image_id, image_path, width, height, boxes_xyxy, labels, ignore=None, crowd=None,
                truncated=None, **lvis) -> Record:
    """A Record from array-likes; flags default to False. ``boxes_xyxy`` is stored as float32 (M, 4)."""
    boxes_xyxy = np.asarray(boxes_xyxy, dtype=np.float32).reshape(-1, 4)
    count = len(boxes_xyxy)

    def flags(values):
        return np.zeros(count, dtype=bool) if values is None else np.asarray(values, dtype=bool).reshape(count)
    return Record(image_id, Path(image_path), int(width), int(height), boxes_xyxy,
                  np.asarray(labels, dtype=np.int64).reshape(count), flags(ignore), flags(crowd), flags(truncated),
                  **lvis)


@dataclass(frozen=True)
class Categories:
    """The class list of a dataset: label ``k`` is ``names[k]``, written to files as category ``ids[k]``."""
    names: tuple[str, ...]
    ids: tuple[int, ...]                        # VOC / YOLO: 1..C; COCO: the JSON's (sorted) category ids
    frequency: tuple[str, ...] | None = None    # LVIS: "r" / "c" / "f" per class

    @classmethod
    def numbered(cls, names) -> "Categories":
        """Category ids 1..C in the order of ``names`` (VOC and YOLO layouts)."""
        names = tuple(names)
        return cls(names, tuple(range(1, len(names) + 1)))


@dataclass
class Split:
    """The records of one split of a dataset, and what reading it found.

    ``listed_ids`` are the images the split names (split file, JSON ``images``, image files); ``records`` holds the
    usable ones, ``problems`` what was skipped, dropped or clipped. ``coco_gt`` is the dataset's own COCO JSON
    (COCO layout): COCO metrics score it as pycocotools would, instead of a conversion of the records.
    """
    layout: str                  # voc | coco | yolo
    spec: str                    # what was asked for, e.g. "2007:test", "annotations/instances_val.json", "val"
    source: Path                 # the folder or file it was read from, for messages
    records: list[Record]
    categories: Categories
    listed_ids: list             # the ids of every image the split names, in order
    problems: list = field(default_factory=list)
    coco_gt: dict | None = None
    federated: bool = False      # LVIS: scored with the federated rules (neg / not-exhaustive categories)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.categories.names

    @property
    def listed(self) -> int:
        return len(self.listed_ids)

    def skipped(self) -> list:
        """The problems that cost an image (not an object or a clipped box)."""
        return [p for p in self.problems if p.action == ACTION_SKIP_IMAGE]


@dataclass(frozen=True)
class Problem:
    """One defect found in a dataset file, and what loading does about it."""
    path: Path
    kind: str      # short category, e.g. "missing image", "unknown class" (see the KIND_* constants)
    detail: str    # human-readable specifics
    action: str    # ACTION_SKIP_IMAGE, ACTION_DROP_OBJECT, ACTION_CLIP_BOX, ACTION_DEFAULTED or ACTION_KEPT
    line: int | None = None    # 1-based line of the file (YOLO label files)

    @property
    def where(self) -> str:
        """``file`` or ``file:line``."""
        return f"{self.path}:{self.line}" if self.line is not None else str(self.path)


KIND_MISSING_ANNOTATION = "missing annotation"
KIND_MALFORMED_XML = "malformed XML"
KIND_MISSING_IMAGE = "missing image"
KIND_UNREADABLE_IMAGE = "unreadable image"
KIND_TRUNCATED_IMAGE = "truncated image"
KIND_SIZE_MISMATCH = "size mismatch"
KIND_UNKNOWN_CLASS = "unknown class"
KIND_MALFORMED_OBJECT = "malformed object"
KIND_DEGENERATE_BOX = "degenerate box"
KIND_OUTSIDE_BOX = "box outside image"
KIND_MISSING_FIELD = "missing field"
KIND_UNUSED_CATEGORY = "category without annotations"
KIND_DUPLICATE_LINE = "duplicate line"
KIND_POLYGON = "polygon"
KIND_EXIF_ROTATED = "EXIF orientation"

ACTION_SKIP_IMAGE = "image skipped"
ACTION_DROP_OBJECT = "object dropped"
ACTION_CLIP_BOX = "box clipped"
ACTION_DEFAULTED = "defaulted"
ACTION_KEPT = "kept"


def summarize_problems(problems, limit: int = 5) -> str:
    """One line per problem kind: count, action and the first ``limit`` files with details."""
    by_kind = defaultdict(list)
    for problem in problems:
        by_kind[(problem.kind, problem.action)].append(problem)
    lines = []
    for (kind, action), items in sorted(by_kind.items()):
        shown = "; ".join(f"{_short(p)} ({p.detail})" for p in items[:limit])
        more = f"; and {len(items) - limit} more" if len(items) > limit else ""
        lines.append(f"  {kind}: {len(items)} ({action}): {shown}{more}")
    return "\n".join(lines)


def report_split(source, spec: str, records, listed: int, problems, check: str) -> None:
    """Log what loading ``listed`` images of split ``spec`` of ``source`` gave (``records``, ``problems``); a split
    of which no image is usable is a ``DatasetError`` naming ``check``, the command that lists the problems."""
    if problems:
        skipped = sum(p.action == ACTION_SKIP_IMAGE for p in problems)
        logger.warning("%s: loaded %d of %d images of %s; %d problems (%d images skipped):\n%s", source,
                       len(records), listed, spec, len(problems), skipped, summarize_problems(problems))
    if not records:
        raise DatasetError(f"none of the {listed} images of {spec} of {source} is usable ({len(problems)} "
                           f"problems: {check} lists them)")
    logger.info("%s %s: %d images, %d objects", source, spec, len(records), sum(len(r.labels) for r in records))


def _short(problem: Problem) -> str:
    return f"{problem.path.name}:{problem.line}" if problem.line is not None else problem.path.name


def describe_folder(path, limit: int = 6) -> str:
    """What a folder holds, for error messages: 'no such folder', 'an empty folder' or its first entries."""
    path = Path(path)
    if not path.is_dir():
        return "no such folder" if not path.exists() else "a file, not a folder"
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    if not entries:
        return "an empty folder"
    more = f" and {len(entries) - limit} more" if len(entries) > limit else ""
    return f"{len(entries)} entries: {', '.join(entries[:limit])}{more}"
