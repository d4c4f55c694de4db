"""Synthetic VOC-format detection set ("shapes"): generated deterministically, read by the VOC reader.

20 classes = 5 shapes (circle, square, triangle, star, cross) x 4 colours (red, yellow, green, blue),
listed in ``classes.txt`` in decreasing frequency (Zipf-like long tail, most frequent / rarest =
``imbalance``). Each image (long side ``image_size``, short side 70-100% of it) has a textured, noisy,
low-saturation background with clutter lines in any colour, and ``min_objects``..``max_objects`` objects
with random size (log-uniform, from 8 px to 60% of the short side), aspect, rotation and colour jitter,
free to overlap each other and to be cut by the image border. Boxes are the extent of the *visible*
pixels (as in VOC); ``truncated`` marks objects cut by the border or more than 15% occluded;
``difficult`` marks tiny (visible box < 10 px) or heavily occluded (< 50% visible) objects.

Written as ``ROOT/VOCdevkit/VOCshapes/{Annotations,JPEGImages,ImageSets/Main/{train,val,trainval,test}.txt}``
with ``ROOT/VOCdevkit/classes.txt`` and ``ROOT/VOCdevkit/shapes.json`` (the generation parameters), so it is
addressed as ``--data-root ROOT --data shapes:train``. Every image is a function of ``(seed, split, index)``
only, and the files are byte-identical for the same parameters (cv2's JPEG encoder is deterministic).
"""
import json
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np

from yolo.boxes import xyxy_to_voc

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 1
SHAPE_NAMES = ("circle", "square", "triangle", "star", "cross")
COLOURS_RGB = {"red": (220, 40, 40), "yellow": (235, 205, 40), "green": (40, 170, 60), "blue": (45, 85, 225)}
SPLITS = ("train", "val", "test")
MIN_SIZE_PX = 8            # smallest drawn object (bounding diameter before aspect/rotation)
DIFFICULT_SIZE_PX = 10     # visible box side below this: difficult
DIFFICULT_VISIBLE = 0.5    # visible fraction below this: difficult
TRUNCATED_VISIBLE = 0.85   # visible fraction below this (or cut by the border): truncated


