"""Reconstruction target and loss on 32-px mask units (GreenMIM / MAE norm-pix MSE, SimMIM L1)."""
from typing import Optional

import torch

from greenmim_mm.models.target_generators import PixelTargetGenerator
from greenmim_mm.models.utils import denormalize_units, patchify, unpatchify
from greenmim_mm.registry import MODELS

from .cell_recon_head import CellReconstructionHead


@MODELS.register_module()
class UnitReconstructionHead(CellReconstructionHead):
    """Pixel reconstruction loss on the masked units only: ``CellReconstructionHead`` with a
    ``PixelTargetGenerator`` of cell ``unit``.

    The target is the data-preprocessor-normalised image cut into ``unit x unit x C`` units
    (raster order of units, (p, q, c) row-major inside a unit). With ``norm_pix`` every unit's
    target is standardised, (t - mean) / sqrt(var + 1e-6) with the unbiased variance (MAE,
    GreenMIM's ``--norm_pix_loss``).

    * ``loss='mse'``: per-unit mean squared error, averaged over the masked units (GreenMIM/MAE).
    * ``loss='l1'``: per-unit mean absolute error, averaged over the masked units, i.e. the mean
      over masked pixels and channels (SimMIM's L1; use it with ``norm_pix=False``).

    Visible units contribute nothing. The reduction is mmpretrain's ``PixelReconstructionLoss``.

    Args:
        loss (str): 'mse' or 'l1'.
        norm_pix (bool): per-unit target standardisation.
        unit (int): unit side in pixels (the backbone's ``mask_unit``, 32 for Swin).
        in_channels (int): image channels.
    """

    def __init__(self, loss: str = 'mse', norm_pix: bool = True, unit: int = 32,
                 in_channels: int = 3, init_cfg: Optional[dict] = None):
        super().__init__(PixelTargetGenerator(unit, norm_pix, in_channels), loss=loss,
                         init_cfg=init_cfg)
        self.norm_pix = bool(norm_pix)
        self.unit = int(unit)
        self.in_channels = int(in_channels)

    def to_image(self, pred: torch.Tensor, imgs: torch.Tensor) -> torch.Tensor:
        """Predictions (B, L, D) -> image (B, C, H, W) in the normalised-input space.

        With ``norm_pix`` each predicted unit is de-standardised with the mean/std of the same
        unit of ``imgs`` (the original image), as MAE's visualisation does.
        """
        pred = pred.float()
        if self.norm_pix:
            pred = denormalize_units(pred, patchify(imgs.float(), self.unit))
        grid = (imgs.shape[-2] // self.unit, imgs.shape[-1] // self.unit)
        return unpatchify(pred, grid, self.unit)
