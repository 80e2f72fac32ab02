"""GreenMIM decoders on the 32-px unit grid: the single-grid case of ``MAEGridDecoder``.

The encoder (``GreenSwinTransformer`` sparse path, last stage) emits one latent per *visible*
32-px unit in raster order of the visible units; the decoders place them at their own units
(``grid_decoder``; the official GreenMIM code's misplacement is fixed and tested).
"""
from typing import Optional

import torch
import torch.nn as nn

from greenmim_mm.registry import MODELS

from .grid_decoder import GridPlacement, MAEGridDecoder, grid_sincos_embedding, visible_cell_index

# The unit grid is one grid among others: the GreenMIM names of the shared helpers.
visible_unit_index = visible_cell_index
unit_sincos_embedding = grid_sincos_embedding


@MODELS.register_module()
class MAEUnitDecoder(MAEGridDecoder):
    """GreenMIM's MAE-style decoder on the unit grid (official: 512 wide, 1 block, 16 heads):
    ``MAEGridDecoder`` predicting ``unit * unit * in_chans`` pixels per unit.

    forward(latent (B, N_vis, in_channels), mask (Hu, Wu) bool) -> (B, Hu*Wu, unit²·in_chans),
    units in raster order.
    """

    def __init__(self, in_channels: int, embed_dims: int = 512, depth: int = 1,
                 num_heads: int = 16, mlp_ratio: float = 4., unit: int = 32, in_chans: int = 3,
                 norm_cfg: dict = dict(type='LN', eps=1e-6), init_cfg: Optional[dict] = None):
        super().__init__(in_channels, int(unit)**2 * in_chans, embed_dims=embed_dims,
                         depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                         norm_cfg=norm_cfg, init_cfg=init_cfg)
        self.unit = int(unit)


@MODELS.register_module()
class LinearUnitDecoder(GridPlacement):
    """SimMIM-style linear decoder on the unit grid: placement, then one Linear to pixels.

    Visible latents sit at their own units, a learned mask token (width ``in_channels``) at the
    masked ones, the sin-cos position is added, and a single Linear maps every unit to
    ``unit * unit * in_chans`` pixels. Honest caveat: unlike SimMIM (whose mask tokens enter the
    *encoder*), the GreenMIM encoder never sees masked units, and with no mixing layer here a
    masked unit's prediction is a function of its position only (mask token + position): it can
    learn at most a per-position average image. Use it as an ablation / lower bound; the
    ``MAEUnitDecoder`` is the GreenMIM decoder.

    forward(latent (B, N_vis, in_channels), mask (Hu, Wu) bool, cells=None)
        -> (B, Hu*Wu, unit²·in_chans), or (B, M, unit²·in_chans) at ``cells`` ((M,) int64).
    """
    predicts_cells = True

    def __init__(self, in_channels: int, unit: int = 32, in_chans: int = 3,
                 init_cfg: Optional[dict] = None):
        super().__init__(in_channels, init_cfg=init_cfg)
        self.unit = int(unit)
        self.decoder_pred = nn.Linear(in_channels, self.unit**2 * in_chans, bias=True)

    def forward(self, latent: torch.Tensor, mask: torch.Tensor,
                cells: Optional[torch.Tensor] = None,
                vis: Optional[torch.Tensor] = None) -> torch.Tensor:
        """latent (B, N_vis, C_in), mask (Hu, Wu) -> predictions (B, Hu*Wu, unit²·in_chans)
        (or at ``cells`` only; ``vis`` as in ``GridPlacement.place``)."""
        x = self.place(latent, mask, vis)
        return self.decoder_pred(x if cells is None else x.index_select(1, cells))
