"""Dataset audit of any layout (VOC devkit, COCO JSON, YOLO data.yaml): statistics and every problem, with file
(and line) and what training and evaluation do about it.

    python -m yolo.data.check ../shared/voc-sample                    # every annotation of the devkit
    python -m yolo.data.check data --split 2007:trainval+2012:trainval --json audit.json
    python -m yolo.data.check ../shared/voc-sample/VOCdevkit/VOC2012     # one VOC<name> folder
    python -m yolo.data.check data/shapes --split shapes:train        # statistics of the synthetic set
    python -m yolo.data.check coco/annotations/instances_val2017.json  # a COCO JSON
    python -m yolo.data.check my/data.yaml                            # every split of a YOLO dataset

Reports images, objects, per-class counts, difficult (ignored) / truncated counts, object sizes, and the problems:
malformed annotation files, listed ids without annotation, missing image, unreadable/corrupted/truncated image, a
size disagreeing with the image, unknown class, malformed object, degenerate or out-of-image box, defaulted COCO
fields, categories without annotations, bad / duplicate / polygon YOLO label lines (``file:line``), and images
whose EXIF orientation is not 1 (boxes refer to the stored pixel grid: ``yolo.data.images``). The per-file checks
are those of training/evaluation (the readers and ``decode_image``), which skip, drop or clip instead. Exit
status: 0 clean, 1 problems found, 2 bad arguments or a root / split that gives no image (an empty folder is never
"clean"). Dataset files are only read.
"""
import argparse
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from yolo.data import coco, yolo_txt
from yolo.data.images import ImageDecodeError, decode_image, exif_orientation
from yolo.data.layout import FORMATS, detect_layout, open_split
from yolo.data.record import (ACTION_KEPT, ACTION_SKIP_IMAGE, KIND_EXIF_ROTATED, KIND_UNKNOWN_CLASS, DatasetError,
                              Problem)
from yolo.data.voc import (find_devkit, is_year_folder, list_annotations, parse_annotations, read_classes,
                           undeclared_classes_message)

SIZE_BINS_PX = (0, 8, 16, 32, 64, 128, 256, 512, float("inf"))    # sqrt(box area), pixels
RELATIVE_BINS = (0.0, 0.05, 0.1, 0.2, 0.4, 0.7, 1.01)              # sqrt(box area / image area)


def audit(root, spec: str | None = None, classes=None, decode: bool = True, fmt: str = "auto") -> dict:
    """Scans a dataset: a VOC devkit (every ``VOC*/Annotations/*.xml``, or the images listed by ``spec``), a COCO
    JSON or a YOLO data.yaml (the split ``spec``, or every split it has).

    ``decode`` also decodes every image (corrupted/truncated files, decoded size vs annotation).
    Returns a JSON-serialisable report; ``report["problems"]`` lists dicts with ``file``, ``line``, ``kind``,
    ``detail`` and ``action`` (what training/evaluation do about it), ``report["clean"]`` is True without any.
    Raises DatasetError for a root or spec that gives no annotation (a missing or empty root, split file or
    ``VOC<name>`` folder) and ValueError for a bad spec.
    """
    layout = detect_layout(root, fmt)
    if layout == "voc":
        report, records, problems, classes = _scan_voc(root, spec, classes)
    else:
        report, records, problems, classes = _scan_splits(root, spec, layout)
    problems += _orientation_problems(records)
    if decode:
        records, decode_problems = _decode_all(records)
        problems += decode_problems
    report.update(layout=layout, images=len(records), **statistics(records, classes))
    report["problems"] = [{"file": str(p.path), "line": p.line, "kind": p.kind, "detail": p.detail,
                           "action": p.action} for p in problems]
    report["clean"] = not problems
    return report


def _scan_voc(root, spec, classes):
    devkit = find_devkit(root)
    classes = read_classes(root) if classes is None else tuple(classes)
    jobs = list_annotations(root, spec)
    records, problems = parse_annotations(jobs, classes, check_image_size=True)
    if not (devkit / "classes.txt").is_file() and any(p.kind == KIND_UNKNOWN_CLASS for p in problems):
        raise DatasetError(undeclared_classes_message(devkit, jobs))
    shown = Path(root) if is_year_folder(root) else devkit
    report = {"root": str(shown), "folders": sorted({str(folder.name) for folder, _ in jobs}), "spec": spec,
              "annotations": len(jobs)}
    return report, records, problems, classes


def _scan_splits(root, spec, layout):
    """The named split of a COCO / YOLO dataset, or every split it has."""
    specs = [spec] if spec else _available_splits(root, layout)
    splits = [open_split(root, name, layout) for name in specs]
    records = [r for split in splits for r in split.records]
    problems = [p for split in splits for p in split.problems]
    report = {"root": str(root), "folders": specs, "spec": spec, "annotations": sum(s.listed for s in splits)}
    return report, records, problems, splits[0].classes


def _available_splits(root, layout) -> list[str]:
    if layout == "yolo":         # a split naming the same images as an earlier one is audited once
        data = yolo_txt.read_yaml(root)
        present = [name for name in ("train", "val", "test") if name in data]
        return [name for i, name in enumerate(present) if data[name] not in [data[n] for n in present[:i]]]
    names = []
    for name in ("train", "val", "test"):
        try:
            path, _ = coco.find_json(root, name)
        except DatasetError:
            continue
        if path not in [coco.find_json(root, n)[0] for n in names]:
            names.append(name)
    if not names:
        raise DatasetError(f"no COCO JSON found for train, val or test in {root}: name one with --split")
    return names


