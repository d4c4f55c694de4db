"""Augmentation presets (albumentations) for training and evaluation, and the inverse box mapping.

Train (SSD recipe, Liu et al. 2016, "SSD: Single Shot MultiBox Detector", sec. 2.2 and 3.6):
photometric distortion -> zoom-out (expand) -> min-IoU random crop -> resize to ``size`` -> horizontal flip.
Two of the steps are written here as albumentations transforms because that is what makes the pipeline fast:

* :class:`PhotometricDistortion`: brightness, contrast, saturation and hue are all affine in RGB, so they are
  composed into one 3x4 colour matrix and applied with a single ``cv2.transform`` (~0.15 ms at 416 px,
  against ~1.7 ms for ``A.ColorJitter``). It differs from SSD's HSV version only by the clipping between
  steps and by rotating hue about the grey axis (YIQ) instead of in HSV. No random channel swap: it is not
  label-preserving when colour defines the class (the synthetic shapes set; a red vs a blue car).
* :class:`ZoomOutMinIoUCrop`: expand, crop and resize are one resample: only the part of the source that
  lands in the crop is resized, straight into the output canvas, so a 4x zoom-out costs no 4x canvas.

Eval: resize (``stretch``) or ``letterbox`` only; ``scale``/``pad`` returned with every sample give the exact
inverse, :func:`to_original`. Images stay uint8 RGB: normalisation (``IMAGENET_MEAN``/``IMAGENET_STD``,
0-1 scale) happens on the device, inside the model.

Boxes are float pixel-edge ``boxes_xyxy`` (albumentations' ``pascal_voc`` format is the same convention).
Seeding: ``transform(..., seed=s)`` makes the sample a pure function of ``s`` (one numpy and one python
generator shared by all steps; albumentations' own ``set_random_seed`` would give every step the *same*
stream, so e.g. the flip and the brightness decisions would always agree).
"""
import math
import os
import random

import cv2
import numpy as np
import torch

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")   # albumentations checks PyPI for updates otherwise
import albumentations as A  # noqa: E402

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SSD_MIN_IOUS = (0.1, 0.3, 0.5, 0.7, 0.9)   # crop modes of SSD's min-IoU random crop (besides no crop)
FILL_RGB = tuple(int(round(255 * m)) for m in IMAGENET_MEAN)   # zoom-out / letterbox padding colour

_LUMA = np.array([0.299, 0.587, 0.114])
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)


