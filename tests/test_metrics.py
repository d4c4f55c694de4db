"""Tests of yolo.metrics: VOC AP against published values and a plain port of the devkit, COCO AP via both
backends against published pycocotools values, and the detections file format.

Records are built from VOC-style 1-based inclusive boxes (``make_record``) and detections in the project's
pixel-edge ``[x, y, w, h]`` (``det`` turns an inclusive box into the detection that reproduces it exactly)."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from yolo.boxes import voc_to_xyxy, xyxy_to_voc
from yolo.coco_eval import COCO_KEYS, coco_eval_dicts, eval_split
from yolo.data.record import Categories, Split, make_record as record
from yolo.metrics import (DetectionsFormatError, detections_from_xyxy, eval_voc, evaluate_detections, format_results,
                          iou_voc_pairs, load_detections, save_detections, voc_ap, voc_pr_curves)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
METRIC_CASES = SHARED / "metric-cases"
BACKENDS = ("pycocotools", "faster")


def needs_cases(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} not found: the shared metric cases live in ../shared next to the repository")
    return path


def make_record(image_id, boxes_voc, labels, difficult=None, width=500, height=400):
    """A record of VOC-style 1-based inclusive boxes, ``difficult`` ones ignored (as the VOC reader makes it)."""
    boxes_xyxy = voc_to_xyxy(np.asarray(boxes_voc, dtype=np.float32).reshape(-1, 4))
    return record(image_id, f"{image_id}.jpg", width, height, boxes_xyxy, labels, ignore=difficult)


def voc_boxes(record) -> np.ndarray:
    """The record's boxes as the devkit's inclusive corners."""
    return xyxy_to_voc(record.boxes_xyxy.astype(np.float64))


def det(image_id, category_id, box_voc, score):
    """A detection whose box is exactly the annotation box ``box_voc`` (inclusive xmin, ymin, xmax, ymax): pixel
    edges ``[xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1]``."""
    xmin, ymin, xmax, ymax = box_voc
    return {"image_id": image_id, "category_id": category_id,
            "bbox": [xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1], "score": score}


def ids(num_classes: int) -> tuple:
    return tuple(range(1, num_classes + 1))


def split_of(records, classes) -> Split:
    return Split("voc", "test", Path("."), records, Categories.numbered(classes), [r.image_id for r in records])


def eval_coco(records, detections, classes, backend="pycocotools", verbose=False) -> dict:
    return eval_split(split_of(records, classes), detections, backend=backend, verbose=verbose)


# ----------------------------------------------------------------------------- voc_ap and IoU


def test_voc_ap_hand_computed_curve():
    recall, precision = [0.5, 0.5, 1.0], [1.0, 0.5, 2 / 3]
    # envelope: 1 up to recall 0.5, then 2/3 up to 1
    assert voc_ap(recall, precision, use_07_metric=False) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3, abs=1e-12)
    # t = 0..0.5 (6 points) see precision 1, t = 0.6..1 (5 points) see 2/3
    assert voc_ap(recall, precision, use_07_metric=True) == pytest.approx((6 + 5 * 2 / 3) / 11, abs=1e-12)


def test_voc_ap_empty_curve_is_zero():
    assert voc_ap([], [], True) == 0.0
    assert voc_ap([], [], False) == 0.0


def test_voc_ap_11_point_thresholds_are_numpy_arange():
    # np.arange(0, 1.1, 0.1)[3] == 0.30000000000000004 > 0.3: a recall of exactly 0.3 reaches only
    # t = 0, .1, .2
    assert voc_ap([0.3], [1.0], use_07_metric=True) == pytest.approx(3 / 11, abs=1e-12)
    assert voc_ap([0.4], [1.0], use_07_metric=True) == pytest.approx(5 / 11, abs=1e-12)


def test_voc_ap_rejects_mismatched_curves():
    with pytest.raises(ValueError, match="equal length"):
        voc_ap([0.1, 0.2], [1.0], True)


def test_iou_voc_pairs_uses_inclusive_pixels():
    boxes_a = np.array([[1, 1, 10, 10], [1, 1, 10, 10], [1, 1, 10, 10], [1, 1, 10, 10]], dtype=np.float64)
    boxes_b = np.array([[1, 1, 10, 10], [6, 1, 15, 10], [10, 1, 19, 10], [12, 1, 20, 10]], dtype=np.float64)
    # 10x10 boxes; a 5-column overlap is 50 px; boxes sharing column 10 overlap by 10 px; disjoint -> 0
    expected = [1.0, 50 / 150, 10 / 190, 0.0]
    np.testing.assert_allclose(iou_voc_pairs(boxes_a, boxes_b), expected, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- published VOC case


def read_voc_case1():
    """voc-ap-case1: `class x y w h` / `class score x y w h`. With the devkit's +1 areas the published values
    come out when the box is xmin=x, ymin=y, xmax=x+w, ymax=y+h inclusive: in pixel edges [x - 1, y - 1, w + 1,
    h + 1]."""
    case = needs_cases(METRIC_CASES / "voc-ap-case1")
    records, detections = [], []
    for gt_file in sorted((case / "gts").glob("*.txt")):
        rows = [line.split() for line in gt_file.read_text().splitlines() if line.strip()]
        xywh = np.array([[float(v) for v in row[1:]] for row in rows])
        records.append(make_record(gt_file.stem, np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1),
                                   np.zeros(len(rows))))
        for line in (case / "dets" / gt_file.name).read_text().splitlines():
            if line.strip():
                _, score, *bbox = line.split()
                x, y, w, h = (float(v) for v in bbox)
                detections.append(det(gt_file.stem, 1, [x, y, x + w, y + h], float(score)))
    return records, detections


@pytest.mark.parametrize("iou_threshold, expected_11_point, expected_all_point", [
    (0.10, 0.3333333333, 0.3371980676),
    (0.30, 0.2683982683, 0.2456866804),
    (0.50, 0.0303030303, 0.0222222222),
    (0.75, 0.0, 0.0),
])
def test_voc_ap_matches_published_case(iou_threshold, expected_11_point, expected_all_point):
    records, detections = read_voc_case1()
    ap_11 = eval_voc(records, detections, ids(1), iou_threshold, use_07_metric=True)["ap"][0]
    ap_all = eval_voc(records, detections, ids(1), iou_threshold, use_07_metric=False)["ap"][0]
    assert ap_11 == pytest.approx(expected_11_point, abs=1e-9)
    assert ap_all == pytest.approx(expected_all_point, abs=1e-9)


# ----------------------------------------------------------------------------- against a devkit port


def devkit_ap(records, detections, class_index, iou_threshold, use_07_metric):
    """Line-by-line port of the VOC devkit's VOCevaldet.m / VOCap.m (loops, no vectorisation). Ignored
    detections stay in the curve as tp = fp = 0 rows (NaN precision where nothing is counted yet), and
    MATLAB's max() skips NaN: np.nanmax / np.fmax."""
    gt = {}
    for r in records:
        keep = r.labels == class_index
        gt[r.image_id] = {"boxes": voc_boxes(r)[keep], "difficult": r.ignore[keep],
                          "taken": [False] * int(keep.sum())}
    npos = sum(int((~g["difficult"]).sum()) for g in gt.values())
    dets = [d for d in detections if d["category_id"] == class_index + 1]
    order = sorted(range(len(dets)), key=lambda i: -dets[i]["score"])  # stable, as MATLAB's sort
    tp, fp = np.zeros(len(dets)), np.zeros(len(dets))
    for rank, i in enumerate(order):
        x, y, w, h = dets[i]["bbox"]
        bb = (x + 1, y + 1, x + w, y + h)     # pixel edges -> the devkit's inclusive corners
        g = gt[dets[i]["image_id"]]
        ovmax, jmax = -math.inf, None
        for j, bbgt in enumerate(g["boxes"]):
            iw = min(bb[2], bbgt[2]) - max(bb[0], bbgt[0]) + 1
            ih = min(bb[3], bbgt[3]) - max(bb[1], bbgt[1]) + 1
            if iw > 0 and ih > 0:
                ua = ((bb[2] - bb[0] + 1) * (bb[3] - bb[1] + 1)
                      + (bbgt[2] - bbgt[0] + 1) * (bbgt[3] - bbgt[1] + 1) - iw * ih)
                if iw * ih / ua > ovmax:
                    ovmax, jmax = iw * ih / ua, j
        if ovmax >= iou_threshold:
            if not g["difficult"][jmax]:
                if not g["taken"][jmax]:
                    tp[rank], g["taken"][jmax] = 1, True
                else:
                    fp[rank] = 1
        else:
            fp[rank] = 1
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    rec = tp / npos
    with np.errstate(invalid="ignore"):
        prec = tp / (fp + tp)
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            p = prec[rec >= t]
            p = p[~np.isnan(p)]
            ap += (p.max() if p.size else 0.0) / 11
        return ap
    mrec, mpre = np.concatenate([[0], rec, [1]]), np.concatenate([[0], prec, [0]])
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = np.fmax(mpre[i], mpre[i + 1])
    i = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[i] - mrec[i - 1]) * mpre[i]))


