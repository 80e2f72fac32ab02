"""Batch-shared random masks on the grid of 32-px mask units.

A mask is a bool tensor of shape (H/32, W/32), True = masked, shared by every image of a device
batch. 32 px is one token of Swin's last stage, so 2x2 patch merging never mixes visible and
masked tokens at any stage.
"""
from typing import Optional, Sequence, Tuple

import torch

MASK_UNIT = 32


def unit_grid(img_hw: Sequence[int], unit: int = MASK_UNIT) -> Tuple[int, int]:
    """(H, W) in pixels -> (H/unit, W/unit); ValueError if a side is not a multiple of ``unit``."""
    h, w = int(img_hw[0]), int(img_hw[1])
    if h % unit or w % unit or h <= 0 or w <= 0:
        raise ValueError(
            f'The sparse (masked) path needs image sides that are positive multiples of the '
            f'{unit}-px mask unit; got {h}x{w}. Resize or crop the input (e.g. 192, 224, 256).')
    return h // unit, w // unit


def check_mask_ratio(ratio: float) -> float:
    """ValueError unless 0 <= ratio < 1."""
    if not isinstance(ratio, (int, float)) or not 0.0 <= float(ratio) < 1.0:
        raise ValueError(f'mask_ratio must be a number in [0, 1); got {ratio!r}')
    return float(ratio)


def num_visible_units(num_units: int, ratio: float) -> int:
    """MAE's rule: keep floor(L * (1 - ratio)) units, and never fewer than one."""
    return max(1, int(num_units * (1.0 - check_mask_ratio(ratio))))


def random_unit_mask(grid_hw: Sequence[int], ratio: float,
                     generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """MAE-style random mask (argsort of uniform noise) on a (Hu, Wu) unit grid.

    Returns a CPU bool tensor (Hu, Wu), True = masked, with exactly
    ``num_visible_units(Hu * Wu, ratio)`` False entries.
    """
    hu, wu = int(grid_hw[0]), int(grid_hw[1])
    num = hu * wu
    keep = num_visible_units(num, ratio)
    noise = torch.rand(num, generator=generator)
    ids_keep = torch.argsort(noise)[:keep]
    mask = torch.ones(num, dtype=torch.bool)
    mask[ids_keep] = False
    return mask.view(hu, wu)


def check_mask(mask: torch.Tensor, img_hw: Sequence[int], unit: int = MASK_UNIT) -> torch.Tensor:
    """Validate a unit mask for an image of size ``img_hw``; returns it on the CPU.

    Raises ValueError naming the problem: wrong type/dtype, wrong shape, or nothing visible.
    """
    grid = unit_grid(img_hw, unit)
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f'mask must be a torch.Tensor, got {type(mask).__name__}')
    if mask.dtype != torch.bool:
        raise ValueError(f'mask must be a bool tensor (True = masked); got dtype {mask.dtype}')
    if tuple(mask.shape) != grid:
        raise ValueError(
            f'mask must have shape (H/{unit}, W/{unit}) = {grid} for a {img_hw[0]}x{img_hw[1]} input '
            f'(one entry per {unit}-px unit, shared by the batch); got {tuple(mask.shape)}')
    mask = mask.cpu()
    if bool(mask.all()):
        raise ValueError('mask hides every unit; at least one unit must stay visible')
    return mask


def upsample_mask(mask: torch.Tensor, factor: int) -> torch.Tensor:
    """(Hu, Wu) unit mask -> (Hu*factor, Wu*factor) token mask (each unit repeated factor x factor)."""
    return mask.repeat_interleave(factor, 0).repeat_interleave(factor, 1)


def visible_patch_index(mask: torch.Tensor) -> torch.Tensor:
    """(B, L) bool mask, True = masked -> (B, N_vis) int64 indices of the visible patches,
    ascending (computed on the host: a device mask is read back once). ValueError unless every
    row has the same, non-zero number of visible patches."""
    visible = ~mask.cpu()
    counts = visible.sum(1)
    if counts.numel() == 0 or bool((counts != counts[0]).any()) or int(counts[0]) == 0:
        raise ValueError('every sample needs the same, non-zero number of visible patches')
    return visible.nonzero()[:, 1].view(mask.shape[0], int(counts[0]))