def _class_list():
    """(name, shape, colour) x 20; rows interleave shapes and colours so neither is tied to frequency."""
    colours = list(COLOURS_RGB)
    classes = []
    for i in range(len(SHAPE_NAMES) * len(colours)):
        shape = SHAPE_NAMES[i % len(SHAPE_NAMES)]
        colour = colours[(i % len(SHAPE_NAMES) + i // len(SHAPE_NAMES)) % len(colours)]
        classes.append((f"{colour}_{shape}", shape, colour))
    return tuple(classes)


CLASSES = _class_list()
CLASS_NAMES = tuple(name for name, _, _ in CLASSES)


def class_probabilities(imbalance: float) -> np.ndarray:
    """(20,) Zipf-like frequencies p_k ~ (k + 1)^-a with p_0 / p_19 = ``imbalance``."""
    exponent = math.log(imbalance) / math.log(len(CLASSES))
    weights = np.arange(1, len(CLASSES) + 1, dtype=np.float64) ** -exponent
    return weights / weights.sum()


def _unit_polygon(shape: str) -> np.ndarray:
    """(K, 2) outline of a shape inscribed in the unit box [-0.5, 0.5]^2."""
    if shape == "square":
        return np.array([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]])
    if shape == "triangle":
        return np.array([[0.0, -0.5], [0.5, 0.5], [-0.5, 0.5]])
    if shape == "star":
        angles = np.pi * np.arange(10) / 5 - np.pi / 2
        radii = np.where(np.arange(10) % 2 == 0, 0.5, 0.2)
        return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    if shape == "cross":
        a, b = 0.5, 0.17
        return np.array([[-b, -a], [b, -a], [b, -b], [a, -b], [a, b], [b, b], [b, a], [-b, a], [-b, b],
                         [-a, b], [-a, -b], [-b, -b]])
    angles = np.linspace(0, 2 * np.pi, 48, endpoint=False)   # circle
    return 0.5 * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _background(rng, height: int, width: int) -> np.ndarray:
    """Low-saturation gradient + low-frequency blotches + clutter lines, uint8 RGB (H, W, 3)."""
    grey = rng.uniform(60, 200, size=(2, 1, 1, 1))
    ends = (grey + rng.uniform(-25, 25, size=(2, 1, 1, 3))).astype(np.float32)
    horizontal = rng.random() < 0.5
    ramp = np.linspace(0, 1, width if horizontal else height, dtype=np.float32)
    t = ramp[None, :, None] if horizontal else ramp[:, None, None]
    blotches = cv2.resize(rng.uniform(-35, 35, size=(5, 5, 3)).astype(np.float32), (width, height),
                          interpolation=cv2.INTER_LINEAR)
    image = np.clip(ends[0] * (1 - t) + ends[1] * t + blotches, 0, 255).astype(np.uint8)
    for _ in range(rng.integers(0, 6)):    # clutter: thin open polylines in any colour (class colours too)
        points = (rng.uniform(0, 1, size=(rng.integers(2, 5), 2)) * [width, height]).astype(np.int32)
        cv2.polylines(image, [points], False, tuple(int(c) for c in rng.integers(0, 256, 3)),
                      int(rng.integers(1, 3)), cv2.LINE_AA)
    return image


def _object_polygon(rng, shape: str, height: int, width: int) -> np.ndarray:
    """(K, 2) float outline in pixel-edge coordinates; log-uniform size, random aspect/rotation/centre."""
    max_size = max(0.6 * min(height, width), MIN_SIZE_PX + 1)
    size = math.exp(rng.uniform(math.log(MIN_SIZE_PX), math.log(max_size)))
    aspect = math.exp(rng.uniform(-0.3, 0.3))
    angle = math.radians(rng.uniform(-25, 25))
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    outline = _unit_polygon(shape) * [size * aspect, size / aspect] @ rotation.T
    centre = rng.uniform(0, 1, size=2) * [width, height]
    return outline + centre


def _jittered_colour(rng, colour: str) -> tuple:
    rgb = np.array(COLOURS_RGB[colour], dtype=np.float64)
    rgb = rgb * rng.uniform(0.75, 1.1) + rng.uniform(-12, 12, size=3)
    return tuple(int(c) for c in np.clip(rgb, 0, 255))


def _fill(canvas, polygon, colour, antialias: bool) -> None:
    # cv2 vertices are pixel centres (pixel i spans [i, i+1)): shift by half a pixel, 4 fractional bits.
    points = np.round((polygon - 0.5) * 16).astype(np.int32)
    cv2.fillPoly(canvas, [points], colour, cv2.LINE_AA if antialias else cv2.LINE_8, shift=4)


def render_image(rng, image_size: int, min_objects: int, max_objects: int, probabilities) -> tuple:
    """One synthetic image: ``(image uint8 RGB (H, W, 3), objects)``.

    ``objects``: list of dicts ``label``, ``box_xyxy`` (visible extent, float pixel edges),
    ``difficult``, ``truncated``, in drawing order (later objects occlude earlier ones).
    """
    short = round(image_size * rng.uniform(0.7, 1.0))
    height, width = (short, image_size) if rng.random() < 0.6 else (image_size, short)
    image = _background(rng, height, width)
    placed = []
    for _ in range(rng.integers(min_objects, max_objects + 1)):
        label = int(rng.choice(len(CLASSES), p=probabilities))
        _, shape, colour = CLASSES[label]
        polygon = _object_polygon(rng, shape, height, width)
        _fill(image, polygon, _jittered_colour(rng, colour), antialias=True)
        mask = np.zeros((height, width), dtype=np.uint8)
        _fill(mask, polygon, 1, antialias=False)
        placed.append((label, polygon, mask))
    amplitude = int(rng.integers(3, 11))    # sensor-like noise over everything, uniform in [-a, a]
    noise = rng.integers(-amplitude, amplitude + 1, size=image.shape, dtype=np.int16)
    image = np.clip(image + noise, 0, 255).astype(np.uint8)
    return image, _annotate(placed)


def _annotate(placed) -> list:
    """Visible boxes and flags of the drawn objects; objects with no visible pixel are left out."""
    objects, covered = [], None
    for label, polygon, mask in reversed(placed):      # front to back
        visible = mask if covered is None else mask & (1 - covered)
        covered = mask if covered is None else covered | mask
        ys, xs = np.nonzero(visible)
        if len(xs) == 0:
            continue
        full_area = cv2.contourArea(polygon.astype(np.float32))
        visible_fraction = len(xs) / max(full_area, 1.0)
        box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)
        cut = polygon.min() < 0 or (polygon.max(axis=0) > mask.shape[::-1]).any()
        objects.append({
            "label": label, "box_xyxy": box,
            "difficult": bool(max(box[2] - box[0], box[3] - box[1]) < DIFFICULT_SIZE_PX
                              or visible_fraction < DIFFICULT_VISIBLE),
            "truncated": bool(cut or visible_fraction < TRUNCATED_VISIBLE),
        })
    return objects[::-1]


def annotation_xml(image_id: str, width: int, height: int, objects) -> str:
    """The VOC XML text of one image; boxes written as 1-based inclusive integers."""
    lines = ["<annotation>", "\t<folder>VOCshapes</folder>", f"\t<filename>{image_id}.jpg</filename>",
             "\t<source><database>yolo synthetic shapes</database></source>",
             f"\t<size><width>{width}</width><height>{height}</height><depth>3</depth></size>",
             "\t<segmented>0</segmented>"]
    for obj in objects:
        xmin, ymin, xmax, ymax = (int(round(v)) for v in xyxy_to_voc(obj["box_xyxy"]))
        lines += ["\t<object>", f"\t\t<name>{CLASS_NAMES[obj['label']]}</name>",
                  "\t\t<pose>Unspecified</pose>",
                  f"\t\t<truncated>{int(obj['truncated'])}</truncated>",
                  f"\t\t<difficult>{int(obj['difficult'])}</difficult>",
                  f"\t\t<bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin>"
                  f"<xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox>",
                  "\t</object>"]
    return "\n".join(lines + ["</annotation>", ""])