def random_case(seed, num_images=6, num_classes=3):
    """Integer boxes on a small grid (IoU ties), scores with one decimal (score ties), duplicates, difficult
    boxes, and class 2 without any ground truth."""
    rng = np.random.default_rng(seed)
    records, detections = [], []
    for i in range(num_images):
        count = int(rng.integers(0, 5))
        xy = rng.integers(1, 40, (count, 2))
        boxes = np.concatenate([xy, xy + rng.integers(4, 30, (count, 2))], 1)
        labels = rng.integers(0, num_classes - 1, count)
        records.append(make_record(f"img{i}", boxes, labels, rng.random(count) < 0.3))
        for _ in range(int(rng.integers(0, 12))):
            if count and rng.random() < 0.6:
                k = int(rng.integers(count))
                box = boxes[k] + rng.integers(-3, 4, 4)
                label = int(labels[k]) if rng.random() < 0.85 else int(rng.integers(num_classes))
            else:
                x, y = rng.integers(1, 40, 2)
                box = np.array([x, y, x + rng.integers(2, 30), y + rng.integers(2, 30)])
                label = int(rng.integers(num_classes))
            box[2:] = np.maximum(box[2:], box[:2])
            detections.append(det(f"img{i}", label + 1, box.tolist(), round(float(rng.random()), 1)))
    return records, detections


