"""Detection metrics: PASCAL VOC mAP@0.5 (devkit-exact) and COCO AP (``yolo.coco_eval``), and detection files.

Detections everywhere are a list of dicts in the dataset's own ids and the model's pixel-edge coordinates::

    {"image_id": "2008_000123" or 397133, "category_id": 1, "bbox": [x, y, w, h], "score": s}

with ``x1 = x, x2 = x + w`` (COCO's convention: a box covering pixel columns 0..9 is ``x = 0, w = 10``),
``image_id`` the record's id (a VOC / YOLO file stem, a COCO integer id) and ``category_id`` the dataset's id of
the class (``Split.categories.ids``: 1..C for VOC and YOLO, the JSON's ids for COCO). Ground truth is a
``yolo.data.record.Split``.

VOC rules (Everingham et al., IJCV 2010; devkit ``VOCevaldet.m`` and ``VOCap.m``): boxes are taken to the devkit's
1-based inclusive coordinates (``xmin = x1 + 1, xmax = x2``, so a VOC annotation's own corners come back exactly);
detections of a class are sorted by score (stable, as MATLAB's ``sort``); each is matched to the ground-truth box
of its class in its image with the largest overlap, IoU computed on inclusive pixel coordinates (``+1`` in widths
and heights). If that overlap is ``>= iou_threshold``: an ignored box (difficult, or a crowd region) makes the
detection ignored (neither TP nor FP), an untaken box makes it a TP, a taken one a FP (duplicate). Otherwise it is
a FP. Recall is over non-ignored boxes. A class with no non-ignored ground truth has no defined recall; its AP is
NaN (``None`` in ``evaluate_detections``) and it is excluded from the mean, as pycocotools does for COCO.
"""
import json
import logging
import math
import os
from pathlib import Path

import numpy as np

from yolo.boxes import xyxy_to_voc
from yolo.coco_eval import COCO_BACKENDS, COCO_KEYS, LVIS_KEYS, eval_split

logger = logging.getLogger(__name__)

_DETECTION_KEYS = ("image_id", "category_id", "bbox", "score")
_NUMBER_TYPES = (int, float)  # what json.loads produces for numbers (bool is its own type)


class DetectionsFormatError(ValueError):
    """A detections file or list that does not follow the format; the message is one line for the user."""


# ----------------------------------------------------------------------------- VOC


def voc_ap(recall, precision, use_07_metric: bool) -> float:
    """Average precision from a precision/recall curve, as the VOC devkit computes it.

    Args:
        recall, precision: (N,) cumulative values, detections in descending score order.
        use_07_metric: True for the VOC2007 11-point interpolation (mean over t in 0, 0.1, ..., 1 of the
            maximum precision at recall >= t, 0 if none); False for the VOC2010+ all-point AP (area under
            the monotonically decreasing precision envelope, ``VOCap.m``).
    """
    recall = np.asarray(recall, dtype=np.float64)
    precision = np.asarray(precision, dtype=np.float64)
    if recall.shape != precision.shape or recall.ndim != 1:
        raise ValueError(f"recall and precision must be 1-D of equal length, "
                         f"got {recall.shape} and {precision.shape}")
    if use_07_metric:
        # Thresholds exactly as np.arange(0, 1.1, 0.1), like py-faster-rcnn's voc_eval.py, mmdetection and
        # the published reference case in the tests: 0.3, 0.6 and 0.7 come out a hair above the tenth, so a
        # recall of exactly 3/10, 6/10 or 7/10 does not reach that point. Exact tenths would change those
        # rare ties (voc-ap-case1 at IoU 0.1: 0.3689 instead of the published 0.3333).
        interpolated = [precision[recall >= threshold].max(initial=0.0)
                        for threshold in np.arange(0.0, 1.1, 0.1)]
        return float(sum(interpolated) / 11)  # sum first: a perfect curve gives exactly 1.0
    recall_padded = np.concatenate([[0.0], recall, [1.0]])
    precision_envelope = np.concatenate([[0.0], precision, [0.0]])
    precision_envelope = np.maximum.accumulate(precision_envelope[::-1])[::-1]
    steps = np.flatnonzero(recall_padded[1:] != recall_padded[:-1]) + 1
    return float(np.sum((recall_padded[steps] - recall_padded[steps - 1]) * precision_envelope[steps]))


