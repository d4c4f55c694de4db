"""COCO-style box AP/AR through pycocotools or faster-coco-eval, and LVIS's federated evaluation.

Ground truth is the dataset's own JSON for a COCO dataset (so the numbers equal pycocotools run on that file with
the written results), else the records converted by ``yolo.data.coco_gt.records_to_coco`` (ignored objects as
``iscrowd`` ignore regions). Detections carry the dataset's ids and pixel-edge ``[x, y, w, h]`` boxes.

LVIS (Gupta et al., CVPR 2019): a split whose images list ``neg_category_ids`` / ``not_exhaustive_category_ids`` is
scored with the federated rules through faster-coco-eval's ``lvis_style`` mode (the ``lvis`` package does not run
on numpy >= 1.24): per image, detections of a class neither annotated in it nor verified absent are not scored, an
unmatched detection of a not-exhaustively annotated class is no false positive, at most 300 detections per image
(the top scores) and AP over classes grouped by ``frequency`` (APr / APc / APf).
"""
import contextlib
import copy
import io

from yolo.data.coco_gt import detections_to_coco, image_id_map, records_to_coco

COCO_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
LVIS_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf", "AR300")
COCO_BACKENDS = ("pycocotools", "faster")
LVIS_MAX_DETS = 300
# faster-coco-eval's stats_as_dict labels of the LVIS_KEYS (its AR_all is at maxDets 300 in lvis_style)
_LVIS_LABELS = ("AP_all", "AP_50", "AP_75", "AP_small", "AP_medium", "AP_large", "APr", "APc", "APf", "AR_all")
_SCORED_KEYS = ("id", "image_id", "category_id", "bbox", "area", "iscrowd")


def ground_truth(split, records=None) -> tuple[dict, list | None]:
    """``(COCO ground truth, the scored image ids or None for all)`` of a ``Split``; ``records``: the scored ones
    (default all). A plain copy the libraries may write into."""
    records = split.records if records is None else records
    if split.coco_gt is None:
        return records_to_coco(records, split.categories), None
    gt = split.coco_gt
    coco_gt = {"images": [dict(image) for image in gt["images"]], "categories": [dict(c) for c in gt["categories"]],
               "annotations": [{k: a[k] for k in _SCORED_KEYS if k in a} for a in gt["annotations"]]}
    scored = None if len(records) == len(gt["images"]) else sorted(r.image_id for r in records)
    return coco_gt, scored


def eval_split(split, detections, records=None, backend: str = "pycocotools", verbose: bool = False) -> dict:
    """COCO (or, for a federated split, LVIS) metrics of detections in the dataset's ids on ``records`` of
    ``split``: ``{key: float}`` over COCO_KEYS (or LVIS_KEYS), -1 where undefined (pycocotools' convention)."""
    coco_gt, image_ids = ground_truth(split, records)
    if split.coco_gt is None:
        results = detections_to_coco(detections, image_id_map(coco_gt))
    else:
        results = [{key: d[key] for key in ("image_id", "category_id", "bbox", "score")} for d in detections]
    if split.federated:
        return lvis_eval(coco_gt, results, image_ids, verbose)
    return run_coco_eval(coco_gt, results, backend, verbose, image_ids)


def run_coco_eval(coco_gt: dict, results: list, backend: str, verbose: bool, image_ids=None) -> dict:
    """``COCOeval(..., "bbox")`` on inputs the libraries may modify; ``image_ids`` restricts the scored images."""
    if backend not in COCO_BACKENDS:
        raise ValueError(f"unknown COCO backend {backend!r}; choose one of {', '.join(COCO_BACKENDS)}")
    run = _pycocotools_stats if backend == "pycocotools" else _faster_coco_eval_stats
    stats = run(coco_gt, results, verbose, image_ids)
    return {key: float(value) for key, value in zip(COCO_KEYS, stats)}


def _pycocotools_stats(coco_gt: dict, results: list, verbose: bool, image_ids):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = coco_gt
        gt.createIndex()
        if results:
            dt = gt.loadRes(results)
        else:  # loadRes cannot take an empty list (it reads results[0])
            dt = COCO()
            dt.dataset = {"images": coco_gt["images"], "categories": coco_gt["categories"], "annotations": []}
            dt.createIndex()
        evaluator = COCOeval(gt, dt, "bbox")
        if image_ids is not None:
            evaluator.params.imgIds = list(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats[:len(COCO_KEYS)]


def _faster_evaluator(coco_gt: dict, results: list, verbose: bool, image_ids, **options):
    from faster_coco_eval import COCO, COCOeval_faster

    print_function = print if verbose else _silent
    gt = COCO(coco_gt, print_function=print_function)
    dt = gt.loadRes(results)
    evaluator = COCOeval_faster(gt, dt, "bbox", print_function=print_function, **options)
    if image_ids is not None:
        evaluator.params.imgIds = list(image_ids)
    return evaluator


def _faster_coco_eval_stats(coco_gt: dict, results: list, verbose: bool, image_ids):
    evaluator = _faster_evaluator(coco_gt, results, verbose, image_ids)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return evaluator.stats[:len(COCO_KEYS)]


def lvis_eval(coco_gt: dict, results: list, image_ids=None, verbose: bool = False) -> dict:
    """LVIS's federated box AP (see the module docstring): ``{key: float for key in LVIS_KEYS}``, -1 where
    undefined. ``results`` are cut to the ``LVIS_MAX_DETS`` best of each image first, as LVIS's own results
    loader does."""
    evaluator = _faster_evaluator(coco_gt, top_per_image(results, LVIS_MAX_DETS), verbose, image_ids,
                                  lvis_style=True)
    evaluator.params.maxDets = [LVIS_MAX_DETS]
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    stats = evaluator.stats_as_dict
    return {key: float(stats[label]) for key, label in zip(LVIS_KEYS, _LVIS_LABELS)}


def top_per_image(results: list, limit: int) -> list:
    """The ``limit`` highest-scoring results of each image (stable for equal scores), in their original order."""
    by_image = {}
    for index, result in enumerate(results):
        by_image.setdefault(result["image_id"], []).append(index)
    keep = set()
    for indices in by_image.values():
        keep.update(sorted(indices, key=lambda i: -results[i]["score"])[:limit])
    return [result for index, result in enumerate(results) if index in keep]


def _silent(*args, **kwargs):
    pass


def coco_eval_dicts(coco_gt: dict, results: list, backend: str = "pycocotools", verbose: bool = False) -> dict:
    """``COCOeval(..., "bbox")`` on a COCO ground-truth dict and a COCO results list (neither is modified).

    Args:
        backend: "pycocotools" (the reference) or "faster" (faster-coco-eval's C++ ``COCOeval_faster``).
        verbose: let the library print its progress and summary table.
    """
    coco_gt = copy.deepcopy(coco_gt)  # both libraries write "ignore" (and more) into the annotations
    results = [dict(r) for r in results]  # loadRes adds "area", "id", "iscrowd", "segmentation"
    return run_coco_eval(coco_gt, results, backend, verbose)
