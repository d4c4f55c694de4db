"""Synthetic shapes set: determinism, reader round trip, annotation geometry, long tail, atomic generation."""
import json

import cv2
import numpy as np
import pytest

from yolo.boxes import voc_to_xyxy, xyxy_to_voc
from yolo.data import shapes
from yolo.data.shapes import (CLASS_NAMES, class_probabilities, ensure_shapes, generate, image_rng,
                              render_image)
from yolo.data.images import decode_image
from yolo.data.voc import load_records, read_classes

SMALL = dict(num_train=8, num_val=3, num_test=3, image_size=64)


def _files(devkit):
    return {p.relative_to(devkit): p.read_bytes() for p in sorted(devkit.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    return root, generate(root, seed=3, **SMALL)


def test_same_seed_same_bytes_and_other_seed_differs(small_set, tmp_path):
    _, devkit = small_set
    again = generate(tmp_path / "again", seed=3, **SMALL)
    assert _files(devkit) == _files(again)
    other = generate(tmp_path / "other", seed=4, **SMALL)
    first = "VOCshapes/JPEGImages/000001.jpg"
    assert (other / first).read_bytes() != (devkit / first).read_bytes()


def test_layout_classes_and_splits(small_set):
    root, devkit = small_set
    assert read_classes(root) == CLASS_NAMES and len(set(CLASS_NAMES)) == 20
    main = devkit / "VOCshapes" / "ImageSets" / "Main"
    ids = {s: (main / f"{s}.txt").read_text().split() for s in ("train", "val", "test", "trainval")}
    assert [len(ids[s]) for s in ("train", "val", "test")] == [8, 3, 3]
    assert ids["trainval"] == ids["train"] + ids["val"]
    assert not set(ids["trainval"]) & set(ids["test"])
    assert json.loads((devkit / "shapes.json").read_text())["params"]["seed"] == 3


def test_reader_round_trips_the_generator(small_set):
    root, _ = small_set
    records = load_records(root, "shapes:train+shapes:test")
    assert len(records) == 11
    probabilities = class_probabilities(10.0)
    for split, offset in (("train", 0), ("test", 8)):
        for index in range(3):
            image, objects = render_image(image_rng(3, split, index), 64, 1, 6, probabilities)
            record = records[offset + index]
            assert (record.height, record.width) == image.shape[:2]
            assert record.labels.tolist() == [o["label"] for o in objects]
            assert record.ignore.tolist() == [o["difficult"] for o in objects]
            assert record.truncated.tolist() == [o["truncated"] for o in objects]
            # the XML's integer 1-based corners, read back into pixel edges: the generator's visible extents
            expected = np.array([o["box_xyxy"] for o in objects], dtype=np.float32).reshape(-1, 4)
            np.testing.assert_array_equal(record.boxes_xyxy, voc_to_xyxy(np.round(xyxy_to_voc(expected))))
            # JPEG (quality 90) loses the pixel noise; the content, seen through a 5x5 blur, is kept.
            decoded = cv2.blur(decode_image(record.image_path), (5, 5)).astype(int)
            assert np.abs(decoded - cv2.blur(image, (5, 5))).mean() < 2


def test_visible_boxes_occlusion_and_border_flags():
    height, width = 40, 50

    def square(x1, y1, x2, y2):
        polygon = np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]], dtype=np.float64)
        mask = np.zeros((height, width), np.uint8)
        mask[max(y1, 0):y2, max(x1, 0):x2] = 1
        return polygon, mask

    back, front, cut = square(5, 5, 25, 25), square(15, 5, 35, 25), square(40, 30, 60, 40)
    objects = shapes._annotate([(0, *back), (1, *front), (2, *cut)])
    # The back square keeps its visible left half: box x 5..15, 50% visible -> truncated, not difficult.
    np.testing.assert_array_equal(objects[0]["box_xyxy"], [5, 5, 15, 25])
    assert objects[0]["truncated"] and not objects[0]["difficult"]
    np.testing.assert_array_equal(objects[1]["box_xyxy"], [15, 5, 35, 25])
    assert not objects[1]["truncated"] and not objects[1]["difficult"]
    # Cut by the right border: 10 of 20 columns visible.
    np.testing.assert_array_equal(objects[2]["box_xyxy"], [40, 30, 50, 40])
    assert objects[2]["truncated"]
    hidden = shapes._annotate([(0, *square(20, 10, 24, 14)), (1, *square(10, 5, 30, 30))])
    assert [o["label"] for o in hidden] == [1]                  # fully hidden objects are not annotated


