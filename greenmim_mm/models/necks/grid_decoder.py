"""MAE-style decoder on any grid of cells: visible latents at their own cells, mask token elsewhere.

A *grid* is the (H, W) map a decoder predicts on (GreenMIM: 32-px mask units; LocalMIM: every
supervised stage's own token grid, e.g. 28/14/7/7 at 224 px for Swin). The mask of that grid is a
bool (H, W) tensor, True = masked, shared by the batch. The sparse encoders emit one latent per
*visible* cell in raster order, so latent k goes to the k-th visible cell in raster order,
``(~mask).flatten().nonzero()``. (Official GreenMIM/LocalMIM un-shuffle with MAE's ``ids_restore``
instead, which puts visible latents at permuted positions in GreenMIM's official code. Fixed here.)
"""
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
from mmcv.cnn import build_norm_layer
from mmengine.model import BaseModule
from mmpretrain.models.backbones.vision_transformer import TransformerEncoderLayer
from mmpretrain.models.utils import build_2d_sincos_position_embedding

from greenmim_mm.registry import MODELS


def visible_cell_index(mask: torch.Tensor) -> torch.Tensor:
    """(H, W) bool mask, True = masked -> (N_vis,) int64 raster indices of the visible cells
    (CPU, ascending). ValueError for anything but a 2-D bool tensor."""
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.dim() != 2:
        raise ValueError(f'mask must be a 2-D bool tensor (H, W); got '
                         f'{getattr(mask, "dtype", type(mask).__name__)} '
                         f'{tuple(getattr(mask, "shape", ()))}')
    return (~mask.cpu()).flatten().nonzero().squeeze(1)


def grid_sincos_embedding(grid_hw: Tuple[int, int], dims: int) -> torch.Tensor:
    """Fixed 2-D sin-cos embedding (H*W, dims) of a grid, rows in raster order (MAE).

    mmpretrain's ``build_2d_sincos_position_embedding((h, w))`` enumerates positions with
    the *first* argument varying fastest, so it is called with (W, H) to get raster order
    (row-major over (H, W)) for non-square grids too. Its first dims/2 channels then encode the
    row and the last dims/2 the column (an order-free convention for a fixed embedding).
    """
    h, w = int(grid_hw[0]), int(grid_hw[1])
    return build_2d_sincos_position_embedding((w, h), dims)[0]


class GridPlacement(BaseModule):
    """A learned mask token and the fixed sin-cos position of every cell of the mask's grid.

    Args:
        dims (int): token width (divisible by 4 for the sin-cos embedding).
    """

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
        """(1, H*W, dims) sin-cos embedding on ``like``'s device and dtype (cached per grid)."""
        key = (int(grid_hw[0]), int(grid_hw[1]), like.device)
        if key not in self._pos_cache:
            pos = grid_sincos_embedding(grid_hw, self.mask_token.shape[-1])
            self._pos_cache[key] = pos.to(like.device)[None]
        return self._pos_cache[key].to(like.dtype)

    def place(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Grid sequence: tokens (B, N_vis, D) + mask (H, W) -> (B, H*W, D).

        Visible token k goes to the k-th visible cell in raster order, the mask token to every
        masked cell; then the sin-cos position of each cell is added. ValueError when N_vis is
        not the mask's number of visible cells.
        """
        vis = visible_cell_index(mask)
        b, n, d = tokens.shape
        if n != vis.numel():
            raise ValueError(f'{n} latents for a mask with {vis.numel()} visible units '
                             f'(grid {tuple(mask.shape)})')
        grid = self.mask_token.to(tokens.dtype).expand(b, mask.numel(), d)
        grid = grid.index_copy(1, vis.to(tokens.device), tokens)
        return grid + self.pos_embed(tuple(mask.shape), tokens)


@MODELS.register_module()
class MAEGridDecoder(GridPlacement):
    """MAE-style decoder predicting ``pred_dims`` values per cell of the mask's grid.

    Linear embed of the visible latents -> placement at their cells, learned mask token
    elsewhere, fixed 2-D sin-cos position (computed for the mask's grid on the fly) ->
    ``depth`` mmpretrain ``TransformerEncoderLayer`` blocks (pre-norm, qkv bias) -> LayerNorm ->
    Linear predictor. GreenMIM (official code): 512 wide, 1 block, 16 heads on the 32-px unit
    grid; LocalMIM Swin (official code): 64/128/128/128 wide, 1 block, 4 heads, one per stage.

    Args:
        in_channels (int): latent width.
        pred_dims (int): values predicted per cell (the target generator's width).
        embed_dims, depth, num_heads, mlp_ratio, norm_cfg: the decoder transformer.

    forward(latent (B, N_vis, in_channels), mask (H, W) bool, True = masked)
        -> (B, H*W, pred_dims), cells in raster order.
    """

    def __init__(self, in_channels: int, pred_dims: int, embed_dims: int = 512, depth: int = 1,
                 num_heads: int = 16, mlp_ratio: float = 4.,
                 norm_cfg: dict = dict(type='LN', eps=1e-6), init_cfg: Optional[dict] = None):
        super().__init__(embed_dims, init_cfg=init_cfg)
        self.pred_dims = int(pred_dims)
        self.decoder_embed = nn.Linear(in_channels, embed_dims, bias=True)
        self.decoder_blocks = nn.ModuleList([
            TransformerEncoderLayer(embed_dims, num_heads, int(mlp_ratio * embed_dims),
                                    qkv_bias=True, norm_cfg=norm_cfg) for _ in range(depth)
        ])
        self.decoder_norm = build_norm_layer(norm_cfg, embed_dims)[1]
        self.decoder_pred = nn.Linear(embed_dims, self.pred_dims, bias=True)

    def forward(self, latent: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """latent (B, N_vis, C_in), mask (H, W) -> predictions (B, H*W, pred_dims)."""
        x = self.place(self.decoder_embed(latent), mask)
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))
