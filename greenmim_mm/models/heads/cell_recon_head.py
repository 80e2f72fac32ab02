"""Reconstruction head: a target generator and a loss over the masked cells of one grid."""
from typing import Optional, Union

import torch
from mmengine.model import BaseModule

from greenmim_mm.registry import MODELS


@MODELS.register_module()
class CellReconstructionHead(BaseModule):
    """Loss of one decoder's predictions against its own target, on the masked cells only.

    The head owns the target (``target_generator``, e.g. ``PixelTargetGenerator`` or
    ``LocalMIMHOGGenerator``, (B, C, H, W) images -> (B, L, D) per cell) and the loss: per-cell
    error averaged over the D values, weighted by the cell's mask weight, summed and divided by
    the sum of the weights (mmpretrain's ``PixelReconstructionLoss``). With a binary mask that is
    the mean over masked cells (GreenMIM, LocalMIM Swin); LocalMIM ViT's coarse head uses
    fractional weights (the share of masked patches in a cell).

    Args:
        target_generator (dict | nn.Module): the target of this head.
        loss (str): 'mse' (squared error; GreenMIM, LocalMIM) or 'l1' (absolute; SimMIM).
    """
    CRITERIA = {'mse': 'L2', 'l1': 'L1'}

    def __init__(self, target_generator: Union[dict, torch.nn.Module], loss: str = 'mse',
                 init_cfg: Optional[dict] = None):
        super().__init__(init_cfg=init_cfg)
        if loss not in self.CRITERIA:
            raise ValueError(f"loss must be one of {sorted(self.CRITERIA)}; got {loss!r}")
        self.loss_type = loss
        self.target_generator = (target_generator if isinstance(target_generator, torch.nn.Module)
                                 else MODELS.build(target_generator))
        self.loss_module = MODELS.build(
            dict(type='PixelReconstructionLoss', criterion=self.CRITERIA[loss]))

    @property
    def cell(self) -> int:
        """Cell side in pixels of the target."""
        return int(self.target_generator.cell)

    @property
    def out_channels(self) -> int:
        """Target values per cell (the decoder's prediction width)."""
        return int(self.target_generator.out_channels)

    def construct_target(self, imgs: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) normalised images -> (B, L, D) fp32 targets."""
        return self.target_generator(imgs)

    def loss(self, pred: torch.Tensor, imgs: torch.Tensor, mask: torch.Tensor,
             cells: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Scalar loss.

        pred (B, L, D); imgs (B, C, H, W); mask: weights of the L cells, True/1 = masked: (H', W')
        or (L,) shared by the batch, or (B, H', W') / (B, L) per sample (bool or float).
        With ``cells`` ((M,) int64 raster indices on pred's device), ``pred`` (B, M, D) holds
        the predictions at those cells only and the target and weights are taken there: the same
        loss as the full grid's whenever every other cell has weight 0 (e.g. ``cells`` = the
        masked cells, ``masked_cell_index``). ValueError when the shapes do not match the target.
        """
        target = self.construct_target(imgs)
        # a host mask is copied non-blocking (no stream sync), then cast on the device
        weight = mask.to(pred.device, non_blocking=True).to(torch.float32)
        weight = weight.reshape(-1, target.shape[1])
        weight = weight.expand(target.shape[0], -1)
        if cells is not None:
            target, weight = target.index_select(1, cells), weight.index_select(1, cells)
        if pred.shape != target.shape:
            raise ValueError(f'prediction {tuple(pred.shape)} does not match the target '
                             f'{tuple(target.shape)} (cell {self.cell}'
                             f'{"" if cells is None else f", {cells.numel()} cells"})')
        return self.loss_module(pred.float(), target, weight)
