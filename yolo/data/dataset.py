"""The torch Dataset of every layout: images and detection targets from neutral records, through an augmentation."""
import logging

import numpy as np
import torch

from yolo.data.images import ImageDecodeError, decode_image

logger = logging.getLogger(__name__)


class DetectionDataset(torch.utils.data.Dataset):
    """Images and detection targets from :class:`yolo.data.record.Record` s, through an augmentation ``transform``.

    ``dataset[index]`` or ``dataset[(index, aug_seed)]`` returns ``(image, target)``: ``image`` is a uint8 RGB
    tensor (3, H, W), a view of the augmented (H, W, 3) pixels (channels-last strides, see ``collate``); ``target``
    holds ``boxes_xyxy`` float32 (M, 4) in network-input pixels, ``labels`` int64 (M,), ``image_id``, ``index`` (of
    the record actually loaded), ``readable``, ``orig_size`` (H0, W0), ``scale`` (sx, sy) and ``pad`` (px, py) with
    ``orig = (input - pad) / scale``. Crowd regions are never targets; ignored (difficult) objects are left out
    unless ``keep_difficult``.

    ``transform(image, boxes_xyxy, labels, seed=aug_seed)`` must return a dict with ``image``,
    ``boxes_xyxy``, ``labels``, ``scale`` and ``pad`` (see yolo.data.transforms); None keeps the image as is.
    An image that fails to decode is logged once (per process). For training (``substitute``) it is replaced by
    the next readable record, so the substitution is deterministic and ``target["index"]`` tells which record was
    used; for evaluation the sample comes back blank with ``readable`` False, for the caller to refuse or leave
    out of the scores (``yolo.engine.evaluate``).
    """

    def __init__(self, records, transform=None, keep_difficult: bool = False, substitute: bool = True,
                 split=None):
        self.records = list(records)
        self.split = split            # the yolo.data.record.Split the records came from (evaluation needs it)
        self.transform = transform
        self.keep_difficult = keep_difficult
        self.substitute = substitute
        # The (boxes_xyxy, labels) targets, filtered once instead of per sample.
        self._targets = []
        for record in self.records:
            keep = record.training_mask(keep_difficult)
            self._targets.append((record.boxes_xyxy[keep], record.labels[keep]))
        self._failed = set()

    @classmethod
    def of_split(cls, split, transform=None, **kwargs) -> "DetectionDataset":
        """The dataset of every record of a ``Split`` (which it keeps, for evaluation)."""
        return cls(split.records, transform, split=split, **kwargs)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key):
        index, aug_seed = key if isinstance(key, tuple) else (key, None)
        if not self.substitute:
            image = self._read(index)
            if image is None:
                record = self.records[index]
                return self._make_sample(index, np.zeros((record.height, record.width, 3), np.uint8), aug_seed,
                                         readable=False)
            return self._make_sample(index, image, aug_seed)
        for offset in range(len(self.records)):
            candidate = (index + offset) % len(self.records)
            image = self._read(candidate)
            if image is not None:
                return self._make_sample(candidate, image, aug_seed)
        raise RuntimeError(f"none of the {len(self.records)} images of the dataset could be decoded")

    def _read(self, index: int):
        if index in self._failed:
            return None
        record = self.records[index]
        try:
            return decode_image(record.image_path, (record.width, record.height))
        except ImageDecodeError as error:
            self._failed.add(index)
            logger.warning("skipping %s: %s (%s)", record.image_path, error,
                           "substituting the next readable image" if self.substitute else "left out of the scores")
            return None

    def _make_sample(self, index: int, image: np.ndarray, aug_seed, readable: bool = True):
        record = self.records[index]
        boxes_xyxy, labels = self._targets[index] if readable else (np.zeros((0, 4), np.float32), np.zeros(0, int))
        orig_size = image.shape[:2]
        if self.transform is None:
            out = dict(image=image, boxes_xyxy=boxes_xyxy, labels=labels, scale=(1.0, 1.0), pad=(0.0, 0.0))
        else:
            out = self.transform(image, boxes_xyxy, labels, seed=aug_seed)
        image_chw = torch.from_numpy(out["image"]).permute(2, 0, 1)   # a CHW view: collate stacks the HWC pixels
        target = dict(
            boxes_xyxy=torch.as_tensor(np.asarray(out["boxes_xyxy"], dtype=np.float32).reshape(-1, 4)),
            labels=torch.as_tensor(np.asarray(out["labels"], dtype=np.int64).reshape(-1)),
            image_id=record.image_id, index=index, readable=readable, orig_size=orig_size,
            scale=tuple(out["scale"]), pad=tuple(out["pad"]),
        )
        return image_chw, target
