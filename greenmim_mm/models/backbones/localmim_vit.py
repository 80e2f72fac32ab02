"""mmpretrain's ``MAEViT`` plus what LocalMIM needs: intermediate outputs of the visible tokens."""
from typing import Optional, Tuple

import numpy as np
import torch
from mmpretrain.models.selfsup import MAEViT

from greenmim_mm.ops.masking import visible_patch_index
from greenmim_mm.registry import MODELS
from .pretrained import StrictPretrainedMixin


def random_patch_masks(batch: int, num_patches: int, ratio: float,
                       generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """MAE's per-sample random masking: (batch, num_patches) bool, True = masked, with exactly
    ``int(num_patches * (1 - ratio))`` visible patches per row (argsort of uniform noise, as
    ``MAEViT.random_masking``; CPU)."""
    keep = int(num_patches * (1 - ratio))
    if keep < 1:
        raise ValueError(f'mask ratio {ratio} leaves no visible patch of {num_patches}')
    noise = torch.rand(batch, num_patches, generator=generator)
    ids_keep = torch.argsort(noise, dim=1)[:, :keep]
    mask = torch.ones(batch, num_patches, dtype=torch.bool)
    mask.scatter_(1, ids_keep, False)
    return mask


@MODELS.register_module()
class LocalMIMMAEViT(StrictPretrainedMixin, MAEViT):
    """``MAEViT`` (same arguments and state dict) whose masked path takes a given per-sample mask
    and returns the visible tokens after every block in ``out_indices``.

    * ``forward(x)`` / ``forward(x, mask=None)``: mmpretrain's dense ``VisionTransformer`` path.
      Unlike ``MAEViT``, whose default ``forward(x)`` (``mask=True``) masks at random, the default
      here is dense: LocalMIM draws its masks itself and passes them in. ``mask=True`` / ``False``
      (MAEViT's call style) is a ValueError.
    * ``forward(x, mask=mask)`` with ``mask`` (B, L) bool, True = masked, the same number of
      visible patches in every row: MAE's encoder on the visible patches (patch embedding, fixed
      sin-cos position, visible patches kept in ascending raster order, cls token prepended,
      blocks). Returns a tuple with, per out index i, (B, 1 + N_vis, C): the cls token and the
      visible tokens after block i, without normalisation (LocalMIM normalises per head).
      LocalMIM ViT-B: ``out_indices=[1, 3, 9, 11]``.

    It equals ``MAEViT``'s own masked forward up to the order of the visible tokens (MAE keeps
    them in noise order), which attention does not see (tested).

    Pretrained weights (``init_cfg=dict(type='Pretrained', ...)``) load strictly
    (:class:`~greenmim_mm.models.backbones.pretrained.StrictPretrainedMixin`), after MAEViT's own
    initialisation (which would otherwise overwrite the loaded position embedding, patch
    embedding and cls token); a final norm ``ln1`` may be absent from the file (kept) or present
    without one here (ignored).
    """
    OPTIONAL_MISSING = (r'ln1\.(weight|bias)', )
    OPTIONAL_UNEXPECTED = (r'ln1\.(weight|bias)', )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for module in self.modules():   # MAEViT's np.linspace rates: a branch torch.compile
            if isinstance(getattr(module, 'drop_prob', None), np.floating):   # cannot trace
                module.drop_prob = float(module.drop_prob)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None,
                visible: Optional[torch.Tensor] = None,
                isolate_grad: bool = False) -> Tuple[torch.Tensor, ...]:
        if mask is None:
            if isolate_grad:
                raise ValueError('isolate_grad applies to the masked path (a mask) only')
            return super().forward(x, mask=None)
        return self.forward_visible(x, mask, visible, isolate_grad)

    def forward_visible(self, x: torch.Tensor, mask: torch.Tensor,
                        visible: Optional[torch.Tensor] = None,
                        isolate_grad: bool = False) -> Tuple[torch.Tensor, ...]:
        """x (B, 3, H, W), mask (B, L) bool -> tuple of (B, 1 + N_vis, C) per out index.
        ``visible``: ``visible_patch_index(mask)`` on x's device, if the caller has it.
        ``isolate_grad``: the tokens are detached after every out index (LocalMIM's
        gradient-isolated mode: a loss on output k reaches only blocks after output k-1).
        ValueError for a mask that is not a (B, L) bool tensor (e.g. MAEViT's ``mask=True``)."""
        x = self.patch_embed(x)[0] + self.pos_embed[:, 1:, :]
        b, num, dims = x.shape
        if not isinstance(mask, torch.Tensor):
            raise ValueError(f'mask must be a ({b}, {num}) bool tensor (True = masked); got '
                             f'{mask!r}: LocalMIMMAEViT does not draw masks (MAEViT\'s '
                             'mask=True); pass mask=None for the dense path')
        if mask.dtype != torch.bool or tuple(mask.shape) != (b, num):
            raise ValueError(f'mask must be a ({b}, {num}) bool tensor (True = masked); got '
                             f'{mask.dtype} {tuple(mask.shape)}')
        if visible is None:
            visible = visible_patch_index(mask).to(x.device, non_blocking=True)
        x = x.gather(1, visible[..., None].expand(-1, -1, dims))
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(b, -1, -1)
        x = torch.cat((cls, x), dim=1)
        outs = []
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i in self.out_indices:
                outs.append(x)
                x = x.detach() if isolate_grad else x
        return tuple(outs)
