"""Convert Swin checkpoints to greenmim_mm / mmpretrain / mmdet backbone weights.

Sources (``SOURCES``):

* ``greenmim_mm``: our pre-training (or any mmpretrain-style) checkpoint; keeps ``backbone.*``,
  drops mask state (mmpretrain SimMIM's ``backbone.mask_token``) and stale ``attn_mask`` buffers,
  and renames the older single final ``norm.*`` to ``norm{last stage}.*`` (as mmpretrain's
  ``SwinTransformer`` does when loading such a checkpoint).
* ``official-g1``: the official GreenMIM code before commit ``b981012`` (G1 and G2, including the
  released May-2022 checkpoints): Microsoft-Swin keys, PatchMerging concatenates its 2x2
  neighbours row-first, (0,0),(0,1),(1,0),(1,1).
* ``official-g3``: official GreenMIM from ``b981012`` on, Microsoft Swin, SimMIM, and old-format
  timm checkpoints: neighbours in Swin's order (0,0),(1,0),(0,1),(1,1).
* ``timm``: timm >= 0.6 Swin state dicts (downsample at the start of stage i); an old
  Microsoft-format one (downsample at the end) is converted as ``official-g3``.
* ``localmim``: our LocalMIM pre-training checkpoint: ``backbone.*`` without the per-head
  LayerNorms of outputs taken after patch merging (``norm{i}`` wider than stage i); decoders,
  heads, target generators dropped. A LocalMIM Twins checkpoint is kept whole (mmpretrain
  ``SVT`` layout: no head norm was added) and a LocalMIM ViT one too (mmpretrain
  ``VisionTransformer`` layout; its per-head norms live in the decoders); ``greenmim_mm`` takes
  both as well.
* ``localmim-official-swin``: official LocalMIM Swin (LocalMIM's official code): Microsoft keys under
  ``encoder.``, per-head norms ``encoder.norm.{k}``, ``decoder.*`` and ``hog_enc.*`` dropped; its
  sparse PatchMerging concatenates the 2x2 neighbours row-first (official LocalMIM code), reordered as
  ``official-g1``.
* ``localmim-official-vit``: official LocalMIM ViT (timm/MAE keys) -> mmpretrain
  ``VisionTransformer`` (``backbone.layers.{i}...``); per-head norms, decoders, HOG dropped.

Twins-SVT sources (output in mmpretrain's ``SVT`` / our ``GreenTwinsSVT`` layout):

* ``timm-twins``: timm ``twins_svt_*`` state dicts (``patch_embeds.i.proj``, ``blocks.s.j``,
  ``pos_block.s.proj.0``, final ``norm`` -> ``norm_after_stage3``; ``head.*`` dropped). Build the
  target with ``qkv_bias=True, norm_after_stage=[False, False, False, True]``; timm's block and
  final LayerNorms use eps 1e-6 (``norm_cfg=dict(type='LN', eps=1e-6)``).
* ``official-twins``: official GreenMIM Twins-L pre-training checkpoints (``checkpoint['model']``,
  ``encoder.`` keys in the same original Twins layout). Their PEG has no residual (official
  GreenMIM code, modeling/green_twins_models.py); it is folded in exactly by subtracting 1 from
  the centre tap of every PEG depthwise kernel. The file's kind is checked first
  (:func:`twins_checkpoint_kind`): a Twins classification file (Meituan-AutoML/Twins
  ``alt_gvt_*.pth``: classifier ``head.*``, no ``encoder.``/decoder keys, torch-layout
  convolutions; its PEG has the residual) is converted as ``timm-twins`` with a note; a file that
  is neither recognisably is refused, and ``timm-twins`` refuses a GreenMIM pre-training file.
  Its stage patch embeddings 1-3 and GSA ``sr`` convolutions are spconv ``SparseConv2d``: their
  (out, kh, kw, in) weights (spconv >= 2.2) are permuted to torch's (out, in, kh, kw).
* ``greenmim_mm`` also accepts our Twins pre-training checkpoints (kept as they are; the window
  options apply to Swin only).

Output: ``{'state_dict': {'backbone.<key>': tensor}}`` in mmpretrain's ``SwinTransformer`` layout,
PatchMerging channels in mmcv's ``nn.Unfold`` order (input channel ``4 * c + k`` with neighbours
k = (0,0),(0,1),(1,0),(1,1)), ``relative_position_index`` buffers rebuilt for the target windows,
tables resized with mmpretrain's ``resize_relative_position_bias_table`` when a window changes.

Loading the output:

* greenmim_mm / mmpretrain ``SwinTransformer``:
  ``init_cfg=dict(type='Pretrained', checkpoint=OUT, prefix='backbone.')`` (or strict
  ``load_state_dict`` of the stripped keys; ``norm{i}`` exist only for the source's out indices).
* mmdet ``SwinTransformer``: ``convert_weights=False``, ``init_cfg=dict(type='Pretrained',
  checkpoint=OUT)``. mmdet's ``init_weights`` ignores ``prefix``: it keeps only keys starting with
  ``backbone.`` and strips that itself, then loads with ``strict=False``, so shapes must match
  (build it with the converted windows). mmdet's Swin keeps the shifted-window shift where a
  stage's map equals the window (e.g. 7x7 at 224 px, window 7), mmpretrain's and ours drop it, so
  the outputs agree exactly only where no stage map equals its window (e.g. 800x1333, 256x320).
"""
import math
import os.path as osp
import re
from typing import Dict, List, Optional, Sequence, Tuple

