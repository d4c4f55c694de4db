"""DDP on the CPU with gloo and 2 ranks (each a process of its own, as torchrun starts them): one stop decision for
all ranks (a SIGTERM to one rank, a non-finite loss on one rank), a 2-rank run against the same training in one
process, evaluation that scores each image once; and the plumbing around it (GPU binding, wrappers, RNG states of
another GPU count). Every multi-process test has a timeout: a rank left waiting fails the test instead of hanging."""
import json
import multiprocessing
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, tiny_args
from yolo.checkpoint import load_checkpoint

CPU = torch.device("cpu")
TIMEOUT_S = 300


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_env(rank: int, world_size: int, port: int) -> dict:
    """What torchrun gives each rank (one thread each: two ranks share this machine's cores)."""
    return {"RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank),
            "LOCAL_WORLD_SIZE": str(world_size), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1"}


def _wait_for_file(path: Path, procs, timeout_s: float = TIMEOUT_S):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.is_file():
            return
        if any(p.poll() is not None for p in procs):
            raise AssertionError(f"a rank ended before {path} appeared: {[p.communicate() for p in procs]}")
        time.sleep(0.005)
    raise AssertionError(f"{path} never appeared")


def _communicate(procs) -> list:
    """(returncode, stderr) of each process, killing them all when one does not end in time."""
    try:
        errors = [p.communicate(timeout=TIMEOUT_S)[1] for p in procs]
        return [(p.returncode, err) for p, err in zip(procs, errors)]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        raise AssertionError(f"a rank hung: {[p.communicate()[1][-2000:] for p in procs]}") from None


def test_a_sigterm_to_one_rank_stops_both_after_the_same_step_with_one_last_pt(tiny_config):
    args = tiny_args(tiny_config) + ["--epochs", "6", "--eval-every", "6", "--amp", "none", "--channels-last",
                                     "false", "--no-progress", "--name", "ddp-stop"]
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, str(REPO / "train.py"), *args], cwd=REPO, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env={**os.environ, **_rank_env(rank, 2, port)}) for rank in (0, 1)]
    run = tiny_config.run_dir.parent / "ddp-stop"
    _wait_for_file(run / "last.pt", procs)         # epoch 1 is done: the signal comes during epoch 2 or later
    procs[1].send_signal(signal.SIGTERM)
    (code0, err0), (code1, err1) = _communicate(procs)

    assert (code0, code1) == (143, 143), (err0[-3000:], err1[-3000:])   # 128 + SIGTERM, on both ranks
    assert "received SIGTERM" in err1 and "another rank received SIGTERM" in err0
    stopped = [re.findall(r"stopped at epoch (\d+) step (\d+)", err) for err in (err0, err1)]
    assert len(stopped[0]) == len(stopped[1]) == 1 and stopped[0] == stopped[1], stopped
    ckpt = load_checkpoint(run / "last.pt")
    assert (ckpt["epoch"], ckpt["step_in_epoch"]) == tuple(map(int, stopped[0][0]))
    assert ckpt["epoch"] < 6 and not (run / "results.json").exists()
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    assert "resume with --resume" in err0 and "Traceback" not in err0 + err1


# ---------------------------------------------------------------------------------------------------------------
# ranks started with multiprocessing, which can patch the code of one rank


