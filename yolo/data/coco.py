"""COCO JSON (and LVIS v1) reader into the neutral records (the writer is ``yolo.data.coco_gt``).

Layout read: one JSON per split, with its image folder. ``--data-root`` is a JSON file (every split that is not
named otherwise reads it) or a folder; a split is ``train`` / ``val`` / ``test`` (found as
``annotations/instances_<split>*.json``, Roboflow's ``<split>/_annotations.coco.json`` (``valid/`` for val),
``annotations/<split>*.json`` or ``<split>*.json``), or a JSON path relative to the root, optionally followed by
``:IMAGE_FOLDER``. Without a folder the images' ``file_name`` (LVIS: the tail of ``coco_url``, ``val2017/...``) is
looked up next to the JSON, in ``<root>/<split>`` (``instances_val2017.json`` -> ``val2017/``), in ``images/`` and in
the folder above.

Rules (each break counted in the load summary, the audit lists them): labels follow the sorted category ids and
detection files use the dataset's own ids; ``iscrowd`` is an ignore region, never a training target; a missing
``area`` (box area) or ``iscrowd`` (0) is defaulted; duplicate image, annotation or category ids are an error;
boxes are clipped to the image, boxes of zero size dropped; an image without annotations is background; a category
without annotations is kept (reported). COCO metrics score the JSON itself as pycocotools does (the checks change
only the training targets and the VOC metric). LVIS files (``neg_category_ids`` / ``not_exhaustive_category_ids``
on the images, ``frequency`` on the categories) are scored with LVIS's federated rules.
"""
import functools
import json
import logging
import math
import os
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from yolo.data.images import header_size_problem
from yolo.data.record import (ACTION_CLIP_BOX, ACTION_DEFAULTED, ACTION_DROP_OBJECT, ACTION_KEPT, ACTION_SKIP_IMAGE,
                              KIND_DEGENERATE_BOX, KIND_MALFORMED_OBJECT, KIND_MISSING_FIELD, KIND_MISSING_IMAGE,
                              KIND_OUTSIDE_BOX, KIND_UNKNOWN_CLASS, KIND_UNUSED_CATEGORY, Categories, DatasetError,
                              Problem, Split, make_record, report_split)

logger = logging.getLogger(__name__)

ROLE_PATTERNS = ("annotations/instances_{name}*.json", "{name}/_annotations.coco.json", "annotations/{name}*.json",
                 "{name}*.json")
ROLE_ALIASES = {"val": ("val", "valid")}
LVIS_FREQUENCIES = ("r", "c", "f")


def is_dataset(root) -> bool:
    """A COCO JSON file, or a folder holding ``annotations/*.json`` or ``*/_annotations.coco.json``."""
    root = Path(root)
    if root.is_file():
        return root.suffix == ".json"
    return root.is_dir() and (any(root.glob("annotations/*.json")) or any(root.glob("*/_annotations.coco.json")))


def find_json(root, spec: str) -> tuple[Path, Path | None]:
    """``(JSON file, image folder or None)`` of a split spec (see the module docstring); DatasetError naming the
    JSON files there when none matches."""
    root = Path(root)
    spec = str(spec)
    json_part, _, images = spec.partition(":") if ".json:" in spec else (spec, "", "")
    base = root.parent if root.is_file() else root
    if json_part.endswith(".json"):
        path = Path(json_part) if Path(json_part).is_absolute() else base / json_part
        if not path.is_file():
            raise DatasetError(f"no COCO JSON {path} for split {spec!r} (JSON files there: {_jsons(base)})")
        return path, (base / images if images else None)
    if root.is_file():
        return root, None      # a JSON given as the root is every split that is not named otherwise
    for name in ROLE_ALIASES.get(json_part, (json_part,)):
        for pattern in ROLE_PATTERNS:
            found = sorted(root.glob(pattern.format(name=name)))
            if len(found) > 1:
                raise DatasetError(f"split {spec!r} matches {len(found)} files in {root} "
                                   f"({', '.join(str(p.relative_to(root)) for p in found)}): name one as the split")
            if found:
                return found[0], None
    raise DatasetError(f"no COCO JSON for split {spec!r} in {root}: expected annotations/instances_{json_part}*.json "
                       f"or {json_part}/_annotations.coco.json, or a path such as annotations/x.json[:IMAGE_FOLDER] "
                       f"(JSON files there: {_jsons(root)})")


