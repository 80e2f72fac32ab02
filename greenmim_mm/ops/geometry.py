"""Backbone-neutral sparse geometry: visible positions per stage, k×k blocks, scatter/gather.

The sparse-backbone contract (GreenSwinTransformer, GreenTwinsSVT; see
``greenmim_mm.models.backbones.sparse_backbone``) keeps, for every stage, the visible tokens of the
stage grid in **raster order** together with their (row, col) coordinates. Because the mask unit
equals the stride of the last stage (32 px), every k×k block of a stage grid whose k divides the
tokens-per-unit side is wholly visible or wholly masked; 2×2 patch merging / stride-2 patch
embedding and Twins' ``sr``-strided key convolution therefore act on whole visible blocks.

Everything that builds indices runs on the CPU (numpy) once per forward pass from the
batch-shared mask; the per-block work (``gather_children``, ``scatter_tokens``,
``gather_tokens``) is pure tensor indexing on the compute device.
"""
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch


@dataclass
class StageGeometry:
    """Visible tokens of one stage grid and the layouts the backbone's blocks need.

    hw: the stage's full grid (H, W) in tokens.
    coords: (N, 2) long, (row, col) of the N visible tokens in raster order.
    plans: attention layouts (e.g. ``WindowPlan``), keyed as the backbone chooses.
    children: {k: (N / k², k²) long}: for every wholly visible k×k block of this grid (raster
        order of the k-times downsampled grid) its k² tokens' indices in ``coords``, in
        ``nn.Unfold`` kernel order (row-major inside the block).
    neighbours: optional (N, 9) long 3×3 neighbourhood (row-major taps) of every visible token:
        an index into ``coords``, or N where the neighbour is masked or outside the grid.
    """
    hw: Tuple[int, int]
    coords: torch.Tensor
    plans: Dict[Any, Any] = field(default_factory=dict)
    children: Dict[int, torch.Tensor] = field(default_factory=dict)
    neighbours: Optional[torch.Tensor] = None

    @property
    def merge_index(self) -> Optional[torch.Tensor]:
        """The 2×2 children (input of a 2×2 merge / stride-2 embedding), or None."""
        return self.children.get(2)

    def to(self, device) -> 'StageGeometry':
        """Copy the tensors to ``device`` (non-blocking); plans shared by several keys stay
        shared."""
        plans = {}
        for key, plan in self.plans.items():
            same = next((k for k in plans if self.plans[k] is plan), None)
            plans[key] = plans[same] if same is not None else plan.to(device)

        def move(t):
            return None if t is None else t.to(device, non_blocking=True)
        return StageGeometry(self.hw, move(self.coords), plans,
                             {k: move(v) for k, v in self.children.items()},
                             move(self.neighbours))


def visible_coords(token_mask: np.ndarray) -> np.ndarray:
    """(H, W) bool token mask (True = masked) -> (N, 2) int64 coords of visible tokens, raster
    order."""
    return np.argwhere(~np.asarray(token_mask, dtype=bool)).astype(np.int64)


def index_map(coords: np.ndarray, hw: Sequence[int]) -> np.ndarray:
    """(H, W) int64 map: the index in ``coords`` of each visible position, -1 elsewhere."""
    h, w = int(hw[0]), int(hw[1])
    out = np.full(h * w, -1, dtype=np.int64)
    out[coords[:, 0] * w + coords[:, 1]] = np.arange(len(coords))
    return out.reshape(h, w)


def child_index(coords: np.ndarray, hw: Sequence[int], k: int) -> Tuple[np.ndarray, np.ndarray]:
    """Visible coords of the k-times downsampled grid and the (N', k²) indices of their children.

    ``coords`` (N, 2) are a stage's visible tokens (raster order) on a grid ``hw`` divisible by k.
    Returns (coords' (N', 2), children (N', k²)), children in ``nn.Unfold`` kernel order
    (row-major inside the block). ValueError if a block mixes visible and masked tokens (the mask
    was not given in whole mask units) or the grid is not divisible by k.
    """
    h, w = int(hw[0]), int(hw[1])
    if h % k or w % k:
        raise ValueError(f'a {h}x{w} stage grid cannot be split into {k}x{k} blocks')
    blocks = index_map(coords, hw).reshape(h // k, k, w // k, k).transpose(0, 2, 1, 3)
    keep = blocks[:, :, 0, 0] >= 0  # blocks whose first token is visible
    children = blocks[keep].reshape(-1, k * k)
    # no block mixes: the kept blocks are wholly visible and hold every visible token
    if len(children) * k * k != len(coords) or (children < 0).any():
        raise ValueError(f'a {k}x{k} block mixes visible and masked tokens; the mask must be '
                         'given in whole mask units')
    return np.argwhere(keep).astype(np.int64), children


def neighbour_index(coords: np.ndarray, hw: Sequence[int], kernel: int = 3) -> np.ndarray:
    """(N, kernel²) index of every visible token's kernel×kernel neighbourhood (row-major taps,
    'same' padding): an index into ``coords``, or N for a masked or out-of-grid neighbour."""
    h, w = int(hw[0]), int(hw[1])
    r = kernel // 2
    padded = np.full((h + 2 * r, w + 2 * r), len(coords), dtype=np.int64)
    imap = index_map(coords, hw)
    padded[r:r + h, r:r + w] = np.where(imap >= 0, imap, len(coords))
    taps = [padded[coords[:, 0] + dr, coords[:, 1] + dc]
            for dr in range(kernel) for dc in range(kernel)]
    return np.stack(taps, axis=1) if len(coords) else np.zeros((0, kernel * kernel), np.int64)


def gather_children(x: torch.Tensor, children: torch.Tensor) -> torch.Tensor:
    """(B, N, C) tokens, (N', k²) children -> (B, N', C·k²) channel-major like ``nn.Unfold``
    (channel c of child j lands at c·k² + j), so a k×k/stride-k convolution is
    ``F.linear(out, weight.flatten(1), bias)`` and mmcv's ``PatchMerging`` takes it directly."""
    b, _, c = x.shape
    kk = children.shape[1]
    picked = x[:, children.reshape(-1)].view(b, -1, kk, c)
    return picked.transpose(2, 3).reshape(b, -1, c * kk)


def flat_index(coords: torch.Tensor, hw: Sequence[int]) -> torch.Tensor:
    """(N, 2) coords -> (N,) raster index r·W + c on a grid ``hw``."""
    return coords[:, 0] * int(hw[1]) + coords[:, 1]


def scatter_tokens(x: torch.Tensor, coords: torch.Tensor, hw: Sequence[int]) -> torch.Tensor:
    """Visible tokens (B, N, C) -> zero-filled map (B, C, H, W)."""
    b, _, c = x.shape
    dense = x.new_zeros(b, int(hw[0]) * int(hw[1]), c)
    dense = dense.index_copy(1, flat_index(coords, hw), x)
    return dense.transpose(1, 2).reshape(b, c, int(hw[0]), int(hw[1]))


def gather_tokens(x: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Map (B, C, H, W) -> its values at ``coords`` (N, 2): (B, N, C)."""
    b, c, h, w = x.shape
    return x.flatten(2)[:, :, flat_index(coords, (h, w))].transpose(1, 2)
