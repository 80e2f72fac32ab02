"""The sparse-backbone contract shared by every GreenMIM backbone (Swin, Twins-SVT).

A sparse backbone is a dense mmpretrain backbone (same arguments, same state dict) that also
runs on the visible tokens of a batch-shared mask only:

* ``mask_unit`` (int, px): side of one mask unit, the stride of the last stage (32). A mask is a
  bool tensor (H / mask_unit, W / mask_unit), True = masked, shared by the batch.
* ``feature_info`` (list of dict, one per out index, in the style of timm's ``feature_info``):
  ``num_chs`` (channels C_i), ``reduction`` (stride in px), ``stage`` (index into the geometry
  list whose ``coords`` locate the output's tokens).
* ``sparse_geometry(mask, img_hw, device=None)`` -> list of ``StageGeometry`` (one per stage,
  CPU tensors): each stage's full grid ``hw``, visible ``coords`` (N, 2) in raster order, and
  only the layouts the backbone's blocks need for the attention backend resolved on ``device``.
  Raises ValueError for an image not divisible by ``mask_unit``, a mask of the wrong shape or
  dtype, or a mask hiding every unit.
* ``sparse_unsupported`` (str or None): why this configuration has no sparse path (e.g. a Twins
  arch whose ``sr`` x stage stride is not the mask unit), None when it has one; the pre-training
  algorithms refuse such a backbone at build time with this reason.
* ``forward(x)``: the dense path, a tuple of (B, C_i, H_i, W_i) maps (the mmpretrain forward).
  Both paths raise ValueError for an input that is not a 4-D (B, C, H, W) tensor.
* ``forward(x, mask=mask)``: the sparse path, a tuple of (B, N_i, C_i): the visible tokens of
  out index i in raster order, at ``geometry[feature_info[i]['stage']].coords``.
  ``forward(x, mask=mask, isolate_grad=True)``: the same values, but the tokens are detached
  right after each output is taken (LocalMIM's gradient-isolated mode: a loss on output k
  reaches only the layers between output k-1 and output k).
"""
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from greenmim_mm.ops import check_mask, resolve_backend, upsample_mask
from greenmim_mm.ops.geometry import StageGeometry


class SparseBackboneMixin:
    """The dispatching ``forward`` and helpers of the contract above. Listed before the
    mmpretrain class; the backbone provides ``patch_stride``, ``mask_unit``, ``feature_info``,
    ``sparse_geometry``, ``_max_attn_drop`` and ``forward_sparse``."""

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None,
                geometry: Optional[List[StageGeometry]] = None,
                isolate_grad: bool = False) -> Tuple[torch.Tensor, ...]:
        """Dense path (``mask=None``: the mmpretrain forward) or sparse path.

        ``geometry`` (from ``sparse_geometry``, optional) avoids recomputing the plans when the
        caller already has them; ``isolate_grad`` (sparse path only) detaches the tokens after
        every output.
        """
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise ValueError(f'{type(self).__name__} takes (B, C, H, W) images; got '
                             f'{tuple(getattr(x, "shape", ())) or type(x).__name__}')
        if mask is None:
            if isolate_grad:
                raise ValueError('isolate_grad applies to the sparse path (a mask) only')
            return super().forward(x)
        return self.forward_sparse(x, mask, geometry, isolate_grad)

    @property
    def sparse_unsupported(self) -> Optional[str]:
        """Why this configuration has no sparse path, or None (see the contract above)."""
        return getattr(self, '_sparse_unsupported', None)

    def prepare_sparse(self, x: torch.Tensor, mask: torch.Tensor,
                       geometry: Optional[List[StageGeometry]]
                       ) -> Tuple[List[StageGeometry], str]:
        """The geometry (built if not given) on ``x``'s device and the attention backend."""
        if geometry is None:
            geometry = self.sparse_geometry(mask, x.shape[-2:], x.device)
        # moved only when elsewhere (a no-op object rebuild would be traced by torch.compile)
        geometry = [g if g.coords.device == x.device else g.to(x.device) for g in geometry]
        return geometry, self.attention_backend(x.device, self._max_attn_drop())

    def stage0_token_mask(self, mask: torch.Tensor, img_hw: Sequence[int]):
        """Validated unit mask -> (H/stride0, W/stride0) numpy bool token mask of stage 0."""
        mask = check_mask(mask, img_hw, self.mask_unit)
        return upsample_mask(mask, self.mask_unit // self.patch_stride).numpy()

    def attention_backend(self, device, attn_drop: float) -> str:
        """The attention backend the sparse path uses on ``device`` ('sdpa' or 'flex')."""
        device = torch.device('cpu' if device is None else device)
        return resolve_backend(self.attn_backend, device, attn_drop, self.training)

    @staticmethod
    def output_coords(geometry: List[StageGeometry],
                      feature_info: List[Dict]) -> List[torch.Tensor]:
        """(N_i, 2) stage-grid coordinates of every sparse output's tokens."""
        return [geometry[f['stage']].coords for f in feature_info]