def _jsons(folder: Path, limit: int = 6) -> str:
    found = sorted(str(p.relative_to(folder)) for p in list(folder.glob("*.json")) + list(folder.glob("*/*.json")))
    return ", ".join(found[:limit]) + (f" and {len(found) - limit} more" if len(found) > limit else "") or "none"


@functools.lru_cache(maxsize=2)
def _read_json_cached(path: str, mtime_ns: int, size: int) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "categories")):
        raise DatasetError(f"{path}: expected a COCO object with lists 'images', 'annotations' and 'categories'")
    if not isinstance(data.get("annotations"), list):
        raise DatasetError(f"{path}: no 'annotations' list (an image-info file cannot be trained or scored)")
    return data


def read_json(path) -> dict:
    """The parsed JSON (cached per file version: the train JSON is read for the classes and again for the records;
    treat it as read-only). DatasetError for a file that is not a COCO object."""
    stat = os.stat(path)
    return _read_json_cached(str(path), stat.st_mtime_ns, stat.st_size)


def parse_categories(data: dict, path) -> Categories:
    """Categories sorted by id (label k is the k-th smallest id); duplicate ids or names are an error."""
    try:
        rows = sorted((int(c["id"]), str(c["name"]), c.get("frequency")) for c in data["categories"])
    except (KeyError, TypeError, ValueError):
        raise DatasetError(f"{path}: every category needs an integer 'id' and a 'name'") from None
    for position, what in ((0, "id"), (1, "name")):
        counts = Counter(r[position] for r in rows)
        repeated = sorted(str(value) for value, count in counts.items() if count > 1)
        if repeated:
            raise DatasetError(f"{path}: duplicate category {what}s {', '.join(repeated)}")
    if not rows:
        raise DatasetError(f"{path}: no categories")
    frequency = tuple(r[2] for r in rows)
    lvis = all(f in LVIS_FREQUENCIES for f in frequency)
    return Categories(tuple(r[1] for r in rows), tuple(r[0] for r in rows), frequency if lvis else None)


def read_categories(root, spec: str = "train") -> Categories:
    """The categories of the JSON of ``spec`` (the train split's: every split must have the same)."""
    path, _ = find_json(root, spec)
    return parse_categories(read_json(path), path)


def image_ids(root, spec: str) -> list[int]:
    """The JSON's image ids in file order: the ids of the data fingerprint."""
    path, _ = find_json(root, spec)
    return [image.get("id") for image in read_json(path)["images"]]


def load_split(root, spec: str, categories: Categories | None = None, check_image_size: bool = True) -> Split:
    """The records of one COCO JSON (see the module docstring for the rules), in the order of its ``images``."""
    path, image_dir = find_json(root, spec)
    data = read_json(path)
    found = parse_categories(data, path)
    if categories is not None and (found.names, found.ids) != (categories.names, categories.ids):
        raise DatasetError(f"{path}: its categories differ from the training split's ({len(found.ids)} against "
                           f"{len(categories.ids)}; first names {list(found.names[:3])} / "
                           f"{list(categories.names[:3])})")
    images = _check_images(data["images"], path)
    image_dir = image_dir or _image_folder(path, root, images)
    by_image, problems, coco_gt = _annotations(data, path, found, images)
    label_of = {cid: k for k, cid in enumerate(found.ids)}
    with ThreadPoolExecutor(max_workers=min(16, 4 * (os.cpu_count() or 1))) as pool:
        built = list(pool.map(lambda image: _record(image, image_dir, by_image.get(image["id"], []), label_of,
                                                    check_image_size), images, chunksize=64))
    records = [record for record, _ in built if record is not None]
    problems += [p for _, found_problems in built for p in found_problems]
    problems += _unused_categories(path, found, data["annotations"])
    report_split(path, spec, records, len(images), problems, check=f"python -m yolo.data.check {path}")
    federated = any("neg_category_ids" in image or "not_exhaustive_category_ids" in image for image in images)
    if federated and found.frequency is None:
        raise DatasetError(f"{path}: its images list LVIS's neg / not-exhaustive category ids, but not every "
                           f"category has a 'frequency' (r, c or f), which LVIS's evaluation groups AP by")
    return Split("coco", spec, path, records, found, [image["id"] for image in images], problems, coco_gt,
                 federated)


