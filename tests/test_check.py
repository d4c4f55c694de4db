"""Audit: finds each planted fault (file and reason), exits 1; loading skips/clips them with one warning."""
import hashlib
import json
import logging
import shutil
from pathlib import Path

import pytest

from yolo.data import check
from yolo.data.shapes import generate
from yolo.data.dataset import DetectionDataset
from yolo.data.voc import load_records

VOC_SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "voc-sample"


@pytest.fixture(scope="module")
def clean_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("clean")
    generate(root, num_train=12, num_val=0, num_test=0, image_size=64)
    return root


def _edit_xml(path: Path, old: str, new: str, count: int = 1):
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, count))


def _first_box(path: Path):
    text = path.read_text()
    return {k: text.split(f"<{k}>")[1].split(f"</{k}>")[0] for k in ("xmin", "ymin", "xmax", "ymax", "name")}


def _plant_faults(root: Path) -> dict:
    """Breaks images 000001..000009, one fault each; returns {file name: expected problem kind}."""
    year = root / "VOCdevkit" / "VOCshapes"
    ann, jpg = year / "Annotations", year / "JPEGImages"
    data = (jpg / "000001.jpg").read_bytes()
    (jpg / "000001.jpg").write_bytes(data[: len(data) // 2])                          # truncated JPEG
    (jpg / "000002.jpg").write_bytes(b"\xff\xd8\xff\xe0 garbage " * 10 + b"\xff\xd9")  # corrupted JPEG
    (jpg / "000003.jpg").unlink()                                                      # missing image
    (ann / "000004.xml").write_text((ann / "000004.xml").read_text()[:120])           # malformed XML
    name = _first_box(ann / "000005.xml")["name"]                                      # unknown class
    _edit_xml(ann / "000005.xml", f"<name>{name}</name>", "<name>unicorn</name>")
    box = _first_box(ann / "000006.xml")                                               # xmax < xmin
    _edit_xml(ann / "000006.xml", f"<xmax>{box['xmax']}</xmax>", f"<xmax>{int(box['xmin']) - 3}</xmax>")
    box = _first_box(ann / "000007.xml")                                               # outside the image
    _edit_xml(ann / "000007.xml", f"<xmax>{box['xmax']}</xmax>", "<xmax>500</xmax>")
    size = (ann / "000008.xml").read_text().split("<width>")[1].split("</width>")[0]   # size disagrees
    _edit_xml(ann / "000008.xml", f"<width>{size}</width>", f"<width>{int(size) + 7}</width>")
    (ann / "000009.xml").unlink()                                                      # listed, no XML
    return {"000001.jpg": "truncated image", "000002.jpg": "unreadable image", "000003.xml": "missing image",
            "000004.xml": "malformed XML", "000005.xml": "unknown class", "000006.xml": "degenerate box",
            "000007.xml": "box outside image", "000008.xml": "size mismatch",
            "000009.xml": "missing annotation"}


@pytest.fixture
def broken_root(clean_root, tmp_path):
    root = tmp_path / "broken"
    shutil.copytree(clean_root, root)
    return root, _plant_faults(root)


def _digests(root: Path) -> dict:
    return {p: hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_clean_set_reports_statistics_and_exits_0(clean_root, tmp_path, capsys):
    report = check.audit(clean_root, "shapes:train")
    records = load_records(clean_root, "shapes:train")
    assert report["clean"] and report["images"] == 12 and report["problems"] == []
    assert report["objects"] == sum(len(r.labels) for r in records)
    assert report["difficult"] == sum(int(r.ignore.sum()) for r in records)
    assert sum(c["objects"] for c in report["per_class"].values()) == report["objects"]
    assert sum(report["object_side_px_histogram"].values()) == report["objects"]
    assert check.main([str(clean_root), "--json", str(tmp_path / "a.json")]) == 0
    assert json.loads((tmp_path / "a.json").read_text())["objects"] == report["objects"]
    assert "no problems found" in capsys.readouterr().out


def test_audit_finds_each_planted_fault_and_exits_1(broken_root, tmp_path, capsys):
    root, expected = broken_root
    before = _digests(root)
    report = check.audit(root, "shapes:train")
    found = {Path(p["file"]).name: p["kind"] for p in report["problems"]}
    assert found == expected and len(report["problems"]) == len(expected)
    assert report["images"] == 12 - 6            # 6 images skipped; dropped-object / clipped ones stay usable
    assert check.main([str(root), "--split", "shapes:train", "--json", str(tmp_path / "r.json")]) == 1
    printed = capsys.readouterr().out
    assert all(name in printed and kind in printed for name, kind in expected.items())
    assert json.loads((tmp_path / "r.json").read_text())["problems"] == report["problems"]
    assert _digests(root) == before                           # dataset files are only read


def test_audit_without_split_scans_every_annotation(broken_root):
    root, expected = broken_root
    found = {Path(p["file"]).name for p in check.audit(root, decode=False)["problems"]}
    # No split: the XML-less id is not listed anywhere; without decoding the JPEG faults are not seen.
    assert found == set(expected) - {"000001.jpg", "000002.jpg", "000009.xml"}


def test_loading_skips_and_clips_with_one_warning_and_never_crashes(broken_root, caplog):
    root, expected = broken_root
    with caplog.at_level(logging.WARNING, logger="yolo.data.voc"):
        records = load_records(root, "shapes:train")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    for name, kind in expected.items():
        if kind not in ("truncated image", "unreadable image"):       # those need decoding: seen in training
            assert name in warnings[0] and kind in warnings[0]
    ids = [r.image_id for r in records]
    assert ids == ["000001", "000002", "000005", "000006", "000007", "000010", "000011", "000012"]
    clipped = records[ids.index("000007")]
    assert clipped.boxes_xyxy[:, 2].max() <= clipped.width
    caplog.clear()
    dataset = DetectionDataset(records)
    with caplog.at_level(logging.WARNING, logger="yolo.data.dataset"):
        used = [dataset[i][1]["image_id"] for i in range(len(dataset))]
    assert used[:2] == ["000005", "000005"] and used[2:] == ids[2:]        # the two bad JPEGs substituted
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 2


def test_bad_arguments_exit_2(tmp_path, capsys):
    assert check.main([str(tmp_path / "missing")]) == 2
    assert check.main([str(tmp_path), "--split", "2007"]) == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.skipif(not (VOC_SAMPLE / "VOCdevkit").is_dir(),
                    reason=f"real VOC sample not found at {VOC_SAMPLE} (../shared is not in a fresh clone)")
def test_real_voc_sample_is_clean():
    report = check.audit(VOC_SAMPLE)
    assert report["clean"] and report["images"] == 121
    assert report["per_class"]["chair"]["difficult"] >= 2 and report["per_class"]["person"]["objects"] > 50


@pytest.mark.skipif(not (VOC_SAMPLE / "VOCdevkit").is_dir(),
                    reason=f"real VOC sample not found at {VOC_SAMPLE} (../shared is not in a fresh clone)")
def test_every_accepted_root_of_the_real_sample_finds_its_images(capsys):
    devkit = VOC_SAMPLE / "VOCdevkit"
    assert check.audit(devkit, decode=False)["images"] == 121
    year = check.audit(devkit / "VOC2012", decode=False)           # one VOC<name> folder, given directly
    assert year["images"] == year["annotations"] == 108 and year["folders"] == ["VOC2012"] and year["clean"]
    assert check.audit(devkit / "VOC2012", "2012:trainval", decode=False)["images"] == 108
    assert check.main([str(devkit / "VOC2007"), "--no-decode"]) == 0
    assert "13 usable images of 13 annotations" in capsys.readouterr().out
    # that folder holds no VOC2007: naming it is an error, not 0 images
    assert check.main([str(devkit / "VOC2012"), "--split", "2007:test"]) == 2
    assert "needs VOC2007" in capsys.readouterr().err
    assert len(load_records(devkit / "VOC2012", "2012:trainval")) == 108


def test_a_folder_without_images_is_an_error_never_clean(tmp_path, capsys):
    assert check.main([str(tmp_path)]) == 2                        # an empty folder
    err = capsys.readouterr().err
    assert "no dataset at" in err and "VOCdevkit" in err and "found an empty folder" in err
    (tmp_path / "notes.txt").write_text("hi")
    assert check.main([str(tmp_path)]) == 2 and "1 entries: notes.txt" in capsys.readouterr().err
    main = tmp_path / "VOCdevkit" / "VOC2012" / "ImageSets" / "Main"
    main.mkdir(parents=True)
    (main / "trainval.txt").write_text("\n")
    (tmp_path / "VOCdevkit" / "VOC2012" / "Annotations").mkdir()
    for root in (tmp_path, tmp_path / "VOCdevkit", tmp_path / "VOCdevkit" / "VOC2012"):
        assert check.main([str(root)]) == 2                        # a devkit without annotations
        assert "no annotations in" in capsys.readouterr().err
        assert check.main([str(root), "--split", "2012:trainval"]) == 2   # a split listing no image
        assert "lists no images" in capsys.readouterr().err
    assert "no problems found" not in capsys.readouterr().out


def test_a_billion_laughs_annotation_is_refused_at_once(broken_root):
    root, _ = broken_root
    lol = '<!ENTITY lol0 "lol">' + "".join(f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10))
    xml = root / "VOCdevkit" / "VOCshapes" / "Annotations" / "000010.xml"
    xml.write_text(f'<?xml version="1.0"?><!DOCTYPE annotation [{lol}]><annotation><filename>000010.jpg'
                   f'</filename><object><name>&lol9;</name></object></annotation>')  # 10**9 "lol"s if expanded
    found = {Path(p["file"]).name: p for p in check.audit(root, "shapes:train", decode=False)["problems"]}
    assert found["000010.xml"]["kind"] == "malformed XML" and "amplification" in found["000010.xml"]["detail"]
