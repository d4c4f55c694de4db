"""YOLO (ultralytics) layout reader: a ``data.yaml``, image folders or lists, one ``.txt`` label file per image.

``data.yaml`` keys read: ``path`` (the dataset root, relative to the YAML's folder; default: that folder),
``train`` / ``val`` / ``test`` (a folder of images, searched recursively; a ``.txt`` list of images, ``./x`` lines
relative to the list's folder and other relative lines to ``path``; or a list of those), ``names`` (a list, or a
dict ``{index: name}`` numbering 0..nc-1) and ``nc`` (checked against ``names``). A ``download:`` entry is never
run. A split spec is a key of the YAML (``train``, ``val``, ``test``).

Labels: ``.../images/.../x.jpg`` -> ``.../labels/.../x.txt`` (the last ``/images/`` becomes ``/labels/``); no label
file means a background image. Each line is ``class x_center y_center width height``, normalised to [0, 1], or a
polygon ``class x1 y1 x2 y2 ...`` (segmentation labels), which becomes its bounding box. Checked per line (the
audit lists every bad line as ``file:line`` and what loading does): 5 numbers (or a polygon), an integer class
< nc, coordinates in [0, 1] within +-0.01 (clipped; beyond: dropped), a positive size; duplicate lines are removed.
Image ids are file stems (unique within a split); labels are the class indices, written to files as index + 1.
"""
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import yaml

from yolo.data.images import header_size_problem
from yolo.data.record import (ACTION_CLIP_BOX, ACTION_DROP_OBJECT, ACTION_SKIP_IMAGE,
                              KIND_DEGENERATE_BOX, KIND_DUPLICATE_LINE, KIND_MALFORMED_OBJECT, KIND_OUTSIDE_BOX,
                              KIND_POLYGON, KIND_UNKNOWN_CLASS, Categories, DatasetError, Problem, Split,
                              describe_folder, make_record, summarize_problems)

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
ACTION_POLYGON_BOX = "its bounding box kept"
TOLERANCE = 0.01      # normalised coordinates may overshoot [0, 1] by this much (rounding in exporters): clipped


def yaml_path(root) -> Path:
    """The ``data.yaml`` of a root: the file itself, or ``data.yaml`` in the folder."""
    root = Path(root)
    return root if root.is_file() else root / "data.yaml"


def is_dataset(root) -> bool:
    root = Path(root)
    return (root.is_file() and root.suffix in (".yaml", ".yml")) or (root / "data.yaml").is_file()


