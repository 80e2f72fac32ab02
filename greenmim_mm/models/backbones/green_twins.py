"""GreenTwinsSVT: one Twins-SVT, a dense path and an exact sparse (visible-tokens-only) path.

Twins-SVT (Chu et al., NeurIPS 2021) as implemented by mmpretrain's ``SVT``; the sparse path is
GreenMIM's Twins support (official code github.com/LayneH/GreenMIM, modeling/green_twins_models.py)
with the PEG residual kept.
"""
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from mmpretrain.models.backbones import SVT
from mmpretrain.models.backbones.twins import LocallyGroupedSelfAttention

from greenmim_mm.ops import (BACKENDS, DEFAULT_SPARSE_CONV, GROUPING_POLICIES, StageGeometry,
                             build_window_plan, child_index, gather_children,
                             layout_for_backend, neighbour_index, sparse_depthwise_conv,
                             visible_coords, window_attention)
from greenmim_mm.ops.windows import stage_units
from greenmim_mm.ops.geometry import flat_index
from greenmim_mm.ops.sparse_conv import check_mode, resolve_mode
from greenmim_mm.registry import MODELS
from .pretrained import StrictPretrainedMixin
from .sparse_backbone import SparseBackboneMixin

# The demo/smoke-test size of the nano Twins configs and tests (not a published model): maps
# 32/16/8/4 at 128 px, LSA window 4.
TWINS_NANO = {'embed_dims': [32, 64, 128, 256], 'depths': [2, 2, 2, 2],
              'num_heads': [1, 2, 4, 8], 'patch_sizes': [4, 2, 2, 2], 'strides': [4, 2, 2, 2],
              'mlp_ratios': [4, 4, 4, 4], 'sr_ratios': [8, 4, 2, 1],
              'window_sizes': [4, 4, 4, 4]}