import torch

SOURCES = ('greenmim_mm', 'official-g1', 'official-g3', 'timm', 'localmim',
           'localmim-official-swin', 'localmim-official-vit', 'timm-twins', 'official-twins')
TWINS_SOURCES = ('timm-twins', 'official-twins')
OUR_SOURCES = ('greenmim_mm', 'localmim')  # our checkpoints: Swin, Twins or (LocalMIM) ViT

# For each of our (mmcv Unfold) neighbours (0,0),(0,1),(1,0),(1,1): its position in the
# source's neighbour-major 4C concatenation.
MERGE_ORDERS = {
    'official-g1': (0, 1, 2, 3),  # row-first: (0,0),(0,1),(1,0),(1,1)
    'official-g3': (0, 2, 1, 3),  # Swin: (0,0),(1,0),(0,1),(1,1)
}

_BUFFER_SUFFIXES = ('relative_position_index', 'attn_mask', 'relative_coords_table')

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


class ConversionError(ValueError):
    """A checkpoint that cannot be read or converted; the message names the problem."""


# ---------------------------------------------------------------------------- reading
def read_checkpoint(path: str) -> dict:
    """Load ``path`` on the CPU with greenmim_mm's safe loader
    (:func:`greenmim_mm.checkpoint_loading.load_checkpoint_file`: weights-only, inert classes
    only, for every source, so that a wrong ``--src`` gets a layout error rather than a read
    error). Raises :class:`ConversionError` naming the file and the cause."""
    from greenmim_mm.checkpoint_loading import CheckpointLoadError, load_checkpoint_file
    if not osp.isfile(path):
        raise ConversionError(f'input checkpoint not found: {path}')
    try:
        ckpt = load_checkpoint_file(path, map_location='cpu')
    except CheckpointLoadError as err:
        raise ConversionError(str(err)) from None
    if not isinstance(ckpt, dict):
        raise ConversionError(f'{path} holds a {type(ckpt).__name__}, not a checkpoint dict')
    return ckpt


def _tensor_dict(obj, what: str) -> Dict[str, torch.Tensor]:
    """``obj`` as a str -> tensor dict; non-tensor entries are an error."""
    if not isinstance(obj, dict) or not obj:
        raise ConversionError(f'{what}: expected a non-empty dict of tensors, got '
                              f'{type(obj).__name__}')
    bad = [k for k, v in obj.items() if not torch.is_tensor(v)]
    if bad:
        raise ConversionError(f'{what}: entries that are not tensors: {_sample(bad)}')
    return dict(obj)


def summarize_dropped(keys: Sequence[str]) -> str:
    """'decoder_embed.*, head.*, mask_token, 12 buffers (...)' for a list of dropped keys."""
    buffers = [k for k in keys if k.endswith(_BUFFER_SUFFIXES)]
    groups = sorted({k.split('.')[0] + ('.*' if '.' in k else '') for k in keys
                     if k not in buffers})
    more = [f'{len(buffers)} buffers ({", ".join(sorted({k.split(".")[-1] for k in buffers}))})'
            ] if buffers else []
    return ', '.join(groups + more)


def _sample(keys: Sequence[str], n: int = 8) -> str:
    keys = list(keys)
    more = f' ... (+{len(keys) - n} more)' if len(keys) > n else ''
    return ', '.join(keys[:n]) + more


def _unwrap(ckpt: dict) -> Tuple[dict, str]:
    """The state dict inside an mmengine ('state_dict') / MAE-style ('model') checkpoint."""
    for name in ('state_dict', 'model'):
        if isinstance(ckpt.get(name), dict):
            return ckpt[name], f"checkpoint['{name}']"
    return ckpt, 'checkpoint'