def test_long_tail_sizes_and_flags(tmp_path):
    np.testing.assert_allclose(class_probabilities(10.0)[0] / class_probabilities(10.0)[-1], 10.0)
    assert np.all(np.diff(class_probabilities(10.0)) < 0)
    root = tmp_path / "tail"
    generate(root, seed=0, num_train=250, num_val=0, num_test=0, image_size=96)
    records = load_records(root, "shapes:train")
    labels = np.concatenate([r.labels for r in records])
    counts = np.bincount(labels, minlength=20)
    assert counts[:5].sum() > 3 * counts[-5:].sum()
    boxes = np.concatenate([r.boxes_xyxy for r in records])
    sides = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    assert sides.min() < 10 and sides.max() > 40
    difficult = np.concatenate([r.ignore for r in records])
    truncated = np.concatenate([r.truncated for r in records])
    assert 0.02 < difficult.mean() < 0.25 and 0.1 < truncated.mean() < 0.7
    long_side = boxes[:, 2:] - boxes[:, :2]
    assert (long_side.max(axis=1)[~difficult] >= shapes.DIFFICULT_SIZE_PX).all()
    assert all(r.width <= 96 and r.height <= 96 and max(r.width, r.height) == 96 for r in records)


def test_objects_are_drawn_in_their_class_colour():
    probabilities = class_probabilities(10.0)
    checked = 0
    for index in range(20):
        image, objects = render_image(image_rng(0, "train", index), 96, 1, 3, probabilities)
        for obj in objects:
            if obj["difficult"] or obj["truncated"]:
                continue
            x1, y1, x2, y2 = obj["box_xyxy"].astype(int)
            centre = image[(y1 + y2) // 2, (x1 + x2) // 2].astype(float)
            _, shape, colour = shapes.CLASSES[obj["label"]]
            if shape in ("star", "triangle"):     # their box centre may fall outside the shape
                continue
            distances = {name: np.linalg.norm(centre - rgb) for name, rgb in shapes.COLOURS_RGB.items()}
            assert min(distances, key=distances.get) == colour
            checked += 1
    assert checked >= 10


def test_ensure_shapes_reuses_regenerates_and_protects(tmp_path):
    devkit = ensure_shapes(tmp_path, **SMALL)
    marker = devkit / "VOCshapes" / "JPEGImages" / "000001.jpg"
    inode = marker.stat().st_ino
    assert ensure_shapes(tmp_path, **SMALL) == devkit and marker.stat().st_ino == inode   # reused
    ensure_shapes(tmp_path, **{**SMALL, "seed": 1})
    assert json.loads((devkit / "shapes.json").read_text())["params"]["seed"] == 1
    assert marker.stat().st_ino != inode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["VOCdevkit"]                    # no leftovers
    with pytest.raises(TypeError, match="unknown shapes parameters"):
        ensure_shapes(tmp_path, num_trian=3)
    real = tmp_path / "real"
    (real / "VOCdevkit" / "VOC2007").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="not a generated shapes set"):
        ensure_shapes(real, **SMALL)
    assert (real / "VOCdevkit" / "VOC2007").is_dir()


def test_failed_generation_leaves_nothing(tmp_path, monkeypatch):
    previous = generate(tmp_path, **SMALL)
    before = _files(previous)

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(shapes, "render_image", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        generate(tmp_path, **{**SMALL, "seed": 9})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["VOCdevkit"]
    assert _files(previous) == before                       # the previous set is intact


def test_jpeg_encoding_is_deterministic():
    image, _ = render_image(image_rng(0, "val", 0), 64, 1, 6, class_probabilities(10.0))
    encodings = {cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes() for _ in range(3)}
    assert len(encodings) == 1