def eval_voc(records, detections, category_ids, iou_threshold: float = 0.5,
             use_07_metric: bool = True) -> dict:
    """VOC average precision per class and its mean.

    Args:
        records: list of Record (the split's ground truth).
        detections: list of detection dicts (see module docstring); image ids must belong to ``records``.
        category_ids: (C,) the dataset's category id of each label (``Split.categories.ids``).
        iou_threshold: minimum IoU (inclusive, as the devkit's ``ovmax >= minoverlap``).
        use_07_metric: 11-point (VOC2007) or all-point (VOC2010+) AP, see ``voc_ap``.

    Returns:
        ``{"ap": (C,) float64 (NaN for classes without non-difficult ground truth), "map": float (NaN if
        no class has ground truth), "precision": [C arrays], "recall": [C arrays], "num_gt": (C,) int
        non-difficult boxes, "num_difficult": (C,) int, "num_det": (C,) int}``. The curves hold one point per
        non-ignored detection in score order (empty for classes without ground truth).
    """
    curves = voc_pr_curves(records, detections, category_ids, iou_threshold)
    ap = np.array([voc_ap(r, p, use_07_metric) if n > 0 else np.nan
                   for r, p, n in zip(curves["recall"], curves["precision"], curves["num_gt"])])
    return {"ap": ap, "map": _nanmean(ap), **curves}


def voc_pr_curves(records, detections, category_ids, iou_threshold: float = 0.5) -> dict:
    """Per-class precision/recall curves under the devkit's matching rules (see ``eval_voc``).

    Ignored detections (matched to a difficult box) are dropped from the curves: they would repeat the
    previous point and change neither AP.
    """
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    num_classes = len(category_ids)
    gt = _ground_truth_arrays(records, num_classes)
    det = _detection_arrays(detections, gt["image_index"], category_ids)
    is_tp, is_ignored = _match_detections(gt, det, num_classes, iou_threshold)

    by_score = np.argsort(-det["scores"], kind="stable")
    by_class = by_score[np.argsort(det["labels"][by_score], kind="stable")]
    class_bounds = np.searchsorted(det["labels"][by_class], np.arange(num_classes + 1))
    num_gt = np.bincount(gt["labels"][~gt["difficult"]], minlength=num_classes)
    precision, recall = [], []
    for c in range(num_classes):
        in_class = by_class[class_bounds[c]:class_bounds[c + 1]]
        tp_flags = is_tp[in_class[~is_ignored[in_class]]] if num_gt[c] > 0 else np.zeros(0, dtype=bool)
        tp = np.cumsum(tp_flags, dtype=np.float64)
        precision.append(tp / np.arange(1, tp.size + 1))
        recall.append(tp / max(num_gt[c], 1))
    return {"precision": precision, "recall": recall, "num_gt": num_gt,
            "num_difficult": np.bincount(gt["labels"][gt["difficult"]], minlength=num_classes),
            "num_det": np.bincount(det["labels"], minlength=num_classes)}


def _ground_truth_arrays(records, num_classes: int) -> dict:
    image_index = {}
    for index, record in enumerate(records):
        if record.image_id in image_index:
            raise ValueError(f"image id {record.image_id!r} appears twice in the ground truth")
        image_index[record.image_id] = index
    # the trailing empty arrays let np.concatenate take a split without images
    labels = np.concatenate([np.asarray(r.labels, dtype=np.int64) for r in records] + [np.zeros(0, np.int64)])
    if labels.size and not (0 <= labels.min() and labels.max() < num_classes):
        raise ValueError(f"ground-truth labels must be in 0..{num_classes - 1}, "
                         f"got {labels.min()}..{labels.max()}")
    # the devkit's inclusive corners, exact in float64: a VOC record's boxes_xyxy is its XML box minus (1, 1, 0, 0)
    boxes = [xyxy_to_voc(np.asarray(r.boxes_xyxy, dtype=np.float64).reshape(-1, 4)) for r in records]
    boxes.append(np.zeros((0, 4)))
    difficult = [np.asarray(r.ignore, dtype=bool) for r in records] + [np.zeros(0, bool)]
    return {"image_index": image_index,
            "images": np.repeat(np.arange(len(records)), [len(r.labels) for r in records]).astype(np.int64),
            "labels": labels,
            "boxes_voc": np.concatenate(boxes),
            "difficult": np.concatenate(difficult)}


