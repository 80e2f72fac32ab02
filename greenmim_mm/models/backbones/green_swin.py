"""GreenSwinTransformer: one Swin, a dense path and an exact sparse (visible-tokens-only) path."""
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.utils.checkpoint as cp
from mmpretrain.models.backbones import SwinTransformer
from mmpretrain.models.utils import resize_pos_embed

from greenmim_mm.ops import (BACKENDS, GROUPING_POLICIES, StageGeometry, WindowPlan,
                             build_geometry, gather_children, layout_for_backend,
                             window_attention)
from greenmim_mm.registry import MODELS
from .pretrained import StrictPretrainedMixin
from .sparse_backbone import SparseBackboneMixin

# The demo/smoke-test size of the nano configs and tests (not a published model).
SWIN_NANO = {'embed_dims': 32, 'depths': [2, 2, 2, 2], 'num_heads': [2, 4, 4, 8]}


@MODELS.register_module()
class GreenSwinTransformer(SparseBackboneMixin, StrictPretrainedMixin, SwinTransformer):
    """mmpretrain's ``SwinTransformer`` (same arguments, same state dict) plus a sparse path.

    Implements the sparse-backbone contract (``sparse_backbone.py``). ``arch`` also accepts
    ``'nano'`` (:data:`SWIN_NANO`, the demo size).

    * ``forward(x)``: the dense path, mmpretrain's own forward: a tuple of (B, C_i, H_i, W_i) maps.
    * ``forward(x, mask=mask)``: the sparse path. ``mask`` is a bool tensor (H/32, W/32), True =
      masked, shared by the batch. Only visible tokens are computed: windows from absolute
      coordinates (shift by a coordinate offset), windows packed into equal groups
      (``grouping``), attention restricted to each window, sparse 2x2 merging in mmcv's channel
      order. Returns, per out index i, (B, N_i, C_i): the visible tokens of stage i in raster order
      after ``norm_i``. It equals the dense Swin with every invisible token (and any zero padding
      of a map to a multiple of the window) excluded from the attention keys.

    Args (besides mmpretrain's ``SwinTransformer``'s):
        attn_backend (str): 'auto' (FlexAttention on CUDA when available, else SDPA), 'sdpa'
            (padded groups, portable) or 'flex' (packed, no padding).
        grouping (str): 'static' (default: one (G, g) per stage plan for every mask of a mask
            ratio and image size, fixed from the worst case, so ``torch.compile`` and CUDA graphs
            see static shapes; see ``greenmim_mm.ops.grouping.static_budget``), 'optimal' (group
            size minimising the MSA cost model per mask; shapes change with the mask), 'window'
            (one window per group) or 'single' (all visible tokens in one group, GreenMIM's
            "masking" mode).

    ``frozen_stages=k`` (mmpretrain's meaning: patch embedding, stages 0..k and their out norms)
    takes effect at construction (``requires_grad=False`` right after ``__init__``, so DDP never
    registers those parameters) and again in every ``train()``, as in mmpretrain.

    Pretrained weights (``init_cfg=dict(type='Pretrained', checkpoint=..., prefix=...)``) load
    strictly (:class:`~greenmim_mm.models.backbones.pretrained.StrictPretrainedMixin`): every
    tensor must be in the file with its shape, except output norms ``norm{i}`` a pre-training
    did not have and ``relative_position_index`` buffers (rebuilt when mmpretrain resizes a
    table); a SimMIM ``mask_token`` and unused output norms in the file are ignored. Set
    ``strict=False`` in the init_cfg for a partial load. Checkpoints in mmpretrain's older
    layouts load as into mmpretrain's own ``SwinTransformer`` (see ``_load_from_state_dict``).
    """
    OPTIONAL_MISSING = (r'norm\d+\.(weight|bias)',
                        r'stages\.\d+\.blocks\.\d+\.attn\.w_msa\.relative_position_index')
    OPTIONAL_UNEXPECTED = (r'norm\d+\.(weight|bias)', r'mask_token')

    arch_zoo = {**SwinTransformer.arch_zoo, 'nano': SWIN_NANO}

    def __init__(self, *args, attn_backend: str = 'auto', grouping: str = 'static', **kwargs):
        if attn_backend not in BACKENDS:
            raise ValueError(f'attn_backend must be one of {BACKENDS}; got {attn_backend!r}')
        if grouping not in GROUPING_POLICIES:
            raise ValueError(f'grouping must be one of {GROUPING_POLICIES}; got {grouping!r}')
        super().__init__(*args, **kwargs)
        self.attn_backend = attn_backend
        self.grouping = grouping
        self._check_merging()
        if not -1 <= self.frozen_stages < self.num_layers:
            raise ValueError(f'frozen_stages must be in [-1, {self.num_layers - 1}] (-1: nothing '
                             f'frozen, k: patch embedding and stages 0..k); got {self.frozen_stages}')
        # mmpretrain freezes only in train(), i.e. after DDP registered every parameter as
        # trainable ("Expected to have finished reduction..."): freeze at construction too.
        self._freeze_stages()

    def train(self, mode: bool = True) -> 'GreenSwinTransformer':
        """As mmpretrain's (frozen stages, norm_eval), but returns ``self`` so calls chain."""
        super().train(mode)
        return self

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args, **kwargs):
        """Older checkpoint layouts, as mmpretrain 1.2's ``SwinTransformer`` reads them (it does
        so only when ``self.__class__ is SwinTransformer``, i.e. not for subclasses): without a
        version or below 2, the single final ``norm.*`` is ``norm{last stage}.*``; below 3, the
        ``attn_mask`` buffers (now computed in forward) are dropped. Only keys under ``prefix``
        are touched (mmpretrain's looks at every key of the dict)."""
        version = local_metadata.get('version', None)
        if version is None or version < 2:
            old = prefix + 'norm.'
            for key in [k for k in state_dict if k.startswith(old)]:
                new = f'{prefix}norm{len(self.stages) - 1}.{key[len(old):]}'
                state_dict[new] = state_dict.pop(key)
        if version is None or version < 3:
            for key in [k for k in state_dict if k.startswith(prefix) and 'attn_mask' in k]:
                del state_dict[key]
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args, **kwargs)

    # ------------------------------------------------------------------ geometry
    @property
    def patch_stride(self) -> int:
        return int(self.patch_embed.projection.stride[0])

    @property
    def mask_unit(self) -> int:
        """Pixels per mask unit: the stride of the last stage (32 for Swin); fixed at
        construction, read once (it is read several times per step by the plan)."""
        unit = self.__dict__.get('_mask_unit')
        if unit is None:
            merges = sum(stage.downsample is not None for stage in self.stages)
            unit = self.__dict__['_mask_unit'] = self.patch_stride * 2**merges
        return unit

    @property
    def feature_info(self) -> List[Dict]:
        """Per out index: channels, stride (px) and geometry stage (see the contract)."""
        info = []
        for i in self.out_indices:
            after = self.out_after_downsample and self.stages[i].downsample is not None
            info.append(dict(num_chs=int(self.num_features[i]),
                             reduction=self.patch_stride * 2**(i + int(after)),
                             stage=i + int(after), module=f'norm{i}'))
        return info

    def _check_merging(self):
        for i, stage in enumerate(self.stages):
            ds = stage.downsample
            if ds is None:
                continue
            ok = (tuple(ds.sampler.kernel_size) == (2, 2) and tuple(ds.sampler.stride) == (2, 2)
                  and tuple(ds.sampler.dilation) == (1, 1) and tuple(ds.sampler.padding) == (0, 0))
            if not ok:
                self._sparse_unsupported = (
                    f'stage {i} downsample is not a 2x2/stride-2 PatchMerging; the sparse path '
                    'supports only that (the dense path works)')
                return
        self._sparse_unsupported = None

    def sparse_geometry(self, mask: torch.Tensor, img_hw: Sequence[int],
                        device=None) -> List[StageGeometry]:
        """CPU geometry of every stage for a (H/32, W/32) unit mask and an image of ``img_hw``,
        with the window layout of the attention backend used on ``device`` (default CPU)."""
        if self._sparse_unsupported:
            raise NotImplementedError(self._sparse_unsupported)
        tokens = self.stage0_token_mask(mask, img_hw)
        block_windows, channels, pad_small, downsample, _ = self._geometry_config()
        layout = layout_for_backend(self.attention_backend(device, self._max_attn_drop()))
        return build_geometry(tokens, block_windows, channels, pad_small, self.grouping,
                              downsample, layout, self.mask_unit // self.patch_stride)

    def _geometry_config(self) -> tuple:
        """(block windows, stage widths, pad_small_map, downsample flags, attention dropout
        modules): fixed at construction, read once (walking 24 blocks every step costs ~0.5 ms
        of the plan)."""
        cfg = self.__dict__.get('_geometry_cfg')
        if cfg is None:
            blocks = [blk for stage in self.stages for blk in stage.blocks]
            cfg = ([[(blk.attn.window_size, blk.attn.shift_size) for blk in stage.blocks]
                    for stage in self.stages], [stage.embed_dims for stage in self.stages],
                   any(blk.attn.pad_small_map for blk in blocks),
                   [stage.downsample is not None for stage in self.stages],
                   [blk.attn.w_msa.attn_drop for blk in blocks])
            self.__dict__['_geometry_cfg'] = cfg
        return cfg

    def _max_attn_drop(self) -> float:
        return max(drop.p for drop in self._geometry_config()[4])

    # ------------------------------------------------------------------ forward
    def forward_sparse(self, x: torch.Tensor, mask: torch.Tensor,
                       geometry: Optional[List[StageGeometry]] = None,
                       isolate_grad: bool = False) -> Tuple[torch.Tensor, ...]:
        """Sparse path. x (B, 3, H, W), mask (H/32, W/32) bool -> tuple of (B, N_i, C_i).
        ``isolate_grad``: the tokens are detached after every output (see the contract)."""
        geometry, backend = self.prepare_sparse(x, mask, geometry)
        x = self._embed_visible(x, geometry[0])
        outs = []
        for i, (stage, geo) in enumerate(zip(self.stages, geometry)):
            for blk in stage.blocks:
                x = self._sparse_block(blk, x, geo.plans[(blk.attn.window_size,
                                                          blk.attn.shift_size)], backend)
            if stage.downsample is not None and self.out_after_downsample:
                x = self._sparse_merge(stage.downsample, x, geo.merge_index)
            if i in self.out_indices:
                outs.append(getattr(self, f'norm{i}')(x))
                x = x.detach() if isolate_grad else x
            if stage.downsample is not None and not self.out_after_downsample:
                x = self._sparse_merge(stage.downsample, x, geo.merge_index)
        return tuple(outs)

    def _embed_visible(self, x: torch.Tensor, geo: StageGeometry) -> torch.Tensor:
        """Dense patch embedding (cheap), then the visible tokens (B, N_0, C) in raster order."""
        x, hw_shape = self.patch_embed(x)
        if tuple(hw_shape) != tuple(geo.hw):
            raise ValueError(f'patch grid {tuple(hw_shape)} does not match the mask grid {geo.hw}')
        if self.use_abs_pos_embed:
            x = x + resize_pos_embed(self.absolute_pos_embed, self.patch_resolution, hw_shape,
                                     self.interpolate_mode, self.num_extra_tokens)
        x = self.drop_after_pos(x)
        flat = geo.coords[:, 0] * hw_shape[1] + geo.coords[:, 1]
        return x[:, flat]

    def _sparse_block(self, blk, x: torch.Tensor, plan: WindowPlan, backend: str) -> torch.Tensor:
        """mmpretrain's ``SwinBlock.forward`` on visible tokens (B, N, C) with a window plan."""
        w_msa = blk.attn.w_msa
        dropout_p = w_msa.attn_drop.p if self.training else 0.0

        def inner(x):
            identity = x
            y = window_attention(blk.norm1(x), plan, w_msa.qkv.weight, w_msa.qkv.bias,
                                 w_msa.relative_position_bias_table, w_msa.num_heads, w_msa.scale,
                                 backend, dropout_p)
            y = blk.attn.drop(w_msa.proj_drop(w_msa.proj(y)))
            x = identity + y
            return blk.ffn(blk.norm2(x), identity=x)

        if blk.with_cp and torch.is_grad_enabled():  # x may be detached (isolate_grad)
            return cp.checkpoint(inner, x, use_reentrant=False)
        return inner(x)

    @staticmethod
    def _sparse_merge(merging, x: torch.Tensor, merge_index: torch.Tensor) -> torch.Tensor:
        """mmcv ``PatchMerging`` on visible tokens: (B, N, C) -> (B, N/4, C_out)."""
        x = gather_children(x, merge_index)
        if merging.norm is not None:
            x = merging.norm(x)
        return merging.reduction(x)
