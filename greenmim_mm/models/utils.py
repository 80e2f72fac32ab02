"""Unit-level image helpers shared by the GreenMIM head, algorithm and visualisation.

A *unit* is a ``unit x unit`` pixel square (32 px for Swin: one last-stage token). Units are
ordered in raster order over the (Hu, Wu) unit grid; inside a unit the values are flattened in
(p, q, c) row-major order (MAE's ``patchify`` order): row p, column q, channel c.
"""
from typing import Sequence, Tuple

import torch

from greenmim_mm.ops.masking import unit_grid

NORM_PIX_EPS = 1e-6


def patchify(imgs: torch.Tensor, unit: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, Hu*Wu, unit*unit*C), units in raster order, (p, q, c) inside a unit."""
    b, c, h, w = imgs.shape
    hu, wu = unit_grid((h, w), unit)
    x = imgs.reshape(b, c, hu, unit, wu, unit)
    x = torch.einsum('nchpwq->nhwpqc', x)
    return x.reshape(b, hu * wu, unit * unit * c)


def unpatchify(x: torch.Tensor, grid_hw: Sequence[int], unit: int) -> torch.Tensor:
    """Inverse of :func:`patchify`: (B, Hu*Wu, unit*unit*C) -> (B, C, Hu*unit, Wu*unit)."""
    hu, wu = int(grid_hw[0]), int(grid_hw[1])
    b, num, dim = x.shape
    c = dim // (unit * unit)
    if num != hu * wu or c * unit * unit != dim:
        raise ValueError(f'cannot unpatchify {tuple(x.shape)} onto a {hu}x{wu} grid of '
                         f'{unit}-px units')
    x = x.reshape(b, hu, wu, unit, unit, c)
    x = torch.einsum('nhwpqc->nchpwq', x)
    return x.reshape(b, c, hu * unit, wu * unit)


def unit_stats(units: torch.Tensor, eps: float = NORM_PIX_EPS) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-unit mean and std as MAE's norm_pix: (B, L, D) -> two (B, L, 1).

    std = sqrt(var + eps) with the *unbiased* variance (torch's default), as in MAE/GreenMIM.
    """
    mean = units.mean(dim=-1, keepdim=True)
    std = (units.var(dim=-1, keepdim=True) + eps).sqrt()
    return mean, std


def normalize_units(units: torch.Tensor, eps: float = NORM_PIX_EPS) -> torch.Tensor:
    """Per-unit standardisation (t - mean) / sqrt(var + eps): (B, L, D) -> (B, L, D)."""
    mean, std = unit_stats(units, eps)
    return (units - mean) / std


def denormalize_units(pred: torch.Tensor, ref_units: torch.Tensor,
                      eps: float = NORM_PIX_EPS) -> torch.Tensor:
    """Undo :func:`normalize_units` with the statistics of ``ref_units``: (B, L, D) -> (B, L, D).

    Used for visualisation: norm_pix predictions are mapped back with the mean/std of the
    original image's units (MAE's demo does the same).
    """
    mean, std = unit_stats(ref_units, eps)
    return pred * std + mean