def _detection_arrays(detections, image_index: dict, category_ids) -> dict:
    unknown = {d["image_id"] for d in detections} - image_index.keys()
    if unknown:
        raise ValueError(f"detections refer to {len(unknown)} image ids not in the ground truth, "
                         f"e.g. {', '.join(map(str, sorted(unknown, key=str)[:5]))}")
    count = len(detections)
    label_of = {int(cid): k for k, cid in enumerate(category_ids)}
    try:
        labels = np.fromiter((label_of[d["category_id"]] for d in detections), dtype=np.int64, count=count)
    except KeyError as error:
        raise ValueError(f"category_id {error.args[0]} is none of the dataset's {sorted(label_of)}") from None
    boxes_xywh = np.array([d["bbox"] for d in detections], dtype=np.float64).reshape(count, 4)
    images = np.fromiter((image_index[d["image_id"]] for d in detections), dtype=np.int64, count=count)
    # pixel-edge [x, y, w, h] -> the devkit's inclusive corners: xmin = x + 1, xmax = x + w
    corners = np.concatenate([boxes_xywh[:, :2], boxes_xywh[:, :2] + boxes_xywh[:, 2:]], axis=1)
    return {"images": images,
            "labels": labels,
            "boxes_voc": xyxy_to_voc(corners),
            "scores": np.fromiter((d["score"] for d in detections), dtype=np.float64, count=count)}


def _match_detections(gt: dict, det: dict, num_classes: int, iou_threshold: float):
    """Devkit matching for all classes at once. Returns (is_tp, is_ignored), (D,) bool each.

    The devkit picks each detection's max-overlap box regardless of whether it is already taken, so the
    choice is independent per detection and vectorises; only "first claimant in score order wins" is
    sequential, and that is a first-occurrence lookup over detections sorted by score.
    """
    num_dets = det["scores"].size
    gt_keys = gt["images"] * num_classes + gt["labels"]
    gt_order = np.argsort(gt_keys, kind="stable")  # stable: boxes keep annotation order within an image
    gt_keys_sorted = gt_keys[gt_order]
    det_keys = det["images"] * num_classes + det["labels"]
    first = np.searchsorted(gt_keys_sorted, det_keys, side="left")
    counts = np.searchsorted(gt_keys_sorted, det_keys, side="right") - first

    # one (detection, same-image same-class box) pair per row, grouped by detection
    pair_det = np.repeat(np.arange(num_dets), counts)
    pair_starts = np.cumsum(counts) - counts
    pair_gt = gt_order[first[pair_det] + np.arange(pair_det.size) - pair_starts[pair_det]]
    iou = iou_voc_pairs(det["boxes_voc"][pair_det], gt["boxes_voc"][pair_gt])

    best_iou = np.full(num_dets, -np.inf)
    best_gt = np.full(num_dets, -1)
    if pair_det.size:
        best_iou[counts > 0] = np.maximum.reduceat(iou, pair_starts[counts > 0])
        # first box reaching the maximum, as MATLAB's max() returns the first index on ties
        at_max = np.flatnonzero(iou == best_iou[pair_det])
        first_at_max = at_max[np.r_[True, pair_det[at_max][1:] != pair_det[at_max][:-1]]]
        best_gt[pair_det[first_at_max]] = pair_gt[first_at_max]

    matched = best_iou >= iou_threshold  # implies best_gt >= 0
    is_ignored = np.zeros(num_dets, dtype=bool)
    is_ignored[matched] = gt["difficult"][best_gt[matched]]
    claims = matched & ~is_ignored
    by_score = np.argsort(-det["scores"], kind="stable")
    claims_by_score = by_score[claims[by_score]]
    _, first_claim = np.unique(best_gt[claims_by_score], return_index=True)
    is_tp = np.zeros(num_dets, dtype=bool)
    is_tp[claims_by_score[first_claim]] = True
    return is_tp, is_ignored


