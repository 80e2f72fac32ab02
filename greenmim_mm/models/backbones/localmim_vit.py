"""mmpretrain's ``MAEViT`` plus what LocalMIM needs: intermediate outputs of the visible tokens."""
from typing import Optional, Tuple

import torch
from mmpretrain.models.selfsup import MAEViT

from greenmim_mm.registry import MODELS


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
class LocalMIMMAEViT(MAEViT):
    """``MAEViT`` (same arguments and state dict) whose masked path takes a given per-sample mask
    and returns the visible tokens after every block in ``out_indices``.

    * ``forward(x)`` / ``forward(x, mask=None)``: mmpretrain's dense ``VisionTransformer`` path.
    * ``forward(x, mask=mask)`` with ``mask`` (B, L) bool, True = masked, the same number of
      visible patches in every row: MAE's encoder on the visible patches (patch embedding, fixed
      sin-cos position, visible patches kept in ascending raster order, cls token prepended,
      blocks). Returns a tuple with, per out index i, (B, 1 + N_vis, C): the cls token and the
      visible tokens after block i, without normalisation (LocalMIM normalises per head).
      LocalMIM ViT-B: ``out_indices=[1, 3, 9, 11]``.

    It equals ``MAEViT``'s own masked forward up to the order of the visible tokens (MAE keeps
    them in noise order), which attention does not see (tested).
    """

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None,
                isolate_grad: bool = False) -> Tuple[torch.Tensor, ...]:
        if mask is None:
            if isolate_grad:
                raise ValueError('isolate_grad applies to the masked path (a mask) only')
            return super().forward(x, mask=None)
        return self.forward_visible(x, mask, isolate_grad)

    def forward_visible(self, x: torch.Tensor, mask: torch.Tensor,
                        isolate_grad: bool = False) -> Tuple[torch.Tensor, ...]:
        """x (B, 3, H, W), mask (B, L) bool -> tuple of (B, 1 + N_vis, C) per out index.
        ``isolate_grad``: the tokens are detached after every out index (LocalMIM's
        gradient-isolated mode: a loss on output k reaches only blocks after output k-1)."""
        x = self.patch_embed(x)[0] + self.pos_embed[:, 1:, :]
        b, num, dims = x.shape
        if mask.dtype != torch.bool or tuple(mask.shape) != (b, num):
            raise ValueError(f'mask must be a ({b}, {num}) bool tensor (True = masked); got '
                             f'{mask.dtype} {tuple(mask.shape)}')
        visible = ~mask.to(x.device)
        counts = visible.sum(1)
        if bool((counts != counts[0]).any()) or int(counts[0]) == 0:
            raise ValueError('every sample needs the same, non-zero number of visible patches')
        x = x[visible].view(b, int(counts[0]), dims)
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(b, -1, -1)
        x = torch.cat((cls, x), dim=1)
        outs = []
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i in self.out_indices:
                outs.append(x)
                x = x.detach() if isolate_grad else x
        return tuple(outs)
