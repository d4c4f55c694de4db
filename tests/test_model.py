"""The detector, the detection loss and decoding, end to end on tensors."""
import functools
import http.server
import threading

import pytest
import torch

from conftest import tiny_args
from yolo.config import LossConfig, ModelConfig
from yolo.errors import ConfigError
from yolo.decode import decode
from yolo.losses import CLS_LOSSES, CONF_LOSSES, SIGMOID_CLS_LOSSES, detection_loss, init_loss_state, prior_bias
from yolo.model import YOLO, build_model, imagenet_state_dict, load_backbone
from yolo.targets import assign_targets, make_grid

C = 5
SIZE = 64


@pytest.mark.parametrize("neck,cells", [("fpn", 64 + 16 + 4), ("spp", 4)])
def test_forward_layout_and_prior_initialisation(neck, cells):
    torch.manual_seed(0)
    model = YOLO(C, neck=neck, channels=32, prior_prob=0.01).eval()
    with torch.no_grad():
        preds = model(torch.randint(0, 256, (2, 3, SIZE, SIZE), dtype=torch.uint8))
    assert preds.shape == (2, cells, 1 + C + 4) and model.strides == ((8, 16, 32) if neck == "fpn" else (32,))
    # the pred-layer weights are tiny, so objectness and class probabilities start near the prior
    probs = torch.sigmoid(preds[..., :1 + C])
    assert probs.mean().item() == pytest.approx(0.01, rel=0.3)