class PaddingMaskedLSA(LocallyGroupedSelfAttention):
    """mmpretrain's ``LocallyGroupedSelfAttention`` with its padding mask fixed.

    mmpretrain builds the mask with ``mask[:, -pad_b:, :]``, which for ``pad_b == 0`` selects
    every row; when exactly one of the bottom/right paddings is zero the padding tokens then
    become attention keys. Here a real query never attends a padding key (a padding query
    attends padding keys only; its output is cropped). Same parameters, same state dict.
    x (B, H*W, C) -> (B, H*W, C).
    """

    def forward(self, x: torch.Tensor, hw_shape: Sequence[int]) -> torch.Tensor:
        b, n, c = x.shape
        h, w = hw_shape
        ws = self.window_size
        pad_r, pad_b = (ws - w % ws) % ws, (ws - h % ws) % ws
        x = F.pad(x.view(b, h, w, c), (0, 0, 0, pad_r, 0, pad_b))
        hp, wp = x.shape[1:3]
        nh, nw = hp // ws, wp // ws
        pad = torch.zeros(hp, wp, dtype=torch.bool, device=x.device)
        pad[h:] = True
        pad[:, w:] = True
        pad = pad.reshape(nh, ws, nw, ws).transpose(1, 2).reshape(nh * nw, ws * ws)
        excluded = pad[:, None, :] != pad[:, :, None]                # (windows, query, key)
        x = x.reshape(b, nh, ws, nw, ws, c).transpose(2, 3)
        qkv = self.qkv(x).reshape(b, nh * nw, ws * ws, 3, self.num_heads,
                                  c // self.num_heads).permute(3, 0, 1, 4, 2, 5)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.masked_fill(excluded[None, :, None], float('-inf')).softmax(dim=-1)
        attn = self.attn_drop(attn)
        x = (attn @ v).transpose(2, 3).reshape(b, nh, nw, ws, ws, c)
        x = x.transpose(2, 3).reshape(b, hp, wp, c)[:, :h, :w].reshape(b, n, c)
        return self.proj_drop(self.proj(x))


@MODELS.register_module()
class GreenTwinsSVT(SparseBackboneMixin, StrictPretrainedMixin, SVT):
    """mmpretrain's ``SVT`` (same arguments, same state dict) plus a sparse path.

    Implements the sparse-backbone contract (``sparse_backbone.py``). ``arch`` also accepts
    ``'nano'`` (:data:`TWINS_NANO`, the demo size).

    * ``forward(x)``: the dense path, mmpretrain's ``SVT.forward`` (tuple of (B, C_i, H_i, W_i))
      with one deliberate fix: LSA padding keys are excluded in every case
      (:class:`PaddingMaskedLSA`).
    * ``forward(x, mask=mask)``: the sparse path (mask (H/32, W/32) bool, True = masked, shared by
      the batch) -> per out index (B, N_i, C_i), the visible tokens of stage i in raster order
      after ``norm_after_stage{i}``. Exactness: it equals the dense SVT in which every invisible
      token is zero at the input of every convolution and excluded from every attention's keys,
      gathered at the visible positions:

      - LSA: grouped window attention (``grouping``, no bias) on visible tokens;
      - GSA: keys/values from the ``sr``-strided conv of whole visible mask units
        (``sr`` × stage stride = the 32-px mask unit), queries = all visible tokens;
      - PEG: submanifold depthwise 3×3 convolution (``sparse_conv``) plus Twins' residual;
      - stage patch embeddings (2×2, stride 2): on whole visible 2×2 blocks.

    Args (besides mmpretrain's ``SVT``'s):
        out_after_downsample (bool): for LocalMIM (the Twins analogue of mmpretrain Swin's
            option): out index i < last returns stage i+1's patch-embedding output (conv 2×2
            stride 2 + its LayerNorm, stride ``stage_stride(i + 1)``) instead of stage i's output;
            the last stage's index keeps its output. ``out_indices=(0, 1, 2, 3)`` then gives
            strides 8/16/32/32 like LocalMIM Swin. Why these: Swin's "stage i after patch
            merging" is what stage i+1's blocks receive, which in Twins is stage i+1's patch
            embedding; stage outputs 1/2/3/3 would need a repeated index and give two heads the
            same tensor. Both paths; no parameter is added (the state dict stays mmpretrain's
            ``SVT``), so the embedding's own LayerNorm (eps 1e-5, fixed by mmpretrain) is the
            per-head norm of those outputs. Default False: mmpretrain's outputs.
        attn_backend (str): LSA backend: 'auto' (FlexAttention on CUDA when available, else
            SDPA), 'sdpa' (padded groups) or 'flex' (packed, no grouping).
        grouping (str): 'static' (default), 'optimal', 'window' or 'single' (as
            ``GreenSwinTransformer``).
        sparse_conv (str): PEG formulation: 'auto' (the default: per stage, the neighbour
            gather when at most 28 % of the grid is visible, e.g. ratio 0.75, else the dense
            form; both measured, see ``greenmim_mm.ops.sparse_conv``), 'dense' (scatter -> dense
            depthwise conv -> gather) or 'gather' (neighbour gather).

    Pretrained weights (``init_cfg=dict(type='Pretrained', checkpoint=..., prefix=...)``) load
    strictly, as ``GreenSwinTransformer``'s
    (:class:`~greenmim_mm.models.backbones.pretrained.StrictPretrainedMixin`): every tensor must
    be in the file with its shape, except output norms ``norm_after_stage{i}`` the pre-training
    did not have (kept at their initial values); output norms in the file that this
    configuration lacks are ignored. A Swin file, or PCPVT weights (GSA ``q``/``kv`` where SVT's
    LSA has ``qkv``), is one ``PretrainedLoadError``. ``strict=False`` in the init_cfg: partial
    load with one warning.

    Raises ValueError (sparse path) for image sides not divisible by 32, a wrong mask, or an arch
    whose ``sr`` × stage stride is not the mask unit or whose patch embeddings overlap.
    """
    OPTIONAL_MISSING = (r'norm_after_stage\d+\.(weight|bias)', )
    OPTIONAL_UNEXPECTED = (r'norm_after_stage\d+\.(weight|bias)', )
    arch_zoo = {**SVT.arch_zoo, 'nano': TWINS_NANO}

    def __init__(self, *args, attn_backend: str = 'auto', grouping: str = 'static',
                 sparse_conv: str = DEFAULT_SPARSE_CONV, out_after_downsample: bool = False,
                 **kwargs):
        if attn_backend not in BACKENDS:
            raise ValueError(f'attn_backend must be one of {BACKENDS}; got {attn_backend!r}')
        if grouping not in GROUPING_POLICIES:
            raise ValueError(f'grouping must be one of {GROUPING_POLICIES}; got {grouping!r}')
        check_mode(sparse_conv)
        super().__init__(*args, **kwargs)
        self.attn_backend = attn_backend
        self.grouping = grouping
        self.sparse_conv = sparse_conv
        self.out_after_downsample = out_after_downsample
        for stage in self.stages:
            for j, layer in enumerate(stage):
                if j % 2 == 0:  # SVT's LSA layers; the swap adds no parameter
                    layer.attn.__class__ = PaddingMaskedLSA
        self._sparse_unsupported = self._check_sparse_arch()

    # ------------------------------------------------------------------ geometry
    @property
    def patch_stride(self) -> int:
        return int(self.strides[0])

    @property
    def mask_unit(self) -> int:
        """Pixels per mask unit: the stride of the last stage (32 for every SVT arch)."""
        return int(math.prod(self.strides))

    def stage_stride(self, i: int) -> int:
        """Stride (px) of stage i's grid."""
        return int(math.prod(self.strides[:i + 1]))

    def _after_embed(self, i: int) -> bool:
        """Whether out index i is taken after stage i+1's patch embedding."""
        return self.out_after_downsample and i < self.num_stage - 1

    @property
    def feature_info(self) -> List[Dict]:
        """Per out index: channels, stride (px) and geometry stage (see the contract)."""
        info = []
        for i in self.out_indices:
            s = i + int(self._after_embed(i))
            module = f'patch_embeds.{s}' if s != i else f'norm_after_stage{i}'
            info.append(dict(num_chs=int(self.embed_dims[s]), reduction=self.stage_stride(s),
                             stage=s, module=module))
        return info

    @property
    def out_strides(self) -> List[int]:
        """Stride (px) of every output, in ``out_indices`` order."""
        return [f['reduction'] for f in self.feature_info]

    def _check_sparse_arch(self) -> Optional[str]:
        """Why this arch has no sparse path (None if it has one)."""
        for i in range(self.num_stage):
            if self.patch_sizes[i] != self.strides[i]:
                return (f'stage {i} patch embedding has kernel {self.patch_sizes[i]} != stride '
                        f'{self.strides[i]}; the sparse path needs non-overlapping embeddings')
            if i > 0 and self.strides[i] != 2:
                return f'stage {i} stride is {self.strides[i]}; the sparse path needs 2'
            sr = int(self.sr_ratios[i])
            if sr * self.stage_stride(i) != self.mask_unit:
                return (f'stage {i}: sr_ratio {sr} x stage stride {self.stage_stride(i)} px = '
                        f'{sr * self.stage_stride(i)} px is not the {self.mask_unit}-px mask '
                        'unit; GSA keys must be whole mask units for the sparse path')
        return None

    def _max_attn_drop(self) -> float:
        # list(stage), not stage[::2]: slicing builds a ModuleList, which torch.compile
        # cannot trace (a graph break in every compiled step)
        return max(layer.attn.attn_drop.p for stage in self.stages
                   for layer in list(stage)[::2])

    def sparse_geometry(self, mask: torch.Tensor, img_hw: Sequence[int],
                        device=None) -> List[StageGeometry]:
        """CPU geometry of every stage: visible coords, the LSA window plan (layout of the
        backend used on ``device``), the ``sr``×``sr`` GSA blocks, the 2×2 blocks of the next
        stage's patch embedding and, where the PEG runs as the gather (``sparse_conv``
        'gather', or 'auto' at a small visible fraction), the 3×3 PEG neighbours."""
        if self._sparse_unsupported:
            raise ValueError(self._sparse_unsupported)
        tokens = self.stage0_token_mask(mask, img_hw)
        layout = layout_for_backend(self.attention_backend(device, self._max_attn_drop()))
        hw = tuple(int(s) for s in tokens.shape)
        coords = visible_coords(tokens)
        t = torch.from_numpy
        stages = []
        for i in range(self.num_stage):
            geo = StageGeometry(hw, t(coords))
            ws = int(self.window_sizes[i])
            units = stage_units(hw, self.mask_unit // self.stage_stride(i), len(coords))
            geo.plans[ws] = build_window_plan(coords, ws, 0, int(self.embed_dims[i]),
                                              self.grouping, layout, units)
            sr = int(self.sr_ratios[i])
            if sr > 1:
                geo.children[sr] = t(child_index(coords, hw, sr)[1])
            if resolve_mode(self.sparse_conv, len(coords), hw) == 'gather':
                k = self.position_encodings[i].proj.kernel_size[0]
                geo.neighbours = t(neighbour_index(coords, hw, k))
            if i < self.num_stage - 1:
                next_coords, merge = child_index(coords, hw, 2)
                geo.children[2] = t(merge)
                coords, hw = next_coords, (hw[0] // 2, hw[1] // 2)
            stages.append(geo)
        return stages

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None,
                geometry: Optional[List[StageGeometry]] = None,
                isolate_grad: bool = False) -> Tuple[torch.Tensor, ...]:
        """The contract's forward; the dense path with ``out_after_downsample`` is
        :meth:`forward_dense_after_downsample`."""
        if mask is None and self.out_after_downsample and not isolate_grad:
            return self.forward_dense_after_downsample(x)
        return super().forward(x, mask=mask, geometry=geometry, isolate_grad=isolate_grad)

    def forward_dense_after_downsample(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """mmpretrain's ``PCPVT.forward`` with out index i < last taken after stage i+1's
        patch embedding: tuple of (B, C, H, W) maps."""
        outs = []
        b = x.shape[0]
        for i in range(self.num_stage):
            x, hw = self.patch_embeds[i](x)
            if i > 0 and i - 1 in self.out_indices:
                outs.append(x.transpose(1, 2).reshape(b, -1, *hw))
            x = self.position_encoding_drops[i](x)
            for j, blk in enumerate(self.stages[i]):
                x = blk(x, hw)
                if j == 0:
                    x = self.position_encodings[i](x, hw)
            x = getattr(self, f'norm_after_stage{i}')(x)
            x = x.transpose(1, 2).reshape(b, -1, *hw)
            if i in self.out_indices and not self._after_embed(i):
                outs.append(x)
        return tuple(outs)

    def forward_sparse(self, x: torch.Tensor, mask: torch.Tensor,
                       geometry: Optional[List[StageGeometry]] = None,
                       isolate_grad: bool = False) -> Tuple[torch.Tensor, ...]:
        """Sparse path. x (B, 3, H, W), mask (H/32, W/32) bool -> tuple of (B, N_i, C_i).
        ``isolate_grad``: the tokens are detached after every output (see the contract)."""
        geometry, backend = self.prepare_sparse(x, mask, geometry)
        outs = []
        for i, geo in enumerate(geometry):
            if i == 0:
                x = self._embed_visible(x, geo)
            else:
                x = self._sparse_patch_embed(self.patch_embeds[i], x, geometry[i - 1].merge_index)
                if i - 1 in self.out_indices and self._after_embed(i - 1):
                    outs.append(x)
                    x = x.detach() if isolate_grad else x
            x = self.position_encoding_drops[i](x)
            for j, layer in enumerate(self.stages[i]):
                if j % 2 == 0:
                    attn = self._sparse_lsa(layer.attn, geo.plans[int(self.window_sizes[i])],
                                            backend)
                else:
                    attn = self._sparse_gsa(layer.attn, geo.children.get(int(self.sr_ratios[i])))
                x = x + layer.drop_path(attn(layer.norm1(x)))
                x = x + layer.drop_path(layer.ffn(layer.norm2(x)))
                if j == 0:
                    x = self._sparse_peg(self.position_encodings[i], x, geo)
            x = getattr(self, f'norm_after_stage{i}')(x)
            if i in self.out_indices and not self._after_embed(i):
                outs.append(x)
                x = x.detach() if isolate_grad else x
        return tuple(outs)

    def _embed_visible(self, x: torch.Tensor, geo: StageGeometry) -> torch.Tensor:
        """Dense stage-0 patch embedding (cheap, never crosses a unit), then the visible tokens
        (B, N_0, C) in raster order."""
        x, hw_shape = self.patch_embeds[0](x)
        if tuple(hw_shape) != tuple(geo.hw):
            raise ValueError(f'patch grid {tuple(hw_shape)} does not match the mask grid {geo.hw}')
        return x[:, flat_index(geo.coords, hw_shape)]

    @staticmethod
    def _sparse_patch_embed(embed, x: torch.Tensor, children: torch.Tensor) -> torch.Tensor:
        """mmcv ``PatchEmbed`` (conv k = stride = 2, then norm) on whole visible 2×2 blocks:
        (B, N, C) -> (B, N/4, C_out)."""
        conv = embed.projection
        x = F.linear(gather_children(x, children), conv.weight.flatten(1), conv.bias)
        return x if embed.norm is None else embed.norm(x)

    def _sparse_lsa(self, attn, plan, backend: str):
        """LSA on visible tokens: window attention (no bias, no shift) + output projection."""
        dropout_p = attn.attn_drop.p if self.training else 0.0

        def run(x):
            y = window_attention(x, plan, attn.qkv.weight, attn.qkv.bias, None, attn.num_heads,
                                 attn.scale, backend, dropout_p)
            return attn.proj_drop(attn.proj(y))
        return run

    def _sparse_gsa(self, attn, children: Optional[torch.Tensor]):
        """GSA on visible tokens: keys/values from the sr-strided conv of the visible units
        (the tokens themselves when sr = 1), queries = every visible token."""
        def run(x):
            b, n, c = x.shape
            q = attn.q(x).reshape(b, n, attn.num_heads, -1).transpose(1, 2)
            if attn.sr_ratio > 1:
                kv_in = F.linear(gather_children(x, children), attn.sr.weight.flatten(1),
                                 attn.sr.bias)
                kv_in = attn.norm(kv_in)
            else:
                kv_in = x
            kv = attn.kv(kv_in).reshape(b, -1, 2, attn.num_heads, attn.head_dims)
            k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)
            dropout_p = attn.attn_drop if self.training else 0.0
            y = attn.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
            y = attn.proj(y.transpose(1, 2).reshape(b, n, attn.embed_dims))
            return attn.out_drop(attn.proj_drop(y))
        return run

    def _sparse_peg(self, peg, x: torch.Tensor, geo: StageGeometry) -> torch.Tensor:
        """Twins' PEG on visible tokens: submanifold depthwise conv + residual."""
        mode = 'dense' if geo.neighbours is None else 'gather'  # chosen in sparse_geometry
        y = sparse_depthwise_conv(x, geo.coords, geo.hw, peg.proj.weight, peg.proj.bias,
                                  geo.neighbours, mode)
        return y + x
