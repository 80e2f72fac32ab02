"""Our own checkpoints (``--src greenmim_mm``, ``localmim``): mmpretrain layouts (Swin, Twins
``SVT``, ``VisionTransformer``) under ``backbone.``.

* ``greenmim_mm``: our pre-training (or any mmpretrain-style) checkpoint; keeps ``backbone.*``,
  drops mask state (mmpretrain SimMIM's ``backbone.mask_token``) and stale ``attn_mask`` buffers,
  and renames the older single final ``norm.*`` to ``norm{last stage}.*`` (as mmpretrain's
  ``SwinTransformer`` does when loading such a checkpoint).
* ``localmim``: our LocalMIM pre-training checkpoint: ``backbone.*`` without the per-head
  LayerNorms of outputs taken after patch merging (``norm{i}`` wider than stage i); decoders,
  heads, target generators dropped. A LocalMIM Twins or ViT checkpoint is kept whole.
"""
import re
from typing import List, Optional, Tuple

from .common import ConversionError, _layout_error, _sample, _strip_prefix, _tensor_dict, _unwrap
from .official_localmim import _VIT_BLOCK_KEYS
from .twins import is_twins_state_dict


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