@pytest.mark.parametrize("seed", range(25))
@pytest.mark.parametrize("iou_threshold", [0.3, 0.5])
def test_eval_voc_equals_devkit_port(seed, iou_threshold):
    records, detections = random_case(seed)
    for use_07_metric in (True, False):
        result = eval_voc(records, detections, ids(3), iou_threshold, use_07_metric)
        for c in range(2):
            if result["num_gt"][c] == 0:
                assert math.isnan(result["ap"][c])
            else:
                expected = devkit_ap(records, detections, c, iou_threshold, use_07_metric)
                assert result["ap"][c] == pytest.approx(expected, abs=1e-12)
        assert math.isnan(result["ap"][2])


# ----------------------------------------------------------------------------- VOC rules


def perfect_case():
    """Boxes of small, medium and large COCO area, at most one object per class per image."""
    records = [make_record("a", [[11, 11, 31, 31], [101, 51, 161, 111]], [0, 1]),
               make_record("b", [[21, 31, 171, 181]], [0]),
               make_record("c", [[1, 1, 500, 400], [301, 201, 341, 221], [51, 61, 71, 81]], [2, 0, 1])]
    detections = [det(r.image_id, int(label) + 1, box.tolist(), 0.9)
                  for r in records for box, label in zip(voc_boxes(r), r.labels)]
    return records, detections


