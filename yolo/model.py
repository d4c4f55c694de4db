"""The detector: ResNet-18 backbone, FPN (or SPP) neck, YOLOv1-style heads (one box per cell, no anchors).

Every cell of every level predicts 1 objectness logit, C class logits and 4 box logits (tx, ty, tw, th; see
``yolo.boxes.decode_cell``). The forward pass returns them for all levels flattened into one tensor
(N, A, 1 + C + 4), levels in order of increasing stride, cells row-major: the layout of ``yolo.targets.Grid``.
"""
import logging
import socket
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from yolo.checkpoint import CheckpointError, safe_load
from yolo.errors import ConfigError
from yolo.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from yolo.losses import prior_bias

logger = logging.getLogger(__name__)

IMAGENET_URL = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
DOWNLOAD_TIMEOUT_S = 15


def conv_bn(c_in: int, c_out: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False), nn.BatchNorm2d(c_out),
                         nn.LeakyReLU(0.1, inplace=True))


class Backbone(nn.Module):
    """ResNet-18 returning C3, C4, C5 (strides 8, 16, 32; 128, 256, 512 channels)."""
    channels = (128, 256, 512)

    def __init__(self, zero_init_residual: bool = False):
        super().__init__()
        # zero_init_residual: each residual block starts as the identity (Goyal et al. 2017, "Accurate, Large
        # Minibatch SGD"), which speeds up training from scratch; a pretrained backbone overwrites it anyway
        r = torchvision.models.resnet18(weights=None, zero_init_residual=zero_init_residual)
        self.stem = nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool, r.layer1)
        self.layer2, self.layer3, self.layer4 = r.layer2, r.layer3, r.layer4

    def forward(self, x):
        c3 = self.layer2(self.stem(x))
        c4 = self.layer3(c3)
        return c3, c4, self.layer4(c4)


class FPN(nn.Module):
    """Top-down feature pyramid (Lin et al., CVPR 2017) over C3-C5 -> P3, P4, P5 with ``channels`` each."""
    strides = (8, 16, 32)

    def __init__(self, in_channels, channels: int):
        super().__init__()
        self.lateral = nn.ModuleList(conv_bn(c, channels, 1) for c in in_channels)
        self.smooth = nn.ModuleList(conv_bn(channels, channels, 3) for _ in in_channels)

    def forward(self, feats):
        laterals = [lat(f) for lat, f in zip(self.lateral, feats)]
        for i in range(len(laterals) - 1, 0, -1):  # coarse to fine
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:],
                                                              mode="nearest")
        return [smooth(p) for smooth, p in zip(self.smooth, laterals)]


