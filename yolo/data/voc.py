"""PASCAL VOC devkit reader: data specs, annotation parsing with per-file checks, and the torch Dataset.

Layout read (the official devkit)::

    ROOT/VOCdevkit/VOC<name>/Annotations/<id>.xml
                            /JPEGImages/<id>.jpg
                            /ImageSets/Main/<split>.txt      (one image id per line)
    ROOT/VOCdevkit/classes.txt                               (optional: one class name per line)

``ROOT`` may be the folder holding ``VOCdevkit``, ``VOCdevkit`` itself, or one ``VOC<name>`` folder given directly
(then a data spec may name only that ``<name>``). A data spec such as ``2007:trainval+2012:trainval`` selects and
concatenates ``<name>:<split>`` parts. A root or spec that gives no image is a ``DatasetError``.

Coordinates: ``VOCRecord.boxes_voc`` keeps the XML's 1-based inclusive values; the one conversion to the
model's float pixel-edge ``boxes_xyxy`` is ``yolo.boxes.voc_to_xyxy`` (see ``VOCRecord.boxes_xyxy``).

The per-file checks in :func:`parse_annotation` are the ones the audit (``python -m yolo.data.check``)
reports; loading applies them and skips (or clips) with a single summary warning instead of crashing.
"""
import logging
import math
import os
import re
import struct
import xml.etree.ElementTree as ET
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from yolo.boxes import voc_to_xyxy
from yolo.config import ConfigError

logger = logging.getLogger(__name__)

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)


@dataclass
class VOCRecord:
    """One annotated image, boxes in the annotation's 1-based inclusive pixel coordinates."""
    image_id: str              # file stem, e.g. "2008_000123"
    image_path: Path
    width: int                 # from the XML <size>
    height: int
    boxes_voc: np.ndarray      # (M, 4) float32 xmin, ymin, xmax, ymax as written in the XML
    labels: np.ndarray         # (M,) int64 index into the dataset's class list
    difficult: np.ndarray      # (M,) bool
    truncated: np.ndarray      # (M,) bool

    @property
    def boxes_xyxy(self) -> np.ndarray:
        """(M, 4) float32 pixel-edge boxes, the convention of the model (see yolo.boxes)."""
        return voc_to_xyxy(self.boxes_voc).astype(np.float32)


@dataclass(frozen=True)
class Problem:
    """One defect found in a dataset file, and what loading does about it."""
    path: Path
    kind: str      # short category, e.g. "missing image", "unknown class" (see the KIND_* constants)
    detail: str    # human-readable specifics
    action: str    # ACTION_SKIP_IMAGE, ACTION_DROP_OBJECT or ACTION_CLIP_BOX


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

ACTION_SKIP_IMAGE = "image skipped"
ACTION_DROP_OBJECT = "object dropped"
ACTION_CLIP_BOX = "box clipped"

_SPEC_PART = re.compile(r"^([A-Za-z0-9_.-]+):([A-Za-z0-9_.-]+)$")
_SPEC_EXAMPLE = ("expected '<name>:<split>' parts joined by '+', "
                 "e.g. '2007:trainval+2012:trainval' or 'shapes:test'")


