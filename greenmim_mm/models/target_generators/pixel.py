"""Normalised pixels per cell: MAE's per-patch target at any cell size (GreenMIM, LocalMIM)."""
from typing import Optional

import torch
from mmengine.model import BaseModule

from greenmim_mm.models.utils import NORM_PIX_EPS, normalize_units, patchify
from greenmim_mm.registry import MODELS


@MODELS.register_module()
class PixelTargetGenerator(BaseModule):
    """The (data-preprocessor-normalised) image cut into ``cell x cell`` patches.

    Cells in raster order, values (p, q, c) row-major inside a cell (MAE's ``patchify``). With
    ``norm_pix`` each cell's vector t is standardised, (t - mean) / sqrt(var + eps) with the
    unbiased variance (MAE's / GreenMIM's / LocalMIM's ``--norm_pix_loss``, eps 1e-6).

    Args:
        cell (int): cell side in pixels (GreenMIM: 32; LocalMIM Swin: 8/16/32/32).
        norm_pix (bool): per-cell standardisation.
        in_channels (int): image channels.

    forward(imgs (B, C, H, W)) -> (B, H/cell * W/cell, cell²·C) in fp32; ValueError when a side
    is not a multiple of ``cell``.
    """

    def __init__(self, cell: int, norm_pix: bool = True, in_channels: int = 3,
                 eps: float = NORM_PIX_EPS, init_cfg: Optional[dict] = None):
        super().__init__(init_cfg=init_cfg)
        self.cell = int(cell)
        self.norm_pix = bool(norm_pix)
        self.in_channels = int(in_channels)
        self.eps = float(eps)

    @property
    def out_channels(self) -> int:
        """Target values per cell."""
        return self.cell**2 * self.in_channels

    @torch.no_grad()
    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        target = patchify(imgs.float(), self.cell)
        return normalize_units(target, self.eps) if self.norm_pix else target