def _check_images(images: list, path) -> list:
    ids = Counter()
    for index, image in enumerate(images):
        if not isinstance(image, dict) or type(image.get("id")) is not int:
            raise DatasetError(f"{path}: images[{index}] needs an integer 'id', got {image!r:.80}")
        if not (image.get("file_name") or image.get("coco_url")):
            raise DatasetError(f"{path}: image {image['id']} has no 'file_name' (nor LVIS's 'coco_url')")
        ids[image["id"]] += 1
    repeated = [i for i, n in ids.items() if n > 1]
    if repeated:
        raise DatasetError(f"{path}: duplicate image ids {', '.join(map(str, sorted(repeated)[:5]))} "
                           f"({len(repeated)} ids appear more than once)")
    if not images:
        raise DatasetError(f"{path}: no images")
    return images


def image_file(image: dict) -> str:
    """An image's path relative to its folder: ``file_name``, or (LVIS) the last two parts of ``coco_url``."""
    return image.get("file_name") or "/".join(str(image["coco_url"]).split("/")[-2:])


def _image_folder(path: Path, root, images: list) -> Path:
    """The first candidate folder holding the first image of the JSON (see the module docstring)."""
    stem = path.stem.removeprefix("instances_")
    candidates = [path.parent, path.parent.parent / stem, path.parent / "images", path.parent.parent / "images",
                  path.parent.parent]
    first = image_file(images[0])
    for folder in candidates:
        if (folder / first).is_file():
            return folder
    raise DatasetError(f"{path}: its first image {first} is in none of {', '.join(str(c) for c in candidates)}: "
                       f"name the folder after the JSON, as {path.name}:IMAGE_FOLDER")


def _annotations(data: dict, path, categories: Categories, images: list):
    """``({image id: [annotation]}, problems, the ground truth to score)``; duplicate annotation ids are an error.
    Missing ``area`` / ``iscrowd`` are defaulted in the scored copy (pycocotools needs both)."""
    ids, by_image, missing = Counter(), defaultdict(list), Counter()
    known_images, known_categories = {image["id"] for image in images}, set(categories.ids)
    scored, orphans = [], Counter()
    for index, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or "id" not in ann:
            raise DatasetError(f"{path}: annotations[{index}] needs an 'id', got {ann!r:.80}")
        ids[ann["id"]] += 1
        defaults = {key: value for key, value in (("iscrowd", 0), ("area", _box_area(ann))) if key not in ann}
        missing.update(defaults.keys())
        scored.append({**ann, **defaults} if defaults else ann)
        if ann.get("image_id") not in known_images or ann.get("category_id") not in known_categories:
            orphans["image" if ann.get("image_id") not in known_images else "category"] += 1
            continue
        by_image[ann["image_id"]].append(scored[-1])
    repeated = [i for i, n in ids.items() if n > 1]
    if repeated:
        raise DatasetError(f"{path}: duplicate annotation ids {', '.join(map(str, sorted(repeated, key=str)[:5]))} "
                           f"({len(repeated)} ids appear more than once)")
    problems = [Problem(path, KIND_MISSING_FIELD, f"'{key}' missing on {count} annotations, set to "
                        f"{'0 (not a crowd)' if key == 'iscrowd' else 'the box area'}", ACTION_DEFAULTED)
                for key, count in sorted(missing.items())]
    problems += [Problem(path, KIND_UNKNOWN_CLASS if what == "category" else KIND_MISSING_IMAGE,
                         f"{count} annotations of an unknown {what} id", ACTION_DROP_OBJECT)
                 for what, count in sorted(orphans.items())]
    coco_gt = {"images": data["images"], "annotations": scored, "categories": data["categories"]}
    return by_image, problems, coco_gt