def iou_voc_pairs(boxes_a_voc: np.ndarray, boxes_b_voc: np.ndarray) -> np.ndarray:
    """IoU of row-aligned (N, 4) box pairs in inclusive pixel coordinates (devkit: ``+1`` in widths)."""
    a, b = boxes_a_voc, boxes_b_voc
    inter_w = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]) + 1, 0, None)
    inter_h = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]) + 1, 0, None)
    intersection = inter_w * inter_h
    area_a = (a[:, 2] - a[:, 0] + 1) * (a[:, 3] - a[:, 1] + 1)
    area_b = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    return intersection / (area_a + area_b - intersection)


def _nanmean(values: np.ndarray) -> float:
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else math.nan


# ----------------------------------------------------------------------------- everything for one split


def evaluate_detections(split, detections, coco_backend: str = "pycocotools", verbose: bool = False,
                        unreadable=()):
    """All metrics of one split: VOC07 11-point and all-point mAP@0.5, COCO AP/AR (LVIS's federated AP for an LVIS
    split), per-class VOC AP.

    Args:
        split: the ``yolo.data.record.Split`` scored; ``unreadable``: indices of its records that could not be
            read (left out: ``yolo.data.layout.require_complete`` decides whether that is allowed).
        detections: in the dataset's ids (see the module docstring).

    Returns:
        ``(results, pr_curves)``. ``results`` is a flat JSON-serialisable dict: ``voc07_map50``,
        ``voc_map50``, ``coco_ap``, ``coco_ap50``, ``coco_ap75``, ``coco_aps``, ``coco_apm``, ``coco_apl``,
        ``coco_ar1``, ``coco_ar10``, ``coco_ar100``, ``coco_ars``, ``coco_arm``, ``coco_arl`` (LVIS: also
        ``lvis_apr``, ``lvis_apc``, ``lvis_apf``, ``lvis_ar300``), ``num_images`` (scored), ``num_images_listed``,
        ``num_detections``, ``coco_backend`` and ``per_class`` ``{name: {"ap50_voc07", "ap50_voc", "num_gt",
        "num_difficult", "num_det"}}``. Undefined values (no ground truth) are None.
        ``pr_curves`` is ``{name: {"precision": (N,), "recall": (N,)}}`` at IoU 0.5, for PR-curve plots.
    """
    if coco_backend not in COCO_BACKENDS:  # before the VOC work, not after it
        raise ValueError(f"unknown COCO backend {coco_backend!r}; choose one of {', '.join(COCO_BACKENDS)}")
    records = [r for i, r in enumerate(split.records) if i not in set(unreadable)]
    classes, category_ids = split.categories.names, split.categories.ids
    curves = voc_pr_curves(records, detections, category_ids, iou_threshold=0.5)
    ap_07 = [voc_ap(r, p, True) if n > 0 else math.nan
             for r, p, n in zip(curves["recall"], curves["precision"], curves["num_gt"])]
    ap_all = [voc_ap(r, p, False) if n > 0 else math.nan
              for r, p, n in zip(curves["recall"], curves["precision"], curves["num_gt"])]
    coco = eval_split(split, detections, records, backend=coco_backend, verbose=verbose)
    results = {"voc07_map50": _defined(_nanmean(np.array(ap_07))),
               "voc_map50": _defined(_nanmean(np.array(ap_all))),
               **{f"coco_{key.lower()}": _defined(coco.get(key, -1.0)) for key in COCO_KEYS},
               **{f"lvis_{key.lower()}": _defined(coco[key]) for key in LVIS_KEYS if key not in COCO_KEYS
                  and split.federated},
               "num_images": len(records), "num_images_listed": split.listed, "num_detections": len(detections),
               "coco_backend": "faster (LVIS federated)" if split.federated else coco_backend}
    results["per_class"] = {
        name: {"ap50_voc07": _defined(ap_07[c]), "ap50_voc": _defined(ap_all[c]),
               "num_gt": int(curves["num_gt"][c]), "num_difficult": int(curves["num_difficult"][c]),
               "num_det": int(curves["num_det"][c])}
        for c, name in enumerate(classes)}
    pr_curves = {name: {"precision": curves["precision"][c], "recall": curves["recall"][c]}
                 for c, name in enumerate(classes)}
    return results, pr_curves