def _strip_prefix(sd: dict, prefix: str) -> dict:
    """Keys under ``prefix`` with it removed, or ``sd`` itself when no key has it."""
    if not any(k.startswith(prefix) for k in sd):
        return sd
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def guess_layout(keys) -> Optional[str]:
    """Best guess of the ``--src`` that fits a state dict's keys (for error messages)."""
    keys = {re.sub(r'^(module\.|encoder\.|backbone\.)+', '', k) for k in keys}
    if 'patch_embed.projection.weight' in keys and 'layers.0.ln1.weight' in keys:
        return 'localmim or greenmim_mm (mmpretrain ViT layout)'
    if 'patch_embed.projection.weight' in keys or 'patch_embeds.0.projection.weight' in keys:
        return 'greenmim_mm'
    if 'patch_embeds.0.proj.weight' in keys:
        return 'timm-twins or official-twins (original Twins layout)'
    if 'patch_embed.proj.weight' in keys:
        if any(k.startswith('layers.0.downsample.') for k in keys):
            return 'official-g1 or official-g3 (Microsoft-Swin layout)'
        return 'timm'
    return None


def _layout_error(src: str, expected: str, keys) -> ConversionError:
    guess = guess_layout(keys)
    hint = f'; it looks like --src {guess}' if guess and not guess.startswith(src) else ''
    return ConversionError(f'--src {src}: unrecognised layout: expected {expected}; '
                           f'found keys: {_sample(list(keys))}{hint}')


# ---------------------------------------------------------------------------- sources
def greenmim_mm_backbone(ckpt: dict, notes: Optional[List[str]] = None
                         ) -> Tuple[dict, List[str]]:
    """Backbone weights of our (mmengine) checkpoint: ``backbone.*`` stripped; the rest dropped.

    A bare mmpretrain-layout backbone state dict (no ``backbone.`` prefix) is accepted as is.
    Returns (state dict, dropped keys); what was renamed is appended to ``notes`` when given
    (see :func:`mmpretrain_backbone_keys`).
    """
    sd, where = _unwrap(ckpt)
    sd = _tensor_dict(sd, where)
    sd = _strip_prefix(sd, 'module.')
    dropped = []
    if any(k.startswith('backbone.') for k in sd):
        dropped = [k for k in sd if not k.startswith('backbone.')]
        sd = {k[9:]: v for k, v in sd.items() if k.startswith('backbone.')}
    elif 'patch_embed.projection.weight' not in sd and not is_twins_state_dict(sd):
        raise _layout_error('greenmim_mm', "keys 'backbone.patch_embed.projection.weight', "
                            "'backbone.stages.0.blocks.0...' (mmpretrain Swin layout)", sd)
    sd, more, renamed = mmpretrain_backbone_keys(sd)
    if notes is not None:
        notes += renamed
    return sd, dropped + more


def mmpretrain_backbone_keys(sd: dict) -> Tuple[dict, List[str], List[str]]:
    """An mmpretrain Swin backbone state dict in today's layout; returns (state dict, dropped
    keys, notes).

    * mask state is dropped: SimMIM's ``mask_token`` (mmpretrain ``SimMIMSwinTransformer``);
    * ``attn_mask`` buffers of older mmpretrain/mmcls Swins (version < 3) are dropped;
    * the older single final ``norm.{weight,bias}`` (version < 2) becomes ``norm{last}.*``,
      ``last`` the last stage, as mmpretrain's ``SwinTransformer._load_from_state_dict`` maps it.

    Raises:
        ConversionError: both ``norm.*`` and ``norm{last}.*`` are present (ambiguous).
    """
    dropped = [k for k in sd if k == 'mask_token' or k.endswith('.attn_mask')]
    sd = {k: v for k, v in sd.items() if k not in dropped}
    old = sorted(k for k in sd if re.fullmatch(r'norm\.(weight|bias)', k))
    stages = [int(m.group(1)) for k in sd for m in [re.match(r'stages\.(\d+)\.', k)] if m]
    if not old or not stages:
        return sd, dropped, []
    last = max(stages)
    clash = [k for k in sd if k.startswith(f'norm{last}.')]
    if clash:
        raise ConversionError(f"both the older final norm ({', '.join(old)}) and {_sample(clash)} "
                              f'are present; cannot tell which is the output norm of stage {last}')
    for key in old:
        sd[f'norm{last}.{key[5:]}'] = sd.pop(key)
    return sd, dropped, [f'renamed the older final norm.* to norm{last}.* (output norm of the '
                         'last stage)']


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