def default_params() -> dict:
    """The default generation parameters (the keyword arguments of :func:`generate`)."""
    return dict(seed=0, num_train=3000, num_val=500, num_test=500, image_size=160, min_objects=1,
                max_objects=6, imbalance=10.0, jpeg_quality=90)


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of one image: a function of (seed, split, index) only."""
    return np.random.default_rng([seed, SPLITS.index(split), index])


def generate(root, seed: int = 0, num_train: int = 3000, num_val: int = 500, num_test: int = 500,
             image_size: int = 160, min_objects: int = 1, max_objects: int = 6, imbalance: float = 10.0,
             jpeg_quality: int = 90) -> Path:
    """Writes the shapes set to ``root/VOCdevkit`` atomically and returns the devkit path.

    The set is built in a temporary folder under ``root`` and renamed into place; an existing
    ``root/VOCdevkit`` is replaced only if it is a generated shapes set (it has ``shapes.json``).
    """
    params = dict(seed=seed, num_train=num_train, num_val=num_val, num_test=num_test, image_size=image_size,
                  min_objects=min_objects, max_objects=max_objects, imbalance=imbalance,
                  jpeg_quality=jpeg_quality)
    if not (1 <= min_objects <= max_objects and image_size >= 32 and imbalance >= 1):
        raise ValueError(f"need 1 <= min_objects <= max_objects, image_size >= 32, imbalance >= 1; "
                         f"got {params}")
    root = Path(root)
    final = root / "VOCdevkit"
    if final.exists() and read_stamp(final) is None:
        raise FileExistsError(f"{final} exists and is not a generated shapes set (no shapes.json); "
                              f"refusing to overwrite it: choose another root")
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".VOCdevkit-generating-", dir=root))
    try:
        _write_devkit(staging, params)
        _swap_into_place(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("generated the shapes set in %s (%s)", final, params)
    return final


def _write_devkit(devkit: Path, params: dict) -> None:
    year = devkit / "VOCshapes"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (year / sub).mkdir(parents=True)
    probabilities = class_probabilities(params["imbalance"])
    counts = {"train": params["num_train"], "val": params["num_val"], "test": params["num_test"]}
    next_id, split_ids = 1, {}
    for split in SPLITS:
        split_ids[split] = []
        for index in range(counts[split]):
            image_id = f"{next_id:06d}"
            next_id += 1
            rng = image_rng(params["seed"], split, index)
            image, objects = render_image(rng, params["image_size"], params["min_objects"],
                                          params["max_objects"], probabilities)
            ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                                    [cv2.IMWRITE_JPEG_QUALITY, params["jpeg_quality"]])
            if not ok:
                raise RuntimeError(f"JPEG encoding failed for {image_id}")
            (year / "JPEGImages" / f"{image_id}.jpg").write_bytes(jpeg.tobytes())
            (year / "Annotations" / f"{image_id}.xml").write_text(
                annotation_xml(image_id, image.shape[1], image.shape[0], objects))
            split_ids[split].append(image_id)
    split_ids["trainval"] = split_ids["train"] + split_ids["val"]
    for split, ids in split_ids.items():
        (year / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    (devkit / "classes.txt").write_text("".join(f"{name}\n" for name in CLASS_NAMES))
    stamp = {"generator": "yolo.data.shapes", "version": GENERATOR_VERSION, "params": params}
    (devkit / "shapes.json").write_text(json.dumps(stamp, indent=1, sort_keys=True) + "\n")


def _swap_into_place(staging: Path, final: Path) -> None:
    """Renames ``staging`` to ``final``; a previous generated set is moved aside first, then deleted."""
    old = None
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=".VOCdevkit-old-", dir=final.parent))
        os.replace(final, old / "VOCdevkit")
    os.replace(staging, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_stamp(devkit) -> dict | None:
    """The ``shapes.json`` stamp of a generated devkit, or None when absent/unreadable."""
    try:
        return json.loads((Path(devkit) / "shapes.json").read_text())
    except (OSError, ValueError):
        return None


def ensure_shapes(root, **params) -> Path:
    """The devkit path of the shapes set under ``root``, generating it on first use.

    Parameters default to :func:`default_params`. An existing set generated with the same parameters
    (and generator version) is reused; one with different parameters is regenerated (with a warning);
    a ``root/VOCdevkit`` that is not a generated set is never touched (FileExistsError).
    """
    unknown = set(params) - set(default_params())
    if unknown:
        raise TypeError(f"unknown shapes parameters {sorted(unknown)}; known: {sorted(default_params())}")
    wanted = {**default_params(), **params}
    final = Path(root) / "VOCdevkit"
    stamp = read_stamp(final)
    expected = {"generator": "yolo.data.shapes", "version": GENERATOR_VERSION, "params": wanted}
    if stamp == json.loads(json.dumps(expected)):
        return final
    if stamp is not None:
        logger.warning("regenerating the shapes set in %s: it was generated with %s, now %s",
                       final, stamp.get("params"), wanted)
    return generate(root, **wanted)
