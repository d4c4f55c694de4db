"""Batching: collate padding, the epoch sampler (order, resume, shards) and worker-independent batches."""
import os

import numpy as np
import pytest
import torch

from yolo.data.loader import (
    EpochSampler, ThreadLoader, aug_seeds, build_loader, collate, measure_loader_throughput, measure_sample_costs)
from yolo.data.shapes import generate
from yolo.data.transforms import train_transform
from yolo.data.dataset import DetectionDataset
from yolo.data.voc import load_records


def _sample(num_objects: int, index: int):
    image = torch.full((3, 8, 8), index, dtype=torch.uint8)
    boxes = torch.arange(num_objects * 4, dtype=torch.float32).reshape(num_objects, 4)
    target = dict(boxes_xyxy=boxes, labels=torch.arange(num_objects), image_id=f"id{index}", index=index,
                  readable=True, orig_size=(10, 20), scale=(0.4, 0.8), pad=(0.0, 1.0))
    return image, target


def test_collate_pads_to_a_multiple_of_eight():
    images, targets = collate([_sample(0, 0), _sample(3, 1), _sample(9, 2)])
    assert images.shape == (3, 3, 8, 8) and images.dtype == torch.uint8
    assert images[:, 0, 0, 0].tolist() == [0, 1, 2]
    assert targets["boxes_xyxy"].shape == (3, 16, 4) and targets["labels"].shape == (3, 16)
    assert targets["labels"][0].tolist() == [-1] * 16
    assert targets["labels"][1].tolist() == [0, 1, 2] + [-1] * 13
    torch.testing.assert_close(targets["boxes_xyxy"][2, :9], _sample(9, 2)[1]["boxes_xyxy"])
    assert targets["boxes_xyxy"][1, 3:].abs().sum() == 0
    assert targets["meta"][1] == dict(image_id="id1", index=1, readable=True, orig_size=(10, 20),
                                      scale=(0.4, 0.8), pad=(0.0, 1.0))
    assert collate([_sample(0, 0)])[1]["labels"].shape == (1, 8)                   # at least 8


