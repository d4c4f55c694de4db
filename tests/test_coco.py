"""Tests of yolo.data.coco_gt: records -> COCO ground truth (pixel-edge boxes, difficult = iscrowd ignore
region), and the one-pixel fix of VOC boxes."""
import contextlib
import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from yolo.boxes import voc_to_xyxy
from yolo.coco_eval import COCO_KEYS, eval_split
from yolo.data.coco_gt import detections_to_coco, image_id_map, main, records_to_coco
from yolo.data.record import Categories, Split
from yolo.data.record import make_record as record
from yolo.data.voc import VOC_CLASSES

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
VOC_SAMPLE = SHARED / "voc-sample"


def make_record(image_id, boxes_voc, labels, difficult, width=320, height=240):
    """A record of VOC-style 1-based inclusive boxes, as the VOC reader makes it."""
    boxes_xyxy = voc_to_xyxy(np.asarray(boxes_voc, dtype=np.float32).reshape(-1, 4))
    return record(image_id, Path("/data/JPEGImages") / f"{image_id}.jpg", width, height, boxes_xyxy, labels,
                  ignore=difficult)


def categories(names):
    return Categories.numbered(names)


def two_images():
    return [make_record("2008_000001", [[11, 21, 60, 100], [101, 51, 150, 90]], [0, 2], [False, True]),
            make_record("2008_000002", np.zeros((0, 4)), [], [], width=100, height=50)]


def test_records_to_coco_layout():
    coco_gt = records_to_coco(two_images(), categories(["cat", "dog", "cow"]))
    assert coco_gt["images"] == [
        {"id": 1, "file_name": "2008_000001.jpg", "dataset_image_id": "2008_000001", "width": 320, "height": 240},
        {"id": 2, "file_name": "2008_000002.jpg", "dataset_image_id": "2008_000002", "width": 100, "height": 50}]
    assert coco_gt["categories"] == [{"id": 1, "name": "cat", "supercategory": "none"},
                                     {"id": 2, "name": "dog", "supercategory": "none"},
                                     {"id": 3, "name": "cow", "supercategory": "none"}]
    # bbox [xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1], area w * h, difficult -> iscrowd and ignore
    assert coco_gt["annotations"] == [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10.0, 20.0, 50.0, 80.0], "area": 50.0 * 80.0,
         "iscrowd": 0, "ignore": 0},
        {"id": 2, "image_id": 1, "category_id": 3, "bbox": [100.0, 50.0, 50.0, 40.0], "area": 50.0 * 40.0,
         "iscrowd": 1, "ignore": 1}]
    assert json.loads(json.dumps(coco_gt)) == coco_gt  # plain Python types only


def test_records_to_coco_rejects_bad_records():
    records = two_images()
    with pytest.raises(ValueError, match="image id '2008_000001' appears twice"):
        records_to_coco(records + records[:1], categories(["cat", "dog", "cow"]))
    with pytest.raises(ValueError, match="image 2008_000001: label 2 outside the 2 classes"):
        records_to_coco(records, categories(["cat", "dog"]))


def test_detections_to_coco_maps_ids_without_touching_input():
    coco_gt = records_to_coco(two_images(), categories(["cat", "dog", "cow"]))
    assert image_id_map(coco_gt) == {"2008_000001": 1, "2008_000002": 2}
    detections = [{"image_id": "2008_000002", "category_id": 2, "bbox": [1, 2, 3, 4], "score": 0.5}]
    before = json.dumps(detections)
    assert detections_to_coco(detections, image_id_map(coco_gt)) == [
        {"image_id": 2, "category_id": 2, "bbox": [1, 2, 3, 4], "score": 0.5}]
    assert json.dumps(detections) == before
    with pytest.raises(ValueError, match="2 detection image ids are not in the ground truth, e.g. x, y"):
        strangers = [{**detections[0], "image_id": name} for name in "yx"]
        detections_to_coco(detections + strangers, image_id_map(coco_gt))


def pycocotools_eval(coco_gt, results):
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = coco_gt
        gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def test_difficult_box_is_an_ignore_region_for_pycocotools():
    records = [make_record("a", [[11, 21, 60, 100], [101, 51, 150, 90]], [0, 0], [False, True])]
    coco_gt = records_to_coco(records, categories(["cat"]))
    # the detection on the difficult box ranks first: as a FP it would halve the precision of the TP
    results = [{"image_id": 1, "category_id": 1, "bbox": [100, 50, 50, 40], "score": 0.9},
               {"image_id": 1, "category_id": 1, "bbox": [10, 20, 50, 80], "score": 0.8}]
    evaluator = pycocotools_eval(json.loads(json.dumps(coco_gt)), [dict(r) for r in results])
    all_areas = next(e for e in evaluator.evalImgs if e is not None and e["aRng"] == [0, 1e10])
    assert all_areas["gtIgnore"].tolist() == [0, 1] and all_areas["dtIgnore"][0].tolist() == [True, False]
    assert evaluator.stats[0] == pytest.approx(1.0, abs=1e-12)

    # why iscrowd: COCOeval._prepare overwrites "ignore" with "iscrowd", so with "ignore" alone the undetected
    # difficult box is a miss: recall 1/2, precision 1, AP50 = 51 of pycocotools' 101 recall points
    for annotation in coco_gt["annotations"]:
        annotation["iscrowd"] = 0
    assert coco_gt["annotations"][1]["ignore"] == 1
    evaluator = pycocotools_eval(coco_gt, [dict(results[1])])
    assert evaluator.stats[1] == pytest.approx(51 / 101, abs=1e-12)
    assert coco_gt["annotations"][1]["ignore"] == 0  # overwritten in place, as _prepare does