def read_yaml(root) -> dict:
    """The checked ``data.yaml``: a mapping with ``names``; DatasetError otherwise."""
    path = yaml_path(root)
    if not path.is_file():
        raise DatasetError(f"no {path}: a YOLO dataset is a data.yaml (path, train, val, test, names)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise DatasetError(f"{path} is not valid YAML: {str(error).splitlines()[0]}") from None
    if not isinstance(data, dict) or "names" not in data:
        raise DatasetError(f"{path}: expected a mapping with 'names' (and path, train, val, test), got "
                           f"{type(data).__name__}")
    if "download" in data:
        logger.info("%s: its 'download' entry is never run: fetch the data yourself", path)
    return data


def read_categories(root, spec: str = "train") -> Categories:
    """``names`` (a list, or a dict numbering 0..nc-1) as categories 1..nc; ``nc`` must agree."""
    path, data = yaml_path(root), read_yaml(root)
    names = data["names"]
    if isinstance(names, dict):
        if sorted(names) != list(range(len(names))):
            raise DatasetError(f"{path}: 'names' as a dict must number the classes 0..{len(names) - 1}, got keys "
                               f"{sorted(names, key=str)[:6]}")
        names = [names[i] for i in range(len(names))]
    if not isinstance(names, list) or not names or len({str(n) for n in names}) != len(names):
        raise DatasetError(f"{path}: 'names' must be a non-empty list (or dict) of unique class names")
    if "nc" in data and data["nc"] != len(names):
        raise DatasetError(f"{path}: nc is {data['nc']} but 'names' lists {len(names)} classes")
    return Categories.numbered(str(n) for n in names)


def image_ids(root, spec: str) -> list[str]:
    """The file stems of the split's images, in order: the ids of the data fingerprint."""
    return [path.stem for path in _unique_stems(list_images(root, spec))]


def list_images(root, spec: str) -> list[Path]:
    """The image files of the split ``spec`` (a key of data.yaml), in order; DatasetError when there are none."""
    path, data = yaml_path(root), read_yaml(root)
    if spec not in data or spec in ("names", "nc", "path", "download"):
        splits = [k for k in ("train", "val", "test") if k in data]
        raise DatasetError(f"{path} has no split {spec!r} (its splits: {', '.join(splits) or 'none'})")
    base = (path.parent / str(data.get("path", "."))).resolve()
    entries = data[spec] if isinstance(data[spec], list) else [data[spec]]
    images = []
    for entry in entries:
        images += _entry_images(base, Path(str(entry)), path)
    if not images:
        hint = " (its 'download' entry is never run: fetch the data yourself)" if "download" in data else ""
        raise DatasetError(f"{path}: split {spec!r} ({', '.join(map(str, entries))} under {base}) holds no image"
                           f"{hint}")
    return images


def _entry_images(base: Path, entry: Path, yaml_file: Path) -> list[Path]:
    target = entry if entry.is_absolute() else base / entry
    if target.is_dir():
        return sorted(p for p in target.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if target.suffix == ".txt" and target.is_file():
        lines = [line.strip() for line in target.read_text().splitlines() if line.strip()]
        return [Path(line) if Path(line).is_absolute() else
                (target.parent / line if line.startswith("./") else base / line) for line in lines]
    if target.suffix.lower() in IMAGE_SUFFIXES and target.is_file():
        return [target]
    raise DatasetError(f"{yaml_file}: split entry {entry} is no folder, image list or image ({target}: "
                       f"{describe_folder(target)})")


def _unique_stems(images: list[Path]) -> list[Path]:
    seen = {}
    for image in images:
        if image.stem in seen:
            raise DatasetError(f"two images of one split share the id {image.stem!r}: {seen[image.stem]} and "
                               f"{image} (image ids are file stems: rename one)")
        seen[image.stem] = image
    return images


def label_path(image_path: Path) -> Path:
    """ultralytics' rule: the last ``/images/`` of the path becomes ``/labels/``, the suffix ``.txt``."""
    text = str(image_path)
    marker, replacement = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    if marker in text:
        head, tail = text.rsplit(marker, 1)
        text = head + replacement + tail
    return Path(text).with_suffix(".txt")


def load_split(root, spec: str, categories: Categories | None = None, check_image_size: bool = True) -> Split:
    """The records of one split (see the module docstring), in the order of :func:`list_images`."""
    categories = categories or read_categories(root)
    images = _unique_stems(list_images(root, spec))
    with ThreadPoolExecutor(max_workers=min(16, 4 * (os.cpu_count() or 1))) as pool:
        built = list(pool.map(lambda image: _record(image, len(categories.names)), images, chunksize=64))
    records = [record for record, _ in built if record is not None]
    problems = [p for _, found in built for p in found]
    source = yaml_path(root)
    if problems:
        skipped = sum(p.action == ACTION_SKIP_IMAGE for p in problems)
        logger.warning("%s: loaded %d of %d images of %s; %d problems (%d images skipped):\n%s", source,
                       len(records), len(images), spec, len(problems), skipped, summarize_problems(problems))
    if not records:
        raise DatasetError(f"none of the {len(images)} images of split {spec!r} of {source} is usable "
                           f"({len(problems)} problems: python -m yolo.data.check {source} --split {spec} lists them)")
    logger.info("%s %s: %d images, %d objects", source, spec, len(records), sum(len(r.labels) for r in records))
    return Split("yolo", spec, source, records, categories, [image.stem for image in images], problems)


def _record(image_path: Path, num_classes: int):
    """``(Record or None, problems)`` of one image and its label file."""
    size, problem = header_size_problem(image_path, None)
    if size is None:
        return None, [Problem(image_path, problem[0], problem[1], ACTION_SKIP_IMAGE)]
    labels_file = label_path(image_path)
    lines = labels_file.read_text().splitlines() if labels_file.is_file() else []
    rows, problems, seen = [], [], set()
    for number, line in enumerate(lines, start=1):
        row = parse_line(line, num_classes, labels_file, number, problems)
        if row is None:
            continue
        if row in seen:
            problems.append(Problem(labels_file, KIND_DUPLICATE_LINE, "same class and box as an earlier line",
                                    ACTION_DROP_OBJECT, number))
            continue
        seen.add(row)
        rows.append(row)
    scale = np.array(size * 2, dtype=np.float64)
    boxes = np.array([r[1:] for r in rows], dtype=np.float64).reshape(-1, 4) * scale
    return make_record(image_path.stem, image_path, size[0], size[1], boxes, [r[0] for r in rows]), problems


def parse_line(line: str, num_classes: int, path: Path, number: int, problems: list):
    """``(class, x1, y1, x2, y2)`` normalised corners of one label line; None for a blank or dropped line (a
    Problem naming ``path:number`` added)."""
    tokens = line.split()
    if not tokens:
        return None

    def drop(kind, detail, action=ACTION_DROP_OBJECT):
        problems.append(Problem(path, kind, detail, action, number))
    try:
        values = [float(t) for t in tokens]
    except ValueError:
        return drop(KIND_MALFORMED_OBJECT, f"not numbers: {line.strip()[:60]!r}")
    polygon = len(values) >= 7 and len(values) % 2 == 1
    if len(values) != 5 and not polygon:
        return drop(KIND_MALFORMED_OBJECT, f"{len(values)} numbers, expected 5 (class x y w h) or a polygon")
    if not values[0].is_integer() or not 0 <= values[0] < num_classes:
        return drop(KIND_UNKNOWN_CLASS, f"class {tokens[0]} is not an integer in 0..{num_classes - 1}")
    if polygon:
        xs, ys = np.array(values[1::2]), np.array(values[2::2])
        corners = [xs.min(), ys.min(), xs.max(), ys.max()]
        problems.append(Problem(path, KIND_POLYGON, f"{len(xs)} points", ACTION_POLYGON_BOX, number))
    else:
        xc, yc, w, h = values[1:]
        corners = [xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2]
    if not all(-TOLERANCE <= v <= 1 + TOLERANCE for v in (values[1:] if polygon else corners)):
        return drop(KIND_OUTSIDE_BOX, f"coordinates {', '.join(tokens[1:5])}{'...' if polygon else ''} outside "
                                      f"[0, 1] (+-{TOLERANCE}): pixel coordinates instead of normalised ones?")
    clipped = [min(max(v, 0.0), 1.0) for v in corners]
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        return drop(KIND_DEGENERATE_BOX, f"zero size ({', '.join(tokens[1:5])})")
    if clipped != corners:
        drop(KIND_OUTSIDE_BOX, "coordinates within 0.01 outside [0, 1]", ACTION_CLIP_BOX)
    return (int(values[0]), *clipped)