def _orientation_problems(records) -> list:
    """Images whose EXIF orientation tag is not 1: boxes are read on the stored grid (the policy), not the
    displayed one a labelling tool may have shown."""
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        tags = list(pool.map(lambda r: exif_orientation(r.image_path), records, chunksize=16))
    return [Problem(r.image_path, KIND_EXIF_ROTATED, f"tag {tag}: displayed rotated or mirrored; its boxes are read "
                    f"on the stored pixel grid", ACTION_KEPT) for r, tag in zip(records, tags) if tag != 1]


def _decode_all(records):
    """Decodes every image on a thread pool (cv2 releases the GIL); returns (usable records, problems)."""
    def check(record):
        try:
            decode_image(record.image_path, (record.width, record.height))
        except ImageDecodeError as error:
            return Problem(record.image_path, error.kind, error.detail, ACTION_SKIP_IMAGE)
        return None

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        found = list(pool.map(check, records, chunksize=16))
    return [r for r, p in zip(records, found) if p is None], [p for p in found if p is not None]


def statistics(records, classes) -> dict:
    """Counts per class (objects, difficult / ignored, images) and object-size histograms of Records."""
    labels = np.concatenate([r.labels for r in records]) if records else np.zeros(0, dtype=np.int64)
    difficult = np.concatenate([r.ignore for r in records]) if records else np.zeros(0, dtype=bool)
    truncated = np.concatenate([r.truncated for r in records]) if records else np.zeros(0, dtype=bool)
    boxes = np.concatenate([r.boxes_xyxy for r in records]) if records else np.zeros((0, 4), np.float32)
    image_area = np.array([r.width * r.height for r in records for _ in r.labels], dtype=np.float64)
    side = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    per_class = {}
    for k, name in enumerate(classes):
        per_class[name] = {"objects": int((labels == k).sum()),
                           "difficult": int(((labels == k) & difficult).sum()),
                           "images": sum(int((r.labels == k).any()) for r in records)}
    area = side ** 2
    return {
        "classes": list(classes), "objects": int(len(labels)), "difficult": int(difficult.sum()),
        "truncated": int(truncated.sum()), "per_class": per_class,
        "images_without_objects": sum(len(r.labels) == 0 for r in records),
        "objects_per_image": _quantiles([len(r.labels) for r in records]),
        "object_side_px": _quantiles(side), "object_side_px_histogram": _histogram(side, SIZE_BINS_PX),
        "object_relative_side_histogram": _histogram(side / np.sqrt(image_area), RELATIVE_BINS),
        # COCO's size buckets (APs/APm/APl) on the original-image areas.
        "coco_size_buckets": {"small": int((area < 32 ** 2).sum()),
                              "medium": int(((area >= 32 ** 2) & (area < 96 ** 2)).sum()),
                              "large": int((area >= 96 ** 2).sum())},
        "image_width": _quantiles([r.width for r in records]),
        "image_height": _quantiles([r.height for r in records]),
    }


def _quantiles(values) -> dict:
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return {}
    return {name: round(float(v), 1) for name, v in
            zip(("min", "p10", "median", "p90", "max"), np.percentile(values, [0, 10, 50, 90, 100]))}


def _histogram(values, edges) -> dict:
    counts, _ = np.histogram(np.asarray(values, dtype=np.float64), bins=np.asarray(edges, dtype=np.float64))
    return {f"[{edges[i]:g}, {edges[i + 1]:g})": int(c) for i, c in enumerate(counts)}


def format_report(report: dict) -> str:
    """Human-readable text of an audit report."""
    lines = [f"{report['root']} {report['spec'] or '(all annotations of ' + ', '.join(report['folders']) + ')'}: "
             f"{report['images']} usable images of "
             f"{report['annotations']} annotations, {report['objects']} objects "
             f"({report['difficult']} difficult, {report['truncated']} truncated)",
             f"objects per image: {report['objects_per_image']}",
             f"image width: {report['image_width']}", f"image height: {report['image_height']}",
             f"{'class':<18}{'objects':>8}{'share':>8}{'difficult':>10}{'images':>8}"]
    total = max(report["objects"], 1)
    for name, counts in report["per_class"].items():
        lines.append(f"{name:<18}{counts['objects']:>8}{100 * counts['objects'] / total:>7.1f}%"
                     f"{counts['difficult']:>10}{counts['images']:>8}")
    lines += [f"object side sqrt(w*h) px: {report['object_side_px']}",
              f"  histogram: {report['object_side_px_histogram']}",
              f"object side / image side: {report['object_relative_side_histogram']}",
              f"COCO size buckets: {report['coco_size_buckets']}"]
    if report["clean"]:
        lines.append("no problems found")
    else:
        lines.append(f"{len(report['problems'])} problems:")
        lines += [f"  {p['file']}{'' if p['line'] is None else ':' + str(p['line'])}: {p['kind']}: {p['detail']} "
                  f"({p['action']})" for p in report["problems"]]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Audit a dataset (VOC, COCO, YOLO): statistics and every problem.")
    parser.add_argument("root", help="a VOC devkit (or the folder holding it, or one VOC<name> folder), a COCO JSON "
                                     "(or its folder) or a YOLO data.yaml")
    parser.add_argument("--split", help="split, e.g. 2007:trainval+2012:trainval, val (default: all)")
    parser.add_argument("--format", default="auto", choices=FORMATS, help="the layout (default: from the path)")
    parser.add_argument("--json", help="also write the report to this JSON file")
    parser.add_argument("--no-decode", action="store_true", help="skip decoding the images (faster)")
    args = parser.parse_args(argv)
    try:
        report = audit(args.root, args.split, decode=not args.no_decode, fmt=args.format)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_report(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0 if report["clean"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
