"""COCO JSON datasets: read with their own (non-contiguous) ids and scored exactly as pycocotools scores the file,
LVIS's federated rules, and every bad COCO input the reader must count, clip, drop or refuse."""
import json
import logging
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from faster_coco_eval import COCO as FasterCOCO, COCOeval_faster

from conftest import REPO, pycocotools_stats
from yolo.coco_eval import COCO_KEYS, LVIS_KEYS
from yolo.config import Config, validate
from yolo.data.coco import load_split
from yolo.data.dataset import DetectionDataset
from yolo.data.layout import detect_layout, load_role
from yolo.data.record import DatasetError
from yolo.metrics import evaluate_detections

IDS = (1, 3, 7, 90)
NAMES = ("cat", "dog", "cow", "zebra")


def write_images(folder: Path, sizes: dict):
    """Noise JPEGs {file name: (width, height)}."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, (width, height) in sizes.items():
        cv2.imwrite(str(folder / name), rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


def coco_fixture(root: Path, annotations=None, images=None, categories=None) -> Path:
    """annotations/instances_val.json and val/*.jpg: 4 images (one without any annotation), categories 1, 3, 7, 90
    (90 with no annotation), a crowd region."""
    images = images or [{"id": 10, "file_name": "a.jpg", "width": 120, "height": 90},
                        {"id": 20, "file_name": "b.jpg", "width": 100, "height": 100},
                        {"id": 30, "file_name": "c.jpg", "width": 80, "height": 60},
                        {"id": 40, "file_name": "d.jpg", "width": 64, "height": 64}]
    if annotations is None:
        boxes = [(10, 1, [10, 10, 40, 30]), (10, 3, [60, 20, 30, 50]), (10, 1, [5, 50, 20, 20]),
                 (20, 7, [20, 20, 60, 60]), (20, 1, [0, 0, 15, 12]), (30, 3, [30, 10, 40, 40])]
        annotations = [{"id": i + 1, "image_id": image, "category_id": cat, "bbox": box, "area": box[2] * box[3],
                        "iscrowd": 0} for i, (image, cat, box) in enumerate(boxes)]
        annotations.append({"id": 7, "image_id": 20, "category_id": 7, "bbox": [70, 70, 30, 30], "area": 900.0,
                            "iscrowd": 1})
    categories = categories or [{"id": i, "name": n} for i, n in zip(IDS, NAMES)]
    write_images(root / "val", {image["file_name"]: (image["width"], image["height"]) for image in images})
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    path = root / "annotations" / "instances_val.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def results_fixture(path: Path, seed: int = 0) -> list:
    """A COCO results list: the ground truth jittered, duplicates and misses, integer ids, categories 1..90."""
    rng = np.random.default_rng(seed)
    data = json.loads(path.read_text())
    results = []
    for ann in data["annotations"]:
        for _ in range(2):
            x, y, w, h = np.array(ann["bbox"], dtype=float) + rng.normal(0, 3, 4)
            results.append({"image_id": ann["image_id"], "category_id": ann["category_id"],
                            "bbox": [round(x, 2), round(y, 2), round(max(w, 1), 2), round(max(h, 1), 2)],
                            "score": round(float(rng.random()), 3)})
    results.append({"image_id": 40, "category_id": 90, "bbox": [1, 1, 20, 20], "score": 0.7})
    return results


def test_eval_py_scores_a_coco_results_list_exactly_as_pycocotools_on_the_file(tmp_path):
    """Non-contiguous category ids 1, 3, 7, 90, integer image ids, a crowd region, an image without objects."""
    gt_path = coco_fixture(tmp_path / "coco")
    results_path = tmp_path / "results.json"
    results_path.write_text(json.dumps(results_fixture(gt_path)))
    out = tmp_path / "metrics.json"
    before = gt_path.read_bytes()
    run = subprocess.run([sys.executable, "eval.py", "--detections", str(results_path), "--data-root", str(gt_path),
                          "--json", str(out)], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[0] == "4 of 4 images scored"
    metrics = json.loads(out.read_text())
    expected = pycocotools_stats(gt_path, results_path)
    assert 0.1 < expected[0] < 0.9
    for key, value in zip(COCO_KEYS, expected):
        got = metrics[f"coco_{key.lower()}"]
        assert (got is None and value == -1) or got == pytest.approx(value, abs=1e-12), key
    assert gt_path.read_bytes() == before


def test_labels_follow_the_sorted_ids_and_every_coco_rule_is_applied(tmp_path, caplog):
    gt_path = coco_fixture(tmp_path / "coco")
    data = json.loads(gt_path.read_text())
    data["annotations"][0].pop("area")                                  # defaulted: the box area
    data["annotations"][1].pop("iscrowd")                               # defaulted: not a crowd
    data["annotations"].append({"id": 8, "image_id": 30, "category_id": 1, "bbox": [60, 40, 40, 40],
                                "area": 1600, "iscrowd": 0})            # reaches outside 80x60: clipped
    data["annotations"].append({"id": 9, "image_id": 30, "category_id": 1, "bbox": [5, 5, 0, 10], "area": 0,
                                "iscrowd": 0})                          # zero width: dropped
    data["categories"] = data["categories"][::-1]                       # any order in the file
    gt_path.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING, logger="yolo.data.coco"):
        split = load_split(gt_path, "val")
    assert split.categories.names == NAMES and split.categories.ids == IDS
    kinds = [(p.kind, p.action, p.detail) for p in split.problems]
    assert ("missing field", "defaulted", "'area' missing on 1 annotations, set to the box area") in kinds
    assert ("missing field", "defaulted", "'iscrowd' missing on 1 annotations, set to 0 (not a crowd)") in kinds
    assert [(k, a) for k, a, _ in kinds].count(("box outside image", "box clipped")) == 1
    assert any(k == "degenerate box" and a == "object dropped" for k, a, _ in kinds)
    assert ("category without annotations", "kept", "1 of 4 categories have no annotation: 'zebra' (id 90)") in kinds
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "defaulted" in warnings[0] and "clipped" in warnings[0]     # one summary
    by_id = {r.image_id: r for r in split.records}
    assert [r.image_id for r in split.records] == [10, 20, 30, 40]
    assert by_id[10].labels.tolist() == [0, 1, 0]                       # ids 1, 3, 1 -> labels 0, 1, 0
    np.testing.assert_array_equal(by_id[10].boxes_xyxy[1], [60, 20, 90, 70])
    np.testing.assert_array_equal(by_id[30].boxes_xyxy, [[30, 10, 70, 50], [60, 40, 80, 60]])
    assert by_id[20].crowd.tolist() == [False, False, True] == by_id[20].ignore.tolist()
    assert len(by_id[40].labels) == 0                                   # background, kept
    # the crowd region is never a training target, even with data.train_difficult
    for keep_difficult in (False, True):
        target = DetectionDataset([by_id[20]], keep_difficult=keep_difficult)[0][1]
        assert target["labels"].tolist() == [2, 0]
    # the scored ground truth is the file's own, with the defaults filled in
    scored = {a["id"]: a for a in split.coco_gt["annotations"]}
    assert scored[1]["area"] == 40 * 30 and scored[2]["iscrowd"] == 0 and scored[8]["bbox"] == [60, 40, 40, 40]


def test_background_images_train_unless_dropped_and_are_always_scored(tmp_path):
    gt_path = coco_fixture(tmp_path / "coco")
    from yolo.fit import training_records
    cfg = Config()
    cfg.data.root = str(gt_path)
    validate(cfg)
    assert [r.image_id for r in training_records(cfg)] == [10, 20, 30, 40]
    cfg.data.drop_background = True
    assert [r.image_id for r in training_records(cfg)] == [10, 20, 30]
    assert [r.image_id for r in load_role(cfg, "test").records] == [10, 20, 30, 40]


@pytest.mark.parametrize("change, message", [
    (lambda d: d["images"].append(dict(d["images"][0])), "duplicate image ids 10"),
    (lambda d: d["annotations"].append(dict(d["annotations"][0])), "duplicate annotation ids 1"),
    (lambda d: d["categories"].append({"id": 3, "name": "hippo"}), "duplicate category ids 3"),
    (lambda d: d["categories"].append({"id": 4, "name": "dog"}), "duplicate category names dog"),
    (lambda d: d.pop("annotations"), "no 'annotations' list (an image-info file cannot be trained or scored)"),
    (lambda d: d["images"][1].update(id="20"), "images[1] needs an integer 'id'"),
])
def test_bad_coco_files_are_one_line_errors(tmp_path, change, message):
    gt_path = coco_fixture(tmp_path / "coco")
    data = json.loads(gt_path.read_text())
    change(data)
    gt_path.write_text(json.dumps(data))
    with pytest.raises(DatasetError) as error:
        load_split(gt_path, "val")
    assert message in str(error.value) and str(gt_path) in str(error.value) and "\n" not in str(error.value)


def test_orphan_annotations_are_counted_and_lvis_needs_frequencies(tmp_path):
    gt_path = coco_fixture(tmp_path / "coco")
    data = json.loads(gt_path.read_text())
    data["annotations"] += [{"id": 50, "image_id": 99, "category_id": 1, "bbox": [1, 1, 5, 5], "area": 25},
                            {"id": 51, "image_id": 10, "category_id": 2, "bbox": [1, 1, 5, 5], "area": 25}]
    gt_path.write_text(json.dumps(data))
    split = load_split(gt_path, "val")
    details = {p.detail for p in split.problems if p.action == "object dropped"}
    assert details == {"1 annotations of an unknown image id", "1 annotations of an unknown category id"}
    assert sum(len(r.labels) for r in split.records) == 7         # the fixture's own, crowd included
    data["images"][0]["neg_category_ids"] = [3]
    gt_path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match="not every category has a 'frequency'"):
        load_split(gt_path, "val")


def test_not_json_and_missing_images_are_named(tmp_path):
    gt_path = coco_fixture(tmp_path / "coco")
    gt_path.write_text("{not json")
    with pytest.raises(DatasetError, match="instances_val.json is not valid JSON"):
        load_split(gt_path, "val")
    gt_path = coco_fixture(tmp_path / "other")
    (tmp_path / "other" / "val" / "a.jpg").rename(tmp_path / "elsewhere.jpg")
    with pytest.raises(DatasetError, match="first image a.jpg is in none of .*: name the folder after the JSON"):
        load_split(gt_path, "val")


def test_splits_are_found_by_name_in_a_folder_and_layouts_detected(tmp_path):
    coco_fixture(tmp_path / "coco")
    assert detect_layout(tmp_path / "coco") == "coco" and detect_layout(tmp_path / "coco" / "annotations" /
                                                                        "instances_val.json") == "coco"
    assert load_split(tmp_path / "coco", "val").spec == "val"
    with pytest.raises(DatasetError, match="no COCO JSON for split 'train' in .*instances_val.json"):
        load_split(tmp_path / "coco", "train")
    cfg = Config()
    cfg.data.root, cfg.data.test = str(tmp_path / "coco"), "val"
    assert load_role(validate(cfg), "test").categories.ids == IDS     # no train JSON: scored with its own classes
    (tmp_path / "coco" / "data.yaml").write_text("names: [a]\ntrain: val\n")
    assert detect_layout(tmp_path / "coco") == "yolo" and detect_layout(tmp_path / "coco", "coco") == "coco"
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DatasetError, match="no dataset at .*: .*COCO JSON.*YOLO data.yaml.*found an empty folder"):
        detect_layout(tmp_path / "nothing")


# ----------------------------------------------------------------------------- LVIS


def lvis_fixture(root: Path) -> Path:
    """Two images, three classes: a (frequent), b (common), c (rare, never annotated).
    Image 1: one a, b verified absent (neg), a not exhaustively annotated. Image 2: one b, a verified absent."""
    images = [{"id": 1, "coco_url": "http://images.cocodataset.org/val2017/000000000001.jpg", "width": 100,
               "height": 100, "neg_category_ids": [2], "not_exhaustive_category_ids": [1]},
              {"id": 2, "coco_url": "http://images.cocodataset.org/val2017/000000000002.jpg", "width": 100,
               "height": 100, "neg_category_ids": [1], "not_exhaustive_category_ids": []}]
    annotations = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 30], "area": 900},
                   {"id": 2, "image_id": 2, "category_id": 2, "bbox": [50, 50, 40, 20], "area": 800}]
    categories = [{"id": 1, "name": "a", "frequency": "f"}, {"id": 2, "name": "b", "frequency": "c"},
                  {"id": 3, "name": "c", "frequency": "r"}]
    write_images(root / "val2017", {"000000000001.jpg": (100, 100), "000000000002.jpg": (100, 100)})
    path = root / "lvis_v1_val.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def faster_lvis(path: Path, results: list) -> dict:
    """faster-coco-eval's lvis_style run directly on the file (LVIS's 300 detections per image)."""
    gt = FasterCOCO(str(path))
    evaluator = COCOeval_faster(gt, gt.loadRes([dict(r) for r in results]), "bbox", lvis_style=True,
                                print_function=lambda *a, **k: None)
    evaluator.params.maxDets = [300]
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return evaluator.stats_as_dict


def score_lvis(split, results):
    return evaluate_detections(split, results)[0]


def test_lvis_federated_rules_and_agreement_with_faster_coco_eval(tmp_path):
    path = lvis_fixture(tmp_path)
    split = load_split(path, "val")
    assert split.federated and split.categories.frequency == ("f", "c", "r")
    assert split.records[0].neg_labels == (1,) and split.records[0].not_exhaustive_labels == (0,)
    hits = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 30], "score": 0.6},
            {"image_id": 2, "category_id": 2, "bbox": [50, 50, 40, 20], "score": 0.6}]
    base = score_lvis(split, hits)
    assert base["coco_ap"] == pytest.approx(1.0) and base["lvis_apf"] == pytest.approx(1.0)
    assert base["lvis_apr"] is None and base["coco_backend"] == "faster (LVIS federated)"
    # a class neither annotated in image 1 nor verified absent there: the detection is not scored at all
    unverified = {"image_id": 1, "category_id": 3, "bbox": [60, 60, 20, 20], "score": 0.9}
    assert score_lvis(split, hits + [unverified])["coco_ap"] == pytest.approx(1.0)
    # an unmatched detection of a not-exhaustively annotated class (a, image 1) is no false positive
    not_exhaustive = {"image_id": 1, "category_id": 1, "bbox": [60, 60, 20, 20], "score": 0.9}
    assert score_lvis(split, hits + [not_exhaustive])["lvis_apf"] == pytest.approx(1.0)
    # ... while one of a class verified absent (b in image 1) is: b's AP (common) drops
    on_negative = {"image_id": 1, "category_id": 2, "bbox": [60, 60, 20, 20], "score": 0.9}
    assert score_lvis(split, hits + [on_negative])["lvis_apc"] < 0.6
    everything = hits + [unverified, not_exhaustive, on_negative]
    ours, direct = score_lvis(split, everything), faster_lvis(path, everything)
    for key, label in zip(LVIS_KEYS, ("AP_all", "AP_50", "AP_75", "AP_small", "AP_medium", "AP_large", "APr", "APc",
                                      "APf", "AR_all")):
        name = f"coco_{key.lower()}" if key in COCO_KEYS else f"lvis_{key.lower()}"
        assert (ours[name] is None and direct[label] == -1) or ours[name] == pytest.approx(direct[label], abs=1e-12)


def test_lvis_frequency_gives_the_ablation_buckets(tmp_path):
    from yolo.ablate.buckets import lvis_buckets
    from yolo.ablate.execute import class_frequency
    cfg = Config()
    cfg.data.root = str(lvis_fixture(tmp_path))
    frequency = class_frequency(validate(cfg))["class_frequency"]
    assert frequency == {"a": "f", "b": "c", "c": "r"}
    buckets = {"rare": 11, "common": 101, "frequent": None}
    assert lvis_buckets(frequency, buckets) == {"rare": ["c"], "common": ["b"], "frequent": ["a"]}
    with pytest.raises(ValueError, match="the buckets are rare, common, frequent"):
        lvis_buckets(frequency, {"few": 10, "many": None})
