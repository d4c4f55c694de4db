"""ultralytics YOLO layouts: data.yaml forms, the /images/ -> /labels/ rule, and every label line checked."""
import json
import logging
import re

import cv2
import numpy as np
import pytest

from yolo.data import check
from yolo.data.layout import detect_layout
from yolo.data.record import DatasetError
from yolo.data.yolo_txt import label_path, load_split, read_categories


def yolo_fixture(root, labels: dict, sizes=None, yaml_text=None):
    """images/train/<name>.jpg (100x50 by default) with labels/train/<name>.txt (None: no label file)."""
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    for name, text in labels.items():
        width, height = (sizes or {}).get(name, (100, 50))
        cv2.imwrite(str(root / "images" / "train" / f"{name}.jpg"), np.full((height, width, 3), 90, np.uint8))
        if text is not None:
            (root / "labels" / "train" / f"{name}.txt").write_text(text)
    (root / "data.yaml").write_text(yaml_text or "path: .\ntrain: images/train\nval: images/train\nnames: [a, b, c]\n")
    return root / "data.yaml"


def test_boxes_from_normalised_centres_and_background_images(tmp_path):
    data_yaml = yolo_fixture(tmp_path, {"x": "1 0.5 0.5 0.2 0.4\n0 0.1 0.1 0.2 0.2\n", "empty": "", "none": None})
    assert detect_layout(tmp_path) == "yolo" and detect_layout(data_yaml) == "yolo"
    split = load_split(data_yaml, "train")
    assert split.classes == ("a", "b", "c") and split.categories.ids == (1, 2, 3)
    assert [r.image_id for r in split.records] == ["empty", "none", "x"] and not split.problems
    record = split.records[2]
    np.testing.assert_allclose(record.boxes_xyxy, [[40, 15, 60, 35], [0, 0, 20, 10]], atol=1e-5)
    assert record.labels.tolist() == [1, 0]
    assert len(split.records[0].labels) == len(split.records[1].labels) == 0        # background images
    assert label_path(record.image_path) == tmp_path / "labels" / "train" / "x.txt"


def test_every_bad_line_is_reported_with_file_and_line_and_what_loading_does(tmp_path, caplog):
    lines = ["0 0.5 0.5 0.2 0.2",            # 1 fine
             "0 0.5 0.5 0.2 0.2",            # 2 duplicate: removed
             "1 0.5 0.5 0.2",                # 3 four numbers
             "7 0.5 0.5 0.2 0.2",            # 4 class >= nc
             "1.5 0.5 0.5 0.2 0.2",          # 5 not an integer class
             "0 50 20 10 10",                # 6 pixels, not normalised
             "0 0.5 0.5 0 0.2",              # 7 zero width
             "2 0.995 0.5 0.02 0.2",         # 8 overshoots by 0.005: clipped
             "1 0.1 0.1 0.3 0.1 0.3 0.4",    # 9 polygon: its bounding box
             "a b c d e",                    # 10 not numbers
             ""]
    data_yaml = yolo_fixture(tmp_path, {"x": "\n".join(lines)})
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with caplog.at_level(logging.WARNING, logger="yolo.data.yolo_txt"):
        split = load_split(data_yaml, "train")
    found = {p.line: (p.kind, p.action) for p in split.problems}
    assert found == {2: ("duplicate line", "object dropped"), 3: ("malformed object", "object dropped"),
                     4: ("unknown class", "object dropped"), 5: ("unknown class", "object dropped"),
                     6: ("box outside image", "object dropped"), 7: ("degenerate box", "object dropped"),
                     8: ("box outside image", "box clipped"), 9: ("polygon", "its bounding box kept"),
                     10: ("malformed object", "object dropped")}
    record = split.records[0]
    assert record.labels.tolist() == [0, 2, 1]
    np.testing.assert_allclose(record.boxes_xyxy, [[40, 20, 60, 30], [98.5, 20, 100, 30], [10, 5, 30, 20]],
                               atol=1e-4)
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    report = check.audit(data_yaml, decode=False)
    listed = {(p["line"], p["kind"]) for p in report["problems"]}
    assert (4, "unknown class") in listed and (9, "polygon") in listed and not report["clean"]
    assert all(p["file"].endswith("x.txt") for p in report["problems"])
    assert check.main([str(data_yaml), "--no-decode"]) == 1
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before       # files only read


def test_yaml_forms_lists_dicts_and_download_never_run(tmp_path, caplog):
    data_yaml = yolo_fixture(tmp_path, {"p": "0 0.5 0.5 0.2 0.2\n", "q": "1 0.5 0.5 0.2 0.2\n"})
    (tmp_path / "subset.txt").write_text("./images/train/q.jpg\n")
    data_yaml.write_text("train: [subset.txt, images/train/p.jpg]\nval: images/train\nnc: 2\n"
                         "names: {0: left, 1: right}\ndownload: https://example.invalid/x.zip\n")
    with caplog.at_level(logging.INFO, logger="yolo.data.yolo_txt"):
        split = load_split(data_yaml, "train")
    assert split.classes == ("left", "right") and [r.image_id for r in split.records] == ["q", "p"]
    assert "never run" in caplog.text
    for text, message in [("names: [a, b]\nnc: 3\ntrain: images/train\n", "nc is 3 but 'names' lists 2"),
                          ("names: {0: a, 2: b}\ntrain: images/train\n", "must number the classes 0..1"),
                          ("train: images/train\n", "expected a mapping with 'names'"),
                          ("names: [a]\ntrain: nowhere\n", "split entry nowhere is no folder"),
                          ("names: [a]\ntrain: images/train\n", "has no split 'test' (its splits: train)")]:
        data_yaml.write_text(text)
        with pytest.raises(DatasetError, match=re.escape(message)):
            load_split(data_yaml, "test" if "split 'test'" in message else "train")


def test_duplicate_stems_in_a_split_are_refused(tmp_path):
    data_yaml = yolo_fixture(tmp_path, {"x": "0 0.5 0.5 0.2 0.2\n"})
    (tmp_path / "images" / "train" / "sub").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "train" / "sub" / "x.png"), np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(DatasetError, match="share the id 'x'"):
        load_split(data_yaml, "train")
    assert read_categories(data_yaml).names == ("a", "b", "c")


def test_the_audit_reports_images_with_an_exif_orientation(tmp_path, capsys):
    from PIL import Image
    data_yaml = yolo_fixture(tmp_path, {"upright": "0 0.5 0.5 0.2 0.2\n", "rotated": "0 0.5 0.5 0.2 0.2\n"})
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (100, 50)).save(tmp_path / "images" / "train" / "rotated.jpg", exif=exif)
    report = check.audit(data_yaml, "train")
    assert [(p["kind"], p["action"]) for p in report["problems"]] == [("EXIF orientation", "kept")]
    assert report["problems"][0]["file"].endswith("rotated.jpg") and "tag 6" in report["problems"][0]["detail"]
    assert check.main([str(data_yaml), "--split", "train", "--json", str(tmp_path / "a.json")]) == 1
    assert "EXIF orientation: tag 6" in capsys.readouterr().out
    assert json.loads((tmp_path / "a.json").read_text())["layout"] == "yolo"