def convert_timm(ckpt: dict) -> Tuple[dict, List[str], bool]:
    """timm Swin (downsample at the start of stage i); an old Microsoft-format one (downsample
    at the end, as timm's own ``checkpoint_filter_fn`` detects it) as official-g3.
    Returns (state dict, dropped keys, whether it was Microsoft-format)."""
    sd, where = _unwrap(ckpt)
    sd = _strip_prefix(_tensor_dict(sd, where), 'module.')
    microsoft = 'layers.0.downsample.reduction.weight' in sd
    sd, dropped = rename_swin(sd, 'timm', MERGE_ORDERS['official-g3'],
                              downsample_shift=0 if microsoft else -1)
    return sd, dropped, microsoft


# ---------------------------------------------------------------------------- our layout
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


# ---------------------------------------------------------------------------- Twins-SVT
_TWINS_RULES = [  # original Twins (timm / official) key -> mmpretrain SVT key
    (r'patch_embeds\.(\d+)\.proj\.(weight|bias)$', r'patch_embeds.\1.projection.\2'),
    (r'patch_embeds\.(\d+)\.norm\.(weight|bias)$', r'patch_embeds.\1.norm.\2'),
    (r'blocks\.(\d+)\.(\d+)\.mlp\.fc1\.(weight|bias)$', r'stages.\1.\2.ffn.layers.0.0.\3'),
    (r'blocks\.(\d+)\.(\d+)\.mlp\.fc2\.(weight|bias)$', r'stages.\1.\2.ffn.layers.1.\3'),
    (r'blocks\.(\d+)\.(\d+)\.(norm1|norm2)\.(weight|bias)$', r'stages.\1.\2.\3.\4'),
    (r'blocks\.(\d+)\.(\d+)\.attn\.(qkv|q|kv|sr|norm|proj)\.(weight|bias)$',
     r'stages.\1.\2.attn.\3.\4'),
    (r'pos_block\.(\d+)\.proj\.0\.(weight|bias)$', r'position_encodings.\1.proj.\2'),
]


def is_twins_state_dict(sd: dict) -> bool:
    """True for an mmpretrain-layout Twins (SVT/PCPVT) backbone state dict."""
    return 'patch_embeds.0.projection.weight' in sd


def rename_twins(sd: dict, src: str) -> Tuple[dict, List[str]]:
    """Original Twins keys (timm / official GreenMIM) -> mmpretrain ``SVT`` keys; returns the
    renamed dict and the dropped keys (``head.*``). ConversionError for an unknown key."""
    if 'patch_embeds.0.proj.weight' not in sd:
        raise _layout_error(src, "original Twins keys 'patch_embeds.0.proj.weight', "
                            "'blocks.0.0.attn.qkv.weight', 'pos_block.0.proj.0.weight'", sd)
    last = max(int(k.split('.')[1]) for k in sd if k.startswith('blocks.'))
    out, dropped, unknown = {}, [], []
    for key, value in sd.items():
        if key.startswith('head.'):
            dropped.append(key)
            continue
        if key in ('norm.weight', 'norm.bias'):
            out[f'norm_after_stage{last}.{key[5:]}'] = value
            continue
        for pattern, repl in _TWINS_RULES:
            if re.match(pattern, key):
                out[re.sub(pattern, repl, key)] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise ConversionError(f"--src {src}: keys with no counterpart in mmpretrain's SVT: "
                              f'{_sample(unknown)}')
    return out, dropped


