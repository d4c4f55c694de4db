"""PASCAL VOC ground truth and detections in COCO format, for pycocotools / faster-coco-eval.

Coordinates: a COCO ``bbox`` here is ``[xmin, ymin, xmax - xmin, ymax - ymin]`` in the annotation's
1-based inclusive pixel coordinates (``boxes_voc``). It is the convention of the project's detection
format (a detection ``[x, y, w, h]`` is the annotation box ``xmin=x, xmax=x+w``), so a detection that
reproduces an annotation exactly has IoU 1 under COCO's ``w * h`` areas.

Difficult objects become ignore regions (``iscrowd=1``), not dropped boxes; see ``_annotation``.

Command line::

    python -m yolo.data.coco --data-root data/VOCdevkit --split 2007:test --out voc07_test_coco.json
"""
import argparse
import json
import sys
from pathlib import Path


def records_to_coco(records, classes) -> dict:
    """Convert VOC records to a COCO ground-truth dict.

    Args:
        records: list of ``yolo.data.voc.VOCRecord`` (unique ``image_id``s; labels are 0-based indices
            into ``classes``).
        classes: class names; category ``k + 1`` is ``classes[k]``.

    Returns:
        ``{"images", "annotations", "categories"}``. Images get integer ids ``1..N`` in record order and
        keep the VOC id as the string field ``voc_image_id``; annotation ids are ``1..M``. Plain Python
        types only, so the dict is JSON-serialisable.
    """
    images, annotations = [], []
    seen = set()
    for image_index, record in enumerate(records, start=1):
        if record.image_id in seen:
            raise ValueError(f"image id {record.image_id!r} appears twice in the split; "
                             f"COCO ground truth needs unique images")
        seen.add(record.image_id)
        images.append({"id": image_index, "file_name": Path(record.image_path).name,
                       "voc_image_id": record.image_id,
                       "width": int(record.width), "height": int(record.height)})
        for box_voc, label, difficult in zip(record.boxes_voc, record.labels, record.difficult):
            if not 0 <= int(label) < len(classes):
                raise ValueError(f"image {record.image_id}: label {int(label)} outside the "
                                 f"{len(classes)} classes")
            annotations.append(_annotation(len(annotations) + 1, image_index, box_voc, label, difficult))
    categories = [{"id": k + 1, "name": name, "supercategory": "none"} for k, name in enumerate(classes)]
    return {"images": images, "annotations": annotations, "categories": categories}


def _annotation(annotation_id, image_id, box_voc, label, difficult) -> dict:
    xmin, ymin, xmax, ymax = (float(v) for v in box_voc)
    width, height = xmax - xmin, ymax - ymin
    # pycocotools' COCOeval._prepare overwrites every gt's "ignore" with its "iscrowd" flag, so "ignore"
    # alone is lost and iscrowd=1 is the only way to make a difficult object an ignore region: it is then
    # never a false negative, and detections matched to it are neither TP nor FP. (For crowd regions COCO
    # measures overlap as intersection / detection area, so the rule is close to, not identical to, the
    # devkit's; the VOC metrics in yolo.metrics follow the devkit exactly.) "ignore" is kept for readers
    # of the file that honour it.
    return {"id": annotation_id, "image_id": image_id, "category_id": int(label) + 1,
            "bbox": [xmin, ymin, width, height], "area": width * height,
            "iscrowd": int(bool(difficult)), "ignore": int(bool(difficult))}


def image_id_map(coco_gt: dict) -> dict:
    """``{voc_image_id: integer COCO image id}`` of a dict made by ``records_to_coco``."""
    return {image["voc_image_id"]: image["id"] for image in coco_gt["images"]}


def detections_to_coco(detections, image_id_map: dict) -> list:
    """Map detections in the project's format to a COCO results list.

    Args:
        detections: list of ``{"image_id": str, "category_id": int, "bbox": [x, y, w, h], "score": float}``.
        image_id_map: ``{voc_image_id: int}``, e.g. ``image_id_map(records_to_coco(...))``.

    Returns:
        New dicts with the integer image id (the inputs are not modified).
    """
    unknown = sorted({d["image_id"] for d in detections} - image_id_map.keys())
    if unknown:
        raise ValueError(f"{len(unknown)} detection image ids are not in the ground truth, "
                         f"e.g. {', '.join(unknown[:5])}")
    return [{"image_id": image_id_map[d["image_id"]], "category_id": int(d["category_id"]),
             "bbox": list(d["bbox"]), "score": float(d["score"])} for d in detections]


def main(argv=None):
    from yolo.data.voc import load_records, read_classes

    parser = argparse.ArgumentParser(description="Write a VOC split as COCO-format ground truth "
                                                 "(difficult objects as iscrowd ignore regions).")
    parser.add_argument("--data-root", required=True, help="folder holding VOC2007/, VOC2012/")
    parser.add_argument("--split", required=True,
                        help="split spec, e.g. 2007:test or 2007:trainval+2012:trainval")
    parser.add_argument("--out", required=True, type=Path, help="output JSON file")
    args = parser.parse_args(argv)

    try:
        classes = read_classes(args.data_root)
        records = load_records(args.data_root, args.split, classes)
        coco_gt = records_to_coco(records, classes)
    except (OSError, ValueError) as error:
        sys.exit(f"error: {error}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(coco_gt))
    num_ignored = sum(a["iscrowd"] for a in coco_gt["annotations"])
    print(f"wrote {args.out}: {len(coco_gt['images'])} images, {len(coco_gt['annotations'])} boxes "
          f"({num_ignored} difficult -> iscrowd ignore regions), {len(classes)} categories")


if __name__ == "__main__":
    main()
