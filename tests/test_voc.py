"""VOC reader: data specs, class lists, real devkit XML (../shared/voc-sample), the Dataset contract."""
import logging
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from yolo.boxes import voc_to_xyxy
from yolo.data.shapes import generate
from yolo.data.transforms import eval_transform, to_original, train_transform
from yolo.data.dataset import DetectionDataset
from yolo.data.images import ImageDecodeError, decode_image, read_image_size
from yolo.data.record import DatasetError
from yolo.data.voc import VOC_CLASSES, load_records, parse_annotation, parse_spec, read_classes

VOC_SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "voc-sample"
needs_sample = pytest.mark.skipif(
    not (VOC_SAMPLE / "VOCdevkit").is_dir(),
    reason=f"real VOC sample not found at {VOC_SAMPLE} (../shared is not in a fresh clone)")
ALL_SAMPLE = "2007:trainval+2007:test+2012:trainval"


def _xml_objects(path: Path):
    """Independent regex reading of a VOC XML: [(name, difficult, truncated, (xmin, ymin, xmax, ymax))]."""
    def flag(block, tag):
        match = re.search(rf"<{tag}>\s*(\d+)\s*</{tag}>", block)
        return int(match.group(1)) if match else 0

    objects = []
    for block in re.findall(r"<object>(.*?)</object>", path.read_text(), flags=re.S):
        if "<bndbox>" not in block:
            continue
        name = re.search(r"<name>\s*(.*?)\s*</name>", block).group(1)
        box = tuple(float(re.search(rf"<{k}>\s*([\d.]+)\s*</{k}>", block).group(1))
                    for k in ("xmin", "ymin", "xmax", "ymax"))
        objects.append((name, flag(block, "difficult"), flag(block, "truncated"), box))
    return objects


def test_parse_spec():
    assert parse_spec("2007:trainval+2012:trainval") == [("2007", "trainval"), ("2012", "trainval")]
    assert parse_spec("shapes:test") == [("shapes", "test")]
    assert parse_spec(" 2007:test ") == [("2007", "test")]
    for bad in ["", "2007", "2007:", ":test", "2007:trainval+", "2007:train val", "2007:a:b"]:
        with pytest.raises(ValueError, match="e.g. '2007:trainval"):
            parse_spec(bad)


def test_read_classes(tmp_path):
    assert read_classes(tmp_path) == VOC_CLASSES
    (tmp_path / "VOCdevkit").mkdir()
    (tmp_path / "VOCdevkit" / "classes.txt").write_text("cat\n\ndog \n")
    assert read_classes(tmp_path) == ("cat", "dog")
    assert read_classes(tmp_path / "VOCdevkit") == ("cat", "dog")
    (tmp_path / "VOCdevkit" / "classes.txt").write_text("cat\ncat\n")
    with pytest.raises(ValueError, match="unique"):
        read_classes(tmp_path)


