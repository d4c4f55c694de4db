"""Grid geometry, box encoding and target assignment."""
import pytest
import torch

from yolo.boxes import cxcywh_to_xyxy, decode_cell, encode_cell, voc_to_xyxy, xyxy_to_cxcywh, xyxy_to_voc
from yolo.targets import assign_targets, make_grid

SIZE = 128
STRIDES = (8, 16, 32)
THRESHOLDS = (32.0, 64.0)


def _assign(boxes, labels, thresholds=THRESHOLDS, strides=STRIDES):
    grid = make_grid((SIZE, SIZE), strides)
    return grid, assign_targets(torch.tensor(boxes, dtype=torch.float32)[None],
                                torch.tensor(labels)[None], grid, (SIZE, SIZE), thresholds)


def _cell(grid, level, gx, gy):
    h, w = grid.level_sizes[level]
    return int(grid.level_offsets[level]) + gy * w + gx


def test_voc_coordinates_round_trip_and_keep_the_inclusive_width():
    boxes_voc = torch.tensor([[1.0, 1.0, 10.0, 20.0], [48.0, 240.0, 195.0, 371.0]])
    boxes_xyxy = voc_to_xyxy(boxes_voc)
    torch.testing.assert_close(boxes_xyxy[0], torch.tensor([0.0, 0.0, 10.0, 20.0]))  # pixels 0..9 -> edges 0..10
    torch.testing.assert_close(boxes_xyxy[:, 2] - boxes_xyxy[:, 0], boxes_voc[:, 2] - boxes_voc[:, 0] + 1)
    torch.testing.assert_close(xyxy_to_voc(boxes_xyxy), boxes_voc)


def test_cxcywh_round_trip():
    boxes = torch.tensor([[3.0, 4.0, 17.0, 30.0]])
    torch.testing.assert_close(cxcywh_to_xyxy(xyxy_to_cxcywh(boxes)), boxes)
    torch.testing.assert_close(xyxy_to_cxcywh(boxes), torch.tensor([[10.0, 17.0, 14.0, 26.0]]))


def test_cell_encoding_round_trips_through_the_decoder():
    g = torch.Generator().manual_seed(0)
    cells = torch.randint(0, 13, (50, 2), generator=g).double()
    strides = torch.tensor([8.0, 16.0, 32.0], dtype=torch.float64)[torch.randint(0, 3, (50,), generator=g)]
    centres = (cells + 0.01 + 0.98 * torch.rand(50, 2, generator=g, dtype=torch.float64)) * strides[:, None]
    sizes = 2 + 300 * torch.rand(50, 2, generator=g, dtype=torch.float64)
    boxes = torch.cat([centres - sizes / 2, centres + sizes / 2], -1)
    target = encode_cell(boxes, cells, strides)
    assert ((target[:, :2] > 0) & (target[:, :2] < 1)).all()  # the centre lies inside its cell
    logits = torch.cat([torch.logit(target[:, :2]), target[:, 2:]], -1)
    torch.testing.assert_close(decode_cell(logits, cells, strides), boxes)


def test_grid_layout_matches_row_major_levels():
    grid = make_grid((SIZE, SIZE), STRIDES)
    assert grid.level_sizes == ((16, 16), (8, 8), (4, 4)) and grid.num_cells == 256 + 64 + 16
    index = _cell(grid, 1, gx=3, gy=5)
    assert grid.cells_xy[index].tolist() == [3.0, 5.0] and grid.strides[index].item() == 16.0


def test_box_goes_to_the_cell_of_its_centre_on_the_level_of_its_size():
    boxes = [[10, 10, 30, 26],      # 20 px -> stride 8, centre (20, 18) -> cell (2, 2)
             [40, 60, 90, 100],     # 50 px -> stride 16, centre (65, 80) -> cell (4, 5)
             [0, 0, 128, 100]]      # 128 px -> stride 32, centre (64, 50) -> cell (2, 1)
    grid, t = _assign(boxes, [3, 7, 11])
    expected = {_cell(grid, 0, 2, 2): 0, _cell(grid, 1, 4, 5): 1, _cell(grid, 2, 2, 1): 2}
    assert torch.nonzero(t["obj"][0]).flatten().tolist() == sorted(expected)
    for cell, box in expected.items():
        assert t["labels"][0, cell].item() == [3, 7, 11][box]
        torch.testing.assert_close(t["boxes_xyxy"][0, cell], torch.tensor(boxes[box], dtype=torch.float32))
        x1, y1, x2, y2 = boxes[box]
        assert t["weights"][0, cell].item() == pytest.approx(2 - (x2 - x1) * (y2 - y1) / SIZE ** 2)
    negatives = t["obj"][0] == 0
    assert (t["labels"][0][negatives] == -1).all() and (t["weights"][0][negatives] == 0).all()