def resize_geometry(height: int, width: int, size: int, mode: str = "stretch"):
    """Where a (height, width) image lands in a size x size input: ``((sx, sy), (px, py), (new_w, new_h))``.

    ``stretch`` scales each axis to ``size``; ``letterbox`` keeps the aspect ratio and centres the image,
    padding the rest. A point maps as ``input = orig * scale + pad`` (pixel-edge coordinates).
    """
    if mode == "stretch":
        return (size / width, size / height), (0.0, 0.0), (size, size)
    if mode != "letterbox":
        raise ValueError(f"unknown resize mode {mode!r}: expected 'stretch' or 'letterbox'")
    ratio = min(size / width, size / height)
    new_w, new_h = max(1, round(width * ratio)), max(1, round(height * ratio))
    pad = ((size - new_w) // 2, (size - new_h) // 2)
    return (new_w / width, new_h / height), (float(pad[0]), float(pad[1])), (new_w, new_h)


def to_original(boxes_xyxy: torch.Tensor, scale, pad, orig_size=None) -> torch.Tensor:
    """Maps (..., 4) network-input boxes back to original-image pixels: ``(boxes - pad) / scale``.

    ``scale`` = (sx, sy) and ``pad`` = (px, py) as in the dataset target (sequences or tensors whose last
    dimension is 2, broadcasting against the boxes' leading dimensions). With ``orig_size`` = (H0, W0)
    the result is clipped to the image.
    """
    scale = torch.as_tensor(scale, dtype=boxes_xyxy.dtype, device=boxes_xyxy.device)
    pad = torch.as_tensor(pad, dtype=boxes_xyxy.dtype, device=boxes_xyxy.device)
    boxes = (boxes_xyxy - torch.cat([pad, pad], dim=-1)) / torch.cat([scale, scale], dim=-1)
    if orig_size is not None:
        height, width = orig_size
        boxes = torch.stack([boxes[..., 0].clamp(0, width), boxes[..., 1].clamp(0, height),
                             boxes[..., 2].clamp(0, width), boxes[..., 3].clamp(0, height)], dim=-1)
    return boxes


def photometric_matrix(brightness=0.0, contrast=1.0, saturation=1.0, hue_deg=0.0) -> np.ndarray:
    """3x4 RGB colour matrix of SSD's photometric distortion: ``out = M[:, :3] @ rgb + M[:, 3]``.

    Brightness adds ``brightness`` (0-255 units), contrast multiplies by ``contrast``, saturation blends
    with the luma grey (factor ``saturation``) and hue rotates by ``hue_deg`` about the grey axis (in YIQ).
    Hue rotation and the saturation blend both fix the grey axis and preserve luma, and contrast is a
    scalar, so the steps commute: SSD's random order only matters through intermediate clipping.
    """
    angle = math.radians(hue_deg)
    cos, sin = math.cos(angle), math.sin(angle)
    rotation = np.array([[1, 0, 0], [0, cos, -sin], [0, sin, cos]])
    hue = _YIQ_TO_RGB @ rotation @ _RGB_TO_YIQ
    linear = contrast * (saturation * hue + (1 - saturation) * np.outer(np.ones(3), _LUMA))
    # Brightness comes first: linear @ (rgb + b) = linear @ rgb + contrast * b, as linear maps grey to grey.
    offset = np.full((3, 1), contrast * brightness)
    return np.hstack([linear, offset]).astype(np.float32)


class PhotometricDistortion(A.ImageOnlyTransform):
    """SSD photometric distortion as one colour matrix; each component applied with probability ``p_each``."""

    def __init__(self, brightness_delta=32.0, contrast=(0.5, 1.5), saturation=(0.5, 1.5), hue_delta_deg=18.0,
                 p_each=0.5, p=1.0):
        super().__init__(p=p)
        self.brightness_delta, self.contrast, self.saturation = brightness_delta, contrast, saturation
        self.hue_delta_deg, self.p_each = hue_delta_deg, p_each

    def get_params(self):
        rng = self.py_random
        fire = [rng.random() < self.p_each for _ in range(4)]
        return {"matrix": None if not any(fire) else photometric_matrix(
            brightness=rng.uniform(-self.brightness_delta, self.brightness_delta) if fire[0] else 0.0,
            contrast=rng.uniform(*self.contrast) if fire[1] else 1.0,
            saturation=rng.uniform(*self.saturation) if fire[2] else 1.0,
            hue_deg=rng.uniform(-self.hue_delta_deg, self.hue_delta_deg) if fire[3] else 0.0)}

    def apply(self, img, matrix=None, **params):
        return img if matrix is None else cv2.transform(img, matrix)


class ZoomOutMinIoUCrop(A.DualTransform):
    """SSD's zoom-out + min-IoU random crop + resize to ``size`` x ``size``, as one resample.

    Zoom-out (probability ``zoom_out_p``): the image is placed at a random position on a canvas
    ``ratio`` in [1, ``zoom_out_max``] times larger, filled with ``fill``. Crop: a mode is drawn from
    ``(no crop,) + min_ious``; up to ``max_trials`` windows with sides in [``crop_scale``, 1] of the canvas
    and ``0.5 <= h/w <= 2`` are drawn until one has IoU >= the mode's minimum with at least one box and
    contains at least one box centre (no window found: no crop). Boxes whose centre falls outside the
    window are dropped, the rest clipped. This is the original SSD (Caffe ``batch_sampler``, "any box");
    mmdetection's ``MinIoURandomCrop`` asks it of every box, which rarely succeeds on crowded images.
    """

    def __init__(self, size, zoom_out_max=4.0, zoom_out_p=0.5, min_ious=SSD_MIN_IOUS,
                 crop_scale=0.3, max_trials=50, fill=FILL_RGB, interpolation=cv2.INTER_LINEAR, p=1.0):
        super().__init__(p=p)
        if size < 1 or zoom_out_max < 1 or not 0 < crop_scale <= 1:
            raise ValueError(f"need size >= 1, zoom_out_max >= 1, 0 < crop_scale <= 1; got {size}, "
                             f"{zoom_out_max}, {crop_scale}")
        self.size, self.zoom_out_max, self.zoom_out_p = size, zoom_out_max, zoom_out_p
        self.min_ious = tuple(min_ious)
        self.modes = (None,) + self.min_ious
        self.crop_scale, self.max_trials = crop_scale, max_trials
        self.fill, self.interpolation = tuple(fill), interpolation
        self._canvas = np.empty((size, size, len(self.fill)), dtype=np.uint8)
        self._canvas[:] = self.fill     # copied per sample: much faster than broadcasting the fill each time

    @property
    def targets_as_params(self):
        return ["bboxes"]

    def get_params_dependent_on_data(self, params, data):
        height, width = params["shape"][:2]
        boxes = data["bboxes"][:, :4] * np.array([width, height, width, height], dtype=np.float32)
        rng = self.py_random
        ratio = rng.uniform(1.0, self.zoom_out_max) if rng.random() < self.zoom_out_p else 1.0
        canvas_w, canvas_h = round(width * ratio), round(height * ratio)
        left, top = rng.randint(0, canvas_w - width), rng.randint(0, canvas_h - height)
        x0, y0, x1, y1 = self._sample_crop(boxes + [left, top, left, top], canvas_w, canvas_h)
        window = (x0 - left, y0 - top, x1 - left, y1 - top)    # the crop in source-image pixels
        src = (max(window[0], 0), max(window[1], 0), min(window[2], width), min(window[3], height))
        sx, sy = self.size / (x1 - x0), self.size / (y1 - y0)
        dst = (round((src[0] - window[0]) * sx), round((src[1] - window[1]) * sy),
               round((src[2] - window[0]) * sx), round((src[3] - window[1]) * sy))
        # Boxes map with the extents actually rendered (rounded dst), so they match the pixels exactly.
        box_scale = ((dst[2] - dst[0]) / max(src[2] - src[0], 1), (dst[3] - dst[1]) / max(src[3] - src[1], 1))
        box_offset = (dst[0] - src[0] * box_scale[0], dst[1] - src[1] * box_scale[1])
        return {"window": window, "src": src, "dst": dst, "box_scale": np.array(box_scale * 2),
                "box_offset": np.array(box_offset * 2)}

    def _sample_crop(self, boxes, canvas_w, canvas_h):
        """(x0, y0, x1, y1) integer crop window in canvas pixels; all trials are drawn at once."""
        min_iou = self.py_random.choice(self.modes)
        if min_iou is None:
            return 0, 0, canvas_w, canvas_h
        canvas = np.array([canvas_w, canvas_h])
        sizes = self.random_generator.uniform(self.crop_scale, 1.0, size=(self.max_trials, 2)) * canvas
        corners = np.round(self.random_generator.uniform(size=(self.max_trials, 2)) * (canvas - sizes))
        crops = np.concatenate([corners, corners + np.maximum(np.round(sizes), 1)], axis=1)
        aspect = sizes[:, 1] / sizes[:, 0]
        ok = (aspect >= 0.5) & (aspect <= 2.0)
        if len(boxes):
            ok &= (_iou(crops, boxes).max(axis=1) >= min_iou) & _centres_inside(boxes, crops).any(axis=1)
        if not ok.any():
            return 0, 0, canvas_w, canvas_h
        return tuple(int(v) for v in crops[np.argmax(ok)])

    def apply(self, img, window=None, src=None, dst=None, **params):
        full = dst == (0, 0, self.size, self.size)
        out = np.empty_like(self._canvas) if full else self._canvas.copy()
        if dst[2] > dst[0] and dst[3] > dst[1] and src[2] > src[0] and src[3] > src[1]:
            cv2.resize(img[src[1]:src[3], src[0]:src[2]], (dst[2] - dst[0], dst[3] - dst[1]),
                       dst=out[dst[1]:dst[3], dst[0]:dst[2]], interpolation=self.interpolation)
        return out

    def apply_to_bboxes(self, bboxes, window=None, box_scale=None, box_offset=None, **params):
        height, width = params["shape"][:2]
        boxes = bboxes[:, :4] * np.array([width, height, width, height], dtype=np.float32)
        keep = _centres_inside(boxes, window)
        out = bboxes[keep]      # boolean indexing copies
        out[:, :4] = np.clip(boxes[keep] * box_scale + box_offset, 0, self.size) / self.size
        return out


def _iou(windows, boxes):
    """(T, M) IoU between (T, 4) xyxy windows and (M, 4) xyxy boxes."""
    lt = np.maximum(windows[:, None, :2], boxes[None, :, :2])
    rb = np.minimum(windows[:, None, 2:], boxes[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_windows = np.prod(windows[:, 2:] - windows[:, :2], axis=1)
    area_boxes = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
    return inter / (area_windows[:, None] + area_boxes[None, :] - inter)


def _centres_inside(boxes, windows):
    """(..., M) whether each box centre lies strictly inside the window(s): windows (4,) or (T, 4)."""
    windows = np.asarray(windows, dtype=np.float64)[..., None, :]
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    return ((cx > windows[..., 0]) & (cx < windows[..., 2]) & (cy > windows[..., 1]) & (cy < windows[..., 3]))


class ResizeTo(A.DualTransform):
    """Resize to ``size`` x ``size``: ``stretch`` or aspect-preserving ``letterbox`` (see resize_geometry)."""

    def __init__(self, size, mode="stretch", fill=FILL_RGB, interpolation=cv2.INTER_LINEAR, p=1.0):
        super().__init__(p=p)
        resize_geometry(1, 1, size, mode)    # validates the mode
        self.size, self.mode, self.fill, self.interpolation = size, mode, tuple(fill), interpolation

    def get_params_dependent_on_data(self, params, data):
        height, width = params["shape"][:2]
        scale, pad, new_size = resize_geometry(height, width, self.size, self.mode)
        return {"scale": scale, "pad": pad, "new_size": new_size}

    def apply(self, img, scale=None, pad=None, new_size=None, **params):
        resized = cv2.resize(img, new_size, interpolation=self.interpolation)
        if new_size == (self.size, self.size):
            return resized
        out = np.empty((self.size, self.size, img.shape[2]), dtype=img.dtype)
        out[:] = self.fill
        px, py = int(pad[0]), int(pad[1])
        out[py:py + new_size[1], px:px + new_size[0]] = resized
        return out

    def apply_to_bboxes(self, bboxes, scale=None, pad=None, new_size=None, **params):
        height, width = params["shape"][:2]
        out = bboxes.copy()
        out[:, [0, 2]] = (bboxes[:, [0, 2]] * width * scale[0] + pad[0]) / self.size
        out[:, [1, 3]] = (bboxes[:, [1, 3]] * height * scale[1] + pad[1]) / self.size
        return out


class BoxTransform:
    """Runs an albumentations pipeline on ``(image, boxes_xyxy, labels)`` and reports the input mapping.

    ``__call__(image, boxes_xyxy, labels, seed=None)`` -> dict with ``image`` uint8 (size, size, 3),
    ``boxes_xyxy`` float32 (M', 4), ``labels`` int64 (M',), ``scale`` and ``pad`` such that
    ``orig = (input - pad) / scale``. For the eval presets the mapping is exact; for training it is the
    nominal stretch of the whole image (a random crop/flip has no meaningful inverse for evaluation).
    """

    def __init__(self, compose: A.Compose, size: int, mode: str):
        self.compose, self.size, self.mode = compose, size, mode

    def __call__(self, image, boxes_xyxy, labels, seed=None):
        if seed is not None:
            self.compose.set_random_state(np.random.default_rng(seed), random.Random(seed))
        out = self.compose(image=image, bboxes=np.asarray(boxes_xyxy, dtype=np.float32).reshape(-1, 4),
                           labels=np.asarray(labels, dtype=np.int64))
        scale, pad, _ = resize_geometry(image.shape[0], image.shape[1], self.size, self.mode)
        return dict(image=out["image"], boxes_xyxy=np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4),
                    labels=np.asarray(out["labels"], dtype=np.int64).reshape(-1), scale=scale, pad=pad)

    def __repr__(self):
        return f"BoxTransform(size={self.size}, mode={self.mode!r}, {self.compose})"


def _bbox_params(min_box_size: float) -> A.BboxParams:
    # Input boxes must be valid (inside the image, positive size): load_records guarantees it, and
    # albumentations raises a ValueError naming the box otherwise. Not clipping/filtering them again,
    # nor after each step (our geometric step filters its own boxes), saves ~0.2 ms per sample.
    return A.BboxParams(format="pascal_voc", label_fields=["labels"], min_width=min_box_size,
                        min_height=min_box_size, check_each_transform=False)


def train_transform(size: int, *, zoom_out_max: float = 4.0, zoom_out_p: float = 0.5,
                    min_ious=SSD_MIN_IOUS, crop_scale: float = 0.3, photometric_p: float = 0.5,
                    hflip_p: float = 0.5, min_box_size: float = 2.0) -> BoxTransform:
    """SSD-style training preset to uint8 RGB ``size`` x ``size`` (see the module docstring).

    ``photometric_p``: probability of each of brightness/contrast/saturation/hue (0 disables);
    ``zoom_out_max``/``zoom_out_p``: expand ratio bound and probability; ``min_ious``: crop modes besides
    "no crop"; boxes narrower or shorter than ``min_box_size`` output pixels are dropped.
    """
    steps = [
        PhotometricDistortion(p_each=photometric_p, p=1.0 if photometric_p > 0 else 0.0),
        ZoomOutMinIoUCrop(size, zoom_out_max=zoom_out_max, zoom_out_p=zoom_out_p, min_ious=min_ious,
                          crop_scale=crop_scale),
        A.HorizontalFlip(p=hflip_p),
    ]
    return BoxTransform(A.Compose(steps, bbox_params=_bbox_params(min_box_size)), size, "stretch")


def eval_transform(size: int, mode: str = "stretch") -> BoxTransform:
    """Evaluation preset: ``stretch`` or ``letterbox`` resize to ``size`` x ``size``, nothing random."""
    compose = A.Compose([ResizeTo(size, mode)], bbox_params=_bbox_params(0.0))
    return BoxTransform(compose, size, mode)
