"""LocalMIM on a columnar ViT (LocalMIM's official code)."""
from typing import List, Optional

import torch
import torch.nn.functional as F
from mmengine.dist import get_rank

from greenmim_mm.models.backbones.localmim_vit import random_patch_masks
from greenmim_mm.ops.masking import visible_patch_index
from greenmim_mm.ops.masking import check_mask_ratio
from greenmim_mm.registry import MODELS

from .greenmim import ModelConfigError, mask_generator_seed
from .localmim import LocalMIM


def cell_weights(mask: torch.Tensor, scale: float) -> torch.Tensor:
    """Per-sample patch mask (B, h, w) -> loss weights on a grid ``scale`` x finer (B, sh, sw):
    nearest repetition for scale >= 1, 2x2 average for 0.5 (a 32-px cell weighs the share of its
    16-px patches that are masked, as LocalMIM's ViT code)."""
    m = mask.float()
    if scale >= 1:
        f = int(scale)
        return m.repeat_interleave(f, 1).repeat_interleave(f, 2)
    return F.avg_pool2d(m[:, None], int(round(1 / scale)))[:, 0]


@MODELS.register_module()
class LocalMIMViT(LocalMIM):
    """LocalMIM pre-training of a ViT (mmpretrain ``MAEViT`` through ``LocalMIMMAEViT``).

    Per-sample MAE masking of the 16-px patches (ratio 0.75), drawn from a generator seeded by
    (seed, rank, step) with GreenMIM's ``mask_step`` buffer (exact resume; the global RNG is not
    used). The encoder runs on the visible patches and returns the tokens after the blocks in
    its ``out_indices`` (ViT-B: 1, 3, 9, 11); head k's decoder (``LocalMIMViTDecoder``, scale
    4/2/1/0.5) predicts on a grid ``scale`` x the patch grid and its ``CellReconstructionHead``
    compares with the target at cell = patch / scale (4/8/16/32 px), weighted by
    :func:`cell_weights`. Loss = sum_k loss_weights[k] * loss_k (logged per head).

    Args: as ``LocalMIM``; ``backbone`` is a ``LocalMIMMAEViT`` with one out index per head,
    ``necks`` are ``LocalMIMViTDecoder``.
    """

    def _check_heads(self) -> None:
        """Every head's cell x its decoder's scale is the patch; widths match the targets."""
        patch = int(self.backbone.patch_embed.projection.stride[0])
        for k, (neck, head) in enumerate(zip(self.neck, self.head)):
            if head.cell * neck.scale != patch:
                raise ModelConfigError(f'head {k}: target cell {head.cell} px x decoder scale '
                                       f'{neck.scale} is not the {patch}-px patch')
            if neck.pred_dims != head.out_channels:
                raise ModelConfigError(f'head {k}: decoder predicts {neck.pred_dims} values per '
                                       f'cell, the target has {head.out_channels}')

    @property
    def patch_grid(self):
        return tuple(int(s) for s in self.backbone.patch_resolution)

    def draw_masks(self, batch: int, base_seed: int, rank: int, step: int) -> torch.Tensor:
        """The per-sample masks (B, h, w) bool of (base seed, rank, step)."""
        gen = torch.Generator().manual_seed(mask_generator_seed(base_seed, rank, step))
        h, w = self.patch_grid
        return random_patch_masks(batch, h * w, check_mask_ratio(self.mask_ratio), gen).view(
            batch, h, w)

    def step_mask(self, img: torch.Tensor) -> torch.Tensor:
        return self.next_mask(img.shape[0])

    def seeded_mask(self, img: torch.Tensor, seed: int) -> torch.Tensor:
        return self.draw_masks(img.shape[0], seed, 0, 0)

    def head_masks(self, mask: torch.Tensor) -> List[torch.Tensor]:
        """Patch masks (B, h, w) -> every head's cell weights (:func:`cell_weights`)."""
        return [cell_weights(mask, neck.scale) for neck in self.neck]

    def next_mask(self, batch: int) -> torch.Tensor:
        """This step's masks for this rank (CPU bool (B, h, w)); advances the step."""
        if self.base_seed is None:
            self.base_seed = int(torch.initial_seed())
        mask = self.draw_step_mask(batch, self.base_seed, get_rank(), self._step)
        self._advance()
        return mask

    def draw_step_mask(self, batch: int, base_seed: int, rank: int, step: int) -> torch.Tensor:
        return self.draw_masks(batch, base_seed, rank, step)

    def plan_shape(self, img: torch.Tensor) -> int:
        """The per-sample masks depend on the batch size."""
        return int(img.shape[0])

    def plan_tensors(self, mask: torch.Tensor, shape: int, device: torch.device) -> dict:
        """Host tensors of a step's plan: visible patch indices (B, N_vis), every head's weights."""
        return dict(visible=visible_patch_index(mask.flatten(1)), weights=self.head_masks(mask))

    def decoder_grids(self, mask: torch.Tensor, plan: dict) -> List[tuple]:
        """Every decoder places its tokens on the patch grid (h, w) of the masks (B, h, w)."""
        return [tuple(mask.shape[1:])] * len(self.neck)

    def forward_masked(self, img: torch.Tensor, mask: torch.Tensor,
                       visible: Optional[torch.Tensor] = None) -> List[torch.Tensor]:
        """img (B, C, H, W), mask (B, h, w) -> per head (B, L_k, D_k) predictions; ``visible``:
        ``visible_patch_index`` of the mask on the device (else computed here)."""
        if visible is None:
            visible = visible_patch_index(mask.flatten(1)).to(img.device, non_blocking=True)
        feats = self.backbone(img, mask=mask.flatten(1), visible=visible,
                              isolate_grad=self.isolate_grad)
        return [neck(feat, mask, visible) for neck, feat in zip(self.neck, feats)]

    def head_losses(self, img: torch.Tensor, mask: torch.Tensor,
                    plan: Optional[dict] = None) -> List[torch.Tensor]:
        """Every head's unweighted loss from predictions of every cell (per-sample masks and the
        coarse head's fractional weights: no batch-shared set of cells to restrict to)."""
        visible, weights = (None, self.head_masks(mask)) if plan is None else (
            plan['visible'], plan['weights'])
        return [head.loss(pred, img, weight) for head, pred, weight in
                zip(self.head, self.forward_masked(img, mask, visible), weights)]