@pytest.mark.parametrize("order", [[0, 1], [1, 0]])
def test_two_boxes_in_one_cell_keep_the_one_nearest_the_cell_centre(order):
    near = [60, 60, 76, 76]  # centre (68, 68): cell (8, 8) of stride 8, exactly at the cell centre
    far = [63, 63, 71, 71]   # centre (67, 67): same cell, 1 px off the centre
    boxes, labels = [[near, far][i] for i in order], [[1, 2][i] for i in order]
    grid, t = _assign(boxes, labels)
    assert t["obj"].sum().item() == 1
    cell = _cell(grid, 0, 8, 8)
    assert t["labels"][0, cell].item() == 1
    torch.testing.assert_close(t["boxes_xyxy"][0, cell], torch.tensor(near, dtype=torch.float32))


def test_identical_boxes_in_one_cell_keep_exactly_one():
    grid, t = _assign([[10, 10, 20, 20], [10, 10, 20, 20]], [4, 5])
    assert t["obj"].sum().item() == 1
    assert t["labels"][0, _cell(grid, 0, 1, 1)].item() == 4  # ties: the first box


def test_padding_and_ignored_boxes_produce_no_targets():
    grid, t = _assign([[10, 10, 20, 20], [0, 0, 0, 0], [40, 40, 60, 60]], [2, -1, -1])
    assert t["obj"].sum().item() == 1 and t["labels"][0, _cell(grid, 0, 1, 1)].item() == 2


def test_boxes_touching_the_border_stay_on_the_grid():
    grid, t = _assign([[100, 100, 128, 128], [0, 0, 4, 4]], [0, 1])
    assert t["obj"].sum().item() == 2
    assert t["labels"][0, _cell(grid, 0, 14, 14)].item() == 0 and t["labels"][0, _cell(grid, 0, 0, 0)].item() == 1


def test_batch_images_are_independent():
    grid = make_grid((SIZE, SIZE), STRIDES)
    boxes = torch.tensor([[[10.0, 10.0, 20.0, 20.0]], [[10.0, 10.0, 20.0, 20.0]]])
    t = assign_targets(boxes, torch.tensor([[1], [2]]), grid, (SIZE, SIZE), THRESHOLDS)
    cell = _cell(grid, 0, 1, 1)
    assert t["labels"][:, cell].tolist() == [1, 2] and t["obj"].sum().item() == 2


def test_negative_cells_hold_finite_encodable_boxes():
    grid, t = _assign([[10, 10, 20, 20]], [0])
    encoded = encode_cell(t["boxes_xyxy"][0], grid.cells_xy, grid.strides)
    assert torch.isfinite(encoded).all()


def test_single_level_grid_needs_no_thresholds():
    grid, t = _assign([[10, 10, 20, 20], [0, 0, 128, 128]], [0, 1], thresholds=(), strides=(32,))
    assert t["obj"].sum().item() == 2
    with pytest.raises(ValueError, match="3 levels need 2 size thresholds"):
        _assign([[10, 10, 20, 20]], [0], thresholds=(32.0,))


@pytest.mark.parametrize("seed", range(5))
def test_vectorised_assignment_equals_the_reference_loop(seed):
    from yolo.timing import synthetic_batch
    from yolo.bench.targets import assign_targets_loop
    grid = make_grid((SIZE, SIZE), STRIDES)
    _, boxes, labels = synthetic_batch(6, SIZE, 20, torch.device("cpu"), boxes_per_image=24, seed=seed)
    boxes[:, ::3] = boxes[:, 1::3]  # identical boxes in one cell: the tie rule
    fast = assign_targets(boxes, labels, grid, (SIZE, SIZE), THRESHOLDS)
    slow = assign_targets_loop(boxes, labels, grid, (SIZE, SIZE), THRESHOLDS)
    assert fast["obj"].sum() > 20
    for key in fast:
        torch.testing.assert_close(fast[key], slow[key], msg=key)