@pytest.mark.parametrize("decoupled", [False, True])
def test_the_prediction_convolutions_run_in_fp32_under_bf16_autocast(decoupled):
    """The logits are float32 and equal to the fp32 conv of the (bf16) head features: they are not rounded to
    bf16 before the losses' log-space arithmetic."""
    torch.manual_seed(0)
    model = YOLO(C, channels=32, decoupled_head=decoupled).eval()
    head = model.heads[0]
    with torch.no_grad():
        head.pred.weight.normal_(std=1.0)        # large logits, where bf16 rounding shows
        features = torch.randn(1, 32, 4, 4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = head(features)                               # (1, 16, 1 + C + 4)
            towers = head.convs(features)
        expected = head.pred(towers.float()).permute(0, 2, 3, 1).flatten(1, 2)
    assert out.dtype == torch.float32 and towers.dtype == torch.bfloat16
    conf_box = out[..., [0, -4, -3, -2, -1]] if decoupled else out
    assert torch.equal(conf_box, expected[..., [0, -4, -3, -2, -1]] if decoupled else expected)
    assert not torch.equal(out, out.bfloat16().float())     # bf16 logits would have lost these digits


def test_uint8_and_float_inputs_agree():
    model = YOLO(C, channels=32).eval()
    images = torch.randint(0, 256, (1, 3, SIZE, SIZE), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(model(images), model(images.float()))


def _batch(n_boxes=(2, 1)):
    boxes = torch.zeros(len(n_boxes), max(n_boxes), 4)
    labels = torch.full((len(n_boxes), max(n_boxes)), -1)
    examples = [([4.0, 6.0, 30.0, 40.0], 1), ([34.0, 20.0, 60.0, 62.0], 3), ([10.0, 12.0, 20.0, 22.0], 0)]
    k = 0
    for i, n in enumerate(n_boxes):
        for j in range(n):
            boxes[i, j] = torch.tensor(examples[k % 3][0])
            labels[i, j] = examples[k % 3][1]
            k += 1
    return boxes, labels


def _perfect_preds(targets, grid, margin=12.0):
    """Raw outputs that decode exactly to the assigned targets with near-certain scores."""
    from yolo.boxes import encode_cell
    n, a = targets["obj"].shape
    preds = torch.full((n, a, 1 + C + 4), -margin)
    preds[..., 0] = torch.where(targets["obj"] > 0, margin, -margin)
    preds[..., 1:1 + C] += 2 * margin * torch.nn.functional.one_hot(targets["labels"].clamp(min=0), C)
    enc = encode_cell(targets["boxes_xyxy"].reshape(-1, 4), grid.cells_xy.repeat(n, 1), grid.strides.repeat(n))
    preds[..., -4:] = torch.cat([torch.logit(enc[:, :2].clamp(1e-4, 1 - 1e-4)), enc[:, 2:]], -1).view(n, a, 4)
    return preds


@pytest.mark.parametrize("cls_loss,conf_loss", [(name, "mse") for name in CLS_LOSSES]
                         + [("ce", name) for name in CONF_LOSSES if name != "mse"]
                         + [("ce", "mse_iou"), ("ce", "bce_iou")])
@pytest.mark.parametrize("box_loss", ["yolov1", "giou"])
def test_perfect_predictions_cost_less_than_random_ones(cls_loss, conf_loss, box_loss):
    grid = make_grid((SIZE, SIZE), (8, 16, 32))
    boxes, labels = _batch()
    targets = assign_targets(boxes, labels, grid, (SIZE, SIZE), (24.0, 48.0))
    cfg = LossConfig(cls_loss=cls_loss, conf_loss=conf_loss.removesuffix("_iou"), box_loss=box_loss,
                     conf_target="iou" if conf_loss.endswith("_iou") else "auto")
    perfect = detection_loss(_perfect_preds(targets, grid), targets, grid, cfg,
                             state=init_loss_state(cls_loss, C))
    random = detection_loss(torch.randn(2, grid.num_cells, 1 + C + 4), targets, grid, cfg,
                            state=init_loss_state(cls_loss, C))
    expected = {"obj", "noobj", "cls", "total"} | ({"box_xy", "box_wh"} if box_loss == "yolov1" else {"box_iou"})
    assert set(perfect) == expected
    for name in expected - {"box_xy", "total"}:  # BCE on soft offsets never reaches 0
        assert perfect[name].item() < 1e-3 and random[name].item() > perfect[name].item()
    assert random["total"].item() > perfect["total"].item()
    total = sum(v for k, v in perfect.items() if k != "total") - perfect["cls"] + perfect["cls"] * cfg.cls_weight
    torch.testing.assert_close(perfect["total"], total)


def test_an_image_without_objects_gives_a_finite_loss_and_gradient():
    grid = make_grid((SIZE, SIZE), (8, 16, 32))
    targets = assign_targets(torch.zeros(2, 8, 4), torch.full((2, 8), -1), grid, (SIZE, SIZE), (24.0, 48.0))
    preds = torch.randn(2, grid.num_cells, 1 + C + 4, requires_grad=True)
    for box_loss in ("yolov1", "giou"):
        terms = detection_loss(preds, targets, grid, LossConfig(box_loss=box_loss, cls_loss="sigmoid_focal"))
        terms["total"].backward()
        assert torch.isfinite(terms["total"]) and torch.isfinite(preds.grad).all()
        assert terms["cls"].item() == 0 and terms["obj"].item() == 0 and terms["noobj"].item() > 0


def test_decode_recovers_perfect_predictions():
    grid = make_grid((SIZE, SIZE), (8, 16, 32))
    boxes, labels = _batch()
    targets = assign_targets(boxes, labels, grid, (SIZE, SIZE), (24.0, 48.0))
    dets = decode(_perfect_preds(targets, grid), grid, sigmoid_cls=False, conf_thresh=0.5)
    for i, det in enumerate(dets):
        valid = labels[i] >= 0
        order = torch.argsort(det["labels"])
        torch.testing.assert_close(det["boxes_xyxy"][order], boxes[i][valid][torch.argsort(labels[i][valid])],
                                   atol=1e-2, rtol=0)
        assert sorted(det["labels"].tolist()) == sorted(labels[i][valid].tolist())
        assert (det["scores"] > 0.99).all()


def test_decode_keeps_top_k_and_suppresses_duplicates():
    grid = make_grid((SIZE, SIZE), (32,))
    preds = torch.zeros(1, grid.num_cells, 1 + C + 4)
    preds[..., 0] = 5.0
    preds[..., 1] = 10.0              # every cell says class 0 ...
    preds[..., -2:] = 2.0             # ... with a box e^2 * 32 = 236 px wide: all four overlap (IoU >= 0.6)
    dets = decode(preds, grid, sigmoid_cls=False, conf_thresh=0.01, nms_iou=0.5, max_det=100)
    assert (dets[0]["labels"] == 0).sum().item() == 1  # NMS keeps one of the four class-0 boxes
    capped = decode(preds, grid, sigmoid_cls=False, conf_thresh=0.0, nms_iou=1.0, max_det=3)
    assert len(capped[0]["scores"]) == 3 and (capped[0]["scores"][:-1] >= capped[0]["scores"][1:]).all()


def test_sigmoid_scoring_is_used_for_sigmoid_losses_only():
    assert SIGMOID_CLS_LOSSES == {"sigmoid_focal", "poly1_focal", "efl"}
    grid = make_grid((SIZE, SIZE), (32,))
    preds = torch.full((1, grid.num_cells, 1 + C + 4), 0.0)
    preds[..., 0] = 20.0
    preds[..., 1:1 + C] = 2.0  # every class equally likely
    softmax = decode(preds, grid, sigmoid_cls=False, conf_thresh=0.0, nms_iou=1.0)[0]["scores"]
    sigmoid = decode(preds, grid, sigmoid_cls=True, conf_thresh=0.0, nms_iou=1.0)[0]["scores"]
    assert softmax.max().item() == pytest.approx(1 / C, rel=1e-4)
    assert sigmoid.max().item() == pytest.approx(torch.sigmoid(torch.tensor(2.0)).item(), rel=1e-4)


@pytest.mark.parametrize("scoring,cls_loss,warmup,epoch,expected", [
    ("auto", "ce", 0, 5, False), ("auto", "sigmoid_focal", 0, 5, True),
    ("auto", "sigmoid_focal", 3, 2, False),      # still in the CE warm-up: the head was trained as a softmax
    ("auto", "sigmoid_focal", 3, 3, True),
    ("softmax", "sigmoid_focal", 0, 5, False),   # the reference's decoding of every head
    ("sigmoid", "ce", 0, 5, True),
    ("auto", "efl", 0, 5, True), ("auto", "poly1_focal", 0, 5, True), ("auto", "seesaw", 0, 5, False),
    ("auto", "my_losses:sigmoid_poly", 0, 5, False),    # a user's loss is never imported to know: softmax ...
    ("sigmoid", "my_losses:sigmoid_poly", 0, 5, True)])  # ... unless the user says otherwise
def test_eval_cls_scoring_chooses_softmax_or_sigmoid(scoring, cls_loss, warmup, epoch, expected):
    from yolo.config import Config
    from yolo.engine import sigmoid_scoring
    cfg = Config()
    cfg.eval.cls_scoring, cfg.loss.cls_loss, cfg.loss.cls_loss_warmup_epochs = scoring, cls_loss, warmup
    assert sigmoid_scoring(cfg, epoch) is expected


@pytest.mark.parametrize("cls_loss", ["ce", "sigmoid_focal"])
def test_a_tiny_model_overfits_one_batch(cls_loss):
    torch.manual_seed(0)
    model = YOLO(C, channels=32, head_convs=1)
    grid = make_grid((SIZE, SIZE), model.strides)
    images = torch.randint(0, 256, (2, 3, SIZE, SIZE), dtype=torch.uint8)
    boxes, labels = _batch()
    targets = assign_targets(boxes, labels, grid, (SIZE, SIZE), (24.0, 48.0))
    cfg = LossConfig(cls_loss=cls_loss)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(50):
        terms = detection_loss(model(images), targets, grid, cfg)
        optimizer.zero_grad()
        terms["total"].backward()
        optimizer.step()
        first = first if first is not None else {k: v.item() for k, v in terms.items()}
    # noobj starts near zero thanks to the prior bias; box_xy is a BCE on soft targets with a floor above 0
    for name in ("obj", "cls", "box_wh"):
        assert terms[name].item() < 0.1 * first[name], name
    model.eval()
    with torch.no_grad():
        dets = decode(model(images), grid, sigmoid_cls=cls_loss in SIGMOID_CLS_LOSSES, conf_thresh=0.3)
    from torchvision.ops import box_iou
    for i, det in enumerate(dets):  # the most confident detections are the ground truth
        valid = labels[i] >= 0
        top = slice(0, int(valid.sum()))
        assert sorted(det["labels"][top].tolist()) == sorted(labels[i][valid].tolist())
        assert box_iou(det["boxes_xyxy"][top], boxes[i][valid]).max(1).values.min() > 0.5


# --- pretrained weights ------------------------------------------------------------------------------------------

def _serve(directory):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _resnet_state(tmp_path):
    import torchvision
    torch.manual_seed(1)
    state = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(state, tmp_path / "resnet18.pth")
    return state


def test_imagenet_weights_download_into_the_hub_cache(tmp_path, monkeypatch):
    state = _resnet_state(tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    server = _serve(tmp_path)
    try:
        url = f"http://127.0.0.1:{server.server_port}/resnet18.pth"
        monkeypatch.setattr("yolo.model.IMAGENET_URL", url)
        model = build_model(ModelConfig(pretrained="imagenet", channels=32), C)
    finally:
        server.shutdown()
    torch.testing.assert_close(model.backbone.stem[0].weight, state["conv1.weight"])
    torch.testing.assert_close(model.backbone.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"])
    assert (tmp_path / "torch-home" / "hub" / "checkpoints" / "resnet18.pth").is_file()


def test_imagenet_weights_offline_fail_at_once_naming_the_alternatives(tiny_config, tmp_path, monkeypatch, capsys):
    import socket
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(ConfigError, match="--pretrained none.*--pretrained PATH"):
        imagenet_state_dict(f"http://127.0.0.1:{port}/resnet18-f37072fd.pth")
    monkeypatch.setattr("yolo.model.IMAGENET_URL", f"http://127.0.0.1:{port}/resnet18-f37072fd.pth")
    from train import main as train_main
    assert train_main([*tiny_args(tiny_config), "--pretrained", "imagenet", "--no-progress"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: could not download") and "\n" not in error and "Traceback" not in error
    assert not tiny_config.run_dir.exists()


def test_pretrained_from_a_local_file_and_a_foreign_file(tmp_path):
    state = _resnet_state(tmp_path)
    model = build_model(ModelConfig(pretrained=str(tmp_path / "resnet18.pth"), channels=32), C)
    torch.testing.assert_close(model.backbone.layer2[0].conv1.weight, state["layer2.0.conv1.weight"])
    with pytest.raises(ValueError, match="not a ResNet-18 state dict"):
        load_backbone(model.backbone, {"conv1.weight": state["conv1.weight"]})
    with pytest.raises(FileNotFoundError, match="imagenet"):
        build_model(ModelConfig(pretrained=str(tmp_path / "missing.pth")), C)


def test_a_torn_or_code_holding_pretrained_file_is_a_one_line_refusal(tmp_path):
    from yolo.checkpoint import CheckpointError
    _resnet_state(tmp_path)
    torn = tmp_path / "torn.pth"
    torn.write_bytes((tmp_path / "resnet18.pth").read_bytes()[:100_000])
    with pytest.raises(CheckpointError, match=r"torn.pth: not a usable ResNet-18 state dict \(truncated"):
        build_model(ModelConfig(pretrained=str(torn), channels=32), C)
    torch.save({"conv1.weight": print}, tmp_path / "code.pth")  # a callable: refused, never called
    with pytest.raises(CheckpointError, match="code.pth: refused, not loaded"):
        build_model(ModelConfig(pretrained=str(tmp_path / "code.pth"), channels=32), C)


def test_prior_bias_sets_the_head():
    model = YOLO(C, channels=32, prior_prob=0.05)
    bias = model.heads[0].pred.bias
    torch.testing.assert_close(bias[:1 + C], torch.full((1 + C,), prior_bias(0.05)))
    assert (bias[1 + C:] == 0).all()