def voc_sample_records():
    if not VOC_SAMPLE.is_dir():
        pytest.skip(f"{VOC_SAMPLE} not found: the shared VOC sample lives in ../shared next to the repo")
    from yolo.data.voc import load_records
    return load_records(VOC_SAMPLE, "2007:trainval+2007:test+2012:trainval")


def test_real_voc_annotations_convert_box_for_box():
    records = voc_sample_records()
    coco_gt = records_to_coco(records, categories(VOC_CLASSES))
    annotations = iter(coco_gt["annotations"])
    checked = 0
    for image, voc_record in zip(coco_gt["images"], records):
        year = "VOC2007" if voc_record.image_id.isdigit() else "VOC2012"
        xml_path = VOC_SAMPLE / "VOCdevkit" / year / "Annotations" / f"{voc_record.image_id}.xml"
        record_annotations = [next(annotations) for _ in voc_record.labels]
        for obj, annotation in zip(ET.parse(xml_path).findall("object"), record_annotations):
            corners = ("xmin", "ymin", "xmax", "ymax")
            xmin, ymin, xmax, ymax = (float(obj.findtext(f"bndbox/{key}")) for key in corners)
            assert annotation["image_id"] == image["id"]
            assert annotation["bbox"] == [xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1]
            assert annotation["area"] == (xmax - xmin + 1) * (ymax - ymin + 1)
            assert VOC_CLASSES[annotation["category_id"] - 1] == obj.find("name").text
            assert annotation["iscrowd"] == int(obj.findtext("difficult", "0"))
            checked += 1
    assert checked == len(coco_gt["annotations"]) > 250
    num_difficult = sum(int(r.ignore.sum()) for r in records)
    assert sum(a["iscrowd"] for a in coco_gt["annotations"]) == num_difficult > 30


def test_command_line_writes_ground_truth(tmp_path, capsys):
    voc_sample_records()  # skips without the sample
    out = tmp_path / "gt" / "voc07_test.json"
    main(["--data-root", str(VOC_SAMPLE), "--split", "2007:test", "--out", str(out)])
    coco_gt = json.loads(out.read_text())
    test_ids = (VOC_SAMPLE / "VOCdevkit/VOC2007/ImageSets/Main/test.txt").read_text().split()
    assert [image["dataset_image_id"] for image in coco_gt["images"]] == test_ids
    assert f"wrote {out}: {len(test_ids)} images" in capsys.readouterr().out


def test_command_line_bad_split_is_one_line(tmp_path):
    voc_sample_records()
    with pytest.raises(SystemExit, match="^error: .*"):
        main(["--data-root", str(VOC_SAMPLE), "--split", "2007:nosuchsplit",
              "--out", str(tmp_path / "gt.json")])


def test_a_32_pixel_voc_box_is_32_pixels_in_coco_and_a_medium_object():
    """Before: bbox [xmin, ymin, xmax - xmin, ymax - ymin] made a 32x32 box (xmin 1, xmax 32) 31x31 = 961 px, a
    "small" object only, and shifted small-box IoUs; it is 32x32 = 1024, in COCO's "medium" range [32^2, 96^2]
    (pycocotools' ranges are closed: 1024 is also still "small")."""
    records = [make_record("a", [[1, 1, 32, 32]], [0], [False], width=100, height=100)]
    coco_gt = records_to_coco(records, categories(["cat"]))
    assert coco_gt["annotations"][0]["bbox"] == [0.0, 0.0, 32.0, 32.0]
    assert coco_gt["annotations"][0]["area"] == 32 * 32
    split = Split("voc", "t", Path("."), records, categories(["cat"]), ["a"])
    exact = [{"image_id": "a", "category_id": 1, "bbox": [0.0, 0.0, 32.0, 32.0], "score": 0.9}]
    metrics = eval_split(split, exact)
    assert metrics["AP"] == pytest.approx(1.0, abs=1e-12) and metrics["APm"] == pytest.approx(1.0, abs=1e-12)
    # a detection one pixel narrower: IoU 31/32 = 0.969 (>= 0.95: a hit at every threshold)
    narrower = [{**exact[0], "bbox": [0.0, 0.0, 31.0, 32.0]}]
    assert eval_split(split, narrower)["AP"] == pytest.approx(1.0, abs=1e-12)
    assert set(metrics) == set(COCO_KEYS)
