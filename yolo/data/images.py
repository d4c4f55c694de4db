"""Image files: the size from the header without decoding, the EXIF orientation, and decoding to RGB.

Policy on EXIF orientation: boxes refer to the stored pixel grid. Images are decoded without applying the
orientation tag, as the VOC devkit and pycocotools' datasets assume; the audit (``python -m yolo.data.check``)
lists every image whose tag is not 1 (a labelling tool that showed the rotated picture drew its boxes on the
displayed grid, so such a dataset needs its images rotated on disk first).
"""
import struct

import cv2
import numpy as np

from yolo.data.record import KIND_SIZE_MISMATCH, KIND_TRUNCATED_IMAGE, KIND_UNREADABLE_IMAGE

EXIF_ORIENTATION_TAG = 0x0112


def read_image_size(path) -> tuple[int, int] | None:
    """(width, height) read from a JPEG or PNG header without decoding; None if not readable that way.

    Raises FileNotFoundError when the file does not exist.
    """
    with open(path, "rb") as f:
        head = f.read(24)
        if head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) == 24:
            return struct.unpack(">II", head[16:24])
        if head[:2] != b"\xff\xd8":
            return None
        f.seek(2)
        return _jpeg_frame_size(f)


def _jpeg_frame_size(f) -> tuple[int, int] | None:
    """Walks the JPEG marker segments up to the start-of-frame (SOFn) and returns its (width, height)."""
    while True:
        byte = f.read(1)
        while byte == b"\xff":      # fill bytes before a marker
            byte = f.read(1)
        if not byte:
            return None
        marker = byte[0]
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:   # markers without a length field
            continue
        if marker == 0xD9:
            return None
        length_bytes = f.read(2)
        if len(length_bytes) < 2:
            return None
        length = struct.unpack(">H", length_bytes)[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            frame = f.read(5)
            if len(frame) < 5:
                return None
            height, width = struct.unpack(">HH", frame[1:5])
            return width, height
        f.seek(length - 2, 1)


def exif_orientation(path) -> int:
    """The EXIF orientation tag of an image (1 = stored as displayed; also 1 when absent or unreadable)."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as image:     # lazy: reads the header segments, not the pixels
            return int(image.getexif().get(EXIF_ORIENTATION_TAG, 1))
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
        return 1


class ImageDecodeError(Exception):
    """An image that cannot be used: ``kind`` is one of the Problem kinds, ``detail`` says why."""

    def __init__(self, kind: str, detail: str):
        super().__init__(f"{kind}: {detail}")
        self.kind, self.detail = kind, detail


def decode_image(path, expected_size=None) -> np.ndarray:
    """Decodes an image file to uint8 RGB (H, W, 3); raises ImageDecodeError when it cannot be used.

    Grayscale, CMYK and alpha images are converted to 3-channel RGB. EXIF orientation is ignored so the
    pixels match the annotation's coordinate frame (boxes refer to the stored pixel grid, see the module docstring).
    ``expected_size`` = (width, height) from the annotation is checked against the decoded image.
    """
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as error:
        raise ImageDecodeError(KIND_UNREADABLE_IMAGE, f"cannot read: {error}") from None
    # A JPEG must end with its EOI marker (0xFFD9), possibly followed by padding; libjpeg decodes
    # truncated files without an error (the missing rows come out grey), so check it explicitly.
    if data[:2].tobytes() == b"\xff\xd8" and b"\xff\xd9" not in data[-4096:].tobytes():
        raise ImageDecodeError(KIND_TRUNCATED_IMAGE, "JPEG without end-of-image marker")
    image = cv2.imdecode(data, cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION) if data.size else None
    if image is None:
        raise ImageDecodeError(KIND_UNREADABLE_IMAGE, "not a decodable image")
    if expected_size is not None and (image.shape[1], image.shape[0]) != tuple(expected_size):
        raise ImageDecodeError(KIND_SIZE_MISMATCH, f"decoded {image.shape[1]}x{image.shape[0]}, "
                                                   f"annotated {expected_size[0]}x{expected_size[1]}")
    return image


def header_size_problem(image_path, annotated_size):
    """``(size, None)`` or ``(None, (kind, detail))``: the image's header size checked against the annotation's
    ``(width, height)`` (None: take the header's). Shared by the readers so every layout skips the same images."""
    try:
        header = read_image_size(image_path)
    except OSError as error:
        return None, (KIND_UNREADABLE_IMAGE, str(error))
    if annotated_size is None:
        if header is None:
            return None, (KIND_UNREADABLE_IMAGE, "no size in the annotation and none readable from the image")
        return header, None
    if header is not None and tuple(header) != tuple(annotated_size):
        return None, (KIND_SIZE_MISMATCH, f"annotated {annotated_size[0]}x{annotated_size[1]} but image "
                                          f"{header[0]}x{header[1]}")
    return tuple(annotated_size), None