class SPPNeck(nn.Module):
    """The single-level reference baseline: C5 -> SPP (max-pools 5, 9, 13) -> spatial-attention gate."""
    strides = (32,)

    def __init__(self, in_channels, channels: int):
        super().__init__()
        self.reduce = conv_bn(in_channels[-1], channels, 1)
        self.fuse = conv_bn(4 * channels, channels, 1)
        self.attention = nn.Conv2d(channels, 1, 7, padding=3)  # SAM-style gate: one weight per position

    def forward(self, feats):
        x = self.reduce(feats[-1])
        x = self.fuse(torch.cat([x] + [F.max_pool2d(x, k, 1, k // 2) for k in (5, 9, 13)], dim=1))
        return [x * torch.sigmoid(self.attention(x))]


class Head(nn.Module):
    """YOLOv1-style prediction head for one level: a few 3x3 convs, then 1 + C + 4 outputs per cell.

    ``decoupled``: the class logits get their own conv tower and objectness + box theirs (YOLOX, Ge et al. 2021,
    whose decoupled head converges much faster than a shared one); the outputs keep the same layout.
    """

    def __init__(self, channels: int, num_classes: int, num_convs: int, prior_prob: float, decoupled: bool = False):
        super().__init__()
        self.decoupled = decoupled
        self.convs = nn.Sequential(*[conv_bn(channels, channels) for _ in range(num_convs)])
        self.pred = nn.Conv2d(channels, 1 + num_classes + 4 if not decoupled else 1 + 4, 1)
        bias_prior = [(self.pred, 1 if decoupled else 1 + num_classes)]
        if decoupled:
            self.cls_convs = nn.Sequential(*[conv_bn(channels, channels) for _ in range(num_convs)])
            self.cls_pred = nn.Conv2d(channels, num_classes, 1)
            bias_prior.append((self.cls_pred, num_classes))
        for conv, prior_outputs in bias_prior:
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
            with torch.no_grad():  # objectness and classes start at the prior probability (focal loss paper, 3.3)
                conv.bias[:prior_outputs] = prior_bias(prior_prob)

    def forward(self, x):
        out = _fp32_conv(self.pred, self.convs(x))     # (N, 1 + C + 4, H, W) or (N, 1 + 4, H, W)
        if self.decoupled:
            out = torch.cat([out[:, :1], _fp32_conv(self.cls_pred, self.cls_convs(x)), out[:, 1:]], dim=1)
        return out.permute(0, 2, 3, 1).flatten(1, 2)   # (N, H * W, 1 + C + 4)


def _fp32_conv(conv: nn.Conv2d, features: torch.Tensor) -> torch.Tensor:
    """The prediction convolution in float32 even under autocast: bf16 keeps 8 bits of mantissa, so a logit of 10
    would be rounded to a multiple of 0.06 before the losses' log-space arithmetic; the 1x1 conv costs little."""
    with torch.autocast(features.device.type, enabled=False):
        return conv(features.float())


class YOLO(nn.Module):
    """uint8 or float images (N, 3, H, W) in 0-255 RGB -> predictions (N, A, 1 + C + 4).

    ImageNet normalisation happens here, on the device, so the data loader moves uint8 (4x fewer bytes).
    """

    def __init__(self, num_classes: int, neck: str = "fpn", channels: int = 128, head_convs: int = 2,
                 prior_prob: float = 0.01, decoupled_head: bool = False, zero_init_residual: bool = False):
        super().__init__()
        self.num_classes = num_classes
        self.backbone = Backbone(zero_init_residual)
        necks = {"fpn": FPN, "spp": SPPNeck}
        if neck not in necks:
            raise ValueError(f"unknown neck {neck!r}; choose one of: {', '.join(necks)}")
        self.neck = necks[neck](Backbone.channels, channels)
        self.strides = self.neck.strides
        self.heads = nn.ModuleList(Head(channels, num_classes, head_convs, prior_prob, decoupled_head)
                                   for _ in self.strides)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255, persistent=False)

    def forward(self, images):
        x = (images.to(self.mean.dtype) - self.mean) / self.std
        levels = self.neck(self.backbone(x))
        return torch.cat([head(p) for head, p in zip(self.heads, levels)], dim=1)  # (N, A, 1 + C + 4)


def build_model(cfg, num_classes: int) -> YOLO:
    """The detector of a ``ModelConfig``, with the backbone initialised as ``cfg.pretrained`` says."""
    model = YOLO(num_classes, cfg.neck, cfg.channels, cfg.head_convs, cfg.prior_prob, cfg.decoupled_head,
                 cfg.zero_init_residual)
    if cfg.pretrained != "none":
        state = imagenet_state_dict() if cfg.pretrained == "imagenet" else _load_file(cfg.pretrained)
        load_backbone(model.backbone, state)
    return model


def imagenet_state_dict(url: str | None = None) -> dict:
    """torchvision's ImageNet ResNet-18 weights, downloaded once into the torch hub cache.

    Without network access this fails within DOWNLOAD_TIMEOUT_S with a message naming the alternatives.
    """
    url = url or IMAGENET_URL
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        return torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=False, check_hash=True)
    except OSError as exc:  # URLError, timeouts and refused connections are all OSErrors
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        raise ConfigError(  # the scripts print it as one error and exit 2, no traceback
            f"could not download the ImageNet ResNet-18 weights from {url} ({exc}); "
            f"either train from scratch with --pretrained none, or download that file on a machine with internet "
            f"and pass it with --pretrained PATH (or place it in {cache}).") from None
    finally:
        socket.setdefaulttimeout(previous)


def _load_file(path: str) -> dict:
    if not Path(path).is_file():
        raise FileNotFoundError(f"--pretrained {path}: no such file (use 'imagenet', 'none' or a state-dict path)")
    state = safe_load(path, "ResNet-18 state dict")
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise CheckpointError(f"--pretrained {path}: expected a dict of tensors (a torchvision state dict), "
                              f"got {type(state).__name__}")
    return state


def load_backbone(backbone: Backbone, state: dict):
    """Load a torchvision-format ResNet-18 state dict (its ``fc`` layer is ignored) into the backbone."""
    names = {"conv1": "stem.0", "bn1": "stem.1", "layer1": "stem.4"}
    renamed = {}
    for key, value in state.items():
        head, _, rest = key.partition(".")
        if head != "fc":
            renamed[f"{names.get(head, head)}.{rest}"] = value
    missing, unexpected = backbone.load_state_dict(renamed, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"not a ResNet-18 state dict: missing {missing[:5]}, unexpected {unexpected[:5]}")
    logger.info("loaded %d backbone tensors", len(renamed))