def fold_peg_residual(sd: dict) -> List[str]:
    """Official GreenMIM's PEG is ``conv(x)`` without Twins' residual ``+ x``: subtract 1 from
    the centre tap of every PEG depthwise kernel (in place) so that ``conv_new(x) + x`` equals
    ``conv(x)`` exactly; returns the folded keys."""
    folded = []
    for key in sorted(k for k in sd if re.match(r'position_encodings\.\d+\.proj\.weight$', k)):
        weight = sd[key].clone()
        if weight.dim() != 4 or weight.shape[1] != 1 or weight.shape[2] % 2 == 0:
            raise ConversionError(f'{key}: expected a depthwise (C, 1, k, k) kernel with odd k, '
                                  f'got {tuple(weight.shape)}')
        weight[:, 0, weight.shape[2] // 2, weight.shape[3] // 2] -= 1
        sd[key] = weight
        folded.append(key)
    return folded


SPCONV_KEYS = r'(patch_embeds\.[1-9]\d*\.proj|blocks\.\d+\.\d+\.attn\.sr)\.weight$'  # original names


def spconv_weights_to_torch(sd: dict, prefix: str = '') -> List[str]:
    """Official GreenMIM Twins runs its stage patch embeddings (``patch_embeds.1-3``) and GSA
    key/value sub-sampling (``attn.sr``) as spconv ``SparseConv2d``, whose weights spconv >= 2.2
    stores as (out, kh, kw, in) ("KRSC"); permute those to torch's (out, in, kh, kw) in place.
    ``sd`` has the original Twins key names (``prefix``, e.g. 'encoder.', stripped: errors name
    the key as in the file). Weights already in torch's layout (a re-saved checkpoint) are kept.
    Returns the permuted keys. ConversionError for any other layout (spconv < 2.2 kept the
    kernel dimensions first, (kh, kw, ., .), ambiguous for the square GSA kernels) or an
    ambiguous shape."""
    permuted = []
    for key in sorted(k for k in sd if re.match(SPCONV_KEYS, k)):
        w = sd[key]
        krsc = w.dim() == 4 and w.shape[1] == w.shape[2]
        torch_layout = w.dim() == 4 and w.shape[2] == w.shape[3]
        bias = sd.get(key[:-len('weight')] + 'bias')
        out_ok = bias is None or w.shape[0] == bias.shape[0]
        if krsc == torch_layout or not out_ok:
            raise ConversionError(
                f'{prefix}{key}: cannot tell the sparse-convolution weight layout of shape '
                f'{tuple(w.shape)}; expected spconv >= 2.2 (out, kh, kw, in) or torch '
                f'(out, in, kh, kw) (spconv < 2.2 checkpoints: load them with spconv >= 2.2 and '
                f'save again)')
        if krsc:
            sd[key] = w.permute(0, 3, 1, 2).contiguous()
            permuted.append(key)
    return permuted


def twins_checkpoint_kind(sd: dict) -> Tuple[Optional[str], str]:
    """What an original-layout Twins state dict (keys as in the file, ``module.`` stripped) is,
    and why: (kind, evidence).

    * ``'greenmim'``: an official GreenMIM Twins pre-training checkpoint (official GreenMIM code,
      modeling/green_twins_models.py; its PEG has no residual): ``encoder.`` keys, decoder /
      mask-token keys, or stage-embedding / GSA ``sr`` weights in spconv's (out, kh, kw, in)
      layout (``util/extract_backbone.py`` keeps them so);
    * ``'classification'``: a Twins classifier (Meituan-AutoML/Twins ``alt_gvt_*.pth``, timm
      ``twins_svt_*``; PEG with the residual): a classifier ``head.*`` and none of the above;
    * None: neither can be told (e.g. a bare backbone in torch's layout).
    """
    prefixed = [k for k in sd if k.startswith(('encoder.', 'decoder', 'mask_token'))]
    if prefixed:
        return 'greenmim', f'GreenMIM pre-training keys ({_sample(prefixed, 2)})'
    spconv = [k for k, w in sd.items() if re.match(SPCONV_KEYS, k) and _spconv_layout(w)]
    if spconv:
        return 'greenmim', (f'spconv-layout (out, kh, kw, in) weights ({_sample(spconv, 2)}) '
                            'of the sparse GreenMIM encoder')
    head = [k for k in sd if k.startswith('head.')]
    if head:
        return 'classification', (f'a classifier ({_sample(head, 2)}), no GreenMIM pre-training '
                                   "keys, convolutions in torch's layout")
    return None, 'no classifier head, no GreenMIM pre-training keys, torch-layout convolutions'


def _spconv_layout(w: torch.Tensor) -> bool:
    """A 4-D sparse-convolution weight in spconv's (out, kh, kw, in), not torch's layout."""
    return w.dim() == 4 and w.shape[1] == w.shape[2] and w.shape[2] != w.shape[3]


def check_twins_source(sd: dict, src: str) -> Tuple[str, Optional[str]]:
    """The conversion a Twins file needs, from its kind (:func:`twins_checkpoint_kind`):
    (``'official'`` (fold the missing PEG residual, permute the spconv weights) or ``'timm'`` (as
    it is), note). ``--src official-twins`` on a Twins classification file converts it as
    ``timm-twins``, with a note (folding a PEG that has the residual would subtract 1 from every
    centre tap).

    Raises:
        ConversionError: ``--src timm-twins`` on an official GreenMIM pre-training file, or
            ``--src official-twins`` on a file that is neither recognisably; the message names
            the right ``--src``.
    """
    kind, evidence = twins_checkpoint_kind(sd)
    if src == 'timm-twins':
        if kind == 'greenmim':
            raise ConversionError(
                f'--src timm-twins: this is an official GreenMIM Twins pre-training checkpoint '
                f'({evidence}), whose PEG has no residual: use --src official-twins')
        return 'timm', None
    if kind == 'greenmim':
        return 'official', None
    if kind == 'classification':
        return 'timm', (f'a Twins classification checkpoint ({evidence}; its PEG has the '
                        'residual): converted as --src timm-twins, PEG kernels unchanged')
    raise ConversionError(
        '--src official-twins: cannot tell an official GreenMIM Twins pre-training checkpoint '
        "(PEG without residual: 'encoder.'/decoder keys or spconv-layout weights) from a Twins "
        f'classification / timm checkpoint (PEG with residual): {evidence}. For Twins '
        'classification or timm weights use --src timm-twins')


def convert_twins(ckpt: dict, src: str) -> Tuple[dict, List[str]]:
    """``timm-twins`` / ``official-twins`` checkpoint -> (mmpretrain SVT state dict, notes).
    The file's kind is checked first (:func:`check_twins_source`)."""
    sd, where = _unwrap(ckpt)
    sd = _strip_prefix(_tensor_dict(sd, where), 'module.')
    layout, note = check_twins_source(sd, src)
    notes = [note] if note else []
    dropped, prefix, permuted = [], '', []
    if layout == 'official' and any(k.startswith('encoder.') for k in sd):
        dropped = [k for k in sd if not k.startswith('encoder.')]
        sd, prefix = _strip_prefix(sd, 'encoder.'), 'encoder.'
    if layout == 'official':
        permuted = spconv_weights_to_torch(sd, prefix)
    sd, more = rename_twins(sd, src)
    notes += [f'dropped: {summarize_dropped(dropped + more)}'] if dropped + more else []
    if layout == 'official':
        if permuted:
            notes.append(f'{len(permuted)} spconv weights (out, kh, kw, in) -> torch '
                         f'(out, in, kh, kw)')
        folded = fold_peg_residual(sd)
        notes.append(f'PEG residual folded into {len(folded)} kernels (centre tap - 1)')
    else:
        notes.append("timm's block/final LayerNorms use eps 1e-6: build the backbone with "
                     "norm_cfg=dict(type='LN', eps=1e-6)")
    return sd, notes


def _backbone_key_set(ckpt: dict) -> set:
    """The keys of a checkpoint's state dict with ``module.`` / ``backbone.`` stripped."""
    sd, _ = _unwrap(ckpt)
    if not isinstance(sd, dict):
        return set()
    return {re.sub(r'^(module\.)?(backbone\.)?', '', str(k)) for k in sd}


def _holds_twins(ckpt: dict) -> bool:
    """True if a greenmim_mm checkpoint's backbone is a Twins (mmpretrain SVT layout)."""
    return 'patch_embeds.0.projection.weight' in _backbone_key_set(ckpt)


def _holds_vit(ckpt: dict) -> bool:
    """True if a greenmim_mm checkpoint's backbone is a ViT (mmpretrain ``VisionTransformer`` /
    ``MAEViT`` layout, e.g. our LocalMIM ViT's ``LocalMIMMAEViT``)."""
    keys = _backbone_key_set(ckpt)
    return 'patch_embed.projection.weight' in keys and 'layers.0.ln1.weight' in keys


def convert_twins_checkpoint(ckpt: dict, src: str) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """A Twins source (``TWINS_SOURCES``, or ``greenmim_mm`` / ``localmim`` holding a Twins
    backbone: kept whole, LocalMIM Twins adds no head norm) -> (``backbone.``-prefixed state
    dict, notes)."""
    if src in OUR_SOURCES:
        sd, dropped = greenmim_mm_backbone(ckpt)
        notes = [f'dropped: {summarize_dropped(dropped)}'] if dropped else []
    else:
        sd, notes = convert_twins(ckpt, src)
    return {f'backbone.{k}': v.contiguous() for k, v in sd.items()}, notes


# ---------------------------------------------------------------------------- top level
def convert_checkpoint(ckpt: dict, src: str, window: Optional[int] = None,
                       stage_windows: Optional[Sequence[int]] = None
                       ) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Convert a loaded checkpoint; return (``backbone.``-prefixed state dict, notes)."""
    if src not in SOURCES:
        raise ConversionError(f'unknown source {src!r}; choose one of {SOURCES}')
    if window is not None and stage_windows is not None:
        raise ConversionError('give either window or stage_windows, not both')
    if src in TWINS_SOURCES or (src in OUR_SOURCES and _holds_twins(ckpt)):
        if window is not None or stage_windows is not None:
            raise ConversionError('window / stage_windows apply to Swin only (Twins LSA windows '
                                  'have no parameters)')
        return convert_twins_checkpoint(ckpt, src)
    notes = []
    if src == 'localmim-official-vit' or (src in OUR_SOURCES and _holds_vit(ckpt)):
        if window is not None or stage_windows is not None:
            raise ConversionError(f'--src {src}: a ViT has no windows to set')
        sd, dropped = (convert_localmim_vit(ckpt) if src == 'localmim-official-vit'
                       else our_vit_backbone(ckpt, src))
        notes += [f'dropped: {summarize_dropped(dropped)}'] if dropped else []
        return {f'backbone.{k}': v.contiguous() for k, v in sd.items()}, notes
    if src == 'greenmim_mm':
        sd, dropped = greenmim_mm_backbone(ckpt, notes)
    elif src == 'localmim':
        sd, dropped = localmim_backbone(ckpt)
    elif src == 'localmim-official-swin':
        sd, dropped = convert_localmim_swin(ckpt)
    elif src == 'timm':
        sd, dropped, microsoft = convert_timm(ckpt)
        if microsoft:
            notes.append('Microsoft-format checkpoint (downsample at stage ends): converted with '
                         "official Swin's merge order, as official-g3")
    else:
        sd, dropped = convert_official(ckpt, src)
    geo = swin_geometry(sd)
    if stage_windows is not None:
        targets = list(stage_windows)
    elif window is not None:
        targets = [window] * len(geo['depths'])
    else:
        targets = geo['windows']
    if any(int(w) < 1 for w in targets):
        raise ConversionError(f'windows must be positive, got {targets}')
    notes += [f'dropped: {summarize_dropped(dropped)}'] if dropped else []
    notes += set_windows(sd, geo, [int(w) for w in targets])
    return {f'backbone.{k}': v.contiguous() for k, v in sd.items()}, notes


def convert_file(in_path: str, out_path: str, src: str, window: Optional[int] = None,
                 stage_windows: Optional[Sequence[int]] = None) -> List[str]:
    """Read ``in_path``, convert, write ``{'state_dict': ...}`` to ``out_path``; return notes.

    ``out_path`` must not be ``in_path`` (compared by identity: ``..``, symlinks, hard links) and
    is written atomically (:func:`greenmim_mm.fileio.atomic_torch_save`): a failed write (full
    disk) raises :class:`ConversionError` and leaves an existing ``out_path`` as it was.
    """
    from greenmim_mm.fileio import atomic_torch_save, is_same_file
    out_dir = osp.dirname(osp.abspath(out_path))
    if not osp.isdir(out_dir):
        raise ConversionError(f'output directory does not exist: {out_dir}')
    if is_same_file(in_path, out_path):
        raise ConversionError(f'output {out_path} is the input file {in_path}: refusing to '
                              'overwrite it; choose another output path')
    state_dict, notes = convert_checkpoint(read_checkpoint(in_path), src, window, stage_windows)
    existed = osp.exists(out_path)
    try:
        atomic_torch_save({'state_dict': state_dict}, out_path)
    except OSError as err:
        kept = f', an existing {osp.basename(out_path)} is unchanged' if existed else ''
        raise ConversionError(f'cannot write {out_path}: {err.strerror or err} '
                              f'(errno {err.errno}); nothing was written{kept}') from None
    return notes


# ---------------------------------------------------------------------------- LocalMIM
def localmim_backbone(ckpt: dict) -> Tuple[dict, List[str]]:
    """Backbone weights of our LocalMIM checkpoint.

    LocalMIM's per-head LayerNorms are the backbone's ``norm{i}`` of outputs taken after patch
    merging (``out_after_downsample``): ``norm{i}`` is then as wide as stage i+1, not stage i,
    and means something else than a downstream ``norm{i}`` (before merging), so it is dropped. A
    last-stage norm (no merging after it) is kept, as for GreenMIM.
    """
    sd, dropped = greenmim_mm_backbone(ckpt)
    for key in [k for k in sd if re.fullmatch(r'norm\d+\.(weight|bias)', k)]:
        stage = int(key[4:key.index('.')])
        width = sd.get(f'stages.{stage}.blocks.0.norm1.weight')
        if width is None or width.shape != sd[key].shape:
            dropped.append(key)  # the backbone's norm{i}
            del sd[key]
    return sd, dropped


def convert_localmim_swin(ckpt: dict) -> Tuple[dict, List[str]]:
    """Official LocalMIM Swin -> ours: ``encoder.*`` kept without its per-head norms
    ``encoder.norm.{k}``; row-first PatchMerging channels reordered (``official-g1``)."""
    sd, dropped = official_state_dict(ckpt)
    heads = [k for k in sd if re.match(r'norm\.\d+\.', k)]
    dropped += [f'encoder.{k}' for k in heads]
    sd = {k: v for k, v in sd.items() if k not in heads}
    sd, more = rename_swin(sd, 'localmim-official-swin', MERGE_ORDERS['official-g1'],
                           downsample_shift=0)
    return sd, dropped + more


# timm/MAE ViT block keys -> mmpretrain VisionTransformer (after ``blocks.{i}.`` / ``layers.{i}.``).
_VIT_BLOCK_KEYS = {
    'norm1': 'ln1', 'attn.qkv': 'attn.qkv', 'attn.proj': 'attn.proj', 'norm2': 'ln2',
    'mlp.fc1': 'ffn.layers.0.0', 'mlp.fc2': 'ffn.layers.1',
}


def convert_localmim_vit(ckpt: dict) -> Tuple[dict, List[str]]:
    """Official LocalMIM ViT (timm/MAE keys, ``checkpoint['model']``) -> mmpretrain
    ``VisionTransformer`` keys. Kept: cls token, position embedding (with its cls slot, as
    mmpretrain's), patch embedding, blocks, and a final ``norm`` (as ``ln1``) if there is one;
    dropped: per-head norms ``norm.{k}``, decoders, HOG, mask token. Any other key is an error.
    """
    sd, where = _unwrap(ckpt)
    sd = _strip_prefix(_tensor_dict(sd, where), 'module.')
    if 'patch_embed.proj.weight' not in sd or not any(k.startswith('blocks.') for k in sd):
        raise _layout_error('localmim-official-vit', "timm/MAE ViT keys 'patch_embed.proj.weight', "
                            "'blocks.{i}.attn.qkv.weight', ... in checkpoint['model']", sd)
    out, dropped, unknown = {}, [], []
    for key, value in sd.items():
        new = _vit_key(key)
        if new is not None:
            out[new] = value
        elif re.match(r'(norm\.\d+\.|decoder|hog_enc|mask_token)', key):
            dropped.append(key)
        else:
            unknown.append(key)
    if unknown:
        raise ConversionError('--src localmim-official-vit: keys with no counterpart in the '
                              f'mmpretrain ViT layout: {_sample(unknown)}')
    return out, dropped


_OUR_VIT_KEY = re.compile(r'cls_token|pos_embed|patch_embed\.projection\.(weight|bias)|'
                          r'(ln1|pre_norm)\.(weight|bias)|layers\.\d+\.(%s)\.(weight|bias)'
                          % '|'.join(re.escape(v) for v in _VIT_BLOCK_KEYS.values()))


def our_vit_backbone(ckpt: dict, src: str) -> Tuple[dict, List[str]]:
    """Backbone weights of our LocalMIM ViT checkpoint (``LocalMIMMAEViT``: mmpretrain
    ``VisionTransformer`` keys, the layout of ``localmim-official-vit``'s output), kept as they
    are; decoders (with their per-head norms), heads and the mask step dropped. ConversionError
    for a backbone key outside that layout."""
    sd, dropped = greenmim_mm_backbone(ckpt)
    unknown = [k for k in sd if not _OUR_VIT_KEY.fullmatch(k)]
    if unknown:
        raise ConversionError(f'--src {src}: keys outside the mmpretrain ViT layout (expected '
                              "'cls_token', 'pos_embed', 'patch_embed.projection.*', "
                              f"'layers.{{i}}.(ln1|attn.qkv|...).*', 'ln1.*'): {_sample(unknown)}")
    return sd, dropped


def _vit_key(key: str) -> Optional[str]:
    """mmpretrain ViT name of one timm/MAE key, None when it has none."""
    if key in ('cls_token', 'pos_embed'):
        return key
    m = re.fullmatch(r'patch_embed\.proj\.(weight|bias)', key)
    if m:
        return f'patch_embed.projection.{m.group(1)}'
    m = re.fullmatch(r'blocks\.(\d+)\.(.+)\.(weight|bias)', key)
    if m and m.group(2) in _VIT_BLOCK_KEYS:
        return f'layers.{m.group(1)}.{_VIT_BLOCK_KEYS[m.group(2)]}.{m.group(3)}'
    m = re.fullmatch(r'norm\.(weight|bias)', key)
    return f'ln1.{m.group(1)}' if m else None