def test_perfect_predictions_score_one_everywhere():
    records, detections = perfect_case()
    for use_07_metric in (True, False):
        assert eval_voc(records, detections, ids(3), use_07_metric=use_07_metric)["map"] == 1.0
    for backend in BACKENDS:
        # pycocotools averages 101 recall points x 10 thresholds in float64: 1 to within rounding
        assert eval_coco(records, detections, ["a", "b", "c"], backend=backend) == pytest.approx(
            {key: 1.0 for key in COCO_KEYS}, abs=1e-12)


def test_detections_from_model_boxes_are_perfect():
    records, _ = perfect_case()
    detections = []
    for r in records:
        scores = torch.full((len(r.labels),), 0.7)
        boxes_xyxy, labels = torch.from_numpy(r.boxes_xyxy), torch.from_numpy(r.labels)
        detections += detections_from_xyxy(r.image_id, boxes_xyxy, scores, labels, ids(3))
    # xyxy (10, 10, 31, 31) is the annotation box (11, 11, 31, 31): COCO's x = x1, w = x2 - x1 (21 pixels)
    assert detections[0] == {"image_id": "a", "category_id": 1, "bbox": [10.0, 10.0, 21.0, 21.0],
                             "score": pytest.approx(0.7, abs=1e-7)}
    assert eval_voc(records, detections, ids(3))["map"] == 1.0
    assert eval_coco(records, detections, ["a", "b", "c"])["AP"] == pytest.approx(1.0, abs=1e-12)


def test_difficult_objects_are_ignored():
    box, hard_box = [11, 11, 60, 60], [101, 101, 150, 150]
    records = [make_record("a", [box, hard_box], [0, 0], difficult=[False, True])]
    on_hard_box = det("a", 1, hard_box, 0.9)  # ranked first: were it a FP, precision at the TP would be 1/2
    on_box = det("a", 1, box, 0.5)
    result = eval_voc(records, [on_hard_box, on_box], ids(1), use_07_metric=False)
    assert result["ap"][0] == 1.0 and result["num_gt"][0] == 1 and result["num_difficult"][0] == 1
    np.testing.assert_array_equal(result["precision"][0], [1.0])  # the ignored detection is not on the curve
    # an undetected difficult box costs nothing
    assert eval_voc(records, [on_box], ids(1), use_07_metric=False)["ap"][0] == 1.0
    for backend in BACKENDS:
        for detections in ([on_hard_box, on_box], [on_box]):
            assert eval_coco(records, detections, ["x"], backend=backend)["AP"] == pytest.approx(1, abs=1e-12)


def test_only_difficult_ground_truth_and_detections_on_it():
    records = [make_record("a", [[11, 11, 60, 60]], [0], difficult=[True])]
    result = eval_voc(records, [det("a", 1, [11, 11, 60, 60], 0.9)], ids(1))
    assert result["num_gt"][0] == 0 and math.isnan(result["ap"][0]) and math.isnan(result["map"])


def test_duplicates_are_false_positives():
    box_a, box_b = [11, 11, 60, 60], [101, 101, 150, 150]
    records = [make_record("a", [box_a, box_b], [0, 0])]
    detections = [det("a", 1, box_a, 0.9), det("a", 1, box_a, 0.8), det("a", 1, box_b, 0.7)]
    result = eval_voc(records, detections, ids(1), use_07_metric=False)
    np.testing.assert_allclose(result["precision"][0], [1, 1 / 2, 2 / 3], atol=1e-12)
    np.testing.assert_allclose(result["recall"][0], [1 / 2, 1 / 2, 1], atol=1e-12)
    assert result["ap"][0] == pytest.approx(0.5 + 0.5 * 2 / 3, abs=1e-12)


def test_detection_is_matched_to_its_best_box_even_when_taken():
    # the devkit does not fall back to the second-best box: the lower-scored detection is a duplicate of
    # box_a (its best overlap) although it also overlaps the free box_b by more than 0.5
    box_a, box_b = [1, 1, 100, 100], [11, 1, 110, 100]
    records = [make_record("a", [box_a, box_b], [0, 0])]
    detections = [det("a", 1, box_a, 0.9), det("a", 1, [2, 1, 101, 100], 0.8)]
    result = eval_voc(records, detections, ids(1))
    np.testing.assert_allclose(result["recall"][0], [0.5, 0.5], atol=1e-12)


