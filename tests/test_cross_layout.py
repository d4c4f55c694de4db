"""The three layouts read the same data the same way: ../shared/voc-sample is written here as a COCO JSON and as an
ultralytics YOLO layout by a small writer of this file (it parses the XML itself, not with the project's reader),
and the VOC, COCO and YOLO readings must give the same images, boxes, labels and ignore flags, the same training
targets, the same loss at the same seed, and the same VOC and COCO metrics on the same detections.

YOLO labels have no ``difficult`` flag, so the YOLO writer leaves the difficult objects out (they are no training
target at the default ``data.train_difficult: false``): the YOLO reading is compared with the VOC reading's
non-difficult objects, and the detections never touch a difficult box, so no metric depends on them.
"""
import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY, shared_path
from yolo.config import Config, update, validate
from yolo.data.layout import load_role
from yolo.fit import build_loaders, prepare_data
from yolo.losses import detection_loss
from yolo.metrics import detections_from_xyxy, evaluate_detections
from yolo.model import build_model
from yolo.targets import assign_targets, make_grid

SPLITS = {"train": [("2007", "trainval"), ("2012", "trainval")], "test": [("2007", "test")]}
VOC_NAMES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
             "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")
CATEGORY_IDS = [5 + 3 * k for k in range(20)]      # COCO ids need not be 1..C: increasing, so labels follow VOC's


