"""A user's own data end to end: training on a COCO JSON with its own ids and scoring exactly as pycocotools on the
written results, a VOC folder with its own class names, evaluation that never silently scores a subset, and the
ablation cache key of a COCO dataset."""
import json
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from conftest import REPO, TINY, pycocotools_stats
from yolo.ablate.plan import data_fingerprint
from yolo.checkpoint import load_checkpoint
from yolo.coco_eval import COCO_KEYS
from yolo.config import Config, update, validate
from yolo.data.layout import UnreadableImages
from yolo.fit import evaluate_checkpoint, fit


def shapes_as_coco(devkit: Path, out: Path) -> Path:
    """The tiny shapes set as annotations/instances_{train,val}.json + {train,val}/ images (symlinks), category ids
    10, 20, ... (never 1..C), image ids 100 + k; written here from the XML, not by the project's code."""
    names = (devkit / "classes.txt").read_text().split()
    categories = [{"id": 10 * (k + 1), "name": name} for k, name in enumerate(names)]
    (out / "annotations").mkdir(parents=True)
    for split in ("train", "val"):
        (out / split).mkdir()
        images, annotations = [], []
        for image_id in (devkit / "VOCshapes" / "ImageSets" / "Main" / f"{split}.txt").read_text().split():
            root = ET.parse(devkit / "VOCshapes" / "Annotations" / f"{image_id}.xml").getroot()
            (out / split / f"{image_id}.jpg").symlink_to(devkit / "VOCshapes" / "JPEGImages" / f"{image_id}.jpg")
            images.append({"id": 100 + int(image_id), "file_name": f"{image_id}.jpg",
                           "width": int(root.findtext("size/width")), "height": int(root.findtext("size/height"))})
            for obj in root.iter("object"):
                xmin, ymin, xmax, ymax = (float(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax"))
                w, h = xmax - xmin + 1, ymax - ymin + 1
                annotations.append({"id": len(annotations) + 1, "image_id": images[-1]["id"], "area": w * h,
                                    "bbox": [xmin - 1, ymin - 1, w, h], "iscrowd": int(obj.findtext("difficult")),
                                    "category_id": 10 * (names.index(obj.findtext("name")) + 1)})
        (out / "annotations" / f"instances_{split}.json").write_text(json.dumps(
            {"images": images, "annotations": annotations, "categories": categories}))
    return out


def tiny_config_at(root, tmp_path, **data) -> Config:
    cfg = update(Config(), {**TINY, "data": {**{k: v for k, v in TINY["data"].items() if not k.startswith("shapes")},
                                             "dataset": "voc", "root": str(root), **data}})
    cfg.output_dir, cfg.name, cfg.train.epochs = str(tmp_path / "runs"), "own", 1
    return validate(cfg)


def _run(*args, cwd=REPO):
    """A script of the repository (``train.py``, ``eval.py``) or a module (``-m ...``, run from the repository)."""
    args = [str(REPO / args[0]), *args[1:]] if args[0].endswith(".py") else args
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def test_a_coco_dataset_trains_and_its_written_results_score_as_pycocotools_scores_them(shapes_root, tmp_path):
    coco = shapes_as_coco(shapes_root, tmp_path / "coco")
    cfg = tiny_config_at(coco, tmp_path, train="train", val="val", test="val")
    fit(cfg, progress=False)
    ckpt = cfg.run_dir / "last.pt"
    assert load_checkpoint(ckpt)["classes"][:2] == ["red_circle", "yellow_square"]
    dets, metrics = tmp_path / "dets.json", tmp_path / "metrics.json"
    result = _run("eval.py", "--checkpoint", str(ckpt), "--save-detections", str(dets), "--json", str(metrics),
                  "--conf-thresh", "0.0")      # one epoch: low scores, but detections to score
    assert result.returncode == 0, result.stderr
    written = json.loads(dets.read_text())
    gt_path = coco / "annotations" / "instances_val.json"
    gt = json.loads(gt_path.read_text())
    assert written and {d["image_id"] for d in written} <= {image["id"] for image in gt["images"]}
    assert {d["category_id"] for d in written} <= {c["id"] for c in gt["categories"]}     # 10, 20, ...
    ours = json.loads(metrics.read_text())
    for key, value in zip(COCO_KEYS, pycocotools_stats(gt_path, dets)):
        got = ours[f"coco_{key.lower()}"]
        assert (got is None and value == -1) or got == pytest.approx(value, abs=1e-12), key
    # the same file, scored without the model
    again = _run("eval.py", "--detections", str(dets), "--data-root", str(coco), "--split", "val")
    assert again.returncode == 0 and f"{ours['coco_ap']:.4f}" in again.stdout
    # predict on the images of a split of the dataset
    drawn = _run("-m", "yolo.predict", "--checkpoint", str(ckpt), "--data-root", str(coco), "--split", "val",
                 "--out", str(tmp_path / "pred"), "--score", "0.0")
    assert drawn.returncode == 0, drawn.stderr
    assert len(list((tmp_path / "pred").glob("*.jpg"))) == len(gt["images"])


def test_a_voc_folder_with_its_own_class_names_and_no_classes_txt_is_refused(shapes_root, tmp_path):
    """Before: every object was dropped as an unknown class after one warning, and the run trained on empty
    targets (exit 0)."""
    devkit = tmp_path / "VOCdevkit"
    shutil.copytree(shapes_root, devkit)
    (devkit / "classes.txt").unlink()
    (devkit / "shapes.json").unlink()
    before = {p: p.read_bytes() for p in devkit.rglob("*") if p.is_file()}
    result = _run("train.py", "--data-root", str(devkit), "--train", "shapes:train", "--val", "shapes:val",
                  "--pretrained", "none", "--epochs", "1", "--output-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert "which are not VOC classes" in message and str(devkit / "classes.txt") in message
    assert "red_circle (" in message and "one name per line" in message
    assert not (tmp_path / "runs").exists()
    check = _run("-m", "yolo.data.check", str(devkit), "--no-decode")
    assert check.returncode == 2 and "which are not VOC classes" in check.stderr
    assert {p: p.read_bytes() for p in devkit.rglob("*") if p.is_file()} == before


def _val_copy(shapes_root, tmp_path) -> tuple[Path, list]:
    root = tmp_path / "copy"
    shutil.copytree(shapes_root, root)
    ids = (root / "VOCshapes" / "ImageSets" / "Main" / "val.txt").read_text().split()
    return root, ids


def test_an_unreadable_image_fails_evaluation_with_its_path_unless_the_rest_is_scored(shapes_root, tmp_path):
    """Before: the image was dropped from the evaluated split with a warning and the mAP was over 7 of 8 images."""
    root, ids = _val_copy(shapes_root, tmp_path)
    missing = root / "VOCshapes" / "JPEGImages" / f"{ids[3]}.jpg"
    missing.unlink()
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps([{"image_id": ids[0], "category_id": 1, "bbox": [1, 1, 10, 10], "score": 0.5},
                                {"image_id": ids[3], "category_id": 1, "bbox": [1, 1, 10, 10], "score": 0.5}]))
    refused = _run("eval.py", "--detections", str(dets), "--data-root", str(root), "--split", "shapes:val")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "1 of the 8 images of shapes:val cannot be read" in refused.stderr and ids[3] in refused.stderr
    assert "--skip-unreadable true" in refused.stderr
    partial = _run("eval.py", "--detections", str(dets), "--data-root", str(root), "--split", "shapes:val",
                   "--skip-unreadable", "true")
    assert partial.returncode == 0, partial.stderr
    assert partial.stdout.splitlines()[0] == "7 of 8 images scored (1 could not be read: --skip-unreadable)"


def test_an_image_that_fails_to_decode_mid_evaluation_is_an_error_unless_the_rest_is_scored(tiny_run, shapes_root,
                                                                                          tmp_path):
    root, ids = _val_copy(shapes_root, tmp_path)
    image = root / "VOCshapes" / "JPEGImages" / f"{ids[5]}.jpg"
    image.write_bytes(image.read_bytes()[:300])            # a header that reads, pixels that do not
    ckpt = load_checkpoint(tiny_run / "last.pt")
    cfg = update(Config(), ckpt["config"])
    cfg.data.dataset, cfg.data.root = "voc", str(root)
    with pytest.raises(UnreadableImages, match=rf"1 of the 8 images of shapes:val .*{ids[5]}.jpg \(failed to decode"):
        evaluate_checkpoint(ckpt, validate(cfg), "shapes:val")
    cfg.eval.skip_unreadable = True
    results, _, detections = evaluate_checkpoint(ckpt, cfg, "shapes:val")
    assert (results["num_images"], results["num_images_listed"]) == (7, 8)
    assert ids[5] not in {d["image_id"] for d in detections}


def test_the_cache_key_of_a_coco_dataset_holds_its_image_ids(shapes_root, tmp_path):
    coco = shapes_as_coco(shapes_root, tmp_path / "coco")
    cfg = tiny_config_at(coco, tmp_path, train="train", val="val", test="val")
    key = data_fingerprint(cfg)
    moved = tmp_path / "moved"
    shutil.copytree(coco, moved, symlinks=True)
    cfg.data.root = str(moved)
    assert data_fingerprint(cfg) == key
    path = moved / "annotations" / "instances_train.json"
    data = json.loads(path.read_text())
    data["images"] = data["images"][:-1]
    path.write_text(json.dumps(data))
    assert data_fingerprint(cfg) != key