def test_equal_overlaps_go_to_the_first_annotated_box():
    # the detection overlaps both boxes by 90/110; MATLAB's max() returns the first, so the annotation
    # order decides whether it lands on the difficult box (ignored) or on the normal one (TP)
    box, hard_box, detection = [3, 1, 12, 10], [1, 1, 10, 10], det("a", 1, [2, 1, 11, 10], 0.9)
    hard_first = [make_record("a", [hard_box, box], [0, 0], difficult=[True, False])]
    normal_first = [make_record("a", [box, hard_box], [0, 0], difficult=[False, True])]
    assert eval_voc(hard_first, [detection], ids(1))["recall"][0].size == 0  # ignored: not a point of the curve
    assert eval_voc(normal_first, [detection], ids(1))["ap"][0] == 1.0


def test_class_without_ground_truth_is_excluded_from_the_mean():
    box = [11, 11, 60, 60]
    records = [make_record("a", [box], [0])]
    detections = [det("a", 1, box, 0.9), det("a", 2, box, 0.95)]
    result = eval_voc(records, detections, ids(2))
    assert result["ap"][0] == 1.0 and math.isnan(result["ap"][1]) and result["map"] == 1.0
    assert result["num_det"].tolist() == [1, 1] and result["recall"][1].size == 0
    for backend in BACKENDS:  # pycocotools also skips categories without ground truth
        coco = eval_coco(records, detections, ["x", "y"], backend=backend)
        assert coco["AP"] == pytest.approx(1, abs=1e-12)


def test_eval_voc_rejects_bad_input():
    records = [make_record("a", [[1, 1, 5, 5]], [0])]
    with pytest.raises(ValueError, match="not in the ground truth"):
        eval_voc(records, [det("zzz", 1, [1, 1, 5, 5], 0.5)], ids(1))
    with pytest.raises(ValueError, match=r"category_id 2 is none of the dataset's \[1\]"):
        eval_voc(records, [det("a", 2, [1, 1, 5, 5], 0.5)], ids(1))
    with pytest.raises(ValueError, match="iou_threshold"):
        eval_voc(records, [], ids(1), iou_threshold=0.0)
    with pytest.raises(ValueError, match="appears twice"):
        eval_voc(records + records, [], ids(1))


def test_no_detections_give_zero():
    records, _ = perfect_case()
    assert eval_voc(records, [], ids(3))["map"] == 0.0
    for backend in BACKENDS:
        assert eval_coco(records, [], ["a", "b", "c"], backend=backend)["AP"] == 0.0


# ----------------------------------------------------------------------------- COCO


def test_coco_backends_match_published_pycocotools_values():
    case = needs_cases(METRIC_CASES / "coco-sample")
    coco_gt = json.loads((case / "gts.json").read_text())
    results = json.loads((case / "dets.json").read_text())
    expected = dict(zip(COCO_KEYS, [0.503647, 0.696973, 0.571667, 0.593252, 0.557991, 0.489363,
                                    0.386813, 0.593680, 0.595353, 0.654764, 0.603130, 0.553744]))
    gt_before, results_before = json.dumps(coco_gt), json.dumps(results)
    by_backend = {backend: coco_eval_dicts(coco_gt, results, backend=backend) for backend in BACKENDS}
    for backend, metrics in by_backend.items():
        for key in COCO_KEYS:
            assert metrics[key] == pytest.approx(expected[key], abs=1e-6), (backend, key)
    for key in COCO_KEYS:
        assert by_backend["faster"][key] == pytest.approx(by_backend["pycocotools"][key], abs=1e-12), key
    assert json.dumps(coco_gt) == gt_before and json.dumps(results) == results_before  # inputs untouched


