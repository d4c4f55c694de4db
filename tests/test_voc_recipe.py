"""configs/voc.yaml run for real: the shipped recipe (ResNet-18 + FPN, SSD augmentation, SGD with warm-up and step
decay) from a torchvision-format ResNet-18 file, on real VOC images of ../shared/voc-sample, reduced for the suite
(16 images at 128 px, 6 epochs + 1 resumed; the full-size run is in docs/results.md)."""
import math
import re

import pytest
import torch

from conftest import REPO, shared_path


def _epoch_losses(log_text: str) -> list[float]:
    return [float(v) for v in re.findall(r"epoch \d+/\d+: .*total=([-\d.naninf]+)", log_text)]


@pytest.fixture
def recipe_devkit(tmp_path):
    """A VOC2012 folder of 16 real images (the sample, read in place through symlinks) with a split 'recipe'."""
    sample = shared_path("voc-sample", "VOCdevkit", "VOC2012")
    year = tmp_path / "VOCdevkit" / "VOC2012"
    (year / "ImageSets" / "Main").mkdir(parents=True)
    for sub in ("Annotations", "JPEGImages"):
        (year / sub).symlink_to(sample / sub)
    ids = (sample / "ImageSets" / "Main" / "trainval.txt").read_text().split()[:16]
    (year / "ImageSets" / "Main" / "recipe.txt").write_text("\n".join(ids) + "\n")
    return year


def test_the_voc_recipe_trains_evaluates_and_resumes_on_real_images(recipe_devkit, tmp_path, capsys):
    import torchvision

    import eval as eval_script
    import train
    from yolo.checkpoint import load_checkpoint
    torch.manual_seed(0)
    pretrained = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), pretrained)  # the torchvision format, untrained
    run = tmp_path / "runs" / "voc"
    recipe = ["--config", str(REPO / "configs" / "voc.yaml"), "--pretrained", str(pretrained),
              "--data-root", str(recipe_devkit),  # one VOC<name> folder given directly
              "--train", "2012:recipe", "--val", "2012:recipe", "--test", "2012:recipe", "--output-dir",
              str(tmp_path / "runs"), "--img-size", "128", "--batch-size", "4", "--workers", "0",
              "--warmup-epochs", "1", "--lr-steps", "[5]", "--eval-every", "6", "--log-every", "2", "--no-progress"]
    assert train.main(recipe + ["--epochs", "6"]) == 0
    losses = _epoch_losses((run / "train.log").read_text())
    assert len(losses) == 6 and all(math.isfinite(v) for v in losses), losses
    assert sum(losses[-2:]) < 0.9 * sum(losses[:2]), losses  # per-epoch means are noisy (SSD crops): ends of 2

    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["config"]["train"]["optimizer"] == "sgd" and ckpt["config"]["data"]["min_iou_crop"]
    assert ckpt["scheduler"]["last_epoch"] == 24  # 6 epochs of 4 steps, the decay at epoch 5 included
    assert ckpt["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-4)

    capsys.readouterr()
    assert eval_script.main(["--checkpoint", str(run / "last.pt")]) == 0
    assert "AP50 VOC07" in capsys.readouterr().out

    assert train.main(recipe + ["--epochs", "7", "--resume", str(run / "last.pt")]) == 0  # a longer run continues
    resumed = load_checkpoint(run / "last.pt")
    assert resumed["epoch"] == 7 and resumed["scheduler"]["last_epoch"] == 28
    assert len(_epoch_losses((run / "train.log").read_text())) == 7
