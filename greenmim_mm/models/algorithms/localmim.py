"""LocalMIM: multi-scale local reconstruction on the sparse hierarchical encoder.

Wang et al., "Masked Image Modeling with Local Multi-Scale Reconstruction", CVPR 2023
(LocalMIM's official code). Several stages of the encoder each get a tiny decoder and a target at the scale of
that stage's grid (fine below, coarse above); the losses are summed. The encoder sees only the
visible 32-px mask units, exactly as in GreenMIM, whose mask bookkeeping this reuses.
"""
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from greenmim_mm.ops.masking import unit_grid, upsample_mask
from greenmim_mm.registry import MODELS

from .greenmim import (GreenMIM, ModelConfigError, _build, _single_view, cell_plan,
                       check_decoder_widths, draw_unit_mask, masked_cell_loss)


def out_strides(backbone: nn.Module) -> List[int]:
    """Pixel stride of each output of a hierarchical backbone, in ``out_indices`` order.

    Uses ``backbone.out_strides`` when the backbone defines it; otherwise mmpretrain Swin's
    layout: stage i's output has gone through i merges, one more with ``out_after_downsample``
    where stage i has a downsample.
    """
    if hasattr(backbone, 'out_strides'):
        return [int(s) for s in backbone.out_strides]
    patch = int(backbone.patch_embed.projection.stride[0])
    after = bool(getattr(backbone, 'out_after_downsample', False))
    strides = []
    for i in backbone.out_indices:
        merges = i + int(after and backbone.stages[i].downsample is not None)
        strides.append(patch * 2**merges)
    return strides


