"""PASCAL VOC devkit reader: data specs, annotation parsing with per-file checks, into the neutral records.

Layout read (the official devkit)::

    ROOT/VOCdevkit/VOC<name>/Annotations/<id>.xml
                            /JPEGImages/<id>.jpg
                            /ImageSets/Main/<split>.txt      (one image id per line)
    ROOT/VOCdevkit/classes.txt                               (optional: one class name per line)

``ROOT`` may be the folder holding ``VOCdevkit``, ``VOCdevkit`` itself, or one ``VOC<name>`` folder given directly
(then a data spec may name only that ``<name>``). A data spec such as ``2007:trainval+2012:trainval`` selects and
concatenates ``<name>:<split>`` parts. A root or spec that gives no image is a ``DatasetError``.

Classes: ``classes.txt`` when the devkit has one, else the 20 VOC classes, and then every object must carry one of
their names: a devkit labelled with other names and no ``classes.txt`` is a ``DatasetError`` listing the names found
(rather than a dataset whose every object is dropped as "unknown class").

Coordinates: the XML's 1-based inclusive corners are read here and converted once, by ``yolo.boxes.voc_to_xyxy``,
to the records' float pixel-edge ``boxes_xyxy`` (``x1 = xmin - 1, x2 = xmax``); they do not leave this module.

The per-file checks in :func:`parse_annotation` are the ones the audit (``python -m yolo.data.check``)
reports; loading applies them and skips (or clips) with a single summary warning instead of crashing.
"""
import logging
import math
import os
import re
import xml.etree.ElementTree as ET
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from yolo.boxes import voc_to_xyxy
from yolo.data.images import read_image_size
from yolo.data.record import (ACTION_CLIP_BOX, ACTION_DROP_OBJECT, ACTION_SKIP_IMAGE, KIND_DEGENERATE_BOX,
                              KIND_MALFORMED_OBJECT, KIND_MALFORMED_XML, KIND_MISSING_ANNOTATION, KIND_MISSING_IMAGE,
                              KIND_OUTSIDE_BOX, KIND_SIZE_MISMATCH, KIND_UNKNOWN_CLASS, KIND_UNREADABLE_IMAGE,
                              Categories, DatasetError, Problem, Record, Split, describe_folder, summarize_problems)

logger = logging.getLogger(__name__)

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)


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


def read_classes(root) -> tuple[str, ...]:
    """The class names of a devkit root, in label order.

    ``VOC_CLASSES`` (the standard 20 VOC classes) unless the devkit root holds a ``classes.txt``
    with one name per line (blank lines ignored), as the synthetic shapes set writes. Without ``classes.txt``,
    :func:`load_split` accepts only objects named after VOC classes.
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


def parse_annotation(xml_path, image_dir, classes, check_image_size: bool = True):
    """Parses one VOC XML with the cheap checks shared by loading and the audit.

    Returns ``(Record or None, problems)``; ``difficult`` objects are the record's ``ignore`` ones. The record is
    None when the image must be skipped (malformed XML, missing image, unreadable image header, XML size
    disagreeing with the image). Objects with an unknown class, a missing/non-numeric box or a degenerate box are
    dropped; boxes reaching outside the image are clipped to it (in memory; files are never modified).
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
    boxes_voc = np.array([r[0] for r in rows], dtype=np.float32).reshape(-1, 4)
    difficult = np.array([r[2] for r in rows], dtype=bool)
    record = Record(
        image_id=xml_path.stem, image_path=image_path, width=width, height=height,
        boxes_xyxy=voc_to_xyxy(boxes_voc).astype(np.float32),    # float32 arithmetic, as training always had
        labels=np.array([r[1] for r in rows], dtype=np.int64), ignore=difficult,
        crowd=np.zeros_like(difficult), truncated=np.array([r[3] for r in rows], dtype=bool),
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


def load_split(root, spec: str, categories: Categories | None = None, check_image_size: bool = True) -> Split:
    """Parses every annotation listed by ``spec`` under the dataset ``root`` into a :class:`Split`.

    Applies :func:`parse_annotation`'s checks; skipped images, dropped objects and clipped boxes are
    reported in ONE summary ``logger.warning``. ``categories`` defaults to :func:`read_categories` of the root.
    Raises DatasetError when the root, a ``VOC<name>`` folder or a split file is missing, when the spec lists
    no images, when none of them is usable, or when the devkit has no ``classes.txt`` and objects carry names
    that are not VOC classes.
    """
    devkit = find_devkit(root)
    categories = read_categories(devkit) if categories is None else categories
    jobs = list_annotations(root, spec)
    records, problems = parse_annotations(jobs, categories.names, check_image_size)
    if not (devkit / "classes.txt").is_file() and any(p.kind == KIND_UNKNOWN_CLASS for p in problems):
        raise DatasetError(undeclared_classes_message(devkit, jobs))
    if problems:
        skipped = sum(p.action == ACTION_SKIP_IMAGE for p in problems)
        logger.warning("%s: loaded %d of %d images of %s; %d problems (%d images skipped):\n%s", devkit,
                       len(records), len(jobs), spec, len(problems), skipped, summarize_problems(problems))
    if not records:
        raise DatasetError(f"none of the {len(jobs)} images of {spec} under {root} is usable ({len(problems)} "
                           f"problems: python -m yolo.data.check {root} --split {spec} lists them)")
    logger.info("%s %s: %d images, %d objects", devkit, spec, len(records),
                sum(len(r.labels) for r in records))
    return Split("voc", spec, devkit, records, categories, [i for _, i in jobs], problems)


def load_records(root, spec: str, classes=None, check_image_size: bool = True) -> list[Record]:
    """The records of :func:`load_split` with the class names ``classes`` (default: :func:`read_classes`)."""
    categories = None if classes is None else Categories.numbered(classes)
    return load_split(root, spec, categories, check_image_size).records


def undeclared_classes_message(devkit: Path, jobs) -> str:
    """The one-line error for a devkit without ``classes.txt`` whose objects are not all named after VOC classes:
    every name found (with its count), and how to declare the list."""
    names = Counter()
    for year_dir, image_id in jobs:
        try:
            tree = ET.parse(year_dir / "Annotations" / f"{image_id}.xml").getroot()
        except (ET.ParseError, OSError):
            continue
        names.update((obj.findtext("name") or "").strip() for obj in tree.iter("object"))
    foreign = sorted(n for n in names if n not in VOC_CLASSES)
    found = ", ".join(f"{name} ({names[name]})" for name in sorted(names))
    return (f"{devkit}: objects are named {', '.join(map(repr, foreign[:8]))}"
            f"{' and more' if len(foreign) > 8 else ''}, which are not VOC classes, and there is no "
            f"{devkit / 'classes.txt'}: declare the class list there, one name per line in label order "
            f"(names found: {found})")


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


def is_dataset(root) -> bool:
    """Whether ``root`` is one of the accepted devkit roots and holds at least one ``VOC<name>`` folder."""
    root = Path(root)
    return root.is_dir() and (is_year_folder(root) or any(is_year_folder(p) for p in find_devkit(root).glob("VOC*")))


def read_categories(root, spec: str | None = None) -> Categories:
    """The devkit's classes (:func:`read_classes`, whatever the split) as categories 1..C."""
    return Categories.numbered(read_classes(root))


def image_ids(root, spec: str) -> list[str]:
    """``<VOC folder name>/<image id>`` of every image ``spec`` lists: the ids of the data fingerprint."""
    return [f"{folder.name}/{image_id}" for folder, image_id in list_annotations(root, spec)]


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