def parse_spec(spec: str) -> list[tuple[str, str]]:
    """``"2007:trainval+2012:trainval"`` -> ``[("2007", "trainval"), ("2012", "trainval")]``.

    ``<name>`` names the folder ``VOC<name>`` under the devkit root, ``<split>`` the file
    ``ImageSets/Main/<split>.txt``. Raises ValueError with an example on a malformed spec.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"empty data spec {spec!r}: {_SPEC_EXAMPLE}")
    parts = []
    for part in spec.split("+"):
        match = _SPEC_PART.match(part.strip())
        if match is None:
            raise ValueError(f"bad data spec part {part!r} in {spec!r}: {_SPEC_EXAMPLE}")
        parts.append((match.group(1), match.group(2)))
    return parts


class DatasetError(ConfigError):
    """A dataset root or data spec that gives no images: the message says what was expected and what was found."""


EXPECTED_LAYOUT = ("expected the folder holding VOCdevkit, VOCdevkit itself, or one VOC<name> folder, laid out as "
                   "VOC<name>/Annotations/<id>.xml, JPEGImages/<id>.jpg, ImageSets/Main/<split>.txt")


def is_year_folder(path) -> bool:
    """Whether ``path`` is one ``VOC<name>`` folder of a devkit (it holds Annotations, JPEGImages or ImageSets)."""
    path = Path(path)
    return (path.name.startswith("VOC") and path.name != "VOCdevkit" and path.is_dir()
            and any((path / sub).is_dir() for sub in ("Annotations", "JPEGImages", "ImageSets")))


def find_devkit(root) -> Path:
    """The devkit folder of ``root``: ``root/VOCdevkit`` when it exists, the devkit holding ``root`` when it is one
    ``VOC<name>`` folder, else ``root`` itself."""
    root = Path(root)
    if (root / "VOCdevkit").is_dir():
        return root / "VOCdevkit"
    return root.parent if is_year_folder(root) else root


def year_folders(root) -> dict[str, Path]:
    """``{name: VOC<name> folder}`` that a dataset root gives: every one of its devkit, or only the folder itself
    when ``root`` is a ``VOC<name>`` folder. Raises DatasetError (what was expected, what was found) for none."""
    root = Path(root)
    if is_year_folder(root):
        return {root.name[3:]: root}
    folders = {p.name[3:]: p for p in sorted(find_devkit(root).glob("VOC*")) if is_year_folder(p)}
    if not folders:
        raise DatasetError(f"no dataset at {root}: {EXPECTED_LAYOUT}; found {describe_folder(root)}")
    return folders


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


def read_classes(root) -> tuple[str, ...]:
    """The class names of a devkit root, in label order.

    ``VOC_CLASSES`` (the standard 20 VOC classes) unless the devkit root holds a ``classes.txt``
    with one name per line (blank lines ignored), as the synthetic shapes set writes.
    """
    path = find_devkit(root) / "classes.txt"
    if not path.is_file():
        return VOC_CLASSES
    names = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
    if not names or len(set(names)) != len(names):
        raise ValueError(f"{path}: expected one unique class name per line, got {names!r}")
    return names


def read_split_ids(root, name: str, split: str) -> list[str]:
    """Image ids listed in ``VOC<name>/ImageSets/Main/<split>.txt``; DatasetError naming what exists otherwise."""
    folders = year_folders(root)
    if name not in folders:
        if is_year_folder(root):
            raise DatasetError(
                f"data spec part '{name}:{split}' needs VOC{name}, but the root {root} is the single folder "
                f"{Path(root).name}: use '{Path(root).name[3:]}:<split>' parts, or give the folder holding both")
        raise DatasetError(f"no folder VOC{name} in {find_devkit(root)} for data spec part '{name}:{split}' "
                           f"(found: {sorted(p.name for p in folders.values())})")
    split_file = folders[name] / "ImageSets" / "Main" / f"{split}.txt"
    if not split_file.is_file():
        available = sorted(p.stem for p in split_file.parent.glob("*.txt") if "_" not in p.stem)
        raise DatasetError(f"no split file {split_file} (available splits: {available or 'none'})")
    return [line.split()[0] for line in split_file.read_text().splitlines() if line.strip()]


def read_image_size(path) -> tuple[int, int] | None:
    """(width, height) read from a JPEG or PNG header without decoding; None if not readable that way.

    Raises FileNotFoundError when the file does not exist.
    """
    with open(path, "rb") as f:
        head = f.read(24)
        if head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) == 24:
            return struct.unpack(">II", head[16:24])
        if head[:2] != b"\xff\xd8":
            return None
        f.seek(2)
        return _jpeg_frame_size(f)


def _jpeg_frame_size(f) -> tuple[int, int] | None:
    """Walks the JPEG marker segments up to the start-of-frame (SOFn) and returns its (width, height)."""
    while True:
        byte = f.read(1)
        while byte == b"\xff":      # fill bytes before a marker
            byte = f.read(1)
        if not byte:
            return None
        marker = byte[0]
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:   # markers without a length field
            continue
        if marker == 0xD9:
            return None
        length_bytes = f.read(2)
        if len(length_bytes) < 2:
            return None
        length = struct.unpack(">H", length_bytes)[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            frame = f.read(5)
            if len(frame) < 5:
                return None
            height, width = struct.unpack(">HH", frame[1:5])
            return width, height
        f.seek(length - 2, 1)


def parse_annotation(xml_path, image_dir, classes, check_image_size: bool = True):
    """Parses one VOC XML with the cheap checks shared by loading and the audit.

    Returns ``(record or None, problems)``. The record is None when the image must be skipped
    (malformed XML, missing image, unreadable image header, XML size disagreeing with the image).
    Objects with an unknown class, a missing/non-numeric box or a degenerate box are dropped;
    boxes reaching outside the image are clipped to it (in memory; files are never modified).
    """
    xml_path = Path(xml_path)
    try:
        tree = ET.parse(xml_path).getroot()
    except (ET.ParseError, OSError) as error:
        return None, [Problem(xml_path, KIND_MALFORMED_XML, str(error), ACTION_SKIP_IMAGE)]
    image_path = _image_path(xml_path, Path(image_dir), tree)
    if image_path is None:
        return None, [Problem(xml_path, KIND_MISSING_IMAGE,
                              f"no image {Path(image_dir) / (xml_path.stem + '.jpg')}", ACTION_SKIP_IMAGE)]
    size, problem = _image_size(xml_path, image_path, tree, check_image_size)
    if size is None:
        return None, [problem]
    width, height = size
    class_index = {name: i for i, name in enumerate(classes)}
    rows, problems = [], []
    for obj in tree.iter("object"):
        row = _parse_object(obj, xml_path, class_index, width, height, problems)
        if row is not None:
            rows.append(row)
    boxes = np.array([r[0] for r in rows], dtype=np.float32).reshape(-1, 4)
    record = VOCRecord(
        image_id=xml_path.stem, image_path=image_path, width=width, height=height, boxes_voc=boxes,
        labels=np.array([r[1] for r in rows], dtype=np.int64),
        difficult=np.array([r[2] for r in rows], dtype=bool),
        truncated=np.array([r[3] for r in rows], dtype=bool),
    )
    return record, problems


def _image_path(xml_path: Path, image_dir: Path, tree) -> Path | None:
    """``JPEGImages/<id>.jpg``, else the XML's ``<filename>`` inside JPEGImages; None when neither exists."""
    candidate = image_dir / f"{xml_path.stem}.jpg"
    if candidate.is_file():
        return candidate
    filename = (tree.findtext("filename") or "").strip()
    if filename and Path(filename).name == filename and (image_dir / filename).is_file():
        return image_dir / filename
    return None


