"""The target layout (mmpretrain ``SwinTransformer``): :func:`swin_geometry` checks a converted
state dict and reads its depths, heads and windows; :func:`set_windows` resizes the relative
position tables with mmpretrain's ``resize_relative_position_bias_table`` when a window changes
and rebuilds every ``relative_position_index`` buffer."""
import math
import re
from typing import Dict, List, Sequence

import torch

from .common import ConversionError, _sample
from .official_greenmim import _BLOCK_KEYS


_OUR_BLOCK_KEYS = set(_BLOCK_KEYS.values())
_OUR_KEY_PATTERNS = [re.compile(p) for p in (
    r'patch_embed\.projection\.(weight|bias)',
    r'patch_embed\.norm\.(weight|bias)',
    r'absolute_pos_embed',
    r'stages\.\d+\.blocks\.\d+\.(%s)' % '|'.join(
        re.escape(k) for k in sorted(_OUR_BLOCK_KEYS) + ['attn.w_msa.relative_position_index']),
    r'stages\.\d+\.downsample\.(norm\.weight|norm\.bias|reduction\.weight)',
    r'norm\d+\.(weight|bias)',
)]
_TABLE = 'attn.w_msa.relative_position_bias_table'
_INDEX = 'attn.w_msa.relative_position_index'


def swin_geometry(sd: dict) -> Dict[str, list]:
    """Check a state dict in our layout; return per-stage ``depths``, ``heads``, ``windows``."""
    unknown = [k for k in sd if not any(p.fullmatch(k) for p in _OUR_KEY_PATTERNS)]
    if unknown:
        raise ConversionError('keys outside the mmpretrain Swin layout (expected '
                              "'patch_embed.projection.*', 'stages.{i}.blocks.{j}.attn.w_msa.*', "
                              f"'stages.{{i}}.downsample.*', 'norm{{i}}.*'): {_sample(unknown)}")
    blocks = {}
    for k in sd:
        m = re.match(r'stages\.(\d+)\.blocks\.(\d+)\.', k)
        if m:
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    if 'patch_embed.projection.weight' not in sd or not blocks:
        raise ConversionError('no Swin backbone found: expected patch_embed.projection.weight and '
                              f'stages.{{i}}.blocks.{{j}}.*; found: {_sample(sorted(sd))}')
    num_stages = max(blocks) + 1
    if any(k.startswith(f'stages.{num_stages - 1}.downsample.') for k in sd):
        raise ConversionError(f'stage {num_stages - 1} is the last stage but has a downsample; '
                              'mmpretrain Swin merges only between stages')
    missing = []
    geo = dict(depths=[], heads=[], windows=[])
    for i in range(num_stages):
        depth = max(blocks.get(i, {-1})) + 1
        expected = [f'stages.{i}.blocks.{j}.{n}' for j in range(max(depth, 1))
                    for n in sorted(_OUR_BLOCK_KEYS)]
        if i < num_stages - 1:
            expected += [f'stages.{i}.downsample.{n}'
                         for n in ('norm.weight', 'norm.bias', 'reduction.weight')]
        missing += [k for k in expected if k not in sd]
        if missing:
            continue
        tables = [sd[f'stages.{i}.blocks.{j}.{_TABLE}'] for j in range(depth)]
        windows = {_window_of(t.shape[0]) for t in tables}
        if len(windows) != 1:
            raise ConversionError(f'stage {i}: blocks with different windows {sorted(windows)}')
        geo['depths'].append(depth)
        geo['heads'].append(int(tables[0].shape[1]))
        geo['windows'].append(windows.pop())
    if missing:
        raise ConversionError(f'incomplete Swin state dict, missing: {_sample(missing)}')
    return geo


def _window_of(table_len: int) -> int:
    """Window w of a relative-position table with (2w - 1)**2 rows."""
    side = math.isqrt(table_len)
    if side * side != table_len or side % 2 == 0:
        raise ConversionError(f'relative_position_bias_table with {table_len} rows is not '
                              '(2w-1)^2 for a square window w')
    return (side + 1) // 2


def fresh_relative_position_index(window: int) -> torch.Tensor:
    """The ``relative_position_index`` buffer of mmpretrain's ``WindowMSA`` for ``window``."""
    from mmpretrain.models.utils.attention import WindowMSA
    return WindowMSA(embed_dims=1, window_size=(window, window),
                     num_heads=1).relative_position_index.clone()


def set_windows(sd: dict, geo: dict, windows: Sequence[int]) -> List[str]:
    """Resize tables to ``windows`` (mmpretrain's resize) and rebuild every index buffer."""
    # SciPy >= 1.14 lacks the interp2d this calls: importing greenmim_mm (our package) restores it
    from mmpretrain.models.utils import resize_relative_position_bias_table
    if len(windows) != len(geo['depths']):
        raise ConversionError(f'{len(windows)} stage windows given for a Swin with '
                              f"{len(geo['depths'])} stages")
    notes = []
    for i, (depth, src_w, dst_w) in enumerate(zip(geo['depths'], geo['windows'], windows)):
        index = fresh_relative_position_index(dst_w)
        for j in range(depth):
            key = f'stages.{i}.blocks.{j}.'
            if src_w != dst_w:
                table = sd[key + _TABLE]
                sd[key + _TABLE] = resize_relative_position_bias_table(
                    2 * src_w - 1, 2 * dst_w - 1, table, table.shape[1]).to(table.dtype)
            sd[key + _INDEX] = index.clone()
        if src_w != dst_w:
            notes.append(f'stage {i}: relative position tables resized, window {src_w} -> {dst_w}')
    return notes
