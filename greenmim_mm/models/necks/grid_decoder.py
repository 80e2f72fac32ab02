"""MAE-style decoder on any grid of cells: visible latents at their own cells, mask token elsewhere.

A *grid* is the (H, W) map a decoder predicts on (GreenMIM: 32-px mask units; LocalMIM: every
supervised stage's own token grid, e.g. 28/14/7/7 at 224 px for Swin). The mask of that grid is a
bool (H, W) tensor, True = masked, shared by the batch. The sparse encoders emit one latent per
*visible* cell in raster order, so latent k goes to the k-th visible cell in raster order,
``(~mask).flatten().nonzero()``. (Official GreenMIM/LocalMIM un-shuffle with MAE's ``ids_restore``
instead, which puts visible latents at permuted positions in GreenMIM's official code. Fixed here.)

The loss reads only the masked cells, so a decoder may be asked for those cells alone
(``forward(latent, mask, cells)``): every block but the last runs on the whole grid, the last
block's keys and values still come from every cell, and its queries, MLP, the final norm and the
predictor run on the requested cells only (``block_at_cells``). The result is exactly the full
output at those cells (tested); at ratio 0.75 that skips a quarter of the last block's attention
and MLP.
"""
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import build_norm_layer
from mmengine.model import BaseModule
from mmpretrain.models.backbones.vision_transformer import TransformerEncoderLayer
from mmpretrain.models.utils.attention import MultiheadAttention
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


def masked_cell_index(mask: torch.Tensor) -> torch.Tensor:
    """(H, W) bool mask, True = masked -> (N_masked,) int64 raster indices of the masked cells
    (CPU, ascending): the cells a masked-cell loss reads."""
    return visible_cell_index(~mask)


