"""``train.amp: auto`` / ``train.channels_last: auto`` decided by timing: the faster candidate wins in either
direction (a fake timer), the decision is cached and read back, pinned values bypass it, and a run logs and stores
what was decided."""
import json
import logging

import pytest
import torch

from yolo import autotune, hardware
from yolo.autotune import choose, inference_settings

CPU = torch.device("cpu")
BF16_FASTER = {("none", False): 0.30, ("none", True): 0.26, ("bf16", False): 0.18, ("bf16", True): 0.15}
FP32_FASTER = {("none", False): 0.30, ("none", True): 0.21, ("bf16", False): 0.51, ("bf16", True): 0.44}


@pytest.fixture(autouse=True)
def own_cache(monkeypatch, tmp_path):
    """A cache of this test's own (the session's is shared with the other tests' runs)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.fixture
def native_bf16(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_capabilities", lambda: {"avx512_bf16": True, "cpu_name": "Test CPU"})


def fake_timer(monkeypatch, seconds: dict) -> list:
    """Replace the timing of a candidate by ``seconds[(amp, channels_last)]``; returns the candidates timed."""
    timed = []

    def time_candidates(cfg, device, num_classes, batch_size, options):
        timed.extend(options)
        return [seconds[option] for option in options]
    monkeypatch.setattr(autotune, "time_candidates", time_candidates)
    return timed


def no_timing(monkeypatch):
    monkeypatch.setattr(autotune, "time_candidates", lambda *args: pytest.fail("timed although it should not"))


@pytest.mark.parametrize("seconds,expected", [(BF16_FASTER, ("bf16", True)), (FP32_FASTER, ("none", True))])
def test_auto_takes_the_faster_candidate_and_the_next_run_reads_the_cache(tiny_config, native_bf16, monkeypatch,
                                                                         tmp_path, seconds, expected):
    timed = fake_timer(monkeypatch, seconds)
    choice = choose(tiny_config, CPU, 20, 8)
    assert (choice.amp, choice.channels_last, choice.source) == (*expected, "measured")
    assert sorted(timed) == sorted(seconds)                             # every candidate timed once
    assert {(f["amp"], f["channels_last"]): f["images_per_s"] for f in choice.figures} == \
        pytest.approx({k: 8 / s for k, s in seconds.items()})
    stored = json.loads((tmp_path / "cache" / "yolo" / "autotune.json").read_text())
    (entry,) = stored["entries"].values()
    assert entry["choice"] == {"amp": expected[0], "channels_last": expected[1]}
    assert entry["key"]["batch_size"] == 8 and entry["key"]["image_size"] == 64
    assert entry["key"]["torch"] == torch.__version__ and entry["key"]["device"]["name"] == "Test CPU"

    no_timing(monkeypatch)
    again = choose(tiny_config, CPU, 20, 8)
    assert (again.amp, again.channels_last, again.source) == (*expected, "cache")
    assert again.figures == choice.figures


def test_another_batch_size_image_size_or_model_is_timed_again(tiny_config, native_bf16, monkeypatch):
    timed = fake_timer(monkeypatch, BF16_FASTER)
    choose(tiny_config, CPU, 20, 8)
    assert len(timed) == 4
    choose(tiny_config, CPU, 20, 4)                 # batch
    tiny_config.data.img_size = 96
    choose(tiny_config, CPU, 20, 4)                 # image size
    tiny_config.model.channels = 48
    choose(tiny_config, CPU, 20, 4)                 # model
    choose(tiny_config, CPU, 20, 4)                 # the same again: cached
    tiny_config.model.pretrained = "imagenet"       # where the weights come from does not change the speed
    choose(tiny_config, CPU, 20, 4)
    assert len(timed) == 16
    choose(tiny_config, CPU, 20, 4, refresh=True)   # python -m yolo.bench autotune --refresh
    assert len(timed) == 20


def test_pinned_values_bypass_the_timing(tiny_config, native_bf16, monkeypatch, tmp_path):
    no_timing(monkeypatch)
    tiny_config.train.amp, tiny_config.train.channels_last = "none", False
    assert (choose(tiny_config, CPU, 20, 8).amp, choose(tiny_config, CPU, 20, 8).source) == ("none", "pinned")
    tiny_config.train.amp, tiny_config.train.channels_last = "bf16", True
    choice = choose(tiny_config, CPU, 20, 8)
    assert (choice.amp_dtype, choice.channels_last, choice.figures) == (torch.bfloat16, True, [])
    assert not (tmp_path / "cache").exists()
    tiny_config.train.channels_last = "auto"         # one pinned, one auto: only the other one is timed
    timed = fake_timer(monkeypatch, FP32_FASTER)
    choice = choose(tiny_config, CPU, 20, 8)
    assert sorted(timed) == [("bf16", False), ("bf16", True)] and (choice.amp, choice.channels_last) == ("bf16", True)


def test_bf16_is_no_candidate_where_it_is_emulated(tiny_config, monkeypatch):
    monkeypatch.setattr(hardware, "cpu_capabilities", lambda: {"avx2": True})
    timed = fake_timer(monkeypatch, FP32_FASTER)
    choice = choose(tiny_config, CPU, 20, 8)
    assert sorted(timed) == [("none", False), ("none", True)] and choice.amp_dtype is None


def test_an_unreadable_cache_is_ignored_and_rewritten(tiny_config, native_bf16, monkeypatch, tmp_path, caplog):
    (tmp_path / "cache" / "yolo").mkdir(parents=True)
    (tmp_path / "cache" / "yolo" / "autotune.json").write_text("{not json")
    timed = fake_timer(monkeypatch, BF16_FASTER)
    with caplog.at_level(logging.WARNING, logger="yolo.autotune"):
        assert choose(tiny_config, CPU, 20, 8).amp == "bf16"
    assert "ignoring the unreadable autotune cache" in caplog.text and len(timed) == 4
    assert json.loads((tmp_path / "cache" / "yolo" / "autotune.json").read_text())["version"] == \
        autotune.CACHE_VERSION


def test_timing_the_candidates_leaves_the_run_s_generators_alone(tiny_config):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    seconds = autotune.time_candidates(tiny_config, CPU, 20, 2, [("none", True), ("none", False)], warmup=1, steps=2)
    assert len(seconds) == 2 and min(seconds) > 0 and torch.equal(torch.get_rng_state(), before)


def test_a_run_logs_and_stores_what_auto_decided(tiny_config, native_bf16, monkeypatch):
    from yolo.checkpoint import load_checkpoint
    from yolo.fit import fit
    fake_timer(monkeypatch, BF16_FASTER)
    tiny_config.train.epochs = 1
    fit(tiny_config, progress=False)
    results = json.loads((tiny_config.run_dir / "results.json").read_text())
    ckpt = load_checkpoint(tiny_config.run_dir / "last.pt")
    for record in (results["autotune"], ckpt["autotune"]):
        assert (record["amp"], record["channels_last"], record["source"]) == ("bf16", True, "measured")
        assert len(record["figures"]) == 4
    assert results["precision"] == ckpt["precision"] == "bf16"
    assert ckpt["config"]["train"]["amp"] == ckpt["config"]["train"]["channels_last"] == "auto"  # re-decided on resume
    log = (tiny_config.run_dir / "train.log").read_text()
    assert "train.amp / train.channels_last auto on cpu: bf16 autocast, channels_last on (measured: fp32/off 26.7" \
        in log
    assert inference_settings(ckpt, tiny_config, CPU) == (torch.bfloat16, True)   # eval.py runs it the same way

    no_timing(monkeypatch)
    tiny_config.name = "again"
    fit(tiny_config, progress=False)
    assert json.loads((tiny_config.run_dir / "results.json").read_text())["autotune"]["source"] == "cache"

    # the cache now says otherwise (refreshed on a busier day): a resumed run keeps what it trained with
    fake_timer(monkeypatch, FP32_FASTER)
    assert choose(tiny_config, CPU, 20, 8, refresh=True).amp == "none"
    no_timing(monkeypatch)
    tiny_config.train.epochs = 2
    fit(tiny_config, resume=str(tiny_config.run_dir / "last.pt"), progress=False)
    resumed = load_checkpoint(tiny_config.run_dir / "last.pt")
    assert (resumed["autotune"]["source"], resumed["autotune"]["amp"], resumed["precision"]) == \
        ("checkpoint", "bf16", "bf16")


@pytest.mark.parametrize("trained,native,pinned,expected", [
    ({"amp": "none", "channels_last": False}, True, {}, (None, False)),
    ({"amp": "bf16", "channels_last": True}, True, {}, (torch.bfloat16, True)),
    ({"amp": "bf16", "channels_last": True}, False, {}, (None, True)),       # not emulated on a CPU without it
    ({"amp": "bf16", "channels_last": True}, True, {"amp": "none", "channels_last": False}, (None, False)),
    (None, True, {}, (torch.bfloat16, True)),                                  # an older checkpoint: the flags
])
def test_inference_runs_as_the_run_trained(monkeypatch, tiny_config, trained, native, pinned, expected):
    monkeypatch.setattr(hardware, "cpu_capabilities", lambda: {"avx512_bf16": native})
    for key, value in pinned.items():
        setattr(tiny_config.train, key, value)
    assert inference_settings({"autotune": trained}, tiny_config, CPU) == expected


def test_the_bench_shows_and_refreshes_the_cache(shapes_root, tiny_config, native_bf16, monkeypatch, capsys):
    from conftest import TINY
    from yolo.bench.cli import main
    timed = fake_timer(monkeypatch, FP32_FASTER)
    args = ["autotune", "--data-root", str(shapes_root), "--device", "cpu"]
    for section in ("data", "model"):
        for key, value in TINY[section].items():
            args += [f"--{section}.{key}", json.dumps(value)]
    assert main(args + ["--batch-size", "8"]) == 0
    assert "fp32, channels_last on (measured: fp32/off 26.7" in capsys.readouterr().out and len(timed) == 4
    assert main(args + ["--batch-size", "8"]) == 0 and len(timed) == 4
    assert "(cache:" in capsys.readouterr().out
    assert main(args + ["--batch-size", "8", "--refresh"]) == 0 and len(timed) == 8
    assert main(["autotune"]) == 0
    listing = capsys.readouterr().out
    assert "Test CPU" in listing and "64 px, batch 8 -> fp32, channels_last on" in listing