def _box_area(ann: dict) -> float:
    try:
        return float(ann["bbox"][2]) * float(ann["bbox"][3])
    except (KeyError, TypeError, ValueError, IndexError):
        return 0.0


def _record(image: dict, image_dir: Path, annotations: list, label_of: dict, check_image_size: bool):
    """``(Record or None, problems)`` of one image entry."""
    image_path = image_dir / image_file(image)
    if not image_path.is_file():
        return None, [Problem(image_path, KIND_MISSING_IMAGE, f"image {image['id']} not found", ACTION_SKIP_IMAGE)]
    annotated = (image.get("width"), image.get("height"))
    annotated = annotated if all(type(v) is int and v > 0 for v in annotated) else None
    size, problem = header_size_problem(image_path, annotated) if check_image_size or annotated is None \
        else (annotated, None)
    if size is None:
        return None, [Problem(image_path, problem[0], problem[1], ACTION_SKIP_IMAGE)]
    rows, problems = [], []
    for ann in annotations:
        row = _box(ann, size, image_path, problems)
        if row is not None:
            rows.append((*row, label_of[ann["category_id"]], bool(ann["iscrowd"])))
    boxes = np.array([r[:4] for r in rows], dtype=np.float64).reshape(-1, 4)
    crowd = np.array([r[5] for r in rows], dtype=bool)
    record = make_record(image["id"], image_path, size[0], size[1], boxes, [r[4] for r in rows], ignore=crowd,
                         crowd=crowd, neg_labels=_labels(image, "neg_category_ids", label_of),
                         not_exhaustive_labels=_labels(image, "not_exhaustive_category_ids", label_of))
    return record, problems


def _labels(image: dict, key: str, label_of: dict) -> tuple:
    return tuple(sorted(label_of[c] for c in image.get(key) or () if c in label_of))


def _box(ann: dict, size, image_path: Path, problems: list):
    """The annotation's box as pixel-edge (x1, y1, x2, y2), clipped to the image; None (a Problem added) if
    malformed, of zero size, or entirely outside."""
    width, height = size
    bbox = ann.get("bbox")
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(type(v) in (int, float) for v in bbox)
            and all(math.isfinite(v) for v in bbox)):
        problems.append(Problem(image_path, KIND_MALFORMED_OBJECT, f"annotation {ann['id']}: bbox {bbox!r:.60}",
                                ACTION_DROP_OBJECT))
        return None
    x, y, w, h = (float(v) for v in bbox)
    if w <= 0 or h <= 0:
        problems.append(Problem(image_path, KIND_DEGENERATE_BOX, f"annotation {ann['id']}: bbox {bbox} has zero "
                                f"size", ACTION_DROP_OBJECT))
        return None
    box = (x, y, x + w, y + h)
    clipped = (max(box[0], 0.0), max(box[1], 0.0), min(box[2], float(width)), min(box[3], float(height)))
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        problems.append(Problem(image_path, KIND_OUTSIDE_BOX, f"annotation {ann['id']}: bbox {bbox} outside "
                                f"{width}x{height}", ACTION_DROP_OBJECT))
        return None
    if clipped != box:
        problems.append(Problem(image_path, KIND_OUTSIDE_BOX, f"annotation {ann['id']}: bbox {bbox} clipped to "
                                f"{width}x{height}", ACTION_CLIP_BOX))
    return clipped


def _unused_categories(path, categories: Categories, annotations: list) -> list:
    """One problem naming the categories without any annotation (Roboflow exports add one): they are kept, so
    that labels and category ids stay those of every split; such a class is never a target, and its AP is
    undefined and left out of the means."""
    used = {ann.get("category_id") for ann in annotations if isinstance(ann, dict)}
    unused = [f"{name!r} (id {cid})" for name, cid in zip(categories.names, categories.ids) if cid not in used]
    if not unused:
        return []
    return [Problem(path, KIND_UNUSED_CATEGORY, f"{len(unused)} of {len(categories.ids)} categories have no "
                    f"annotation: {', '.join(unused[:6])}{' ...' if len(unused) > 6 else ''}", ACTION_KEPT)]