def block_at_cells(block: nn.Module, x: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """``block(x)[:, cells]`` of an mmpretrain ``TransformerEncoderLayer`` (pre-norm, plain
    ``MultiheadAttention``), computing only what those rows need.

    x (B, N, C); cells (M,) int64 row indices on x's device -> (B, M, C). Keys and values come
    from all N rows (after ``ln1``); the query projection, attention, output projection, residual,
    ``ln2`` and FFN run on the M rows. Every operation is the layer's own (weights, scale, dropout,
    layer scale, drop path), so the result equals the full layer's rows. A layer of another kind
    (or one with ``v_shortcut`` / a different input width) is run in full and then indexed.
    """
    if not _is_plain_encoder_layer(block):
        return block(x).index_select(1, cells)
    attn = block.attn
    b, n, c = x.shape
    heads, head_dims = attn.num_heads, attn.head_dims
    h = block.ln1(x)
    weight, bias = attn.qkv.weight, attn.qkv.bias
    q = F.linear(h.index_select(1, cells), weight[:c], None if bias is None else bias[:c])
    kv = F.linear(h, weight[c:], None if bias is None else bias[c:])
    q = q.reshape(b, -1, heads, head_dims).transpose(1, 2)
    k, v = kv.reshape(b, n, 2, heads, head_dims).permute(2, 0, 3, 1, 4)
    out = attn.scaled_dot_product_attention(
        q, k, v, dropout_p=attn.attn_drop if attn.training else 0.)
    out = out.transpose(1, 2).reshape(b, -1, c)
    out = attn.out_drop(attn.gamma1(attn.proj_drop(attn.proj(out))))
    y = x.index_select(1, cells) + out
    return block.ffn(block.ln2(y), identity=y)


def _is_plain_encoder_layer(block: nn.Module) -> bool:
    """An mmpretrain ``TransformerEncoderLayer`` whose attention ``block_at_cells`` can split."""
    attn = getattr(block, 'attn', None)
    return (isinstance(block, TransformerEncoderLayer) and isinstance(attn, MultiheadAttention)
            and not attn.v_shortcut and attn.input_dims == attn.embed_dims)


def decode_cells(neck: nn.Module, latent: torch.Tensor, mask: torch.Tensor,
                 cells: torch.Tensor, visible: Optional[torch.Tensor] = None) -> torch.Tensor:
    """A decoder's predictions at ``cells`` only: (B, M, D), ``neck(latent, mask)[:, cells]``.

    Decoders that take ``cells`` (``MAEGridDecoder``, ``LinearUnitDecoder``) compute only those
    (and take ``visible``, the mask's ``visible_cell_index`` already on the device, if given);
    any other neck predicts the whole grid, which is then indexed."""
    if getattr(neck, 'predicts_cells', False):
        if visible is None:
            return neck(latent, mask, cells)
        return neck(latent, mask, cells, visible=visible)
    return neck(latent, mask).index_select(1, cells)


def grid_sincos_embedding(grid_hw: Tuple[int, int], dims: int) -> torch.Tensor:
    """Fixed 2-D sin-cos embedding (H*W, dims) of a grid, rows in raster order (MAE).

    mmpretrain's ``build_2d_sincos_position_embedding((h, w))`` enumerates positions with
    the *first* argument varying fastest, so it is called with (W, H) to get raster order
    (row-major over (H, W)) for non-square grids too. Its first dims/2 channels then encode the
    row and the last dims/2 the column (an order-free convention for a fixed embedding).
    """
    h, w = int(grid_hw[0]), int(grid_hw[1])
    return build_2d_sincos_position_embedding((w, h), dims)[0]


def cached_sincos_embedding(cache: Dict[tuple, torch.Tensor], grid_hw: Tuple[int, int],
                            dims: int, like: torch.Tensor) -> torch.Tensor:
    """(1, H*W, dims) :func:`grid_sincos_embedding` on ``like``'s device and dtype, kept in
    ``cache`` per (grid, dims, device): the host-to-device copy (a blocking one, pageable
    memory) happens at the first use of a grid only, so a training step copies nothing (the
    algorithms fill the cache in their host-side ``plan_step``)."""
    key = (int(grid_hw[0]), int(grid_hw[1]), int(dims), like.device)
    if key not in cache:
        cache[key] = grid_sincos_embedding(grid_hw, dims).to(like.device)[None]
    return cache[key].to(like.dtype)


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
        return cached_sincos_embedding(self._pos_cache, grid_hw, self.mask_token.shape[-1], like)

    def place(self, tokens: torch.Tensor, mask: torch.Tensor,
              visible: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Grid sequence: tokens (B, N_vis, D) + mask (H, W) -> (B, H*W, D).

        Visible token k goes to the k-th visible cell in raster order, the mask token to every
        masked cell; then the sin-cos position of each cell is added. ``visible``: the mask's
        ``visible_cell_index``, if the caller has it (e.g. on the device already). ValueError
        when N_vis is not the mask's number of visible cells.
        """
        vis = visible_cell_index(mask) if visible is None else visible
        b, n, d = tokens.shape
        if n != vis.numel():
            raise ValueError(f'{n} latents for a mask with {vis.numel()} visible units '
                             f'(grid {tuple(mask.shape)})')
        grid = self.mask_token.to(tokens.dtype).expand(b, mask.numel(), d)
        grid = grid.index_copy(1, vis.to(tokens.device, non_blocking=True), tokens)
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

    forward(latent (B, N_vis, in_channels), mask (H, W) bool, True = masked, cells=None)
        -> (B, H*W, pred_dims), cells in raster order; with ``cells`` ((M,) int64 raster
        indices on the latent's device) only those: (B, M, pred_dims), equal to the full
        output's rows (the last block through ``block_at_cells``).
    """
    predicts_cells = True

    def __init__(self, in_channels: int, pred_dims: int, embed_dims: int = 512, depth: int = 1,
                 num_heads: int = 16, mlp_ratio: float = 4.,
                 norm_cfg: dict = dict(type='LN', eps=1e-6), init_cfg: Optional[dict] = None):
        super().__init__(embed_dims, init_cfg=init_cfg)
        self.pred_dims = int(pred_dims)
        self.in_channels = int(in_channels)
        self.decoder_embed = nn.Linear(in_channels, embed_dims, bias=True)
        self.decoder_blocks = nn.ModuleList([
            TransformerEncoderLayer(embed_dims, num_heads, int(mlp_ratio * embed_dims),
                                    qkv_bias=True, norm_cfg=norm_cfg) for _ in range(depth)
        ])
        self.decoder_norm = build_norm_layer(norm_cfg, embed_dims)[1]
        self.decoder_pred = nn.Linear(embed_dims, self.pred_dims, bias=True)

    def forward(self, latent: torch.Tensor, mask: torch.Tensor,
                cells: Optional[torch.Tensor] = None,
                visible: Optional[torch.Tensor] = None) -> torch.Tensor:
        """latent (B, N_vis, C_in), mask (H, W) -> predictions (B, H*W, pred_dims), or
        (B, M, pred_dims) at ``cells``; ``visible`` as in ``place``."""
        x = self.place(self.decoder_embed(latent), mask, visible)
        blocks = list(self.decoder_blocks)
        last = blocks.pop() if cells is not None and blocks else None
        for blk in blocks:
            x = blk(x)
        if cells is not None:
            x = x.index_select(1, cells) if last is None else block_at_cells(last, x, cells)
        return self.decoder_pred(self.decoder_norm(x))
