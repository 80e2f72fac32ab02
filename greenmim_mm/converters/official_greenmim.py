"""Official GreenMIM Swin checkpoints (``--src official-g1``, ``official-g3``) and the
Microsoft-Swin key mapping they share with timm (:mod:`.timm_swin`) and official LocalMIM Swin
(:mod:`.official_localmim`).

* ``official-g1``: the official GreenMIM code before commit ``b981012`` (G1 and G2, including the
  released May-2022 checkpoints): PatchMerging concatenates its 2x2 neighbours row-first,
  (0,0),(0,1),(1,0),(1,1).
* ``official-g3``: official GreenMIM from ``b981012`` on, Microsoft Swin, SimMIM and old-format
  timm checkpoints: neighbours in Swin's order (0,0),(1,0),(0,1),(1,1).

PatchMerging channels are permuted into mmcv's ``nn.Unfold`` order (input channel ``4 * c + k``,
k = (0,0),(0,1),(1,0),(1,1)) by :func:`permute_merge`.
"""
import re
from typing import List, Optional, Sequence, Tuple

import torch

from .common import (_BUFFER_SUFFIXES, ConversionError, _layout_error, _sample, _strip_prefix,
                     _tensor_dict, _unwrap)


# For each of our (mmcv Unfold) neighbours (0,0),(0,1),(1,0),(1,1): its position in the
# source's neighbour-major 4C concatenation.
MERGE_ORDERS = {
    'official-g1': (0, 1, 2, 3),  # row-first: (0,0),(0,1),(1,0),(1,1)
    'official-g3': (0, 2, 1, 3),  # Swin: (0,0),(1,0),(0,1),(1,1)
}


# Microsoft/timm block keys -> ours (after ``stages.{i}.blocks.{j}.``).
_BLOCK_KEYS = {
    'norm1.weight': 'norm1.weight', 'norm1.bias': 'norm1.bias',
    'norm2.weight': 'norm2.weight', 'norm2.bias': 'norm2.bias',
    'attn.qkv.weight': 'attn.w_msa.qkv.weight', 'attn.qkv.bias': 'attn.w_msa.qkv.bias',
    'attn.proj.weight': 'attn.w_msa.proj.weight', 'attn.proj.bias': 'attn.w_msa.proj.bias',
    'attn.relative_position_bias_table': 'attn.w_msa.relative_position_bias_table',
    'mlp.fc1.weight': 'ffn.layers.0.0.weight', 'mlp.fc1.bias': 'ffn.layers.0.0.bias',
    'mlp.fc2.weight': 'ffn.layers.1.weight', 'mlp.fc2.bias': 'ffn.layers.1.bias',
}


def official_state_dict(ckpt: dict) -> Tuple[dict, List[str]]:
    """Microsoft-style encoder weights: ``checkpoint['model']`` with ``encoder.`` stripped
    (decoder, mask token dropped), or an already extracted bare state dict."""
    sd, where = _unwrap(ckpt)
    sd = _strip_prefix(_tensor_dict(sd, where), 'module.')
    dropped = []
    if any(k.startswith('encoder.') for k in sd):
        dropped = [k for k in sd if not k.startswith('encoder.')]
        sd = _strip_prefix(sd, 'encoder.')
    return sd, dropped


def permute_merge(t: torch.Tensor, order: Sequence[int]) -> torch.Tensor:
    """Reorder a PatchMerging input axis (the last one, 4C) from a neighbour-major source layout
    (``k * C + c``) to mmcv's channel-major Unfold layout (``4 * c + k'``).

    ``order[k']`` is the source position of our neighbour k' in (0,0),(0,1),(1,0),(1,1).
    """
    *lead, four_c = t.shape
    if four_c % 4:
        raise ConversionError(f'PatchMerging input axis {four_c} is not a multiple of 4')
    t = t.reshape(*lead, 4, four_c // 4)[..., list(order), :]
    return t.transpose(-1, -2).reshape(*lead, four_c).contiguous()


def rename_swin(sd: dict, src: str, order: Sequence[int], downsample_shift: int
                ) -> Tuple[dict, List[str]]:
    """Microsoft/timm Swin keys -> ours, permuting PatchMerging channels by ``order``.

    ``downsample_shift``: 0 when ``layers.{i}.downsample`` ends stage i (Microsoft/official),
    -1 when it starts stage i (timm >= 0.6). Buffers, classifier head, mask token and decoder
    are dropped; any other unknown key is an error.
    """
    stages = [int(m.group(1)) for k in sd for m in [re.match(r'layers\.(\d+)\.blocks\.', k)] if m]
    if 'patch_embed.proj.weight' not in sd or not stages:
        raise _layout_error(src, "Microsoft/timm Swin keys 'patch_embed.proj.weight', "
                            "'layers.{i}.blocks.{j}.attn.qkv.weight', ... (optionally under "
                            "'encoder.' in checkpoint['model'])", sd)
    last = max(stages)
    out, dropped, unknown = {}, [], []
    for key, value in sd.items():
        new = _rename_key(key, last, downsample_shift)
        if new is None:
            (dropped if _is_droppable(key) else unknown).append(key)
            continue
        if '.downsample.' in new:
            value = permute_merge(value, order)
        out[new] = value
    if unknown:
        raise ConversionError(f'--src {src}: keys with no counterpart in the mmpretrain Swin '
                              f'layout: {_sample(unknown)}')
    return out, dropped


def _rename_key(key: str, last: int, downsample_shift: int) -> Optional[str]:
    """Our name of one Microsoft/timm key, None when it has none."""
    m = re.fullmatch(r'patch_embed\.proj\.(weight|bias)', key)
    if m:
        return f'patch_embed.projection.{m.group(1)}'
    if re.fullmatch(r'patch_embed\.norm\.(weight|bias)|absolute_pos_embed', key):
        return key
    m = re.fullmatch(r'layers\.(\d+)\.blocks\.(\d+)\.(.+)', key)
    if m and m.group(3) in _BLOCK_KEYS:
        return f'stages.{m.group(1)}.blocks.{m.group(2)}.{_BLOCK_KEYS[m.group(3)]}'
    m = re.fullmatch(r'layers\.(\d+)\.downsample\.(norm\.weight|norm\.bias|reduction\.weight)',
                     key)
    if m:
        stage = int(m.group(1)) + downsample_shift
        return f'stages.{stage}.downsample.{m.group(2)}' if 0 <= stage < last else None
    m = re.fullmatch(r'norm\.(weight|bias)', key)
    if m:
        return f'norm{last}.{m.group(1)}'
    return None


def _is_droppable(key: str) -> bool:
    return (key.endswith(_BUFFER_SUFFIXES) or key.startswith(('head.', 'mask_token', 'decoder')))


def convert_official(ckpt: dict, src: str) -> Tuple[dict, List[str]]:
    """Official GreenMIM / Microsoft Swin (downsample at the end of stage i)."""
    sd, dropped = official_state_dict(ckpt)
    merges = sorted(k for k in sd if re.match(r'layers\.\d+\.downsample\.', k))
    if merges and 'layers.0.downsample.reduction.weight' not in sd:
        raise ConversionError(
            f"--src {src}: unrecognised layout: expected the Microsoft layout "
            "('layers.0.downsample.reduction.weight': downsample at the end of each stage); "
            f'found downsample keys {_sample(merges, 3)} (timm >= 0.6 layout: downsample at the '
            'start of a stage); it looks like --src timm')
    sd, more = rename_swin(sd, src, MERGE_ORDERS[src], downsample_shift=0)
    return sd, dropped + more