def _image_size(xml_path, image_path, tree, check_image_size):
    """The XML <size> checked against the image header: ((width, height), None) or (None, Problem)."""
    xml_size = _int_pair(tree.find("size"), "width", "height")
    header_size = None
    if check_image_size or xml_size is None:
        try:
            header_size = read_image_size(image_path)
        except OSError as error:
            return None, Problem(image_path, KIND_UNREADABLE_IMAGE, str(error), ACTION_SKIP_IMAGE)
    if xml_size is None:
        if header_size is None:
            return None, Problem(xml_path, KIND_MALFORMED_XML,
                                 "missing <size> and image size unreadable", ACTION_SKIP_IMAGE)
        return header_size, None
    if header_size is not None and header_size != xml_size:
        detail = f"XML size {xml_size[0]}x{xml_size[1]} but image {header_size[0]}x{header_size[1]}"
        return None, Problem(xml_path, KIND_SIZE_MISMATCH, detail, ACTION_SKIP_IMAGE)
    return xml_size, None


def _int_pair(node, first: str, second: str):
    try:
        a, b = int(node.findtext(first)), int(node.findtext(second))
    except (AttributeError, TypeError, ValueError):
        return None
    return (a, b) if a > 0 and b > 0 else None


def _parse_object(obj, xml_path, class_index, width, height, problems):
    """(box_voc, label, difficult, truncated) of one <object>; None (a Problem appended) if dropped."""
    name = (obj.findtext("name") or "").strip()
    if name not in class_index:
        problems.append(Problem(xml_path, KIND_UNKNOWN_CLASS, f"class {name!r}", ACTION_DROP_OBJECT))
        return None
    try:
        box = [float(obj.find("bndbox").findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
        difficult = bool(int(obj.findtext("difficult") or 0))
        truncated = bool(int(obj.findtext("truncated") or 0))
    except (AttributeError, TypeError, ValueError):
        box = None
    if box is None or not all(math.isfinite(v) for v in box):
        problems.append(Problem(xml_path, KIND_MALFORMED_OBJECT,
                                f"{name}: missing or non-numeric bndbox/flags", ACTION_DROP_OBJECT))
        return None
    if box[2] < box[0] or box[3] < box[1]:
        problems.append(Problem(xml_path, KIND_DEGENERATE_BOX, f"{name} box {box} has max < min",
                                ACTION_DROP_OBJECT))
        return None
    # Inclusive 1-based coordinates: the image spans [1, width] x [1, height].
    if box[0] > width or box[1] > height or box[2] < 1 or box[3] < 1:
        problems.append(Problem(xml_path, KIND_OUTSIDE_BOX, f"{name} box {box} outside {width}x{height}",
                                ACTION_DROP_OBJECT))
        return None
    clipped = [max(box[0], 1.0), max(box[1], 1.0), min(box[2], float(width)), min(box[3], float(height))]
    if clipped != box:
        problems.append(Problem(xml_path, KIND_OUTSIDE_BOX, f"{name} box {box} clipped to {width}x{height}",
                                ACTION_CLIP_BOX))
    return clipped, class_index[name], difficult, truncated


def summarize_problems(problems, limit: int = 5) -> str:
    """One line per problem kind: count, action and the first ``limit`` files with details."""
    by_kind = defaultdict(list)
    for problem in problems:
        by_kind[(problem.kind, problem.action)].append(problem)
    lines = []
    for (kind, action), items in sorted(by_kind.items()):
        shown = "; ".join(f"{p.path.name} ({p.detail})" for p in items[:limit])
        more = f"; and {len(items) - limit} more" if len(items) > limit else ""
        lines.append(f"  {kind}: {len(items)} ({action}): {shown}{more}")
    return "\n".join(lines)


def load_records(root, spec: str, classes=None, check_image_size: bool = True) -> list[VOCRecord]:
    """Parses every annotation listed by ``spec`` under the dataset ``root`` into VOCRecords.

    Applies :func:`parse_annotation`'s checks; skipped images, dropped objects and clipped boxes are
    reported in ONE summary ``logger.warning``. ``classes`` defaults to :func:`read_classes` of the root.
    Raises DatasetError when the root, a ``VOC<name>`` folder or a split file is missing, when the spec lists
    no images, or when none of them is usable.
    """
    devkit = find_devkit(root)
    classes = read_classes(devkit) if classes is None else tuple(classes)
    jobs = list_annotations(root, spec)
    records, problems = parse_annotations(jobs, classes, check_image_size)
    if problems:
        skipped = sum(p.action == ACTION_SKIP_IMAGE for p in problems)
        logger.warning("%s: loaded %d of %d images of %s; %d problems (%d images skipped):\n%s", devkit,
                       len(records), len(jobs), spec, len(problems), skipped, summarize_problems(problems))
    if not records:
        raise DatasetError(f"none of the {len(jobs)} images of {spec} under {root} is usable ({len(problems)} "
                           f"problems: python -m yolo.data.check {root} --split {spec} lists them)")
    logger.info("%s %s: %d images, %d objects", devkit, spec, len(records),
                sum(len(r.labels) for r in records))
    return records


def list_annotations(root, spec: str | None = None) -> list[tuple[Path, str]]:
    """``(VOC<name> folder, image id)`` pairs: those listed by ``spec``, or with no spec every
    ``Annotations/*.xml`` of the root's ``VOC<name>`` folders (sorted). Never empty: a root or spec that gives no
    image is a DatasetError naming what was expected and what was found."""
    if not Path(root).is_dir():
        raise DatasetError(f"dataset root {root} does not exist ({EXPECTED_LAYOUT})")
    folders = year_folders(root)
    if spec is None:
        jobs = [(xml.parent.parent, xml.stem) for folder in folders.values()
                for xml in sorted(folder.glob("Annotations/*.xml"))]
        if not jobs:
            raise DatasetError(f"no annotations in {root}: expected VOC<name>/Annotations/<id>.xml in "
                               f"{', '.join(p.name for p in folders.values())}; found none")
        return jobs
    jobs = []
    for name, split in parse_spec(spec):
        ids = read_split_ids(root, name, split)
        if not ids:
            raise DatasetError(f"data spec part '{name}:{split}' lists no images: "
                               f"{folders[name] / 'ImageSets' / 'Main' / f'{split}.txt'} is empty")
        jobs += [(folders[name], image_id) for image_id in ids]
    return jobs


def parse_annotations(jobs, classes, check_image_size: bool = True):
    """Parses ``(year_dir, image_id)`` jobs on a thread pool (I/O bound), keeping their order.

    Returns ``(records, problems)``; a listed id without an XML is a ``missing annotation`` problem.
    """
    def parse(job):
        year_dir, image_id = job
        xml_path = year_dir / "Annotations" / f"{image_id}.xml"
        if not xml_path.is_file():
            return None, [Problem(xml_path, KIND_MISSING_ANNOTATION, f"listed id {image_id} has no XML",
                                  ACTION_SKIP_IMAGE)]
        return parse_annotation(xml_path, year_dir / "JPEGImages", classes, check_image_size)

    with ThreadPoolExecutor(max_workers=min(16, 4 * (os.cpu_count() or 1))) as pool:
        results = list(pool.map(parse, jobs, chunksize=64))
    records = [record for record, _ in results if record is not None]
    problems = [problem for _, found in results for problem in found]
    return records, problems


class ImageDecodeError(Exception):
    """An image that cannot be used: ``kind`` is one of the Problem kinds, ``detail`` says why."""

    def __init__(self, kind: str, detail: str):
        super().__init__(f"{kind}: {detail}")
        self.kind, self.detail = kind, detail


def decode_image(path, expected_size=None) -> np.ndarray:
    """Decodes an image file to uint8 RGB (H, W, 3); raises ImageDecodeError when it cannot be used.

    Grayscale, CMYK and alpha images are converted to 3-channel RGB. EXIF orientation is ignored so the
    pixels match the annotation's coordinate frame (VOC boxes refer to the stored pixel grid).
    ``expected_size`` = (width, height) from the annotation is checked against the decoded image.
    """
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as error:
        raise ImageDecodeError(KIND_UNREADABLE_IMAGE, f"cannot read: {error}") from None
    # A JPEG must end with its EOI marker (0xFFD9), possibly followed by padding; libjpeg decodes
    # truncated files without an error (the missing rows come out grey), so check it explicitly.
    if data[:2].tobytes() == b"\xff\xd8" and b"\xff\xd9" not in data[-4096:].tobytes():
        raise ImageDecodeError(KIND_TRUNCATED_IMAGE, "JPEG without end-of-image marker")
    image = cv2.imdecode(data, cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION) if data.size else None
    if image is None:
        raise ImageDecodeError(KIND_UNREADABLE_IMAGE, "not a decodable image")
    if expected_size is not None and (image.shape[1], image.shape[0]) != tuple(expected_size):
        raise ImageDecodeError(KIND_SIZE_MISMATCH, f"decoded {image.shape[1]}x{image.shape[0]}, "
                                                   f"annotated {expected_size[0]}x{expected_size[1]}")
    return image


class VOCDataset(torch.utils.data.Dataset):
    """Images and detection targets from VOCRecords, through an augmentation ``transform``.

    ``dataset[index]`` or ``dataset[(index, aug_seed)]`` returns ``(image, target)``: ``image`` is a uint8 RGB
    tensor (3, H, W), a view of the augmented (H, W, 3) pixels (channels-last strides, see ``collate``); ``target`` holds ``boxes_xyxy`` float32 (M, 4) in network-input
    pixels, ``labels`` int64 (M,), ``image_id``, ``index`` (of the record actually loaded), ``orig_size``
    (H0, W0), ``scale`` (sx, sy) and ``pad`` (px, py) with ``orig = (input - pad) / scale``.
    Difficult objects are left out of the target unless ``keep_difficult``.

    ``transform(image, boxes_xyxy, labels, seed=aug_seed)`` must return a dict with ``image``,
    ``boxes_xyxy``, ``labels``, ``scale`` and ``pad`` (see yolo.data.transforms); None keeps the image as is.
    An image that fails to decode is logged once (per process) and replaced by the next readable record,
    so the substitution is deterministic; ``target["index"]`` tells which record was used.
    """

    def __init__(self, records, transform=None, keep_difficult: bool = False):
        self.records = list(records)
        self.transform = transform
        self.keep_difficult = keep_difficult
        # The (boxes_xyxy, labels) targets, converted and filtered once instead of per sample.
        self._targets = []
        for record in self.records:
            keep = np.ones(len(record.labels), dtype=bool) if keep_difficult else ~record.difficult
            self._targets.append((record.boxes_xyxy[keep], record.labels[keep]))
        self._failed = set()

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key):
        index, aug_seed = key if isinstance(key, tuple) else (key, None)
        for offset in range(len(self.records)):
            candidate = (index + offset) % len(self.records)
            image = self._read(candidate)
            if image is not None:
                return self._make_sample(candidate, image, aug_seed)
        raise RuntimeError(f"none of the {len(self.records)} images of the dataset could be decoded")

    def _read(self, index: int):
        if index in self._failed:
            return None
        record = self.records[index]
        try:
            return decode_image(record.image_path, (record.width, record.height))
        except ImageDecodeError as error:
            self._failed.add(index)
            logger.warning("skipping %s: %s (substituting the next readable image)", record.image_path, error)
            return None

    def _make_sample(self, index: int, image: np.ndarray, aug_seed):
        record = self.records[index]
        boxes_xyxy, labels = self._targets[index]
        orig_size = image.shape[:2]
        if self.transform is None:
            out = dict(image=image, boxes_xyxy=boxes_xyxy, labels=labels, scale=(1.0, 1.0), pad=(0.0, 0.0))
        else:
            out = self.transform(image, boxes_xyxy, labels, seed=aug_seed)
        image_chw = torch.from_numpy(out["image"]).permute(2, 0, 1)   # a CHW view: collate stacks the HWC pixels
        target = dict(
            boxes_xyxy=torch.as_tensor(np.asarray(out["boxes_xyxy"], dtype=np.float32).reshape(-1, 4)),
            labels=torch.as_tensor(np.asarray(out["labels"], dtype=np.int64).reshape(-1)),
            image_id=record.image_id, index=index, orig_size=orig_size,
            scale=tuple(out["scale"]), pad=tuple(out["pad"]),
        )
        return image_chw, target
