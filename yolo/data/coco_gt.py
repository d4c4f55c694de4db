"""Any split (any layout) as COCO ground truth, and detections as a COCO results list: what COCO metrics score.

:func:`records_to_coco` writes boxes ``[x1, y1, x2 - x1, y2 - y1]`` in pixel edges, so a VOC box is
``[xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1]``; ignored objects (VOC difficult, COCO crowd) become
ignore regions (``iscrowd=1``). Command line::

    python -m yolo.data.coco_gt --data-root data/VOCdevkit --split 2007:test --out voc07_test_coco.json
"""
import argparse
import json
import sys
from pathlib import Path

from yolo.data.layout import open_split
from yolo.data.record import Categories


def records_to_coco(records, categories: Categories) -> dict:
    """Records -> a COCO ground-truth dict (plain Python types, JSON-serialisable).

    Images keep an integer ``image_id`` as their id; other ids (VOC / YOLO file stems) get ``1..N`` in record
    order and are kept as ``dataset_image_id``. Boxes are ``[x1, y1, x2 - x1, y2 - y1]`` in pixel edges with
    ``area = w * h``; ignored (difficult) objects become ignore regions (``iscrowd = 1``, see ``_annotation``);
    category ``categories.ids[k]`` is label ``k``.
    """
    images, annotations, seen = [], [], set()
    for index, record in enumerate(records, start=1):
        if record.image_id in seen:
            raise ValueError(f"image id {record.image_id!r} appears twice in the split; "
                             f"COCO ground truth needs unique images")
        seen.add(record.image_id)
        image_id = record.image_id if type(record.image_id) is int else index
        images.append({"id": image_id, "file_name": Path(record.image_path).name,
                       "dataset_image_id": record.image_id, "width": int(record.width), "height": int(record.height)})
        for box, label, ignore in zip(record.boxes_xyxy, record.labels, record.ignore):
            if not 0 <= int(label) < len(categories.ids):
                raise ValueError(f"image {record.image_id}: label {int(label)} outside the "
                                 f"{len(categories.ids)} classes")
            annotations.append(_annotation(len(annotations) + 1, image_id, box, categories.ids[int(label)], ignore))
    coco_categories = [{"id": cid, "name": name, "supercategory": "none"}
                       for cid, name in zip(categories.ids, categories.names)]
    return {"images": images, "annotations": annotations, "categories": coco_categories}


def _annotation(annotation_id, image_id, box_xyxy, category_id, ignore) -> dict:
    x1, y1, x2, y2 = (float(v) for v in box_xyxy)
    width, height = x2 - x1, y2 - y1
    # pycocotools' COCOeval._prepare overwrites every gt's "ignore" with its "iscrowd" flag, so "ignore"
    # alone is lost and iscrowd=1 is the only way to make a difficult object an ignore region: it is then
    # never a false negative, and detections matched to it are neither TP nor FP. (For crowd regions COCO
    # measures overlap as intersection / detection area, so the rule is close to, not identical to, the
    # devkit's; the VOC metrics in yolo.metrics follow the devkit exactly.) "ignore" is kept for readers
    # of the file that honour it.
    return {"id": annotation_id, "image_id": image_id, "category_id": int(category_id),
            "bbox": [x1, y1, width, height], "area": width * height,
            "iscrowd": int(bool(ignore)), "ignore": int(bool(ignore))}


def image_id_map(coco_gt: dict) -> dict:
    """``{dataset image id: integer COCO image id}`` of a dict made by ``records_to_coco``."""
    return {image["dataset_image_id"]: image["id"] for image in coco_gt["images"]}


def detections_to_coco(detections, image_id_map: dict) -> list:
    """Detections with the dataset's image ids -> a COCO results list with the integer ids of ``image_id_map``
    (new dicts; the inputs are not modified)."""
    unknown = sorted({d["image_id"] for d in detections} - image_id_map.keys(), key=str)
    if unknown:
        raise ValueError(f"{len(unknown)} detection image ids are not in the ground truth, "
                         f"e.g. {', '.join(map(str, unknown[:5]))}")
    return [{"image_id": image_id_map[d["image_id"]], "category_id": int(d["category_id"]),
             "bbox": list(d["bbox"]), "score": float(d["score"])} for d in detections]


def main(argv=None):
    parser = argparse.ArgumentParser(description="Write a split of any layout as COCO-format ground truth "
                                                 "(difficult objects as iscrowd ignore regions).")
    parser.add_argument("--data-root", required=True, help="a VOC devkit, a COCO JSON or a YOLO data.yaml")
    parser.add_argument("--split", required=True,
                        help="split spec, e.g. 2007:test or 2007:trainval+2012:trainval")
    parser.add_argument("--format", default="auto", help="auto | voc | coco | yolo")
    parser.add_argument("--out", required=True, type=Path, help="output JSON file")
    args = parser.parse_args(argv)

    try:
        split = open_split(args.data_root, args.split, args.format)
        coco_gt = records_to_coco(split.records, split.categories)
    except (OSError, ValueError) as error:
        sys.exit(f"error: {error}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(coco_gt))
    num_ignored = sum(a["iscrowd"] for a in coco_gt["annotations"])
    print(f"wrote {args.out}: {len(coco_gt['images'])} images, {len(coco_gt['annotations'])} boxes "
          f"({num_ignored} difficult -> iscrowd ignore regions), {len(split.classes)} categories")


if __name__ == "__main__":
    main()