def test_sampler_order_is_a_function_of_seed_and_epoch():
    def keys(seed, epoch):
        sampler = EpochSampler(50, shuffle=True, seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert keys(0, 0) == keys(0, 0)
    assert keys(0, 0) != keys(0, 1) and keys(0, 0) != keys(1, 0)
    indices = [i for i, _ in keys(0, 3)]
    assert sorted(indices) == list(range(50)) and indices != list(range(50))
    assert [s for _, s in keys(0, 3)] == aug_seeds(0, 3, np.array(indices)).tolist()
    assert len(set(aug_seeds(0, 0, np.arange(1000)).tolist())) == 1000
    assert (aug_seeds(0, 0, np.arange(1000)) >= 0).all()
    ordered = EpochSampler(5, shuffle=False, seed=0)
    assert [i for i, _ in ordered] == [0, 1, 2, 3, 4]


def test_sampler_skip_resumes_mid_epoch():
    sampler = EpochSampler(20, shuffle=True, seed=7)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.skip(12)
    assert list(sampler) == full[12:] and len(sampler) == 8
    sampler.set_epoch(2)                                     # a new epoch forgets the skip
    assert list(sampler) == full


@pytest.mark.parametrize("drop_last, shard", [(False, 4), (True, 3)])
def test_sampler_distributed_shards(drop_last, shard):
    shards = []
    for rank in range(3):
        sampler = EpochSampler(10, shuffle=True, seed=1, rank=rank, world_size=3, drop_last=drop_last)
        sampler.set_epoch(5)
        shards.append([i for i, _ in sampler])
        assert len(shards[-1]) == len(sampler) == shard
    merged = sum(shards, [])
    if drop_last:
        assert len(set(merged)) == 9                         # disjoint, one sample left out
    else:
        assert set(merged) == set(range(10)) and len(merged) == 12     # two repeated to pad
    with pytest.raises(ValueError, match="rank"):
        EpochSampler(10, shuffle=True, seed=0, rank=3, world_size=3)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    generate(root, num_train=12, num_val=0, num_test=0, image_size=48)
    return DetectionDataset(load_records(root, "shapes:train"), train_transform(32))


def _epoch(loader, epoch, skip=0):
    loader.sampler.set_epoch(epoch)
    loader.sampler.skip(skip)
    return [(images.clone(), targets["boxes_xyxy"].clone(), [m["index"] for m in targets["meta"]])
            for images, targets in loader]


def test_batches_do_not_depend_on_workers_or_resume(dataset):
    in_process = build_loader(dataset, 4, train=True, num_workers=0, seed=3)
    with_workers = build_loader(dataset, 4, train=True, num_workers=2, seed=3)
    assert with_workers.persistent_workers and with_workers.drop_last
    for epoch in (0, 1):
        expected = _epoch(in_process, epoch)
        got = _epoch(with_workers, epoch)
        assert len(expected) == 3 and [b[2] for b in got] == [b[2] for b in expected]
        for (image_a, boxes_a, _), (image_b, boxes_b, _) in zip(expected, got):
            assert torch.equal(image_a, image_b) and torch.equal(boxes_a, boxes_b)
    resumed = _epoch(in_process, 1, skip=4)
    assert [b[2] for b in resumed] == [b[2] for b in expected[1:]]
    assert all(torch.equal(a[0], b[0]) for a, b in zip(resumed, expected[1:]))
    assert _epoch(in_process, 0)[0][2] != _epoch(in_process, 1)[0][2]


def test_batches_are_channels_last_views_of_the_augmented_pixels(dataset):
    image, _ = dataset[(3, 11)]
    pixels = dataset.transform(*_decoded(dataset, 3), seed=11)["image"]            # (H, W, 3) uint8
    assert image.shape == (3, 32, 32) and torch.equal(image, torch.from_numpy(pixels).permute(2, 0, 1))
    assert image.permute(1, 2, 0).is_contiguous()                                   # a view, no CHW copy
    images, _ = collate([dataset[(3, 11)], dataset[(4, 12)]])
    assert images.shape == (2, 3, 32, 32) and images.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(images[0], image)
    assert images.contiguous(memory_format=torch.channels_last).data_ptr() == images.data_ptr()   # no copy left


def _decoded(dataset, index):
    from yolo.data.images import decode_image
    record = dataset.records[index]
    boxes, labels = dataset._targets[index]
    return decode_image(record.image_path), boxes, labels


class _Failing(torch.utils.data.Dataset):
    def __init__(self, dataset, bad: int):
        self.dataset, self.bad = dataset, bad

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        if key[0] == self.bad:
            raise ValueError(f"sample {self.bad} is broken")
        return self.dataset[key]


def test_the_prefetch_thread_reraises_errors_and_ends_when_the_consumer_stops(dataset):
    import threading
    loader = build_loader(dataset, 4, train=False, num_workers=0, seed=0)
    assert isinstance(loader, ThreadLoader) and len(loader) == 3
    for _ in loader:
        break                                   # a stop request mid-epoch: the thread must not linger
    assert not [t for t in threading.enumerate() if t.name == "yolo-prefetch"]
    failing = build_loader(_Failing(dataset, bad=9), 4, train=False, num_workers=0, seed=0)
    with pytest.raises(ValueError, match="sample 9 is broken"):
        list(failing)
    assert not [t for t in threading.enumerate() if t.name == "yolo-prefetch"]


def test_eval_loader_keeps_order_and_every_sample(dataset):
    loader = build_loader(dataset, 5, train=False, num_workers=0, seed=0)
    assert [m["index"] for _, t in loader for m in t["meta"]] == list(range(12))


def test_measure_loader_throughput_counts_images(dataset):
    result = measure_loader_throughput(dataset, batch_size=4, num_workers=0, num_batches=5, warmup=1)
    assert result["images"] == 20 and result["seconds"] > 0
    assert result["images_per_s"] == pytest.approx(20 / result["seconds"])
    assert result["images_per_s_per_worker"] == result["images_per_s"]
    # in-process loading is timed with this process's CPU clock, exact even for 20 tiny images (the /proc
    # ticks of 10 ms used to read 0 when they took under a tick)
    assert 0 < result["cpu_seconds"] < 2 * result["seconds"] * os.cpu_count()
    assert result["images_per_cpu_s"] == pytest.approx(20 / result["cpu_seconds"])


def test_measure_sample_costs_reports_each_stage(dataset):
    costs = measure_sample_costs(dataset, num_images=4, passes=1)
    assert set(costs) == {"decode_ms", "augment_ms", "sample_ms"}
    assert all(0 < value < 1e3 for value in costs.values())


@pytest.mark.parametrize("free_batches,processes,expected", [
    (1000, 1, (2, 4)),     # room for everything: unchanged
    (8, 1, (2, 2)),        # 2 workers x 2 batches x 2 (headroom) fit in 8 batches of free space
    (4, 2, (1, 1)),        # two ranks share it: 1 worker x 1 batch x 2 x 2 ranks
    (1, 1, (0, 4)),        # not one batch: no workers, batches made in this process
])
def test_prefetch_shrinks_to_what_dev_shm_holds(tmp_path, monkeypatch, caplog, free_batches, processes, expected):
    import collections
    import logging
    from yolo.data import loader
    batch_bytes = 8 * 3 * 64 * 64
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(loader.shutil, "disk_usage", lambda path: usage(0, 0, free_batches * batch_bytes))
    with caplog.at_level(logging.WARNING, logger="yolo.data.loader"):
        assert loader.fit_shared_memory(batch_bytes, 2, 4, processes, shm=tmp_path) == expected
    assert ("too little for 2 loader workers x 4 prefetched batches" in caplog.text) == (expected != (2, 4))


def test_a_loader_without_room_in_dev_shm_makes_the_same_batches_in_process(tmp_path, monkeypatch, caplog):
    import collections
    from yolo.data import loader
    generate(tmp_path, seed=0, num_train=12, num_val=2, num_test=2, image_size=64)
    dataset = DetectionDataset(load_records(tmp_path / "VOCdevkit", "shapes:train"), train_transform(64))
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(loader.shutil, "disk_usage", lambda path: usage(0, 0, 2**16))   # 64 KB: not one batch
    short = build_loader(dataset, 4, train=True, num_workers=2, seed=3)
    assert isinstance(short, ThreadLoader) and "i.e. batches made in this process" in caplog.text
    monkeypatch.undo()
    roomy = build_loader(dataset, 4, train=True, num_workers=2, seed=3)
    assert roomy.num_workers == 2 and roomy.prefetch_factor == 4
    for (a, ta), (b, tb) in zip(short, roomy):
        assert torch.equal(a, b) and torch.equal(ta["boxes_xyxy"], tb["boxes_xyxy"])
