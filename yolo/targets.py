"""Grid geometry and target assignment, vectorised on the device (no Python loop over images or boxes).

Each ground-truth box is assigned to exactly one grid cell: the cell holding its centre, on the pyramid level
chosen by its size. A box whose longest side (in network-input pixels) is below ``thresholds[0]`` goes to the
first (finest) level, below ``thresholds[1]`` to the second, and so on; the rest go to the coarsest level.
When several boxes land in the same cell, the one whose centre is nearest the cell centre wins (ties: the first
box); the YOLOv1 reference code let the last box silently overwrite the others.
"""
from dataclasses import dataclass

import torch

from yolo.boxes import device_constant


@dataclass
class Grid:
    """All cells of all levels, flattened level by level in row-major order: A = sum_l H_l * W_l."""
    cells_xy: torch.Tensor       # (A, 2) float cell indices (gx, gy) on their level
    strides: torch.Tensor        # (A,) float stride of each cell's level
    level_strides: tuple         # (L,) int
    level_sizes: tuple           # (L,) of (H_l, W_l)
    level_offsets: torch.Tensor  # (L,) int64 index of each level's first cell
    level_strides_t: torch.Tensor  # (L,) float, level_strides on the device
    level_sizes_t: torch.Tensor    # (L, 2) int64 (H_l, W_l) on the device

    @property
    def num_cells(self) -> int:
        return self.cells_xy.shape[0]


def make_grid(image_hw: tuple[int, int], strides: tuple[int, ...], device=None) -> Grid:
    """Grid of a network input of size image_hw (each side a multiple of the largest stride)."""
    height, width = image_hw
    cells, cell_strides, sizes, offsets, total = [], [], [], [], 0
    for stride in strides:
        h, w = height // stride, width // stride
        gy, gx = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
        cells.append(torch.stack([gx.flatten(), gy.flatten()], dim=-1).float())
        cell_strides.append(torch.full((h * w,), float(stride), device=device))
        sizes.append((h, w))
        offsets.append(total)
        total += h * w
    # small per-level tables live on the device once: building them per step would copy host -> device,
    # which on CUDA waits for the queued kernels (a hidden synchronisation)
    return Grid(torch.cat(cells), torch.cat(cell_strides), tuple(strides), tuple(sizes),
                torch.tensor(offsets, device=device), torch.tensor(strides, dtype=torch.float32, device=device),
                torch.tensor(sizes, device=device))


def assign_targets(boxes_xyxy: torch.Tensor, labels: torch.Tensor, grid: Grid, image_hw: tuple[int, int],
                   thresholds: tuple[float, ...]) -> dict:
    """Dense per-cell targets for a batch.

    Args:
        boxes_xyxy: (N, M, 4) float boxes in network-input pixels (padding rows are ignored).
        labels: (N, M) int64 class indices, -1 marks padding (and boxes that must produce no target).
        grid: the grid of the predictions.
        image_hw: the network input size, for the box weight 2 - w*h / (W*H).
        thresholds: L - 1 longest-side limits in pixels that choose the level (see the module docstring).
    Returns:
        dict with ``obj`` (N, A) float 0/1, ``labels`` (N, A) int64 (-1 on negative cells), ``boxes_xyxy``
        (N, A, 4) (negative cells hold their own cell-sized box so that every loss stays finite), ``weights``
        (N, A) box weights (0 on negative cells).
    """
    n, m = labels.shape
    num_cells = grid.num_cells
    boxes_xyxy = boxes_xyxy.float()
    cell, dist = _cell_of_box(boxes_xyxy, grid, thresholds)                  # (N, M), (N, M)
    slot = torch.arange(n, device=labels.device).unsqueeze(1) * num_cells + cell
    dump = n * num_cells  # one extra slot where everything that must not be written goes
    slot = torch.where(labels >= 0, slot, dump).flatten()
    winner = _nearest_per_slot(slot, dist.flatten(), dump)
    slot = torch.where(winner, slot, dump)

    height, width = image_hw
    wh = boxes_xyxy[..., 2:] - boxes_xyxy[..., :2]
    box_weights = 2.0 - wh[..., 0] * wh[..., 1] / (height * width)
    own_boxes = torch.cat([grid.cells_xy, grid.cells_xy + 1], dim=-1) * grid.strides.unsqueeze(-1)

    def scatter(base, values):
        flat = torch.cat([base.reshape(n * num_cells, *base.shape[2:]), base.new_zeros(1, *base.shape[2:])])
        index = slot.view(-1, *([1] * (flat.dim() - 1))).expand(-1, *flat.shape[1:])
        flat = flat.scatter(0, index, values.reshape(n * m, *flat.shape[1:]).to(flat.dtype))
        return flat[:-1].view(base.shape)

    return {
        "obj": scatter(boxes_xyxy.new_zeros(n, num_cells), torch.ones_like(labels, dtype=torch.float32)),
        "labels": scatter(labels.new_full((n, num_cells), -1), labels),
        "boxes_xyxy": scatter(own_boxes.expand(n, -1, -1), boxes_xyxy),
        "weights": scatter(boxes_xyxy.new_zeros(n, num_cells), box_weights),
    }


def _cell_of_box(boxes_xyxy, grid: Grid, thresholds):
    """(N, M, 4) -> flat cell index (N, M) int64 and squared distance of the box centre to the cell centre
    in units of the stride (N, M)."""
    device = boxes_xyxy.device
    if len(thresholds) != len(grid.level_strides) - 1:
        raise ValueError(f"{len(grid.level_strides)} levels need {len(grid.level_strides) - 1} size thresholds, "
                         f"got {list(thresholds)}")
    max_side = (boxes_xyxy[..., 2:] - boxes_xyxy[..., :2]).amax(-1)
    level = torch.bucketize(max_side, device_constant(tuple(thresholds), torch.float32, device), right=True)
    stride = grid.level_strides_t[level]
    sizes = grid.level_sizes_t[level]                                         # (N, M, 2) as (H, W)
    centre = (boxes_xyxy[..., :2] + boxes_xyxy[..., 2:]) / 2
    cell_xy = (centre / stride.unsqueeze(-1)).floor()
    cell_xy = torch.minimum(cell_xy.clamp(min=0), sizes.flip(-1) - 1)
    dist = ((centre / stride.unsqueeze(-1) - cell_xy - 0.5) ** 2).sum(-1)
    cell = grid.level_offsets[level] + cell_xy[..., 1].long() * sizes[..., 1] + cell_xy[..., 0].long()
    return cell, dist


def _nearest_per_slot(slot: torch.Tensor, dist: torch.Tensor, dump: int) -> torch.Tensor:
    """(K,) slots and distances -> (K,) bool: True for the single nearest entry of each slot (ties: lowest index)."""
    size = dump + 1
    best = torch.full((size,), float("inf"), device=dist.device).scatter_reduce(0, slot, dist, "amin")
    nearest = dist <= best[slot]
    index = torch.arange(slot.numel(), device=slot.device)
    candidate = torch.where(nearest, index, slot.numel())
    first = torch.full((size,), slot.numel(), device=slot.device).scatter_reduce(0, slot, candidate, "amin")
    return nearest & (index == first[slot]) & (slot != dump)
