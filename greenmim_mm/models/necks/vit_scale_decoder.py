"""LocalMIM's ViT decoder: a tiny MAE decoder, then a change of scale, then a 1x1 predictor."""
from typing import Optional

import torch
import torch.nn as nn
from mmcv.cnn import build_norm_layer
from mmengine.model import BaseModule
from mmpretrain.models.backbones.vision_transformer import TransformerEncoderLayer
from mmpretrain.models.utils import LayerNorm2d

from greenmim_mm.ops.masking import visible_patch_index
from greenmim_mm.registry import MODELS

from .grid_decoder import cached_sincos_embedding

SCALES = (4.0, 2.0, 1.0, 0.5)


def rescale_layers(scale: float, dims: int) -> nn.Sequential:
    """LocalMIM's official code: x4 two 2x2 deconvolutions (dims -> dims/2, channel
    LayerNorm with eps 1e-6 as the official one, GELU, -> dims/4), x2 one (dims -> dims/2), x1
    nothing, x0.5 2x2 average pool."""
    if scale == 4:
        return nn.Sequential(nn.ConvTranspose2d(dims, dims // 2, 2, 2),
                             LayerNorm2d(dims // 2, eps=1e-6), nn.GELU(),
                             nn.ConvTranspose2d(dims // 2, dims // 4, 2, 2))
    if scale == 2:
        return nn.Sequential(nn.ConvTranspose2d(dims, dims // 2, 2, 2))
    if scale == 1:
        return nn.Sequential()
    if scale == 0.5:
        return nn.Sequential(nn.AvgPool2d(2, 2))
    raise ValueError(f'scale must be one of {SCALES}; got {scale!r}')


@MODELS.register_module()
class LocalMIMViTDecoder(BaseModule):
    """One LocalMIM ViT head's decoder (LocalMIM's official code): per-head LayerNorm (eps 1e-6) ->
    Linear embed -> visible tokens at their own patches (per sample, raster order), learned mask
    token elsewhere, cls token kept, fixed 2-D sin-cos position (zero for cls, as MAE) -> ``depth``
    transformer blocks -> LayerNorm -> cls dropped, tokens as a (h, w) map -> rescale by
    ``scale`` -> 1x1 convolution to ``pred_dims``.

    Args:
        in_channels (int): encoder width. pred_dims (int): target values per cell.
        scale (float): 4, 2, 1 or 0.5: the target grid is ``scale`` x the patch grid.
        embed_dims, depth, num_heads, mlp_ratio: the transformer (LocalMIM: 256, 1, 8, 4).

    forward(tokens (B, 1 + N_vis, C), mask (B, h, w) bool, True = masked)
        -> (B, (scale*h) * (scale*w), pred_dims), cells in raster order.
    """

    def __init__(self, in_channels: int, pred_dims: int, scale: float, embed_dims: int = 256,
                 depth: int = 1, num_heads: int = 8, mlp_ratio: float = 4.,
                 norm_cfg: dict = dict(type='LN', eps=1e-6), init_cfg: Optional[dict] = None):
        super().__init__(init_cfg=init_cfg)
        if embed_dims % 4:
            raise ValueError(f'embed_dims must be divisible by 4; got {embed_dims}')
        self.scale = float(scale)
        self.pred_dims = int(pred_dims)
        self.in_channels = int(in_channels)
        self.rescale = rescale_layers(self.scale, embed_dims)
        out_dims = {4.0: embed_dims // 4, 2.0: embed_dims // 2}.get(self.scale, embed_dims)
        self.in_norm = build_norm_layer(norm_cfg, in_channels)[1]
        self.decoder_embed = nn.Linear(in_channels, embed_dims)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dims))
        self._pos_cache = {}  # (h, w, dims, device) -> (1, h*w, dims) positions
        self.decoder_blocks = nn.ModuleList([
            TransformerEncoderLayer(embed_dims, num_heads, int(mlp_ratio * embed_dims),
                                    qkv_bias=True, norm_cfg=norm_cfg) for _ in range(depth)
        ])
        self.decoder_norm = build_norm_layer(norm_cfg, embed_dims)[1]
        self.decoder_pred = nn.Conv2d(out_dims, self.pred_dims, 1)

    def init_weights(self) -> None:
        super().init_weights()
        nn.init.normal_(self.mask_token, std=.02)

    def place(self, tokens: torch.Tensor, mask: torch.Tensor,
              visible: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, 1 + N_vis, D) + mask (B, h, w) -> (B, 1 + h*w, D) with positions added.
        ``visible``: ``visible_patch_index`` of the mask on the tokens' device (else computed
        on the host and copied non-blocking)."""
        b, _, d = tokens.shape
        if visible is None:
            visible = visible_patch_index(mask.flatten(1)).to(tokens.device, non_blocking=True)
        if visible.shape[1] != tokens.shape[1] - 1:
            raise ValueError(f'{tokens.shape[1] - 1} visible tokens for a mask with '
                             f'{visible.shape[1]} visible patches per sample')
        grid = self.mask_token.to(tokens.dtype).repeat(b, mask[0].numel(), 1)
        grid = grid.scatter(1, visible[..., None].expand(-1, -1, d), tokens[:, 1:])
        pos = self.pos_embed(tuple(mask.shape[1:]), tokens)
        return torch.cat((tokens[:, :1], grid + pos), dim=1)

    def pos_embed(self, grid_hw, like: torch.Tensor) -> torch.Tensor:
        """(1, h*w, D) sin-cos positions of the patch grid on ``like``'s device and dtype,
        cached (copied to the device at the first use of a grid only)."""
        return cached_sincos_embedding(self._pos_cache, grid_hw, self.mask_token.shape[-1], like)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor,
                visible: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self.place(self.decoder_embed(self.in_norm(tokens)), mask, visible)
        for blk in self.decoder_blocks:
            x = blk(x)
        x = self.decoder_norm(x)[:, 1:]
        b, _, d = x.shape
        h, w = mask.shape[1:]
        x = self.rescale(x.transpose(1, 2).reshape(b, d, h, w))
        return self.decoder_pred(x).flatten(2).transpose(1, 2)