@pytest.mark.parametrize("seed", range(3))
def test_coco_backends_agree_on_voc_style_case(seed):
    records, detections = random_case(seed, num_images=20)
    pycocotools_metrics = eval_coco(records, detections, ["a", "b", "c"], backend="pycocotools")
    faster_metrics = eval_coco(records, detections, ["a", "b", "c"], backend="faster")
    assert any(0.0 < pycocotools_metrics[key] < 1.0 for key in COCO_KEYS)  # a case that discriminates
    for key in COCO_KEYS:
        assert faster_metrics[key] == pytest.approx(pycocotools_metrics[key], abs=1e-12), key


def test_coco_silent_unless_verbose(capsys):
    records, detections = perfect_case()
    for backend in BACKENDS:
        eval_coco(records, detections, ["a", "b", "c"], backend=backend)
        assert capsys.readouterr().out == ""
        eval_coco(records, detections, ["a", "b", "c"], backend=backend, verbose=True)
        assert "Average Precision" in capsys.readouterr().out


def test_unknown_coco_backend():
    records, detections = perfect_case()
    with pytest.raises(ValueError, match="unknown COCO backend 'detectron'"):
        evaluate_detections(split_of(records, ["a", "b", "c"]), detections, coco_backend="detectron")


# ----------------------------------------------------------------------------- report


def test_evaluate_detections_is_json_and_consistent():
    records, detections = random_case(1, num_images=10)
    classes = ["a", "b", "c"]
    results, pr_curves = evaluate_detections(split_of(records, classes), detections, coco_backend="faster")
    json.dumps(results, allow_nan=False)  # strict JSON: undefined values are null, not NaN
    voc07 = eval_voc(records, detections, ids(3), use_07_metric=True)
    voc = eval_voc(records, detections, ids(3), use_07_metric=False)
    assert results["voc07_map50"] == pytest.approx(voc07["map"], abs=1e-12)
    assert results["voc_map50"] == pytest.approx(voc["map"], abs=1e-12)
    coco = eval_coco(records, detections, classes, backend="faster")
    for key in COCO_KEYS:
        assert results[f"coco_{key.lower()}"] == (None if coco[key] == -1 else coco[key])
    assert results["per_class"]["a"]["ap50_voc07"] == pytest.approx(voc07["ap"][0], abs=1e-12)
    assert results["per_class"]["c"]["ap50_voc"] is None  # no ground truth
    assert results["per_class"]["b"]["num_gt"] == voc["num_gt"][1]
    assert results["num_detections"] == len(detections)
    assert results["num_images"] == results["num_images_listed"] == 10
    np.testing.assert_array_equal(pr_curves["a"]["precision"], voc["precision"][0])

    table = format_results(results, classes)
    assert table.splitlines()[0] == "10 of 10 images scored"
    assert f"11-point {results['voc07_map50']:.4f} | all-point {results['voc_map50']:.4f}" in table
    assert table.splitlines()[4].startswith("c") and "n/a" in table.splitlines()[4]


def test_voc_pr_curves_recall_ends_at_final_recall():
    records, detections = random_case(3)
    curves = voc_pr_curves(records, detections, ids(3))
    for c in range(2):
        if curves["recall"][c].size:
            assert np.all(np.diff(curves["recall"][c]) >= 0) and curves["recall"][c][-1] <= 1.0


# ----------------------------------------------------------------------------- detections files


def split(num_classes=20):
    return split_of([make_record("2008_000001", [[1, 1, 5, 5]], [0]), make_record("2008_000002", [[1, 1, 5, 5]], [0])],
                    [f"c{i}" for i in range(num_classes)])


def test_save_then_load_round_trip(tmp_path):
    detections = [{"image_id": "2008_000001", "category_id": np.int64(3), "bbox": np.array([1.5, 2, 3, 4.25]),
                   "score": np.float32(0.5)}, det("2008_000002", 20, [1, 1, 5, 5], 0.25)]
    path = tmp_path / "sub" / "dets.json"
    save_detections(detections, path)
    assert [p.name for p in path.parent.iterdir()] == ["dets.json"]  # no temp file left
    loaded = load_detections(path, split())
    assert loaded == [
        {"image_id": "2008_000001", "category_id": 3, "bbox": [1.5, 2.0, 3.0, 4.25], "score": 0.5},
        {"image_id": "2008_000002", "category_id": 20, "bbox": [0, 0, 5, 5], "score": 0.25}]