def test_missing_root_split_and_folder_errors(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_records(tmp_path / "nowhere", "2007:test")
    (tmp_path / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main").mkdir(parents=True)
    (tmp_path / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main" / "val.txt").write_text("")
    with pytest.raises(DatasetError, match=r"no split file .*test.txt \(available splits: \['val'\]\)"):
        load_records(tmp_path, "2007:test")
    with pytest.raises(DatasetError, match=r"no folder VOC2012 .*found: \['VOC2007'\]"):
        load_records(tmp_path, "2012:trainval")


@needs_sample
def test_records_match_the_xml_files():
    records = load_records(VOC_SAMPLE, ALL_SAMPLE)
    assert len(records) == 121
    for record in records:
        expected = _xml_objects(record.image_path.parent.parent / "Annotations" / f"{record.image_id}.xml")
        assert [VOC_CLASSES[k] for k in record.labels] == [name for name, _, _, _ in expected]
        assert record.ignore.tolist() == [bool(d) for _, d, _, _ in expected] and not record.crowd.any()
        assert record.truncated.tolist() == [bool(t) for _, _, t, _ in expected]
        xml_boxes = np.array([b for *_, b in expected], dtype=np.float32).reshape(-1, 4)
        np.testing.assert_array_equal(record.boxes_xyxy, voc_to_xyxy(xml_boxes))
        assert (record.width, record.height) == read_image_size(record.image_path)
    chairs = next(r for r in records if r.image_id == "000005")
    assert [VOC_CLASSES[k] for k in chairs.labels] == ["chair"] * 5
    assert chairs.ignore.tolist() == [False, False, True, False, True]
    voc2012 = load_records(VOC_SAMPLE, "2012:trainval")
    assert sum(len(r.labels) for r in voc2012) == 284
    assert sum(int(r.ignore.sum()) for r in voc2012) == 38
    assert set(np.concatenate([r.labels for r in voc2012]).tolist()) == set(range(20))


@needs_sample
def test_boxes_are_converted_once_to_pixel_edges():
    record = next(r for r in load_records(VOC_SAMPLE, "2007:trainval") if r.image_id == "000005")
    # XML 263..324 inclusive is 62 pixels wide: pixel-edge x1 = 262, x2 = 324.
    np.testing.assert_array_equal(record.boxes_xyxy[0], [262, 210, 324, 339])
    xml_boxes = np.array([b for *_, b in _xml_objects(record.image_path.parent.parent / "Annotations" /
                                                      "000005.xml")], dtype=np.float32)
    widths_voc = xml_boxes[:, 2] - xml_boxes[:, 0] + 1
    np.testing.assert_array_equal(record.boxes_xyxy[:, 2] - record.boxes_xyxy[:, 0], widths_voc)


@needs_sample
@pytest.mark.parametrize("mode", ["stretch", "letterbox"])
def test_dataset_target_and_inverse_mapping(mode):
    records = [r for r in load_records(VOC_SAMPLE, "2007:trainval") if r.image_id == "000005"]
    image, target = DetectionDataset(records, eval_transform(320, mode))[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 320, 320)
    assert image.permute(1, 2, 0).is_contiguous()          # a CHW view of the HWC pixels (see collate)
    assert target["image_id"] == "000005" and target["index"] == 0 and target["orig_size"] == (375, 500)
    assert target["labels"].tolist() == [8, 8, 8]               # the two difficult chairs are left out
    back = to_original(target["boxes_xyxy"], target["scale"], target["pad"])
    torch.testing.assert_close(back, torch.from_numpy(records[0].boxes_xyxy[~records[0].ignore]),
                               atol=1e-3, rtol=0)
    _, with_difficult = DetectionDataset(records, eval_transform(320, mode), keep_difficult=True)[0]
    assert with_difficult["labels"].tolist() == [8] * 5


@needs_sample
def test_dataset_pixels_match_a_plain_resize():
    record = load_records(VOC_SAMPLE, "2007:test")[0]
    image, _ = DetectionDataset([record], eval_transform(256))[0]
    expected = cv2.resize(cv2.cvtColor(cv2.imread(str(record.image_path)), cv2.COLOR_BGR2RGB), (256, 256))
    np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), expected)


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    generate(root, num_train=6, num_val=2, num_test=2, image_size=64)
    return root


def test_decode_failure_is_logged_once_and_substituted(shapes_root, tmp_path, caplog):
    root = tmp_path / "copy"
    shutil.copytree(shapes_root, root)
    records = load_records(root, "shapes:train")
    records[2].image_path.write_bytes(b"\xff\xd8 not really a jpeg")
    dataset = DetectionDataset(records, eval_transform(64))
    with caplog.at_level(logging.WARNING, logger="yolo.data.dataset"):
        image, target = dataset[(2, 123)]
        again, _ = dataset[2]
    assert target["index"] == 3 and target["image_id"] == records[3].image_id
    assert torch.equal(image, dataset[3][0]) and torch.equal(again, image)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and records[2].image_path.name in warnings[0].getMessage()


def test_grayscale_cmyk_and_alpha_images_become_rgb(tmp_path):
    from PIL import Image
    rgb = np.zeros((40, 60, 3), np.uint8)
    rgb[:, :30], rgb[:, 30:] = (200, 30, 30), (20, 60, 220)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    Image.fromarray(rgb).convert("L").save(tmp_path / "gray.jpg", quality=95)
    Image.fromarray(rgb).convert("RGBA").save(tmp_path / "rgba.png")
    cmyk = decode_image(tmp_path / "cmyk.jpg")
    assert cmyk.shape == (40, 60, 3)
    assert np.abs(cmyk[20, [10, 50]].astype(int) - [[200, 30, 30], [20, 60, 220]]).max() <= 4
    gray = decode_image(tmp_path / "gray.jpg")
    assert gray.shape == (40, 60, 3) and (gray == gray[..., :1]).all()
    np.testing.assert_array_equal(decode_image(tmp_path / "rgba.png"), rgb)
    with pytest.raises(ImageDecodeError, match="size mismatch"):
        decode_image(tmp_path / "rgba.png", expected_size=(40, 60))


def test_object_checks_drop_or_clip_in_memory(tmp_path):
    objects = [("cat", "1", "1", "10", "10"), ("cat", "0", "0", "10", "10"), ("cat", "490", "1", "520", "10"),
               ("cat", "600", "1", "700", "10"), ("cat", "5", "5", "4", "10"), ("cat", "nan", "1", "2", "3"),
               ("cat", "1", "2", "x", "3"), ("unicorn", "1", "1", "5", "5")]
    xml = "<annotation><size><width>500</width><height>300</height></size>" + "".join(
        f"<object><name>{n}</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax><ymax>{d}</ymax>"
        "</bndbox></object>" for n, a, b, c, d in objects) + "</annotation>"
    (tmp_path / "img.xml").write_text(xml)
    (tmp_path / "img.jpg").write_bytes(b"")
    record, problems = parse_annotation(tmp_path / "img.xml", tmp_path, ("cat",), check_image_size=False)
    np.testing.assert_array_equal(record.boxes_xyxy, [[0, 0, 10, 10], [0, 0, 10, 10], [489, 0, 500, 10]])
    assert [(p.kind, p.action) for p in problems] == [
        ("box outside image", "box clipped"), ("box outside image", "box clipped"),
        ("box outside image", "object dropped"), ("degenerate box", "object dropped"),
        ("malformed object", "object dropped"), ("malformed object", "object dropped"),
        ("unknown class", "object dropped")]
    assert "<xmin>" in (tmp_path / "img.xml").read_text() and (tmp_path / "img.xml").read_text() == xml


def test_training_samples_never_alter_the_records(shapes_root):
    records = load_records(shapes_root, "shapes:train")
    before = [(r.boxes_xyxy.copy(), r.labels.copy()) for r in records]
    dataset = DetectionDataset(records, train_transform(48))
    first = dataset[(1, 77)]
    for key in range(40):
        dataset[(key % len(records), key)]
    again = dataset[(1, 77)]
    assert torch.equal(first[0], again[0]) and torch.equal(first[1]["boxes_xyxy"], again[1]["boxes_xyxy"])
    for record, (boxes, labels) in zip(records, before):
        np.testing.assert_array_equal(record.boxes_xyxy, boxes)
        np.testing.assert_array_equal(record.labels, labels)