def _defined(value: float):
    """NaN (VOC) and -1 (pycocotools) both mean "no ground truth": None in the JSON-bound results."""
    return None if math.isnan(value) or value == -1 else float(value)


def format_results(results: dict, classes) -> str:
    """How many images were scored of how many listed, a per-class VOC AP table, the VOC and COCO summary lines."""
    width = max(len(name) for name in ["class", *classes])
    scored, listed = results["num_images"], results.get("num_images_listed", results["num_images"])
    lines = [f"{scored} of {listed} images scored" + ("" if scored == listed else
                                                      f" ({listed - scored} could not be read: --skip-unreadable)"),
             f"{'class':<{width}}  {'gt':>6} {'diff':>5} {'dets':>8}  {'AP50 VOC07':>10}  {'AP50 all-pt':>11}"]
    for name in classes:
        row = results["per_class"][name]
        lines.append(f"{name:<{width}}  {row['num_gt']:>6} {row['num_difficult']:>5} {row['num_det']:>8}  "
                     f"{_fmt(row['ap50_voc07']):>10}  {_fmt(row['ap50_voc']):>11}")
    lines.append(f"{'mean':<{width}}  {'':>6} {'':>5} {'':>8}  "
                 f"{_fmt(results['voc07_map50']):>10}  {_fmt(results['voc_map50']):>11}")
    lines.append(f"VOC mAP@0.5 ({results['num_images']} images, {results['num_detections']} detections, "
                 f"difficult / crowd ignored, classes without ground truth excluded): "
                 f"11-point {_fmt(results['voc07_map50'])} | all-point {_fmt(results['voc_map50'])}")
    lines.append(f"COCO ({results['coco_backend']}, difficult / crowd = ignore): "
                 + "  ".join(f"{key} {_fmt(results['coco_' + key.lower()])}" for key in COCO_KEYS[:6]))
    lines.append(f"COCO ({results['coco_backend']}, difficult / crowd = ignore): "
                 + "  ".join(f"{key} {_fmt(results['coco_' + key.lower()])}" for key in COCO_KEYS[6:]))
    if "lvis_apr" in results:
        lines.append(f"LVIS (federated, {LVIS_KEYS[-1][2:]} detections per image): "
                     + "  ".join(f"{key} {_fmt(results['lvis_' + key.lower()])}" for key in LVIS_KEYS[6:]))
    return "\n".join(lines)


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


# ----------------------------------------------------------------------------- detections files


def detections_from_xyxy(image_id, boxes_xyxy, scores, labels, category_ids) -> list:
    """Model outputs of one image -> detection dicts (see the module docstring).

    Args:
        image_id: the record's id. boxes_xyxy: (N, 4) float pixel-edge boxes (the model's convention, see
            yolo.boxes), numpy or torch. scores: (N,) confidences. labels: (N,) 0-based class indices.
        category_ids: (C,) the dataset's category id of each label (``Split.categories.ids``).
    """
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    boxes_xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    scores, labels = np.asarray(scores).reshape(-1), np.asarray(labels).reshape(-1)
    return [{"image_id": image_id, "category_id": int(category_ids[int(label)]), "bbox": box.tolist(),
             "score": float(score)} for box, score, label in zip(boxes_xywh, scores, labels)]