@MODELS.register_module()
class LocalMIM(GreenMIM):
    """LocalMIM pre-training on a sparse hierarchical backbone (``GreenSwinTransformer``,
    ``GreenTwinsSVT``).

    One mask of 32-px units per device batch, drawn exactly as in ``GreenMIM`` (seed, rank and
    the ``mask_step`` buffer: exact resume, different masks per rank). The backbone's sparse path
    returns one (B, N_k, C_k) tensor of visible tokens per out index (LocalMIM Swin: stages 0-2
    after patch merging and the last stage, ``out_indices=(0, 1, 2, 3)``,
    ``out_after_downsample=True``, strides 8/16/32/32; the backbone's ``norm{i}`` are the per-head
    LayerNorms, eps 1e-6; LocalMIM Twins, ``GreenTwinsSVT`` with the same two options: the
    patch-embedding outputs of stages 1-3, each through the embedding's own LayerNorm, and the
    last stage's output, strides 8/16/32/32, see ``GreenTwinsSVT``). Head k: its decoder
    (``necks[k]``, e.g. ``MAEGridDecoder``) predicts every cell of that output's grid from the
    visible tokens, and its head (``heads[k]``, ``CellReconstructionHead``) compares with its
    target at cell = stride on the masked cells (the unit mask repeated to the grid).
    Loss = sum_k loss_weights[k] * loss_k, logged per head as ``loss_k``.

    Args:
        backbone (dict): the sparse backbone with one out index per head.
        necks (list[dict]): one decoder per out index; ``pred_dims`` = its head's target width.
        heads (list[dict]): one ``CellReconstructionHead`` per out index; target cell = stride.
        loss_weights (list[float], optional): per-head weights, default all 1 (LocalMIM).
        isolate_grad (bool): the paper's "w/ isolated grad" mode (LocalMIM, CVPR 2023, the
            gradient-isolation ablation): the encoder's tokens are detached after every
            supervised output, so head k's loss trains only the layers between output k-1 and
            output k (plus its own decoder); the losses are unchanged. Default False.
        mask_ratio, mask_seed, pretrained, data_preprocessor, init_cfg, prefetch_plan: as
            ``GreenMIM``.
        compile (bool or dict): as ``GreenMIM``: ``torch.compile`` the model step
            (:meth:`masked_loss`: encoder, every decoder and head, the weighted losses) with
            these options; the host side (:meth:`plan_step`: mask, geometry, cell indices,
            decoder position caches) stays outside the graph, and every shape is static per
            (mask ratio, image size), so it compiles once. Default False.

    Raises ModelConfigError (a ValueError) at build time when the numbers of out indices,
    decoders, heads and weights differ, when a head's cell is not its output's stride, when a
    decoder's prediction width is not its target's, when a decoder's ``in_channels`` is not the
    width of its backbone output, or when an output is coarser than the mask unit.
    """

    def __init__(self, backbone: dict, necks: Sequence[dict], heads: Sequence[dict],
                 loss_weights: Optional[Sequence[float]] = None, isolate_grad: bool = False,
                 mask_ratio: float = 0.75,
                 mask_seed: Optional[int] = None, pretrained: Optional[str] = None,
                 data_preprocessor: Optional[Union[dict, nn.Module]] = None,
                 init_cfg: Optional[Union[dict, List[dict]]] = None, prefetch_plan: bool = True,
                 compile: Union[bool, dict] = False):
        necks = nn.ModuleList([_build(c) for c in necks])
        heads = nn.ModuleList([_build(c) for c in heads])
        super().__init__(backbone=backbone, neck=necks, head=heads, mask_ratio=mask_ratio,
                         mask_seed=mask_seed, pretrained=pretrained,
                         data_preprocessor=data_preprocessor, init_cfg=init_cfg,
                         prefetch_plan=prefetch_plan, compile=compile)
        num = len(self.backbone.out_indices)
        weights = [1.0] * num if loss_weights is None else [float(w) for w in loss_weights]
        if not len(necks) == len(heads) == len(weights) == num:
            raise ModelConfigError(
                f'{type(self).__name__} needs one decoder, head and loss weight per backbone '
                f'output: {num} outputs (out_indices {tuple(self.backbone.out_indices)}), '
                f'{len(necks)} necks, {len(heads)} heads, {len(weights)} loss_weights')
        self.loss_weights = weights
        self.isolate_grad = bool(isolate_grad)
        self._check_heads()
        check_decoder_widths(self.backbone, self.neck,
                             [f'model.necks[{k}]' for k in range(num)])

    def _check_heads(self) -> None:
        """Swin: every head's cell is its output's stride, a divisor of the mask unit."""
        self.strides = out_strides(self.backbone)
        self.grid_factors = [self._grid_factor(k) for k in range(len(self.strides))]

    def _grid_factor(self, k: int) -> int:
        """How many cells of head k's grid one mask unit spans per side (unit / stride)."""
        stride, head, neck = self.strides[k], self.head[k], self.neck[k]
        if self.unit % stride:
            raise ModelConfigError(f'head {k}: output stride {stride} does not divide the '
                                   f'{self.unit}-px mask unit')
        if head.cell != stride:
            raise ModelConfigError(f'head {k}: target cell {head.cell} px differs from the '
                                   f'output stride {stride} px')
        pred_dims = getattr(neck, 'pred_dims', None)
        if pred_dims is not None and pred_dims != head.out_channels:
            raise ModelConfigError(f'head {k}: decoder predicts {pred_dims} values per cell, '
                                   f'the target has {head.out_channels}')
        return self.unit // stride

    def head_masks(self, mask: torch.Tensor) -> List[torch.Tensor]:
        """Unit mask (Hu, Wu) -> every head's cell mask (Hu*f_k, Wu*f_k), bool, True = masked
        (its loss weights)."""
        return [upsample_mask(mask, f) for f in self.grid_factors]

    def step_mask(self, img: torch.Tensor) -> torch.Tensor:
        """This training step's mask for a batch ``img`` (advances the step)."""
        return self.next_mask(img.shape[-2:])

    def seeded_mask(self, img: torch.Tensor, seed: int) -> torch.Tensor:
        """The mask of ``seed`` for a batch ``img`` (step 0, rank 0; no state change)."""
        return draw_unit_mask(unit_grid(img.shape[-2:], self.unit), self.mask_ratio, seed, 0, 0)

    def forward_masked(self, img: torch.Tensor, mask: torch.Tensor) -> List[torch.Tensor]:
        """img (B, C, H, W), mask (Hu, Wu) -> per head (B, L_k, D_k) predictions of every cell."""
        feats = self.backbone(img, mask=mask, isolate_grad=self.isolate_grad)
        return [neck(feat, cells) for neck, feat, cells in
                zip(self.neck, feats, self.head_masks(mask))]

    def loss(self, inputs: Union[torch.Tensor, List[torch.Tensor]],
             data_samples: Optional[list] = None, **kwargs) -> Dict[str, torch.Tensor]:
        """inputs: normalised images (B, C, H, W) -> {'loss_k': weighted loss of head k}
        (mmengine sums every 'loss*' entry)."""
        img = _single_view(inputs)
        mask, plan = self.plan_step(img)
        return {f'loss_{k}': loss for k, loss in enumerate(self.model_step(img, mask, plan))}

    @torch.compiler.disable
    def plan_step(self, img: torch.Tensor) -> Tuple[torch.Tensor, dict]:
        """The host side of a step, never traced by ``torch.compile`` (as ``GreenMIM``'s):
        :meth:`take_plan` (host mask, plan on ``img``'s device, prefetched), and every
        decoder's position cache and every target generator's cache (``prepare``, e.g. HOG's
        cell offsets) filled for this step's sizes, so a compiled step never sees a cache
        change (nor copies positions to the device)."""
        mask, plan, next_key = self._take_plan(img)
        like = torch.empty(0, device=img.device)
        for neck, grid in zip(self.neck, self.decoder_grids(mask, plan)):
            if hasattr(neck, 'pos_embed'):
                neck.pos_embed(grid, like)
        for head in self.head:
            prepare = getattr(getattr(head, 'target_generator', None), 'prepare', None)
            if prepare is not None:
                prepare(img.shape[-2:], img.device)
        self._prefetch(next_key)  # last, as in GreenMIM.plan_step
        return mask, plan

    def decoder_grids(self, mask: torch.Tensor, plan: dict) -> List[Tuple[int, int]]:
        """The (H, W) grid every decoder places its tokens on: its head's cell mask."""
        return [tuple(cells['weight'].shape) for cells in plan['cells']]

    def masked_loss(self, img: torch.Tensor, mask: torch.Tensor, plan: dict) -> List[torch.Tensor]:
        """The model step on the plan of :meth:`plan_step` (one graph under ``torch.compile``):
        every head's weighted loss, ``loss_weights[k] * loss_k``."""
        return [w * loss for w, loss in
                zip(self.loss_weights, self.head_losses(img, mask, plan))]

    def plan_tensors(self, mask: torch.Tensor, shape: tuple, device: torch.device) -> dict:
        """Host tensors of a step's plan: the backbone geometry and every head's cells."""
        return dict(geometry=self.backbone.sparse_geometry(mask, shape, device),
                    cells=[cell_plan(m) for m in self.head_masks(mask)])

    def head_losses(self, img: torch.Tensor, mask: torch.Tensor,
                    plan: Optional[dict] = None) -> List[torch.Tensor]:
        """Every head's unweighted loss; each decoder predicts the masked cells of its grid
        only (``masked_cell_loss``): the same losses as predicting every cell (tested).
        ``plan``: ``take_plan``'s device plan (else built here)."""
        if plan is None:
            feats = self.backbone(img, mask=mask, isolate_grad=self.isolate_grad)
            cells = [None] * len(feats)
        else:
            feats = self.backbone(img, mask=mask, geometry=plan['geometry'],
                                  isolate_grad=self.isolate_grad)
            cells = plan['cells']
        return [masked_cell_loss(neck, head, feat, img, m, c) for neck, head, feat, m, c in
                zip(self.neck, self.head, feats, self.head_masks(mask), cells)]

    def reconstruct(self, *args, **kwargs):
        """GreenMIM's single-image reconstruction has no LocalMIM counterpart (several heads,
        HOG targets are not images): use :meth:`predict_heads`."""
        raise NotImplementedError('LocalMIM has one prediction per head: use predict_heads()')

    @torch.no_grad()
    def predict_heads(self, inputs: Union[torch.Tensor, List[torch.Tensor]],
                      mask: Optional[torch.Tensor] = None, seed: int = 0):
        """For visualisation: (per-head predictions [(B, L_k, D_k)], targets [(B, L_k, D_k)],
        mask). Without ``mask`` one is drawn from ``seed`` (the training step counter is left
        alone)."""
        img = _single_view(inputs)
        if mask is None:
            mask = self.seeded_mask(img, seed)
        preds = self.forward_masked(img, mask)
        targets = [head.construct_target(img) for head in self.head]
        return preds, targets, mask