def test_failed_save_keeps_previous_file(tmp_path):
    path = tmp_path / "dets.json"
    path.write_text("[]")
    with pytest.raises(TypeError, match="cannot write a object"):
        save_detections([{"image_id": "a", "category_id": 1, "bbox": [1, 1, 1, 1], "score": object()}], path)
    assert path.read_text() == "[]" and [p.name for p in tmp_path.iterdir()] == ["dets.json"]


GOOD = {"image_id": "2008_000001", "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5}


@pytest.mark.parametrize("content, message", [
    ("{not json", "is not valid JSON"),
    (json.dumps({"detections": []}), "expected a JSON list of detections, got dict"),
    (json.dumps([GOOD, [1, 2]]), "entry 1 is a list, expected an object with keys image_id, category_id"),
    (json.dumps([{k: v for k, v in GOOD.items() if k != "score"}]), "entry 0 lacks score"),
    (json.dumps([{**GOOD, "image_id": 1.5}]), "entry 0 has image_id 1.5; it must be the dataset's image id, a "
                                               "string such as \"2008_000123\" or a COCO integer id"),
    (json.dumps([{**GOOD, "image_id": 1}]), "1 image ids are not in the split (2 images, ids such as '2008_000001'), "
                                            "e.g. 1"),
    (json.dumps([{**GOOD, "category_id": 1.0}]), "entry 0 has category_id 1.0; it must be an integer"),
    (json.dumps([{**GOOD, "category_id": True}]), "entry 0 has category_id True; it must be an integer"),
    (json.dumps([{**GOOD, "bbox": [1, 2, 3]}]), "entry 0 has bbox [1, 2, 3]; it must be a list of 4 numbers"),
    (json.dumps([{**GOOD, "score": "high"}]), "entry 0 has score 'high'; it must be a number"),
    (json.dumps([GOOD, {**GOOD, "category_id": 0}, {**GOOD, "category_id": 21}]),
     "2 entries have a category_id that is not the dataset's (1..20), first entry 1 (category_id 0)"),
    (json.dumps([{**GOOD, "category_id": 10 ** 30}]), "1 entries have a category_id that is not the dataset's"),
    (json.dumps([GOOD, {**GOOD, "bbox": [1, 2, -3, 4]}]),
     "1 entries have a negative bbox width or height, first entry 1"),
    ('[{"image_id": "2008_000001", "category_id": 1, "bbox": [1, NaN, 3, 4], "score": 0.5}]',
     "a non-finite bbox value"),
    ('[{"image_id": "2008_000001", "category_id": 1, "bbox": [1, 2, 3, 4], "score": Infinity}]',
     "a non-finite score"),
    (json.dumps([GOOD] + [{**GOOD, "image_id": f"2012_{i:06d}"} for i in range(7)]),
     "7 image ids are not in the split (2 images, ids such as '2008_000001'), e.g. '2012_000000', '2012_000001', "
     "'2012_000002', '2012_000003', '2012_000004'"),
])
def test_load_detections_rejects_bad_files_in_one_line(tmp_path, content, message):
    path = tmp_path / "dets.json"
    path.write_text(content)
    with pytest.raises(DetectionsFormatError) as error:
        load_detections(path, split())
    assert message in str(error.value) and "\n" not in str(error.value)


def test_load_detections_missing_file(tmp_path):
    with pytest.raises(DetectionsFormatError, match="cannot read detections file .*: No such file"):
        load_detections(tmp_path / "nope.json", split(1))


def test_load_detections_accepts_empty_list(tmp_path):
    path = tmp_path / "dets.json"
    path.write_text("[]")
    assert load_detections(path, split(1)) == []