def load_detections(path, split) -> list:
    """Read and validate a detections JSON file against a ``Split``; raises DetectionsFormatError (one line)."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as error:
        raise DetectionsFormatError(f"cannot read detections file {path}: {error.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DetectionsFormatError(f"{path} is not valid JSON: {error}") from None
    return validate_detections(data, split, source=str(path))


def validate_detections(data, split, source: str = "detections") -> list:
    """Check a detections list as parsed by ``json`` (exact JSON types) against a ``Split``: the dataset's image ids
    (a COCO results list's integer ids, a VOC / YOLO file stem) and category ids. Returns new dicts with only the
    four format keys (values shared with ``data``), without those of listed images that could not be loaded
    (scored only with ``--skip-unreadable``). Raises DetectionsFormatError with a one-line message."""
    if not isinstance(data, list):
        raise DetectionsFormatError(f"{source}: expected a JSON list of detections, "
                                    f"got {type(data).__name__}")
    for index, det in enumerate(data):
        if not _well_typed(det):
            raise DetectionsFormatError(f"{source}: entry {index} {_type_problem(det)}")
    boxes_xywh = np.array([d["bbox"] for d in data], dtype=np.float64).reshape(-1, 4)
    scores = np.array([d["score"] for d in data], dtype=np.float64)
    # float64, not int64: an absurd id such as 10**30 must reach the check, not overflow
    category_ids = np.array([d["category_id"] for d in data], dtype=np.float64)
    _reject(source, data, ~np.isfinite(boxes_xywh).all(axis=1), "a non-finite bbox value", "bbox")
    _reject(source, data, (boxes_xywh[:, 2:] < 0).any(axis=1), "a negative bbox width or height", "bbox")
    _reject(source, data, ~np.isfinite(scores), "a non-finite score", "score")
    ids = split.categories.ids
    _reject(source, data, ~np.isin(category_ids, np.array(ids, dtype=np.float64)),
            f"a category_id that is not the dataset's ({_describe_ids(ids)})", "category_id")
    listed = set(split.listed_ids)
    unknown = sorted({d["image_id"] for d in data} - listed, key=str)
    if unknown:
        example = next(iter(split.listed_ids))
        raise DetectionsFormatError(f"{source}: {len(unknown)} image ids are not in the split ({len(listed)} "
                                    f"images, ids such as {example!r}), e.g. {', '.join(map(repr, unknown[:5]))}")
    scored = {record.image_id for record in split.records}
    return [{key: d[key] for key in _DETECTION_KEYS} for d in data if d["image_id"] in scored]


def _describe_ids(ids) -> str:
    contiguous = list(ids) == list(range(ids[0], ids[0] + len(ids)))
    return f"{ids[0]}..{ids[-1]}" if contiguous else f"{len(ids)} ids: {', '.join(map(str, ids[:6]))}" + (
        ", ..." if len(ids) > 6 else "")


def _well_typed(det) -> bool:
    # one expression over exact JSON types: this runs once per detection (~500k on VOC07 test)
    return (type(det) is dict and all(key in det for key in _DETECTION_KEYS)
            and type(det["image_id"]) in (str, int) and type(det["category_id"]) is int
            and type(det["score"]) in _NUMBER_TYPES and type(det["bbox"]) is list and len(det["bbox"]) == 4
            and type(det["bbox"][0]) in _NUMBER_TYPES and type(det["bbox"][1]) in _NUMBER_TYPES
            and type(det["bbox"][2]) in _NUMBER_TYPES and type(det["bbox"][3]) in _NUMBER_TYPES)


def _type_problem(det) -> str:
    if not isinstance(det, dict):
        return f"is a {type(det).__name__}, expected an object with keys {', '.join(_DETECTION_KEYS)}"
    missing = [key for key in _DETECTION_KEYS if key not in det]
    if missing:
        return f"lacks {', '.join(missing)} (has {', '.join(map(str, det))})"
    if type(det["image_id"]) not in (str, int):
        return (f"has image_id {det['image_id']!r}; it must be the dataset's image id, a string such as "
                f"\"2008_000123\" or a COCO integer id")
    if type(det["category_id"]) is not int:
        return f"has category_id {det['category_id']!r}; it must be an integer"
    if type(det["score"]) not in _NUMBER_TYPES:
        return f"has score {det['score']!r}; it must be a number"
    return f"has bbox {det['bbox']!r}; it must be a list of 4 numbers [x, y, w, h]"


def _reject(source: str, data: list, bad: np.ndarray, what: str, key: str):
    if bad.any():
        first = int(np.argmax(bad))
        raise DetectionsFormatError(f"{source}: {int(bad.sum())} entries have {what}, first entry {first} "
                                    f"({key} {data[first][key]!r})")


def save_detections(detections, path):
    """Write detections as a JSON list (temp file then rename, so a crash never leaves half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # same folder, so the rename is atomic
    try:
        tmp_path.write_text(json.dumps(list(detections), separators=(",", ":"), default=_to_json_builtin))
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    logger.info("wrote %d detections to %s", len(detections), path)


def _to_json_builtin(value):
    """json ``default`` hook: numpy / torch scalars and arrays (straight from a model) as Python types."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot write a {type(value).__name__} to a detections file")
