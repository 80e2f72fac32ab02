"""GreenMIM decoders: visible latents placed at their own units, mask token elsewhere.

The encoder (``GreenSwinTransformer`` sparse path, last stage) emits one latent per *visible*
32-px unit in raster order of the visible units. A decoder scatters them to the raster positions
``(~mask).flatten().nonzero()`` of the (Hu, Wu) unit grid. (The official GreenMIM code instead
un-shuffles with MAE's ``ids_restore``, which assumes latents in ascending-noise order, so its
visible latents land on randomly permuted visible units; greenmim.md section 5.3. This is fixed
here and tested.)
"""
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
from mmcv.cnn import build_norm_layer
from mmengine.model import BaseModule
from mmpretrain.models.backbones.vision_transformer import TransformerEncoderLayer
from mmpretrain.models.utils import build_2d_sincos_position_embedding

from greenmim_mm.registry import MODELS


def visible_unit_index(mask: torch.Tensor) -> torch.Tensor:
    """(Hu, Wu) bool mask, True = masked -> (N_vis,) int64 raster indices of the visible units
    (CPU, ascending)."""
    if mask.dtype != torch.bool or mask.dim() != 2:
        raise ValueError(f'mask must be a 2-D bool tensor (Hu, Wu); got {mask.dtype} '
                         f'{tuple(mask.shape)}')
    return (~mask.cpu()).flatten().nonzero().squeeze(1)


def unit_sincos_embedding(grid_hw: Tuple[int, int], dims: int) -> torch.Tensor:
    """Fixed 2-D sin-cos embedding (Hu*Wu, dims) of the unit grid, rows in raster order.

    mmpretrain's ``build_2d_sincos_position_embedding((h, w))`` enumerates positions with
    the *first* argument varying fastest, so it is called with (Wu, Hu) to get raster order
    (row-major over (Hu, Wu)) for non-square grids too. Its first dims/2 channels then encode the
    row and the last dims/2 the column (an order-free convention for a fixed embedding).
    """
    hu, wu = int(grid_hw[0]), int(grid_hw[1])
    return build_2d_sincos_position_embedding((wu, hu), dims)[0]


class _UnitPlacement(BaseModule):
    """Shared part: a learned mask token and the fixed sin-cos position on the unit grid."""

    def __init__(self, dims: int, init_cfg: Optional[dict] = None):
        super().__init__(init_cfg=init_cfg)
        if dims % 4:
            raise ValueError(f'the sin-cos position embedding needs a width divisible by 4; '
                             f'got {dims}')
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dims))
        self._pos_cache: Dict[tuple, torch.Tensor] = {}

    def init_weights(self) -> None:
        super().init_weights()
        nn.init.normal_(self.mask_token, std=.02)

    def pos_embed(self, grid_hw: Tuple[int, int], like: torch.Tensor) -> torch.Tensor:
        """(1, Hu*Wu, dims) sin-cos embedding on ``like``'s device and dtype (cached per grid)."""
        key = (int(grid_hw[0]), int(grid_hw[1]), like.device)
        if key not in self._pos_cache:
            pos = unit_sincos_embedding(grid_hw, self.mask_token.shape[-1])
            self._pos_cache[key] = pos.to(like.device)[None]
        return self._pos_cache[key].to(like.dtype)

    def place(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Unit-grid sequence: tokens (B, N_vis, D) + mask (Hu, Wu) -> (B, Hu*Wu, D).

        Visible token k goes to the k-th visible unit in raster order, the mask token to every
        masked unit; then the sin-cos position of each unit is added.
        """
        vis = visible_unit_index(mask)
        b, n, d = tokens.shape
        if n != vis.numel():
            raise ValueError(f'{n} latents for a mask with {vis.numel()} visible units')
        num_units = mask.numel()
        grid = self.mask_token.to(tokens.dtype).expand(b, num_units, d)
        grid = grid.index_copy(1, vis.to(tokens.device), tokens)
        return grid + self.pos_embed(tuple(mask.shape), tokens)


@MODELS.register_module()
class MAEUnitDecoder(_UnitPlacement):
    """GreenMIM's MAE-style decoder on the unit grid (official: 512 wide, 1 block, 16 heads).

    Linear embed of the visible latents -> placement at their units, learned mask token
    elsewhere, fixed 2-D sin-cos position (computed for the mask's grid on the fly) ->
    ``depth`` mmpretrain ``TransformerEncoderLayer`` blocks -> LayerNorm -> Linear to
    ``unit * unit * in_chans`` pixels per unit.

    forward(latent (B, N_vis, in_channels), mask (Hu, Wu) bool) -> (B, Hu*Wu, unit²·in_chans),
    units in raster order.
    """

    def __init__(self, in_channels: int, embed_dims: int = 512, depth: int = 1,
                 num_heads: int = 16, mlp_ratio: float = 4., unit: int = 32, in_chans: int = 3,
                 norm_cfg: dict = dict(type='LN', eps=1e-6), init_cfg: Optional[dict] = None):
        super().__init__(embed_dims, init_cfg=init_cfg)
        self.unit = int(unit)
        self.decoder_embed = nn.Linear(in_channels, embed_dims, bias=True)
        self.decoder_blocks = nn.ModuleList([
            TransformerEncoderLayer(embed_dims, num_heads, int(mlp_ratio * embed_dims),
                                    qkv_bias=True, norm_cfg=norm_cfg) for _ in range(depth)
        ])
        self.decoder_norm = build_norm_layer(norm_cfg, embed_dims)[1]
        self.decoder_pred = nn.Linear(embed_dims, self.unit**2 * in_chans, bias=True)

    def forward(self, latent: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """latent (B, N_vis, C_in), mask (Hu, Wu) -> predictions (B, Hu*Wu, unit²·in_chans)."""
        x = self.place(self.decoder_embed(latent), mask)
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))


@MODELS.register_module()
class LinearUnitDecoder(_UnitPlacement):
    """SimMIM-style linear decoder on the unit grid: placement, then one Linear to pixels.

    Visible latents sit at their own units, a learned mask token (width ``in_channels``) at the
    masked ones, the sin-cos position is added, and a single Linear maps every unit to
    ``unit * unit * in_chans`` pixels. Honest caveat: unlike SimMIM (whose mask tokens enter the
    *encoder*), the GreenMIM encoder never sees masked units, and with no mixing layer here a
    masked unit's prediction is a function of its position only (mask token + position): it can
    learn at most a per-position average image. Use it as an ablation / lower bound; the
    ``MAEUnitDecoder`` is the GreenMIM decoder.

    forward(latent (B, N_vis, in_channels), mask (Hu, Wu) bool) -> (B, Hu*Wu, unit²·in_chans).
    """

    def __init__(self, in_channels: int, unit: int = 32, in_chans: int = 3,
                 init_cfg: Optional[dict] = None):
        super().__init__(in_channels, init_cfg=init_cfg)
        self.unit = int(unit)
        self.decoder_pred = nn.Linear(in_channels, self.unit**2 * in_chans, bias=True)

    def forward(self, latent: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """latent (B, N_vis, C_in), mask (Hu, Wu) -> predictions (B, Hu*Wu, unit²·in_chans)."""
        return self.decoder_pred(self.place(latent, mask))