def _annotations(devkit: Path, year: str, split: str):
    """(year, image id, width, height, [(name, difficult, xmin, ymin, xmax, ymax)]) of a VOC split, from the XML."""
    ids = (devkit / f"VOC{year}" / "ImageSets" / "Main" / f"{split}.txt").read_text().split()
    for image_id in ids:
        root = ET.parse(devkit / f"VOC{year}" / "Annotations" / f"{image_id}.xml").getroot()
        objects = [(o.findtext("name").strip(), int(o.findtext("difficult") or 0),
                    *(float(o.find("bndbox").findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")))
                   for o in root.iter("object")]
        yield year, image_id, int(root.findtext("size/width")), int(root.findtext("size/height")), objects


def write_coco(devkit: Path, out: Path) -> dict:
    """annotations/instances_<split>.json with file names relative to the devkit; difficult -> iscrowd."""
    specs = {}
    (out / "annotations").mkdir(parents=True)
    categories = [{"id": cid, "name": name} for cid, name in zip(CATEGORY_IDS, VOC_NAMES)]
    next_image, next_ann = 1000, 1
    for split, parts in SPLITS.items():
        images, annotations = [], []
        for year, name in parts:
            for _, image_id, width, height, objects in _annotations(devkit, year, name):
                images.append({"id": next_image, "file_name": f"VOC{year}/JPEGImages/{image_id}.jpg",
                               "width": width, "height": height})
                for label, difficult, xmin, ymin, xmax, ymax in objects:
                    w, h = xmax - xmin + 1, ymax - ymin + 1
                    annotations.append({"id": next_ann, "image_id": next_image, "bbox": [xmin - 1, ymin - 1, w, h],
                                        "area": w * h, "iscrowd": difficult,
                                        "category_id": CATEGORY_IDS[VOC_NAMES.index(label)]})
                    next_ann += 1
                next_image += 1
        path = out / "annotations" / f"instances_{split}.json"
        path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
        specs[split] = f"{path.relative_to(out)}:{devkit}"
    return specs


def write_yolo(devkit: Path, out: Path) -> Path:
    """images/<split>/ (links to the sample), labels/<split>/*.txt (non-difficult objects), train.txt, data.yaml."""
    for split, parts in SPLITS.items():
        (out / "images" / split).mkdir(parents=True)
        (out / "labels" / split).mkdir(parents=True)
        listed = []
        for year, name in parts:
            for _, image_id, width, height, objects in _annotations(devkit, year, name):
                os.symlink(devkit / f"VOC{year}" / "JPEGImages" / f"{image_id}.jpg",
                           out / "images" / split / f"{image_id}.jpg")
                listed.append(f"./images/{split}/{image_id}.jpg")
                lines = [f"{VOC_NAMES.index(label)} {(xmin - 1 + xmax) / 2 / width!r} "
                         f"{(ymin - 1 + ymax) / 2 / height!r} {(xmax - xmin + 1) / width!r} "
                         f"{(ymax - ymin + 1) / height!r}"
                         for label, difficult, xmin, ymin, xmax, ymax in objects if not difficult]
                (out / "labels" / split / f"{image_id}.txt").write_text("\n".join(lines) + "\n")
        (out / f"{split}.txt").write_text("\n".join(listed) + "\n")
    names = "\n".join(f"  {k}: {name}" for k, name in enumerate(VOC_NAMES))
    (out / "data.yaml").write_text(f"path: .\ntrain: train.txt\nval: images/test\ntest: images/test\nnames:\n{names}\n")
    return out / "data.yaml"


@pytest.fixture(scope="module")
def readings(tmp_path_factory):
    """{layout: Config} of the same sample in the three layouts (TINY's model, 128 px, default augmentation)."""
    devkit = shared_path("voc-sample", "VOCdevkit")
    tmp = tmp_path_factory.mktemp("layouts")
    coco = write_coco(devkit, tmp / "coco")
    data_yaml = write_yolo(devkit, tmp / "yolo")

    def config(**data):
        cfg = update(Config(), {"model": TINY["model"], "data": {"img_size": 128, "workers": 0, **data},
                                "train": {"batch_size": 8, "device": "cpu"}})
        return validate(cfg)
    return {"voc": config(root=str(devkit), train="2007:trainval+2012:trainval", val="2007:test", test="2007:test"),
            "coco": config(root=str(tmp / "coco"), train=coco["train"], val=coco["test"], test=coco["test"]),
            "yolo": config(root=str(data_yaml))}


def _non_difficult(record):
    keep = ~record.ignore
    return record.boxes_xyxy[keep], record.labels[keep]


def test_the_three_readings_hold_the_same_images_boxes_labels_and_ignore_flags(readings):
    for role in ("train", "test"):
        voc, coco, yolo = (load_role(readings[name], role) for name in ("voc", "coco", "yolo"))
        assert voc.classes == coco.classes == yolo.classes == VOC_NAMES
        assert coco.categories.ids == tuple(CATEGORY_IDS) and yolo.categories.ids == tuple(range(1, 21))
        assert len(voc.records) == len(coco.records) == len(yolo.records) == {"train": 114, "test": 7}[role]
        for v, c, y in zip(voc.records, coco.records, yolo.records):
            assert v.image_path.resolve() == c.image_path.resolve() == y.image_path.resolve()
            assert (v.width, v.height) == (c.width, c.height) == (y.width, y.height)
            assert v.image_id == y.image_id and isinstance(c.image_id, int)      # each layout's own id space
            np.testing.assert_array_equal(v.boxes_xyxy, c.boxes_xyxy)           # exact: integer pixel edges
            np.testing.assert_array_equal(v.labels, c.labels)
            np.testing.assert_array_equal(v.ignore, c.ignore)                   # difficult <-> iscrowd
            assert not v.crowd.any() and c.crowd.tolist() == c.ignore.tolist()
            boxes, labels = _non_difficult(v)
            np.testing.assert_allclose(y.boxes_xyxy, boxes, rtol=0, atol=1e-3)  # normalised floats, read back
            np.testing.assert_array_equal(y.labels, labels)
            assert not y.ignore.any()
    assert sum(int(r.ignore.sum()) for r in load_role(readings["coco"], "train").records) > 30


def _first_batches(cfg, count=2):
    root, classes = prepare_data(cfg)
    loader, _ = build_loaders(cfg, root, classes, 0, 1, torch.device("cpu"))
    loader.sampler.set_epoch(1)
    batches = []
    for images, targets in loader:
        batches.append((images, targets))
        if len(batches) == count:
            return batches


@torch.no_grad()
def _loss(images, targets, cfg) -> float:
    torch.manual_seed(0)
    model = build_model(cfg.model, 20)
    grid = make_grid(tuple(images.shape[-2:]), model.strides)
    preds = model(images.contiguous())
    assigned = assign_targets(targets["boxes_xyxy"], targets["labels"], grid, tuple(images.shape[-2:]),
                              cfg.model.level_thresholds)
    return float(detection_loss(preds, assigned, grid, cfg.loss, cls_loss="ce")["total"])


def test_the_same_training_targets_and_the_same_loss_at_the_same_seed(readings):
    batches = {name: _first_batches(cfg) for name, cfg in readings.items()}
    for (vi, vt), (ci, ct), (yi, yt) in zip(batches["voc"], batches["coco"], batches["yolo"]):
        assert torch.equal(vi, ci) and torch.equal(vi, yi)                      # same pixels, same augmentation
        assert torch.equal(vt["boxes_xyxy"], ct["boxes_xyxy"]) and torch.equal(vt["labels"], ct["labels"])
        torch.testing.assert_close(yt["boxes_xyxy"], vt["boxes_xyxy"], rtol=0, atol=1e-3)
        assert torch.equal(yt["labels"], vt["labels"])
        assert (vt["labels"] >= 0).sum() > 8
    losses = {name: _loss(*batches[name][0], readings[name]) for name in readings}
    assert losses["voc"] == losses["coco"]
    assert losses["yolo"] == pytest.approx(losses["voc"], rel=1e-5)


def _detections(voc_split, rng):
    """Jittered non-difficult boxes (some with another label) and random boxes, none touching a difficult box."""
    per_image = []
    for record in voc_split.records:
        boxes, labels = _non_difficult(record)
        size = np.tile(boxes[:, 2:] - boxes[:, :2], 2)
        pred = boxes + rng.normal(0, 0.06, size=boxes.shape) * size
        corners = rng.uniform(0, 1, size=(4, 4)) * ([record.width, record.height] * 2)
        extra = np.concatenate([np.minimum(corners[:, :2], corners[:, 2:]), np.maximum(corners[:, :2], corners[:, 2:])],
                               axis=1)
        pred = np.concatenate([pred, extra])
        pred = np.clip(pred, 0, [record.width, record.height] * 2)
        pred_labels = np.concatenate([labels, rng.integers(0, 20, 4)])
        hard = record.boxes_xyxy[record.ignore]
        overlaps = [(np.minimum(p[2:], h[2:]) > np.maximum(p[:2], h[:2])).all() for p in pred for h in hard]
        keep = ~np.array(overlaps, dtype=bool).reshape(len(pred), len(hard)).any(axis=1) if len(hard) else \
            np.ones(len(pred), bool)
        per_image.append((pred[keep], rng.random(int(keep.sum())), pred_labels[keep]))
    return per_image


def test_the_same_voc_and_coco_metrics_on_the_same_detections(readings):
    splits = {name: load_role(cfg, "train") for name, cfg in readings.items()}     # 114 images: a sharp test
    predictions = _detections(splits["voc"], np.random.default_rng(0))
    results = {}
    for name, split in splits.items():
        detections = [d for record, (boxes, scores, labels) in zip(split.records, predictions)
                      for d in detections_from_xyxy(record.image_id, boxes, scores, labels, split.categories.ids)]
        results[name], _ = evaluate_detections(split, detections)
    assert 0.3 < results["voc"]["voc07_map50"] < 0.99 and 0.1 < results["voc"]["coco_ap"] < 0.9
    for key in ("voc07_map50", "voc_map50", "coco_ap", "coco_ap50", "coco_ap75", "coco_aps", "coco_apm", "coco_apl",
                "coco_ar100"):
        assert results["coco"][key] == pytest.approx(results["voc"][key], abs=1e-12), key
        assert results["yolo"][key] == pytest.approx(results["voc"][key], abs=1e-9), key
    assert results["coco"]["per_class"] == results["voc"]["per_class"]