def _run_ranks(target, *args, world_size: int = 2) -> list[int]:
    """Exit codes of ``target(rank, world_size, port, *args)`` in ``world_size`` spawned processes."""
    context = multiprocessing.get_context("spawn")
    port = _free_port()
    procs = [context.Process(target=target, args=(rank, world_size, port, *args)) for rank in range(world_size)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + TIMEOUT_S
    for p in procs:
        p.join(max(1.0, deadline - time.monotonic()))
    hung = [p for p in procs if p.is_alive()]
    for p in hung:
        p.kill()
    assert not hung, "a rank hung"
    return [p.exitcode for p in procs]


def _as_rank(rank, world_size, port):
    os.environ.update(_rank_env(rank, world_size, port))
    torch.set_num_threads(1)


def _nan_on_rank_1(rank, world_size, port, cfg_dict, out_dir):
    """Rank 1's second loss is NaN, at a step where every rank reads its logged losses (log_every 2): rank 1 alone
    would see it there, while rank 0 went on into a gradient all-reduce that never comes. Each rank writes what
    ``fit`` raised."""
    from yolo import engine
    from yolo.config import from_dict
    from yolo.engine import NonFiniteLoss
    from yolo.fit import fit
    _as_rank(rank, world_size, port)
    if rank == 1:
        real, calls = engine.detection_loss, []

        def poisoned(*args, **kwargs):
            terms = real(*args, **kwargs)
            calls.append(1)
            if len(calls) == 2:
                terms["cls"] = terms["cls"] * float("nan")
                terms["total"] = terms["total"] + terms["cls"]
            return terms
        engine.detection_loss = poisoned
    try:
        fit(from_dict(cfg_dict), progress=False)
        outcome = "finished"
    except NonFiniteLoss as exc:
        outcome = str(exc)
    Path(out_dir, f"rank{rank}.txt").write_text(outcome)


def test_a_non_finite_loss_on_one_rank_stops_every_rank_with_the_message(tiny_config, tmp_path):
    tiny_config.train.amp, tiny_config.train.channels_last = "none", False
    assert _run_ranks(_nan_on_rank_1, tiny_config.to_dict(), str(tmp_path)) == [0, 0]
    outcomes = [(tmp_path / f"rank{rank}.txt").read_text() for rank in (0, 1)]
    for outcome in outcomes:
        assert "non-finite loss on rank 1 at epoch 0 step 1" in outcome and "every rank stopped" in outcome
    assert "cls=nan" in outcomes[1] and "total=nan" in outcomes[1]
    assert not (tiny_config.run_dir / "last.pt").exists()     # nothing saved after the bad step


def _train_recording_evaluations(rank, world_size, port, cfg_dict, out_dir):
    """``fit`` on one rank; every call of the metrics (the scoring of an evaluation) is recorded with its
    detections."""
    from yolo import engine
    from yolo.config import from_dict
    from yolo.fit import fit
    _as_rank(rank, world_size, port)
    real, calls = engine.evaluate_detections, []

    def recorded(split, detections, *args, **kwargs):
        calls.append({"images": [r.image_id for r in split.records], "detections": detections})
        return real(split, detections, *args, **kwargs)
    engine.evaluate_detections = recorded
    fit(from_dict(cfg_dict), progress=False)
    Path(out_dir, f"evaluations{rank}.json").write_text(json.dumps(calls))


def _split_devkit(shapes_root: Path, tmp_path: Path, val_images: int) -> Path:
    """The tiny shapes devkit, read in place, with a validation split of ``val_images`` images."""
    devkit = tmp_path / "VOCdevkit"
    main = devkit / "VOCshapes" / "ImageSets" / "Main"
    main.mkdir(parents=True)
    for sub in ("Annotations", "JPEGImages"):
        (devkit / "VOCshapes" / sub).symlink_to(shapes_root / "VOCshapes" / sub)
    shutil.copy(shapes_root / "classes.txt", devkit / "classes.txt")
    source = shapes_root / "VOCshapes" / "ImageSets" / "Main"
    shutil.copy(source / "train.txt", main / "train.txt")
    (main / "val7.txt").write_text("\n".join((source / "val.txt").read_text().split()[:val_images]) + "\n")
    return devkit


def _one_process_reference(cfg) -> dict:
    """What 2 DDP ranks compute, in one process: each global batch as the two ranks' halves (rank r's samples are
    r, r + 2, ... of it), batch norm over each half, their gradients averaged (DDP's all-reduce), the running
    statistics of rank 0's half (DDP broadcasts rank 0's buffers, and rank 0 writes the checkpoint), one step."""
    from yolo.engine import batch_to_device, grid_for
    from yolo.fit import _setup
    from yolo.losses import detection_loss
    from yolo.targets import assign_targets
    parts, _ = _setup(cfg, None, CPU, 0, 1)
    model, optimizer, loader = parts["model"], parts["optimizer"], parts["train_loader"]
    for epoch in range(cfg.train.epochs):
        loader.sampler.set_epoch(epoch)
        model.train()
        for images, targets in loader:
            images, boxes, labels = batch_to_device(images, targets, CPU, channels_last=False)
            optimizer.zero_grad(set_to_none=True)
            for half in (0, 1):
                kept = [b.clone() for b in model.buffers()]
                x, image_hw = images[half::2], tuple(images.shape[-2:])
                grid = grid_for(image_hw, model.strides, CPU)
                assigned = assign_targets(boxes[half::2], labels[half::2], grid, image_hw, cfg.model.level_thresholds)
                (detection_loss(model(x), assigned, grid, cfg.loss, cls_loss=cfg.loss.cls_loss)["total"] / 2).backward()
                if half == 1:
                    for buffer, value in zip(model.buffers(), kept):
                        buffer.copy_(value)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            optimizer.step()
            parts["scheduler"].step()
    return model.state_dict()


def test_two_ranks_train_as_one_process_with_the_same_global_batch_and_score_each_image_once(
        tiny_config, shapes_root, tmp_path):
    from yolo.fit import evaluate_checkpoint
    cfg = tiny_config
    cfg.data.dataset, cfg.data.root = "voc", str(_split_devkit(shapes_root, tmp_path, val_images=7))
    cfg.data.val = "shapes:val7"             # 7 images: rank 1's shard is padded with a repeat of the first one
    cfg.train.amp, cfg.train.channels_last = "none", False
    cfg.eval.conf_thresh = 0.0               # every image has detections, whose scores depend on every weight
    assert _run_ranks(_train_recording_evaluations, cfg.to_dict(), str(tmp_path)) == [0, 0]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reference = _one_process_reference(cfg)
    finally:
        torch.set_num_threads(threads)
    ckpt = load_checkpoint(cfg.run_dir / "last.pt")
    assert ckpt["epoch"] == 2 and ckpt["config"]["train"]["batch_size"] == 8
    # Tolerance 0: with 2 ranks, DDP's mean of the gradients and the halves' accumulated g0 / 2 + g1 / 2 are the same
    # floating-point numbers, and both runs compute on one thread. (A plain 1-process run, with batch norm over the
    # whole batch of 8, ends 3.2 away in the largest weight difference: that is what the halves account for.)
    for key, value in reference.items():
        assert torch.equal(ckpt["model"][key], value), key

    rank0 = json.loads((tmp_path / "evaluations0.json").read_text())
    assert json.loads((tmp_path / "evaluations1.json").read_text()) == []    # rank 1 infers its shard, no more
    assert len(rank0) == 2                                                    # eval_every 1, 2 epochs
    val_ids = (Path(cfg.data.root) / "VOCshapes/ImageSets/Main/val7.txt").read_text().split()
    assert rank0[-1]["images"] == val_ids
    _, _, detections = evaluate_checkpoint(ckpt, cfg, cfg.data.val)          # one process, the same weights
    gathered = rank0[-1]["detections"]
    assert len(gathered) == len(detections) and len(gathered) > 7 * 50
    assert [d["image_id"] for d in gathered] == [d["image_id"] for d in detections]   # no image twice
    torch.testing.assert_close(torch.tensor([d["score"] for d in gathered]),
                               torch.tensor([d["score"] for d in detections]), atol=1e-5, rtol=1e-4)
    results = json.loads((cfg.run_dir / "results.json").read_text())
    metrics, _, _ = evaluate_checkpoint(ckpt, cfg, cfg.data.val)
    assert results["val"]["voc07_map50"] == pytest.approx(metrics["voc07_map50"], abs=1e-6)


def _train_recording_the_error(rank, world_size, port, cfg_dict, out_dir):
    from yolo.config import from_dict
    from yolo.data.layout import UnreadableImages
    from yolo.fit import fit
    _as_rank(rank, world_size, port)
    try:
        fit(from_dict(cfg_dict), progress=False)
        outcome = "finished"
    except UnreadableImages as exc:
        outcome = str(exc)
    except Exception as exc:    # anything else is a failure the test shows with its rank
        outcome = f"{type(exc).__name__}: {exc}"
    Path(out_dir, f"rank{rank}.txt").write_text(outcome)


def test_an_image_that_fails_to_decode_in_rank_1s_shard_stops_every_rank_with_its_path(tiny_config, shapes_root,
                                                                                      tmp_path):
    """Rank 0 alone scores the gathered detections: it used to raise alone, and rank 1, waiting for the metrics,
    died on the closed connection without the message."""
    root = tmp_path / "copy"
    shutil.copytree(shapes_root, root)
    val_ids = (root / "VOCshapes" / "ImageSets" / "Main" / "val.txt").read_text().split()
    image = root / "VOCshapes" / "JPEGImages" / f"{val_ids[1]}.jpg"       # rank 1 infers images 1, 3, ...
    image.write_bytes(image.read_bytes()[:300])                           # a header that reads, pixels that do not
    cfg = tiny_config
    cfg.data.root = str(root)
    cfg.train.amp, cfg.train.channels_last = "none", False
    assert _run_ranks(_train_recording_the_error, cfg.to_dict(), str(tmp_path)) == [0, 0]
    for rank in (0, 1):
        outcome = (tmp_path / f"rank{rank}.txt").read_text()
        assert f"{val_ids[1]}.jpg (failed to decode)" in outcome and "--skip-unreadable true" in outcome, \
            f"rank {rank}: {outcome}"


# ---------------------------------------------------------------------------------------------------------------
# plumbing


def test_wrappers_unwrap_in_either_order(tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from yolo.engine import unwrap
    from yolo.fit import _wrap
    from yolo.config import Config
    model = torch.nn.Linear(2, 2)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        cfg = Config()
        cfg.train.compile = True
        wrapped = _wrap(model, cfg, CPU, world_size=2)
        assert isinstance(wrapped._orig_mod, DistributedDataParallel)   # compile(DDP(model)): DDP inside
        assert unwrap(wrapped) is model and unwrap(torch.compile(DistributedDataParallel(model))) is model
        assert unwrap(DistributedDataParallel(torch.compile(model))) is model
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("visible,local_rank,expected", [(4, 3, 3), (1, 3, 0), (1, 0, 0), (2, 3, None)])
def test_each_rank_takes_its_gpu_or_the_one_it_sees(monkeypatch, visible, local_rank, expected):
    from yolo import distributed
    from yolo.errors import ConfigError
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setenv("LOCAL_RANK", str(local_rank))
    if expected is None:
        with pytest.raises(ConfigError, match="LOCAL_RANK 3 but this process sees 2 GPUs"):
            distributed.local_device("cuda")
        return
    assert distributed.local_device("cuda") == torch.device("cuda", expected) == chosen[0]
    assert distributed.local_device("cuda:1") == torch.device("cuda", 1)   # an explicit index is kept


@pytest.mark.parametrize("saved,here", [(2, 1), (1, 0), (0, 2)])
def test_rng_states_of_another_gpu_count_are_restored_where_they_apply(monkeypatch, saved, here):
    from yolo.checkpoint import rng_state, set_rng_state
    state = rng_state()
    state["cuda"] = [torch.full((8,), i, dtype=torch.uint8) for i in range(saved)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: here > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: here)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, index: restored.append((int(s[0]), index)))
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    notes = set_rng_state({**state, "torch": torch.get_rng_state()})
    assert torch.equal(torch.rand(3), expected)                    # what applies is restored
    assert restored == [(i, i) for i in range(min(saved, here))]
    assert notes and f"{saved} GPUs and this machine has {here}" in notes[0]


def test_workers_are_shared_by_the_ranks_of_a_host(monkeypatch):
    from yolo.data.loader import resolve_workers
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    cuda = torch.device("cuda", 0)
    assert [resolve_workers("auto", cuda, ranks) for ranks in (1, 8)] == [16, 7]
    assert resolve_workers(3, cuda, 8) == 3                          # a number is taken as given


def _preempt_rank_1(rank, world_size, port, cfg_dict, out_dir):
    """A job's rank under ``run_preemptible``: rank 1 alone gets submitit's preemption signal at its 6th step; the
    handler submitit installed (here a recorder) must then run on every rank, after ``last.pt`` is saved."""
    from yolo import engine
    from yolo.cluster import PREEMPTION_SIGNAL, RunInterrupted, run_preemptible
    from yolo.config import from_dict
    from yolo.fit import fit
    _as_rank(rank, world_size, port)
    cfg, handled = from_dict(cfg_dict), []
    signal.signal(PREEMPTION_SIGNAL, lambda signum, frame: handled.append(cfg.run_dir.joinpath("last.pt").is_file()))
    if rank == 1:
        real, calls = engine.train_step, []

        def step(*args, **kwargs):
            calls.append(1)
            if len(calls) == 6:
                os.kill(os.getpid(), PREEMPTION_SIGNAL)
            return real(*args, **kwargs)
        engine.train_step = step

    def work(stop):
        fit(cfg, progress=False, stop=stop)
        if stop.requested:
            raise RunInterrupted("stopped")
    run_preemptible(work)
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(handled))


def test_a_preemption_signal_to_one_rank_of_a_job_requeues_from_every_rank(tiny_config, tmp_path):
    tiny_config.train.amp, tiny_config.train.channels_last = "none", False
    assert _run_ranks(_preempt_rank_1, tiny_config.to_dict(), str(tmp_path)) == [0, 0]
    for rank in (0, 1):   # submitit's handler ran once on each rank, last.pt already written
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == [True]
    ckpt = load_checkpoint(tiny_config.run_dir / "last.pt")
    assert (ckpt["epoch"], ckpt["step_in_epoch"]) == (1, 2)     # step 6 = epoch 2, step 2 of 4
